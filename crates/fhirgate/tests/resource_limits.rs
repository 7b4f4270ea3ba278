//! Resource limits against slow and greedy HTTP/1.1 clients, over real sockets: the head
//! timeout (slowloris), the request body timeout, the idle timeout, head size and header
//! count, the cap on open connections and the cap on requests at the FHIR server.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A"}"#;

struct World {
    idp: FakeIdp,
    fhir: FakeFhir,
    gateway: TestGateway,
}

/// A gateway with `limits` (the body of a `limits:` section) in front of a FHIR server that
/// answers `Patient/pat-A` and never answers `Observation/slow`.
async fn world(limits: &str) -> World {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    fhir.route("GET", "Observation/slow", HANG, "");
    let sections = format!("limits:\n{limits}");
    let gateway = TestGateway::start_with_sections(&idp, fhir.addr, "", "", &sections).await;
    World { idp, fhir, gateway }
}

impl World {
    fn token(&self) -> String {
        sign(
            "rsa-a",
            Some("rsa-a"),
            &claims(&self.idp.issuer, "patient/*.cruds"),
        )
    }

    fn listen_addr(&self) -> SocketAddr {
        let authority = self.gateway.base.trim_start_matches("http://");
        authority.trim_end_matches("/fhir").parse().unwrap()
    }

    /// A well-behaved client's read of `Patient/pat-A`, on a connection of its own.
    async fn read_patient(&self) -> u16 {
        client()
            .get(format!("{}/Patient/pat-A", self.gateway.base))
            .bearer_auth(self.token())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The value of one series of the gateway's metrics (`name{labels}` as exported).
    async fn metric(&self, series: &str) -> f64 {
        let text = client()
            .get(format!("{}/metrics", self.gateway.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    }

    async fn wait_for_metric(&self, series: &str, wanted: impl Fn(f64) -> bool) {
        wait_for(series, async || wanted(self.metric(series).await)).await;
    }
}

/// Reads what the server sends until it closes the connection (or resets it), within a
/// generous deadline.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the gateway did not close the connection");
    String::from_utf8_lossy(&received).into_owned()
}

fn body_of(response: &str) -> Value {
    let (_, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

#[tokio::test]
async fn slowloris_connections_do_not_stop_other_clients_and_are_closed_after_the_head_timeout() {
    let w = world("  connections:\n    header_read_timeout: \"3s\"\n").await;
    let addr = w.listen_addr();
    let mut hung = Vec::new();
    for i in 0..200 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let partial = format!("GET /fhir/Patient/pat-A HTTP/1.1\r\nHost: gw\r\nX-Slow-{i}: ");
        stream.write_all(partial.as_bytes()).await.unwrap();
        hung.push(stream);
    }
    w.wait_for_metric("fhirgate_connections_open", |open| open >= 200.0)
        .await;

    // While they hang, a well-behaved client is served.
    for _ in 0..5 {
        assert_eq!(w.read_patient().await, 200);
    }

    for stream in &mut hung {
        let answer = read_until_closed(stream).await;
        assert!(!answer.contains(PATIENT_A), "{answer}");
    }
    w.wait_for_metric(
        r#"fhirgate_limit_hits_total{limit="header_read_timeout"}"#,
        |hits| hits >= 200.0,
    )
    .await;
    let seen = w.fhir.seen();
    assert_eq!(seen.len(), 5, "only the well-behaved client's requests");
    let audit = w.gateway.stop().await;
    assert_eq!(audit.len(), 5, "a request never read has no record");
}

#[tokio::test]
async fn a_client_that_stops_sending_its_body_gets_408_and_nothing_reaches_the_upstream() {
    let w = world("  request_body_timeout: \"1s\"\n").await;
    let mut stream = TcpStream::connect(w.listen_addr()).await.unwrap();
    let head = format!(
        "POST /fhir/Observation HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/fhir+json\r\nContent-Length: 400\r\n\r\n",
        w.token()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
        .write_all(br#"{"resourceType":"Observation","#)
        .await
        .unwrap();

    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    let outcome = body_of(&answer);
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "timeout");
    assert!(w.fhir.seen().is_empty(), "nothing reaches the upstream");
    assert_eq!(
        w.metric(r#"fhirgate_limit_hits_total{limit="request_body_timeout"}"#)
            .await,
        1.0
    );
    let audit = w.gateway.stop().await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["decision"], "deny");
    assert_eq!(audit[0]["reason"], "body_timeout");
    assert_eq!(audit[0]["status"], 408);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let w =
        world("  connections:\n    idle_timeout: \"1s\"\n    header_read_timeout: \"60s\"\n").await;
    let mut stream = TcpStream::connect(w.listen_addr()).await.unwrap();
    let request = format!(
        "GET /fhir/Patient/pat-A HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\n\r\n",
        w.token()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // The answer comes, the connection stays open for the next request, then closes idle.
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        answer.ends_with(PATIENT_A),
        "one answer, then the close: {answer}"
    );
    assert_eq!(
        w.metric(r#"fhirgate_limit_hits_total{limit="idle_timeout"}"#)
            .await,
        1.0
    );
    assert_eq!(
        w.metric(r#"fhirgate_limit_hits_total{limit="header_read_timeout"}"#)
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_head_timeout() {
    let w =
        world("  connections:\n    header_read_timeout: \"1s\"\n    idle_timeout: \"1h\"\n").await;
    let mut silent = TcpStream::connect(w.listen_addr()).await.unwrap();
    assert_eq!(read_until_closed(&mut silent).await, "");
    assert_eq!(
        w.metric(r#"fhirgate_limit_hits_total{limit="header_read_timeout"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let w = world("  connections:\n    idle_timeout: \"1s\"\n").await;
    let tcp = TcpStream::connect(w.listen_addr()).await.unwrap();
    let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("{}/Patient/pat-A", w.gateway.base))
        .header("authorization", format!("Bearer {}", w.token()))
        .body(())
        .unwrap();
    let mut sender = sender.ready().await.unwrap();
    let (answer, _) = sender.send_request(request, true).unwrap();
    assert_eq!(answer.await.unwrap().status(), 200);
    // The connection ends by itself once idle (the client keeps its end open).
    let ended = tokio::time::timeout(Duration::from_secs(20), connection).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection was not closed");
    drop(sender);
    assert_eq!(
        w.metric(r#"fhirgate_limit_hits_total{limit="idle_timeout"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn heads_over_max_header_bytes_or_max_headers_get_431_and_are_not_forwarded() {
    let w = world(
        "  max_token_length: 4096\n  connections:\n    max_header_bytes: 8192\n    max_headers: 20\n",
    )
    .await;
    let token = w.token();
    let many: String = (0..30).map(|i| format!("X-Extra-{i}: {i}\r\n")).collect();
    let long = format!("X-Long: {}\r\n", "a".repeat(10_000));
    for extra in [many, long] {
        let mut stream = TcpStream::connect(w.listen_addr()).await.unwrap();
        let request = format!(
            "GET /fhir/Patient/pat-A HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
             {extra}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_until_closed(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }
    assert!(w.fhir.seen().is_empty());
    w.wait_for_metric(
        r#"fhirgate_limit_hits_total{limit="header_size"}"#,
        |hits| hits == 2.0,
    )
    .await;
    // Within the limits the same client is served.
    assert_eq!(w.read_patient().await, 200);
}

#[tokio::test]
async fn connections_over_max_open_are_closed_at_once_until_one_closes() {
    let w = world("  connections:\n    max_open: 3\n").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(w.listen_addr()).await.unwrap());
    }
    w.wait_for_metric("fhirgate_connections_open", |open| open == 3.0)
        .await;

    let mut over = TcpStream::connect(w.listen_addr()).await.unwrap();
    let request = format!(
        "GET /fhir/Patient/pat-A HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\n\r\n",
        w.token()
    );
    // The write may already fail on the closed connection; either way nothing comes back.
    let _ = over.write_all(request.as_bytes()).await;
    assert_eq!(read_until_closed(&mut over).await, "");
    assert_eq!(w.metric("fhirgate_connections_refused_total").await, 1.0);
    assert!(w.fhir.seen().is_empty());

    drop(held.pop());
    w.wait_for_metric("fhirgate_connections_open", |open| open == 2.0)
        .await;
    assert_eq!(w.read_patient().await, 200);
}

#[tokio::test]
async fn requests_over_max_upstream_requests_get_503_at_once_and_are_audited() {
    let w = world("  max_upstream_requests: 1\n").await;
    let token = w.token();
    let slow = tokio::spawn({
        let url = format!("{}/Observation/slow", w.gateway.base);
        let token = token.clone();
        async move {
            let response = client().get(url).bearer_auth(token).send().await.unwrap();
            response.status().as_u16()
        }
    });
    wait_for("the slow request at the upstream", async || {
        w.fhir.seen().len() == 1
    })
    .await;

    let response = client()
        .get(format!("{}/Patient/pat-A", w.gateway.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(outcome["issue"][0]["code"], "transient");
    assert_eq!(
        w.fhir.seen().len(),
        1,
        "the refused request stays at the gateway"
    );
    assert_eq!(
        w.metric(r#"fhirgate_limit_hits_total{limit="upstream_requests"}"#)
            .await,
        1.0
    );

    // The slow request times out at the upstream (504) and gives its slot back.
    assert_eq!(slow.await.unwrap(), 504);
    assert_eq!(w.read_patient().await, 200);
    let audit = w.gateway.stop().await;
    let busy: Vec<_> = audit
        .iter()
        .filter(|record| record["reason"] == "upstream_busy")
        .collect();
    assert_eq!(busy.len(), 1, "{audit:?}");
    assert_eq!(busy[0]["decision"], "deny");
    assert_eq!(busy[0]["status"], 503);
}

#[tokio::test]
async fn a_body_over_max_request_body_gets_413_and_is_not_forwarded() {
    let w = world("  max_request_body: 1024\n").await;
    let body = format!(
        r#"{{"resourceType":"Observation","status":"final","code":{{"text":"{}"}},"subject":{{"reference":"Patient/pat-A"}}}}"#,
        "x".repeat(2000)
    );
    let response = client()
        .post(format!("{}/Observation", w.gateway.base))
        .bearer_auth(w.token())
        .header("content-type", "application/fhir+json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(outcome["issue"][0]["code"], "too-long");
    assert!(w.fhir.seen().is_empty());
    let audit = w.gateway.stop().await;
    assert_eq!(audit[0]["reason"], "body_too_large");
}
