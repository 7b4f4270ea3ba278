//! The fault matrix of docs/FAULTS.md: one test per fault that no other suite already proves,
//! each asserting the behaviour docs/RUNBOOK.md and docs/AUDIT.md document (status and
//! OperationOutcome, metric, readiness, audit record) and that no answer carries data the
//! gateway did not check. The rows proven elsewhere are listed in docs/FAULTS.md with their
//! tests.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use support::wire::exchange;
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const OBS_A1: &str = r#"{"resourceType":"Observation","id":"obs-A1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/pat-A"}}"#;
const OBS_B1: &str = r#"{"resourceType":"Observation","id":"obs-B1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/pat-B"}}"#;

/// How a scripted upstream ends its answer after the bytes it was given.
#[derive(Clone, Copy)]
enum End {
    /// Reset the connection (RST).
    Reset,
    /// Send nothing more and keep the connection open.
    Stall,
}

/// An upstream that answers every request with `bytes`, then ends as `end` says.
async fn scripted_upstream(bytes: Vec<u8>, end: End) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let _ = stream.write_all(&bytes).await;
                let _ = stream.flush().await;
                match end {
                    End::Reset => {
                        // Let the bytes leave before the reset discards what is unsent.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let _ = stream.set_zero_linger();
                    }
                    End::Stall => tokio::time::sleep(Duration::from_secs(3600)).await,
                }
            });
        }
    });
    addr
}

/// A response head and the first `part` of `body`, claiming all of it by `Content-Length`.
fn truncated(content_type: &str, body: &str, part: usize) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..part]
    )
    .into_bytes()
}

fn searchset(entries: &[&str]) -> String {
    let entries: Vec<String> = entries
        .iter()
        .map(|r| format!(r#"{{"resource":{r},"search":{{"mode":"match"}}}}"#))
        .collect();
    format!(
        r#"{{"resourceType":"Bundle","type":"searchset","entry":[{}]}}"#,
        entries.join(",")
    )
}

fn patient_token(idp: &FakeIdp) -> String {
    sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"))
}

fn user_token(idp: &FakeIdp) -> String {
    sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "user/*.rs"))
}

async fn get(base: &str, path: &str, token: &str, request_id: &str) -> RawResponse {
    let headers = vec![
        ("authorization".to_owned(), format!("Bearer {token}")),
        ("x-request-id".to_owned(), request_id.to_owned()),
    ];
    send_raw(
        base,
        "GET",
        &format!("/fhir/{path}"),
        &headers,
        Bytes::new(),
    )
    .await
}

/// The OperationOutcome's first issue code, failing on any other body.
fn issue_code(response: &RawResponse) -> String {
    let outcome: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    assert_eq!(
        outcome["resourceType"],
        "OperationOutcome",
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    outcome["issue"][0]["code"].as_str().unwrap().to_owned()
}

async fn metrics(admin: &str) -> String {
    client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the series whose exported line starts with `series`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

fn record<'a>(audit: &'a [Value], request_id: &str) -> &'a Value {
    let lines: Vec<&Value> = audit
        .iter()
        .filter(|r| r["request_id"] == request_id)
        .collect();
    assert_eq!(lines.len(), 1, "audit records of {request_id}");
    lines[0]
}

/// The upstream refuses connections: 502 `transient` at once, counted as a `connect` error,
/// the gateway unready, and the request recorded with its reason.
#[tokio::test]
async fn upstream_refusing_connections() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let dead = format!("http://127.0.0.1:{}/fhir", free_port());
    let gateway = TestGateway::start_at(&idp, &dead, "", "", "").await;
    let response = get(
        &gateway.base,
        "Patient/pat-A",
        &patient_token(&idp),
        "refused-1",
    )
    .await;
    assert_eq!(response.status, 502);
    assert_eq!(issue_code(&response), "transient");
    let text = metrics(&gateway.admin).await;
    assert_eq!(
        metric(
            &text,
            r#"fhirgate_upstream_errors_total{route="default",kind="connect"}"#
        ),
        Some(1.0),
        "{text}"
    );
    let ready = client()
        .get(format!("{}/readyz", gateway.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains(r#""upstream":false"#));
    let audit = gateway.stop().await;
    let record = record(&audit, "refused-1");
    assert_eq!(record["reason"], "upstream_unavailable");
    assert_eq!(record["status"], 502);
}

/// The upstream resets the connection in the middle of a body the gateway must check (a
/// patient's search, a read by id), or reads whole to rewrite (an unchecked JSON body of known
/// length up to 256 KiB): 502 with an OperationOutcome and none of the partial body, counted
/// as an invalid response and recorded as refused.
#[tokio::test]
async fn upstream_reset_mid_body_of_a_checked_response() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let (patient, user) = (patient_token(&idp), user_token(&idp));
    let bundle = searchset(&[OBS_A1, OBS_B1]);
    for (path, body, token) in [
        ("Observation", bundle.as_str(), &patient),
        ("Observation/obs-A1", OBS_A1, &patient),
        ("Observation/obs-A1", OBS_A1, &user),
    ] {
        // Cut after obs-A1's id, so the partial body holds data the client could recognise.
        let part = body.find("obs-A1").unwrap() + 10;
        let upstream =
            scripted_upstream(truncated("application/fhir+json", body, part), End::Reset).await;
        let gateway = TestGateway::start(&idp, upstream, "").await;
        let response = get(&gateway.base, path, token, "reset-1").await;
        assert_eq!(response.status, 502, "{path}");
        assert_eq!(issue_code(&response), "transient", "{path}");
        let text = String::from_utf8_lossy(&response.body);
        assert!(
            !text.contains("obs-A1") && !text.contains("Bundle"),
            "{path}: {text}"
        );
        let metrics = metrics(&gateway.admin).await;
        assert_eq!(
            metric(
                &metrics,
                r#"fhirgate_upstream_errors_total{route="default",kind="invalid_response"}"#
            ),
            Some(1.0),
            "{path}: {metrics}"
        );
        let audit = gateway.stop().await;
        let record = record(&audit, "reset-1");
        assert_eq!(record["reason"], "upstream_unverifiable", "{path}");
        assert_eq!(record["decision"], "deny", "{path}");
    }
}

/// The upstream resets the connection in the middle of a body the gateway streams unchecked
/// (a `user/` read): the client's connection is cut before the body is complete, so no
/// client can take the truncated body for the whole answer. Streamed with a length (binary)
/// and without one (chunked, rewritten as it streams).
#[tokio::test]
async fn upstream_reset_mid_stream_of_an_unchecked_response_cuts_the_client_off() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let token = user_token(&idp);
    let large = "x".repeat(300 * 1024);
    let binary = truncated("application/octet-stream", &large, 64 * 1024);
    let chunked = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{OBS_A1}\r\n",
        OBS_A1.len()
    )
    .into_bytes();
    for (what, bytes) in [("binary with a length", binary), ("chunked JSON", chunked)] {
        let upstream = scripted_upstream(bytes, End::Reset).await;
        let gateway = TestGateway::start(&idp, upstream, "").await;
        let request = format!(
            "GET /fhir/Binary/b-1 HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        let exchange = exchange(&gateway.base, request.as_bytes(), Duration::from_secs(10)).await;
        assert!(
            exchange.closed,
            "{what}: the client's connection stays open"
        );
        assert!(
            exchange.bytes.starts_with(b"HTTP/1.1 200"),
            "{what}: {}",
            String::from_utf8_lossy(&exchange.bytes[..exchange.bytes.len().min(200)])
        );
        let (complete, _) = exchange.responses();
        assert!(
            complete.is_empty(),
            "{what}: a truncated body went out as complete"
        );
    }
}

/// The upstream sends its head, then part of a body the gateway must check, then nothing:
/// 504 `timeout` once `response_timeout` (2 s here) has passed, none of the part passed on.
#[tokio::test]
async fn upstream_stalling_mid_body_of_a_checked_response() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let bundle = searchset(&[OBS_A1, OBS_B1]);
    let part = bundle.find("obs-A1").unwrap() + 10;
    let upstream = scripted_upstream(
        truncated("application/fhir+json", &bundle, part),
        End::Stall,
    )
    .await;
    let gateway = TestGateway::start(&idp, upstream, "").await;
    let response = get(
        &gateway.base,
        "Observation",
        &patient_token(&idp),
        "stall-1",
    )
    .await;
    assert_eq!(response.status, 504);
    assert_eq!(issue_code(&response), "timeout");
    assert!(!String::from_utf8_lossy(&response.body).contains("obs-A1"));
    let text = metrics(&gateway.admin).await;
    assert_eq!(
        metric(
            &text,
            r#"fhirgate_upstream_errors_total{route="default",kind="timeout"}"#
        ),
        Some(1.0),
        "{text}"
    );
    let audit = gateway.stop().await;
    assert_eq!(record(&audit, "stall-1")["reason"], "upstream_timeout");
}

/// The upstream answers a checked search with something that is not FHIR JSON (broken JSON,
/// an HTML error page): 502 `transient`, the body not passed on, counted and recorded.
#[tokio::test]
async fn upstream_answering_what_cannot_be_checked() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    let gateway = TestGateway::start(&idp, fhir.addr, "").await;
    let token = patient_token(&idp);
    let broken = format!(r#"{{"resourceType":"Bundle","entry":[{{"resource":{OBS_B1}"#);
    let html = "<html><body>obs-B1 Patient/pat-B</body></html>";
    let answers = [
        ("broken JSON", broken.as_str(), "application/fhir+json"),
        ("an HTML page", html, "text/html"),
    ];
    for (n, (what, body, content_type)) in answers.into_iter().enumerate() {
        fhir.route_with(
            "GET",
            "Observation",
            body,
            &[("content-type", content_type)],
            None,
        );
        let response = get(&gateway.base, "Observation", &token, &format!("bad-{n}")).await;
        assert_eq!(response.status, 502, "{what}");
        assert_eq!(issue_code(&response), "transient", "{what}");
        let text = String::from_utf8_lossy(&response.body);
        assert!(
            !text.contains("obs-B1") && !text.contains("<html"),
            "{what}: {text}"
        );
    }
    // The call itself succeeded: counted by its refusal, not as an upstream error.
    let text = metrics(&gateway.admin).await;
    let series = r#"fhirgate_requests_total{route="default",decision="deny",reason="upstream_unverifiable",interaction="search-type",status_class="5xx"}"#;
    assert_eq!(metric(&text, series), Some(2.0), "{text}");
    let audit = gateway.stop().await;
    for n in 0..2 {
        let record = record(&audit, &format!("bad-{n}"));
        assert_eq!(record["reason"], "upstream_unverifiable");
        assert_eq!(record["upstream_status"], 200);
    }
}

/// The identity provider is down when the gateway starts: tokens are 503 (never 401) and the
/// gateway unready; once it answers, the keys are fetched on the retry schedule without a
/// restart and the same token is accepted.
#[tokio::test]
async fn identity_provider_down_at_start_then_back() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    idp.set_mode(JwksMode::Fail500);
    let fhir = FakeFhir::start().await;
    fhir.route(
        "GET",
        "Patient/pat-A",
        200,
        r#"{"resourceType":"Patient","id":"pat-A"}"#,
    );
    let gateway =
        TestGateway::start(&idp, fhir.addr, "    jwks_min_refresh_interval: \"1s\"").await;
    let token = patient_token(&idp);
    let response = get(&gateway.base, "Patient/pat-A", &token, "idp-down").await;
    assert_eq!(response.status, 503);
    assert_eq!(issue_code(&response), "transient");
    assert!(fhir.seen().is_empty());

    idp.set_mode(JwksMode::Serve);
    wait_for("keys fetched after the provider came back", async || {
        get(&gateway.base, "Patient/pat-A", &token, "idp-back")
            .await
            .status
            == 200
    })
    .await;
    let ready = client()
        .get(format!("{}/readyz", gateway.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let audit = gateway.stop().await;
    assert_eq!(record(&audit, "idp-down")["reason"], "keys_unavailable");
}

/// The audit spool cannot be written (here its segment folder is replaced by a file, as a
/// lost mount or wrong permissions would): once a write fails, new requests are refused 503
/// `transient` with `Retry-After` before the upstream, the gateway is unready and says so in
/// its log and metrics; the request whose record failed is named in the log. When the folder
/// is back, the gateway takes requests again by itself and every answered request has its
/// record.
#[tokio::test]
async fn audit_spool_that_cannot_be_written() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route(
        "GET",
        "Patient/pat-A",
        200,
        r#"{"resourceType":"Patient","id":"pat-A"}"#,
    );
    let audit = r#"audit:
  spool: { path: "{dir}/spool", segment_bytes: 4096 }
  sinks: { trail: { jsonl: { path: "{dir}/audit.jsonl" } } }"#;
    let gateway = GatewayProcess::start(
        &idp,
        fhir.addr,
        audit,
        std::process::Stdio::null(),
        "/readyz",
    )
    .await;
    let token = patient_token(&idp);
    let segments = gateway.dir.0.join("spool/segments");
    let away = gateway.dir.0.join("spool/segments.away");
    std::fs::rename(&segments, &away).unwrap();
    std::fs::write(&segments, b"").unwrap();

    // Records go into the open segment until it is full; the next one needs a new segment.
    let mut answered = Vec::new();
    let failed = loop {
        let id = format!("fill-{}", answered.len());
        let response = get(&gateway.base, "Patient/pat-A", &token, &id).await;
        if response.status == 503 {
            break id;
        }
        assert_eq!(response.status, 200);
        answered.push(id);
        assert!(answered.len() < 100, "the segment never filled");
    };
    fhir.clear();
    let response = get(&gateway.base, "Patient/pat-A", &token, "while-unwritable").await;
    assert_eq!(response.status, 503);
    assert_eq!(issue_code(&response), "transient");
    assert!(response.headers.contains_key("retry-after"));
    assert!(
        fhir.seen().is_empty(),
        "a refused request reached the upstream"
    );
    assert_eq!(
        gateway.metric("fhirgate_audit_spool_accepting").await,
        Some(0.0)
    );
    assert!(
        gateway
            .metric("fhirgate_audit_spool_write_failures_total")
            .await
            >= Some(1.0)
    );
    let ready = client()
        .get(format!("{}/readyz", gateway.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(
        ready
            .text()
            .await
            .unwrap()
            .contains(r#""audit_spool":false"#)
    );
    let log = gateway.stderr();
    assert!(
        log.contains("audit spool write failed; refusing requests until it can be written"),
        "{log}"
    );
    assert!(
        log.contains(&failed),
        "the log names the request answered 503: {log}"
    );

    std::fs::remove_file(&segments).unwrap();
    std::fs::rename(&away, &segments).unwrap();
    wait_for("requests taken again", async || {
        get(&gateway.base, "Patient/pat-A", &token, "after")
            .await
            .status
            == 200
    })
    .await;
    answered.push("after".to_owned());
    let trail = gateway.dir.0.join("audit.jsonl");
    wait_for("every answered request in the trail", async || {
        let text = std::fs::read_to_string(&trail).unwrap_or_default();
        answered
            .iter()
            .all(|id| text.contains(&format!(r#""request_id":"{id}""#)))
    })
    .await;
}

/// The upstream answers a checked search with more than `limits.max_checked_response`: 502
/// `transient`, none of it passed on, counted as `response_too_large`.
#[tokio::test]
async fn upstream_answering_more_than_can_be_checked() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    let many: Vec<&str> = std::iter::repeat_n(OBS_A1, 200).collect();
    fhir.route("GET", "Observation", 200, &searchset(&many));
    let limits = "limits:\n  max_checked_response: 8192\n";
    let gateway = TestGateway::start_with_sections(&idp, fhir.addr, "", "", limits).await;
    let response = get(
        &gateway.base,
        "Observation",
        &patient_token(&idp),
        "large-1",
    )
    .await;
    assert_eq!(response.status, 502);
    assert_eq!(issue_code(&response), "transient");
    assert!(!String::from_utf8_lossy(&response.body).contains("obs-A1"));
    let text = metrics(&gateway.admin).await;
    let series = r#"fhirgate_upstream_errors_total{route="default",kind="response_too_large"}"#;
    assert_eq!(metric(&text, series), Some(1.0), "{text}");
    let audit = gateway.stop().await;
    assert_eq!(record(&audit, "large-1")["reason"], "upstream_unverifiable");
}
