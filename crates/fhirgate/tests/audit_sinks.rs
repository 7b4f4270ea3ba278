//! The audit trail through a `fhirgate serve` process: several sinks at once, a collector
//! that is down for a while, and a spool that fills up.

use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde_json::Value;
use support::*;

mod support;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A","name":[{"family":"Alpha"}]}"#;
const PATIENT_B: &str = r#"{"resourceType":"Patient","id":"pat-B","name":[{"family":"Beta"}]}"#;

/// An HTTP audit collector that refuses batches with 503 until it is switched on, and keeps
/// the record ids of every batch it accepted.
#[derive(Clone, Default)]
struct Collector {
    accepting: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<String>>>,
    refused: Arc<Mutex<usize>>,
}

impl Collector {
    async fn start(&self) -> SocketAddr {
        let this = self.clone();
        spawn_server(move |request: Request<Incoming>| {
            let this = this.clone();
            async move {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                if !this.accepting.load(Ordering::SeqCst) {
                    *this.refused.lock().unwrap() += 1;
                    return respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "down");
                }
                let records: Vec<Value> = serde_json::from_slice(&body).unwrap();
                this.received.lock().unwrap().extend(
                    records
                        .iter()
                        .map(|r| r["record_id"].as_str().unwrap().to_owned()),
                );
                respond(StatusCode::OK, "application/json", Bytes::new())
            }
        })
        .await
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

type Gateway = GatewayProcess;

async fn start_gateway(idp: &FakeIdp, fhir: &FakeFhir, audit: &str) -> Gateway {
    GatewayProcess::start(idp, fhir.addr, audit, Stdio::piped(), "/healthz").await
}

/// One GET with its own request id; the status and the body.
async fn get(gateway: &Gateway, path: &str, token: &str, request_id: &str) -> (u16, Value, bool) {
    let response = client()
        .get(format!("{}/{path}", gateway.base))
        .bearer_auth(token)
        .header("x-request-id", request_id)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, retry_after)
}

fn record_ids(lines: &str) -> Vec<String> {
    lines
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["record_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

async fn upstream_and_token() -> (FakeIdp, FakeFhir, String) {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    fhir.route("GET", "Patient/pat-B", 200, PATIENT_B);
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    (idp, fhir, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sink_gets_every_record_once_and_a_collector_that_was_down_catches_up() {
    let (idp, fhir, token) = upstream_and_token().await;
    let collector = Collector::default();
    let collector_addr = collector.start().await;
    let audit = format!(
        r#"audit:
  spool: {{ path: "{{dir}}/spool" }}
  sinks:
    trail: {{ jsonl: {{ path: "{{dir}}/audit.jsonl" }} }}
    console: {{ stdout: {{}} }}
    collector:
      http: {{ url: "http://{collector_addr}/records", batch: 3, backoff_max: "200ms" }}"#
    );
    let mut gateway = start_gateway(&idp, &fhir, &audit).await;
    let mut statuses = HashMap::new();
    for n in 0..10 {
        let path = if n % 3 == 0 {
            "Patient/pat-B"
        } else {
            "Patient/pat-A"
        };
        let request_id = format!("sinks-{n}");
        let (status, _, _) = get(&gateway, path, &token, &request_id).await;
        statuses.insert(request_id, status);
    }
    assert_eq!(statuses.values().filter(|s| **s == 200).count(), 6);
    assert_eq!(statuses.values().filter(|s| **s == 403).count(), 4);

    // The collector refuses: the records wait in the spool, counted per sink.
    wait_for("failed deliveries counted", async || {
        gateway
            .metric(r#"fhirgate_audit_delivery_failures_total{sink="collector"}"#)
            .await
            .is_some_and(|n| n >= 2.0)
    })
    .await;
    wait_for("the backlog reported", async || {
        gateway
            .metric(r#"fhirgate_audit_unshipped_records{sink="collector"}"#)
            .await
            == Some(10.0)
    })
    .await;
    assert!(collector.received().is_empty());
    // The other sinks are not held up by it.
    wait_for("the trail caught up", async || {
        gateway
            .metric(r#"fhirgate_audit_unshipped_records{sink="trail"}"#)
            .await
            == Some(0.0)
    })
    .await;

    collector.accepting.store(true, Ordering::SeqCst);
    wait_for("the collector caught up", async || {
        collector.received().len() >= 10
    })
    .await;

    let pid = gateway.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = gateway.child.wait().unwrap();
    assert!(exit.success(), "{exit}");
    let mut stdout = String::new();
    gateway
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let trail = std::fs::read_to_string(gateway.dir.0.join("audit.jsonl")).unwrap();

    let from_trail = record_ids(&trail);
    let from_stdout = record_ids(&stdout);
    let from_collector = collector.received();
    assert_eq!(from_trail.len(), 10, "{trail}");
    assert_eq!(
        from_trail, from_stdout,
        "stdout holds the same records in the same order"
    );
    assert_eq!(
        from_collector.iter().collect::<HashSet<_>>(),
        from_trail.iter().collect::<HashSet<_>>()
    );
    assert_eq!(
        from_collector.len(),
        10,
        "acknowledged batches are not sent again"
    );
    // The accounting of disclosures reads the same trail.
    let query = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
            .args(["audit", "query", "--format", "json", "--config"])
            .arg(gateway.dir.0.join("fhirgate.yaml"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        record_ids(&String::from_utf8(output.stdout).unwrap())
    };
    assert_eq!(
        query(&["--patient", "pat-A"]),
        from_trail,
        "context patient of every record"
    );
    let other = query(&["--patient", "pat-B", "--since", "1h"]);
    assert_eq!(other.len(), 4, "the refused reads of pat-B: {other:?}");
    assert_eq!(query(&["--decision", "deny"]), other);
    for line in trail.lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        let request_id = record["request_id"].as_str().unwrap();
        assert_eq!(record["status"], statuses[request_id], "{record}");
        let decision = if statuses[request_id] == 200 {
            "allow"
        } else {
            "deny"
        };
        assert_eq!(record["decision"], decision, "{record}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_requests_before_the_upstream_until_the_sink_catches_up() {
    let (idp, fhir, token) = upstream_and_token().await;
    let collector = Collector::default();
    let collector_addr = collector.start().await;
    let audit = format!(
        r#"audit:
  spool: {{ path: "{{dir}}/spool", max_bytes: 8192, segment_bytes: 4096, when_full: refuse }}
  sinks:
    collector:
      http: {{ url: "http://{collector_addr}/records", batch: 50, backoff_max: "200ms" }}"#
    );
    let gateway = start_gateway(&idp, &fhir, &audit).await;

    let mut answered = 0;
    let refused_id = loop {
        let request_id = format!("fill-{answered}");
        let (status, body, retry_after) = get(&gateway, "Patient/pat-A", &token, &request_id).await;
        if status == 503 {
            assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
            assert_eq!(body["issue"][0]["code"], "transient", "{body}");
            assert!(retry_after, "503 without Retry-After");
            break request_id;
        }
        assert_eq!(status, 200, "{body}");
        answered += 1;
        assert!(answered < 200, "the spool never filled");
    };
    // Records are larger than 400 bytes: 8 KiB holds a handful of them.
    assert!(
        (5..40).contains(&answered),
        "{answered} answered before the spool was full"
    );
    assert_eq!(
        gateway.metric("fhirgate_audit_spool_accepting").await,
        Some(0.0)
    );
    let ready = client()
        .get(format!("{}/readyz", gateway.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        503,
        "a refusing spool makes the gateway unready"
    );
    assert!(
        ready
            .text()
            .await
            .unwrap()
            .contains(r#""audit_spool":false"#)
    );

    // Refused while full, before reaching the upstream.
    fhir.clear();
    let (status, _, _) = get(&gateway, "Patient/pat-A", &token, "while-full").await;
    assert_eq!(status, 503);
    let reached: Vec<String> = fhir
        .seen()
        .iter()
        .filter_map(|s| {
            s.headers
                .get("x-request-id")?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .collect();
    assert!(
        !reached
            .iter()
            .any(|id| id == "while-full" || *id == refused_id),
        "a refused request reached the upstream: {reached:?}"
    );

    collector.accepting.store(true, Ordering::SeqCst);
    wait_for("requests taken again", async || {
        get(&gateway, "Patient/pat-A", &token, "after").await.0 == 200
    })
    .await;
    wait_for("every answered request shipped", async || {
        collector.received().len() > answered
    })
    .await;
    let shipped: HashSet<String> = collector.received().into_iter().collect();
    assert!(shipped.len() > answered, "{} shipped", shipped.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_still_leaves_the_record_of_what_reached_the_upstream() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    // An upstream that takes its time over every request.
    let upstream = spawn_server(|_request: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        respond(
            StatusCode::CREATED,
            "application/fhir+json",
            r#"{"resourceType":"Observation","id":"obs-new","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/pat-A"}}"#,
        )
    })
    .await;
    let gateway = TestGateway::start(&idp, upstream, "").await;
    let token = sign(
        "rsa-a",
        Some("rsa-a"),
        &claims(&idp.issuer, "patient/Observation.c"),
    );
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(format!("{}/Observation", gateway.base))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .header("x-request-id", "impatient-create")
        .body(r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/pat-A"}}"#)
        .send()
        .await;
    assert!(gave_up.is_err(), "the client should have timed out");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let records = gateway.stop().await;
    let record = records
        .iter()
        .find(|r| r["request_id"] == "impatient-create")
        .expect("a record of the abandoned create");
    assert_eq!(record["upstream_status"], 201, "{record}");
    assert_eq!(record["interaction"], "create", "{record}");
}
