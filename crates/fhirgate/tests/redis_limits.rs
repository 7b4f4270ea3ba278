//! Rate limits shared by two gateway processes through a real Redis server, started here on
//! a free loopback port (`redis-server` from Debian's package; `scripts/test.sh` installs it).
//! Also: the same burst against one process with the memory store, and Redis going away and
//! coming back while requests flow.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A"}"#;

/// A rule of 10 requests a second with a burst of 100.
const RULE: &str = "    - { name: per-client, key: [client_id], rate: 10, per: 1s, burst: 100 }";

/// A redis-server child process, killed when dropped.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn binary() -> String {
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let found = Command::new(&binary)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{binary} not found: scripts/test.sh installs Debian's redis-server; or set REDIS_SERVER"
        );
        binary
    }

    async fn start(port: u16) -> Self {
        let child = Command::new(Self::binary())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let redis = Self {
            port,
            child: Some(child),
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return redis;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not start on port {port}");
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn gateway_process(
    idp: &FakeIdp,
    fhir: &FakeFhir,
    redis_port: u16,
    mode: &str,
) -> GatewayProcess {
    let rest = format!(
        r#"audit:
  spool: {{ path: "{{dir}}/audit.spool" }}
  sinks: {{ trail: {{ jsonl: {{ path: "{{dir}}/audit.jsonl" }} }} }}
rate_limits:
  redis:
    url: "redis://127.0.0.1:{redis_port}"
    failure_mode: {mode}
    timeout: "200ms"
  rules:
{RULE}"#
    );
    GatewayProcess::start(idp, fhir.addr, &rest, Stdio::null(), "/readyz").await
}

/// Fires one request per URL at once; the statuses in order.
async fn burst(urls: Vec<String>, token: &str) -> Vec<u16> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(400)
        .build()
        .unwrap();
    let tasks: Vec<_> = urls
        .into_iter()
        .map(|url| {
            let (http, token) = (http.clone(), token.to_owned());
            tokio::spawn(async move {
                http.get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16())
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses
}

/// Opens a connection to each gateway and warms the token cache, so the burst measures the
/// limiter rather than start-up.
async fn warm(bases: &[&str], token: &str) {
    for base in bases {
        let status = client()
            .get(format!("{base}/metadata"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.as_u16() < 500);
    }
}

fn allowed(statuses: &[u16]) -> usize {
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "only 200 and 429 expected: {statuses:?}"
    );
    statuses.iter().filter(|s| **s == 200).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_sharing_redis_enforce_one_limit() {
    let redis = Redis::start(free_port()).await;
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let a = gateway_process(&idp, &fhir, redis.port, "local").await;
    let b = gateway_process(&idp, &fhir, redis.port, "local").await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    warm(&[&a.base, &b.base], &token).await;

    let urls = (0..300)
        .map(|n| {
            format!(
                "{}/Patient/pat-A",
                if n % 2 == 0 { &a.base } else { &b.base }
            )
        })
        .collect();
    let started = Instant::now();
    let statuses = burst(urls, &token).await;
    let took = started.elapsed();
    let count = allowed(&statuses);
    println!("shared store: {count} of 300 allowed in {took:?} across two processes");
    // The burst, plus what the rate gives back while the requests are under way.
    let refill = (took.as_secs_f64() * 10.0).floor() as usize;
    assert!(
        (100..=102 + refill.saturating_sub(2)).contains(&count),
        "{count} allowed in {took:?}"
    );
    assert!(took < Duration::from_secs(1), "the burst took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_process_in_memory_allows_the_burst() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let gateway =
        TestGateway::start(&idp, fhir.addr, &format!("rate_limits:\n  rules:\n{RULE}")).await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    warm(&[&gateway.base], &token).await;
    let urls = (0..300)
        .map(|_| format!("{}/Patient/pat-A", gateway.base))
        .collect();
    let started = Instant::now();
    let statuses = burst(urls, &token).await;
    let took = started.elapsed();
    let count = allowed(&statuses);
    println!("memory store: {count} of 300 allowed in {took:?}");
    let refill = (took.as_secs_f64() * 10.0).floor() as usize;
    assert!(
        (100..=101 + refill.saturating_sub(1)).contains(&count),
        "{count} allowed in {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_redis_switches_to_the_failure_mode_and_back() {
    let port = free_port();
    let mut redis = Redis::start(port).await;
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let local = gateway_process(&idp, &fhir, port, "local").await;
    let closed = gateway_process(&idp, &fhir, port, "closed").await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    let get = |base: String| {
        let token = token.clone();
        async move {
            client()
                .get(format!("{base}/Patient/pat-A"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    let ready = |admin: String| async move {
        let response = client()
            .get(format!("{admin}/readyz"))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    };
    assert_eq!(get(local.base.clone()).await.status(), 200);
    assert_eq!(get(closed.base.clone()).await.status(), 200);

    // Requests in flight while Redis goes away: none is dropped, none is a 500.
    let in_flight: Vec<_> = (0..20)
        .map(|n| {
            let base = if n % 2 == 0 {
                local.base.clone()
            } else {
                closed.base.clone()
            };
            tokio::spawn(get(base))
        })
        .collect();
    redis.stop();
    for request in in_flight {
        let status = request.await.unwrap().status().as_u16();
        assert!(matches!(status, 200 | 503), "{status}");
    }

    let response = get(local.base.clone()).await;
    assert_eq!(response.status(), 200, "local mode limits on its own");
    let response = get(closed.base.clone()).await;
    assert_eq!(response.status(), 503, "closed mode refuses");
    assert!(response.headers().contains_key("retry-after"));
    let body = response.text().await.unwrap();
    assert!(body.contains(r#""code":"transient""#), "{body}");
    let (status, body) = ready(local.admin.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""rate_limit_store":false"#), "{body}");
    let (status, body) = ready(closed.admin.clone()).await;
    assert_eq!(status, 503, "{body}");
    let metrics = client()
        .get(format!("{}/metrics", local.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("fhirgate_rate_limit_store_up 0"),
        "{metrics}"
    );

    let _redis = Redis::start(port).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = get(closed.base.clone()).await.status().as_u16();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "closed mode never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(local.base.clone()).await.status(), 200);
    let (status, body) = ready(local.admin.clone()).await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""rate_limit_store":true"#), "{body}");
}
