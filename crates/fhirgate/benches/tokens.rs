//! What validating an access token costs the gateway: RS256 and ES256 JWTs checked for the
//! first time (header, key lookup, signature, claims, claim mapping) and seen again (the
//! verified-token cache). Keys come from a JWKS served on loopback, as in production.
//!
//! Run with `cargo bench -p fhirgate --bench tokens`.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use fhirgate::config::Config;
use fhirgate::token::{TokenValidator, digest};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture")
}

/// Serves the two fixture public keys as a JWKS; returns its URL.
async fn jwks_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let keys: Vec<serde_json::Value> = ["rsa-a", "ec-a"]
        .iter()
        .map(|k| serde_json::from_slice(&fixture(&format!("{k}.jwk.json"))).unwrap())
        .collect();
    let body = Bytes::from(json!({ "keys": keys }).to_string());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(body))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/jwks")
}

fn token(key: &str, alg: Algorithm) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({
        "iss": "https://idp.bench", "aud": "https://gw.bench/fhir", "sub": "user-1",
        "client_id": "bench-app", "iat": now, "exp": now + 3600, "jti": "bench-0001",
        "scope": "launch/patient openid fhirUser patient/Observation.rs patient/Patient.r",
        "patient": "pat-1", "fhirUser": "Patient/pat-1",
    });
    let pem = fixture(&format!("{key}.pem"));
    let encoding = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = Some(key.to_owned());
    jsonwebtoken::encode(&header, &claims, &encoding).unwrap()
}

fn bench_tokens(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let validator = runtime.block_on(async {
        let jwks = jwks_server().await;
        let yaml = format!(
            r#"
listen: "127.0.0.1:18980"
admin_listen: "127.0.0.1:18981"
upstream: {{ url: "http://127.0.0.1:1/fhir", public_base_path: "/fhir" }}
issuers:
  - issuer: "https://idp.bench"
    audience: "https://gw.bench/fhir"
    jwks_uri: "{jwks}"
    algorithms: ["RS256", "ES256"]
audit: {{ spool: {{ path: "/tmp/fhirgate-bench-spool" }}, sinks: {{ trail: {{ stdout: {{}} }} }} }}
"#
        );
        let config = Config::parse(&yaml, "bench").expect("bench config");
        let validator =
            TokenValidator::new(&config, reqwest::Client::new(), Default::default()).unwrap();
        validator.load_keys().await;
        assert!(validator.ready(), "JWKS loaded");
        validator
    });

    let mut group = c.benchmark_group("token");
    for (name, key, alg) in [
        ("rs256", "rsa-a", Algorithm::RS256),
        ("es256", "ec-a", Algorithm::ES256),
    ] {
        let token = token(key, alg);
        let key = digest(&token);
        group.bench_function(format!("{name}_first_use"), |b| {
            b.iter(|| {
                runtime
                    .block_on(validator.verify_uncached(black_box(&token), key))
                    .expect("valid")
            });
        });
        group.bench_function(format!("{name}_cached"), |b| {
            b.iter(|| {
                runtime
                    .block_on(validator.verify(black_box(&token)))
                    .expect("valid")
            });
        });
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
    targets = bench_tokens
}
criterion_main!(benches);
