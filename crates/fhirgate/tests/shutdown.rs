//! Stopping a `fhirgate serve` process with SIGTERM while requests are in flight.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use support::*;

mod support;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A","name":[{"family":"Alpha"}]}"#;
const IN_FLIGHT: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_every_accepted_request_then_exits_0_with_their_records() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    // An upstream that takes its time, so that requests are in flight when the signal comes.
    let arrived = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let arrived = arrived.clone();
        spawn_server(move |_request| {
            let arrived = arrived.clone();
            async move {
                arrived.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(700)).await;
                respond(StatusCode::OK, "application/fhir+json", PATIENT_A)
            }
        })
        .await
    };
    let audit = r#"audit:
  spool: { path: "{dir}/spool" }
  sinks:
    trail:
      jsonl: { path: "{dir}/audit.jsonl" }"#;
    let mut gateway = GatewayProcess::start(&idp, upstream, audit, Stdio::null(), "/healthz").await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));

    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|n| {
            let url = format!("{}/Patient/pat-A", gateway.base);
            let token = token.clone();
            tokio::spawn(async move {
                // A connection of its own each.
                let response = client()
                    .get(url)
                    .bearer_auth(token)
                    .header("x-request-id", format!("in-flight-{n}"))
                    .send()
                    .await
                    .expect("an accepted request is answered");
                let status = response.status().as_u16();
                let body: Value = response.json().await.expect("a whole body");
                (status, body)
            })
        })
        .collect();
    wait_for("every request reached the upstream", async || {
        arrived.load(Ordering::SeqCst) == IN_FLIGHT
    })
    .await;
    gateway.signal("TERM");

    for request in requests {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body["id"], "pat-A");
    }
    // Once it has stopped accepting, a new request finds no listener.
    wait_for("the listener closed", async || {
        client()
            .get(format!("{}/Patient/pat-A", gateway.base))
            .bearer_auth(&token)
            .send()
            .await
            .is_err_and(|e| e.is_connect())
    })
    .await;
    let status = gateway.exited_within(Duration::from_secs(20)).await;
    assert!(status.success(), "exit status {status}");

    // Every answered request has its record in the trail: the shippers drained the spool.
    let trail = std::fs::read_to_string(gateway.dir.0.join("audit.jsonl")).unwrap();
    let ids: Vec<String> = trail
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["request_id"].to_string())
        .collect();
    for n in 0..IN_FLIGHT {
        let id = format!("\"in-flight-{n}\"");
        assert_eq!(
            ids.iter().filter(|i| **i == id).count(),
            1,
            "{id} in {ids:?}"
        );
    }
}
