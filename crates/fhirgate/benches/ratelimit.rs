//! What a rate-limit check costs: one rule, in this process's memory and in a local Redis
//! (a `redis-server` started on a free loopback port when one is installed), over a spread of
//! 10,000 client keys.
//!
//! Run with `cargo bench -p fhirgate --bench ratelimit`.

use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use fhirgate::config::Config;
use fhirgate::ratelimit::{Charge, Limiter};
use fhirgate::token::{Caller, Identity};

fn limiter(redis: Option<u16>) -> Limiter {
    let store = redis
        .map(|port| format!("  redis: {{ url: \"redis://127.0.0.1:{port}\", timeout: \"1s\" }}\n"))
        .unwrap_or_default();
    let yaml = format!(
        "{}rate_limits:\n{store}  rules:\n    - {{ name: per-client, key: [client_id, subject], rate: 1000000, per: 1s, burst: 1000000 }}\n",
        fhirgate::config::EMBEDDED_DEFAULT
    );
    Limiter::new(&Config::parse(&yaml, "bench").unwrap().rate_limits).unwrap()
}

fn identities() -> Vec<Identity> {
    (0..10_000)
        .map(|n| {
            Identity::from(Caller {
                issuer: "https://idp.bench".into(),
                client_id: Some(format!("app-{}", n % 50)),
                subject: Some(format!("user-{n}")),
                ..Caller::default()
            })
        })
        .collect()
}

struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server(port: u16) -> Option<RedisServer> {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(RedisServer(child));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn bench_checks(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let identities = identities();
    let charge = |n: usize| Charge {
        identity: &identities[n % identities.len()],
        authenticated: true,
        client_ip: "192.0.2.1".parse().unwrap(),
        interaction: "read",
        resource_type: Some("Observation"),
        cost: 1,
    };
    let mut group = c.benchmark_group("ratelimit");
    let memory = limiter(None);
    let mut n = 0;
    group.bench_function("memory_check", |b| {
        b.iter(|| {
            n += 1;
            runtime.block_on(memory.charge(black_box(&charge(n))))
        });
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    match redis_server(port) {
        Some(_server) => {
            let shared = limiter(Some(port));
            group.bench_function("redis_check", |b| {
                b.iter(|| {
                    n += 1;
                    runtime.block_on(shared.charge(black_box(&charge(n))))
                });
            });
        }
        None => eprintln!("redis-server is not installed: ratelimit/redis_check skipped"),
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_checks
}
criterion_main!(benches);
