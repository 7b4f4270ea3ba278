//! The cases of `attack-cases.json` that need the wire or a failing upstream: request
//! smuggling with both `Content-Length` and `Transfer-Encoding` on one keep-alive connection
//! (B50), the challenge of a request without a usable token (B55) and the shape of an
//! upstream failure (B56), each with the variants the case lists. Beside them, hop-by-hop
//! header abuse and spoofed identity and forwarding headers, and the check that every case
//! of the corpus is run by some suite.
//!
//! Every expectation a case states is asserted: status, content type, the OperationOutcome's
//! first issue, the `WWW-Authenticate` content, the upstream not reached, what the body must
//! not contain, the audit decision, and the case's invariants.

mod support;

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use support::wire::{Exchange, exchange};
use support::*;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A","name":[{"family":"Alpha"}]}"#;
const PATIENT_B: &str = r#"{"resourceType":"Patient","id":"pat-B","name":[{"family":"Bravo"}]}"#;
const OBS_A1: &str = r#"{"resourceType":"Observation","id":"obs-A1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/pat-A"}}"#;

/// How long a test waits for the gateway to close a connection it must close.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

fn case(id: &str) -> Value {
    corpus::cases_for("attack_raw")
        .into_iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("{id} is not a case of this suite"))
}

fn conventions_issuer() -> String {
    corpus::corpus()["conventions"]["issuer"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The case's token, signed with the test key for `idp`.
fn token_of(case: &Value, idp: &FakeIdp) -> String {
    let claims = claims_for(
        case["request"]["token"]["claims"].as_object().unwrap(),
        &conventions_issuer(),
        &idp.issuer,
    );
    sign("rsa-a", Some("rsa-a"), &claims)
}

struct World {
    idp: FakeIdp,
    fhir: FakeFhir,
    gateway: TestGateway,
}

async fn world(upstream_extra: &str) -> World {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    fhir.route("GET", "Patient/pat-B", 200, PATIENT_B);
    let searchset = format!(
        r#"{{"resourceType":"Bundle","type":"searchset","entry":[{{"resource":{OBS_A1},"search":{{"mode":"match"}}}}]}}"#
    );
    fhir.route("GET", "Observation", 200, &searchset);
    fhir.route("POST", "Observation/_search", 200, &searchset);
    let gateway = TestGateway::start_with(&idp, fhir.addr, "", upstream_extra).await;
    World { idp, fhir, gateway }
}

/// The one audit record of `request_id`, if there is exactly one.
fn record_of<'a>(audit: &'a [Value], request_id: &str) -> Result<&'a Value, String> {
    let lines: Vec<&Value> = audit
        .iter()
        .filter(|r| r["request_id"] == request_id)
        .collect();
    match lines[..] {
        [line] => Ok(line),
        _ => Err(format!("{} audit records for {request_id}", lines.len())),
    }
}

/// What of `expected` does not hold for `response`, beyond [`check_answer`]: the challenge
/// parts that must be absent, the body's forbidden text, the upstream and the audit record.
fn problems(
    expected: &Value,
    response: &RawResponse,
    seen: &[Seen],
    record: Result<&Value, String>,
) -> Vec<String> {
    let mut problems = check_answer(expected, response);
    let challenge = response
        .headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    for part in strings(&expected["www_authenticate_must_not_contain"]) {
        if challenge.contains(part) {
            problems.push(format!("WWW-Authenticate '{challenge}' contains {part}"));
        }
    }
    let body = String::from_utf8_lossy(&response.body).to_lowercase();
    for forbidden in strings(&expected["response_body_must_not_contain"]) {
        if body.contains(&forbidden.to_lowercase()) {
            problems.push(format!("body contains '{forbidden}': {body}"));
        }
    }
    if expected["upstream_reached"] == false && !seen.is_empty() {
        problems.push(format!(
            "upstream reached: {} {}",
            seen[0].method, seen[0].uri
        ));
    }
    match (record, expected["audit_decision"].as_str()) {
        (Err(problem), _) => problems.push(problem),
        (Ok(record), Some(decision)) if record["decision"] != decision => problems.push(format!(
            "audit decision {}, expected {decision}",
            record["decision"]
        )),
        _ => {}
    }
    problems
}

fn strings(list: &Value) -> impl Iterator<Item = &str> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// Whether any request the upstream saw carries the smuggled marker, as a header or inside
/// its body.
fn smuggled(seen: &[Seen]) -> bool {
    seen.iter().any(|s| {
        s.headers.contains_key("x-smuggled")
            || s.body
                .windows(10)
                .any(|w| w.eq_ignore_ascii_case(b"x-smuggled"))
    })
}

/// B50's request: the smuggled block as one chunk whose size line alone is the
/// `Content-Length`, with the `Transfer-Encoding` line replaced by `framing` (header lines,
/// each ending in CRLF) and `request_id` added.
fn smuggling_request(case: &Value, token: &str, framing: &str, request_id: &str) -> Vec<u8> {
    let template = case["request"]["raw_request"]
        .as_str()
        .unwrap()
        .replace("<valid default token>", token);
    let (head, body) = template.split_once("\r\n\r\n").unwrap();
    let block_start = body.find("GET ").unwrap();
    let block_end = body.find("X-Smuggled: 1\r\n\r\n").unwrap() + "X-Smuggled: 1\r\n\r\n".len();
    let hex = format!("{:x}", block_end - block_start);
    let content_length = format!("{hex}\r\n").len().to_string();
    let lines: Vec<&str> = head
        .split("\r\n")
        .filter(|line| !line.starts_with("Transfer-Encoding:"))
        .collect();
    let head = lines.join("\r\n").replace("<CL>", &content_length);
    let head = format!("{head}\r\n{framing}X-Request-Id: {request_id}\r\n");
    format!("{head}\r\n{body}")
        .replace("<HEX>", &hex)
        .into_bytes()
}

/// The connection-level invariants of B50: exactly one response, then the connection closed.
fn one_answer_then_closed(exchange: &Exchange) -> Result<RawResponse, String> {
    let (mut responses, rest) = exchange.responses();
    if !exchange.closed {
        return Err("the connection was left open after the answer".into());
    }
    if responses.len() != 1 || !rest.is_empty() {
        return Err(format!(
            "{} responses and {} more bytes on the connection",
            responses.len(),
            rest.len()
        ));
    }
    Ok(responses.remove(0))
}

/// B50: `Content-Length` and `Transfer-Encoding: chunked` together are refused 400 before
/// the upstream, the connection is closed after the one answer, and the block hidden in the
/// body never becomes a request.
#[tokio::test]
async fn b50_content_length_with_transfer_encoding_is_refused_and_the_connection_closed() {
    let case = case("B50");
    let w = world("").await;
    let token = token_of(&case, &w.idp);
    let request = smuggling_request(&case, &token, "Transfer-Encoding: chunked\r\n", "b50-main");
    let exchange = exchange(&w.gateway.base, &request, CLOSE_DEADLINE).await;
    let seen = w.fhir.seen();
    let response = one_answer_then_closed(&exchange).unwrap();
    let audit = w.gateway.stop().await;
    let problems = problems(
        &case["expected"],
        &response,
        &seen,
        record_of(&audit, "b50-main"),
    );
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(!smuggled(&seen));
}

/// B50's variants. Framings the HTTP/1.1 parser itself rejects (an unknown transfer coding,
/// two different lengths) are answered 400 by it before any request exists, so they get
/// neither an OperationOutcome nor an audit record; the rest reach the gateway and are
/// refused like the case. For every one: one answer, the connection closed, nothing of the
/// smuggled block upstream.
#[tokio::test]
async fn b50_variants_are_refused_and_never_reach_the_upstream() {
    let case = case("B50");
    let w = world("").await;
    let token = token_of(&case, &w.idp);
    // (variant, framing lines, whether the gateway sees a request)
    let variants = [
        (
            "Transfer-Encoding: chunked sent twice",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            true,
        ),
        (
            "Transfer-Encoding: gzip, chunked",
            "Transfer-Encoding: gzip, chunked\r\n",
            true,
        ),
        (
            "Transfer-Encoding: xchunked",
            "Transfer-Encoding: xchunked\r\n",
            false,
        ),
        (
            "two different Content-Length headers",
            "Content-Length: 200\r\n",
            false,
        ),
        (
            "chunked without Content-Length, bare LF in a chunk extension",
            "Transfer-Encoding: chunked\r\n",
            true,
        ),
    ];
    let mut failures = Vec::new();
    for (n, (variant, framing, reaches_gateway)) in variants.into_iter().enumerate() {
        let request_id = format!("b50-variant-{n}");
        let mut request = smuggling_request(&case, &token, framing, &request_id);
        if variant.contains("bare LF") {
            let text = String::from_utf8(request).unwrap();
            let text = text.replacen("Content-Length: 4\r\n", "", 1);
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let (size, rest) = body.split_once("\r\n").unwrap();
            request = format!("{head}\r\n\r\n{size};ext=\"a\nb\"\r\n{rest}").into_bytes();
        }
        w.fhir.clear();
        let exchange = exchange(&w.gateway.base, &request, CLOSE_DEADLINE).await;
        let seen = w.fhir.seen();
        if !seen.is_empty() || smuggled(&seen) {
            failures.push(format!("{variant}: upstream reached: {}", seen[0].uri));
        }
        match one_answer_then_closed(&exchange) {
            Err(problem) => failures.push(format!("{variant}: {problem}")),
            Ok(response) if response.status != 400 => {
                failures.push(format!("{variant}: status {}", response.status));
            }
            Ok(response) if reaches_gateway => {
                let problems = check_answer(&case["expected"], &response);
                failures.extend(problems.into_iter().map(|p| format!("{variant}: {p}")));
            }
            Ok(_) => {}
        }
    }
    let audit = w.gateway.stop().await;
    for (n, (variant, _, reaches_gateway)) in variants.iter().enumerate() {
        let record = record_of(&audit, &format!("b50-variant-{n}"));
        match (record, reaches_gateway) {
            (Ok(record), true) if record["decision"] != "deny" => {
                failures.push(format!("{variant}: audit decision {}", record["decision"]));
            }
            (Err(problem), true) => failures.push(format!("{variant}: {problem}")),
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Sends `headers` (and no token unless one is among them) as B55 does, with `request_id`.
async fn send_b55(w: &World, case: &Value, extra: &[(&str, String)], id: &str) -> RawResponse {
    let request = &case["request"];
    let mut headers: Vec<(String, String)> = request["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    headers.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    headers.push(("x-request-id".into(), id.to_owned()));
    let method = request["method"].as_str().unwrap();
    let path = request["path"].as_str().unwrap();
    send_raw(&w.gateway.base, method, path, &headers, Bytes::new()).await
}

/// B55: without a token, 401 with a bare `Bearer` challenge and an OperationOutcome in JSON,
/// even when the client asks for HTML; its variants (a Basic credential, an empty bearer
/// token, a bad token) each get their challenge, and none reaches the upstream.
#[tokio::test]
async fn b55_a_request_without_a_usable_token_is_challenged_in_fhir() {
    let case = case("B55");
    let expected = &case["expected"];
    let w = world("").await;
    let mut basic = expected.clone();
    basic["operation_outcome"]["issue_code"] = "login".into();
    let mut empty = expected.clone();
    empty["status_any_of"] = serde_json::json!([400, 401]);
    empty["www_authenticate_contains"] = serde_json::json!(["Bearer", "error=\"invalid_request\""]);
    empty["www_authenticate_must_not_contain"] = serde_json::json!([]);
    let mut bad = expected.clone();
    bad["operation_outcome"]["issue_code"] = "unknown".into();
    bad["www_authenticate_contains"] = serde_json::json!(["Bearer", "error=\"invalid_token\""]);
    bad["www_authenticate_must_not_contain"] = serde_json::json!([]);
    let sends = [
        ("no token", vec![], expected.clone()),
        (
            "Basic credentials",
            vec![("authorization", "Basic dXNlcjpwYXNz".to_owned())],
            basic,
        ),
        (
            "empty bearer token",
            vec![("authorization", "Bearer ".to_owned())],
            empty,
        ),
        (
            "bad token",
            vec![("authorization", "Bearer not.a.token".to_owned())],
            bad,
        ),
    ];
    let mut answers = Vec::new();
    for (n, (variant, extra, expected)) in sends.into_iter().enumerate() {
        w.fhir.clear();
        let id = format!("b55-{n}");
        let response = send_b55(&w, &case, &extra, &id).await;
        answers.push((variant, id, expected, response, w.fhir.seen()));
    }
    let audit = w.gateway.stop().await;
    let mut failures = Vec::new();
    for (variant, id, expected, response, seen) in &answers {
        let problems = problems(expected, response, seen, record_of(&audit, id));
        failures.extend(problems.into_iter().map(|p| format!("{variant}: {p}")));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// An `https` listener whose TLS handshake always fails: it answers the client's hello with
/// bytes that are not TLS and closes.
async fn not_tls() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            use tokio::io::AsyncWriteExt as _;
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    addr
}

/// B56: an upstream that refuses connections is 502 `transient`, one that never answers is
/// 504 `timeout`, one whose TLS handshake fails is 502; each an OperationOutcome in JSON that
/// names no address and no library error, recorded as the case says.
#[tokio::test]
async fn b56_upstream_failures_are_fhir_answers_without_internals() {
    let case = case("B56");
    let expected = &case["expected"];
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let token = token_of(&case, &idp);
    let refused = format!("http://127.0.0.1:{}/fhir", free_port());
    let hanging = FakeFhir::start().await;
    hanging.route("GET", "Patient/pat-A", HANG, "");
    let silent = format!("http://{}/fhir", hanging.addr);
    let handshake = format!("https://{}/fhir", not_tls().await);
    let mut timeout = expected.clone();
    timeout["status_any_of"] = serde_json::json!([504]);
    timeout["operation_outcome"]["issue_code"] = "timeout".into();
    let mut tls = expected.clone();
    tls["status_any_of"] = serde_json::json!([502]);
    let mut failures = Vec::new();
    for (variant, upstream, expected, kind) in [
        ("connection refused", refused, expected.clone(), "connect"),
        ("accepts, never answers", silent, timeout, "timeout"),
        ("TLS handshake fails", handshake, tls, "connect"),
    ] {
        let gateway = TestGateway::start_at(&idp, &upstream, "", "", "").await;
        let headers: Vec<(String, String)> = vec![
            ("accept".into(), "application/fhir+json".into()),
            ("authorization".into(), format!("Bearer {token}")),
            ("x-request-id".into(), "b56".into()),
        ];
        let path = case["request"]["path"].as_str().unwrap();
        let response = send_raw(&gateway.base, "GET", path, &headers, Bytes::new()).await;
        let metrics = client()
            .get(format!("{}/metrics", gateway.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let counted =
            format!("fhirgate_upstream_errors_total{{route=\"default\",kind=\"{kind}\"}} 1\n");
        let audit = gateway.stop().await;
        let mut problems = problems(&expected, &response, &[], record_of(&audit, "b56"));
        let text = String::from_utf8_lossy(&response.body).to_lowercase();
        for internal in [upstream.as_str(), "rustls", "certificate", "handshake"] {
            if text.contains(&internal.to_lowercase()) {
                problems.push(format!("body names '{internal}'"));
            }
        }
        if !metrics.contains(&counted) {
            problems.push(format!("not counted as {counted}"));
        }
        failures.extend(problems.into_iter().map(|p| format!("{variant}: {p}")));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The values the upstream received for `name`.
fn values(seen: &Seen, name: &str) -> Vec<String> {
    seen.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// `Connection` naming the headers the gateway sets (the service credential, forwarding
/// headers, the request id, identity headers, `Accept-Encoding`) strips none of them: the
/// upstream gets the gateway's own, and the client's token still authenticates the request.
#[tokio::test]
async fn connection_cannot_strip_the_headers_the_gateway_sets() {
    let credential = secret_file("service-credential-1");
    let w = world(&format!(
        "  identity_headers: true\n  bearer_token_file: \"{credential}\"\n"
    ))
    .await;
    let token = sign(
        "rsa-a",
        Some("rsa-a"),
        &claims(&w.idp.issuer, "patient/*.rs"),
    );
    let named = "Authorization, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, \
                 X-Request-Id, X-Fhirgate-Patient, X-Fhirgate-Client-Id, Accept-Encoding";
    let headers = vec![
        ("connection".to_owned(), named.to_owned()),
        ("authorization".to_owned(), format!("Bearer {token}")),
    ];
    let response = send_raw(
        &w.gateway.base,
        "GET",
        "/fhir/Patient/pat-A",
        &headers,
        Bytes::new(),
    )
    .await;
    assert_eq!(response.status, 200, "{:?}", response.body);
    let seen = w.fhir.seen();
    let seen = &seen[0];
    assert_eq!(
        values(seen, "authorization"),
        ["Bearer service-credential-1"]
    );
    assert_eq!(values(seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values(seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(seen, "x-forwarded-host").len(), 1);
    assert_eq!(
        values(seen, "x-request-id"),
        [response.headers["x-request-id"].to_str().unwrap()]
    );
    assert_eq!(values(seen, "x-fhirgate-patient"), ["pat-A"]);
    assert_eq!(values(seen, "x-fhirgate-client-id"), ["app-1"]);
    assert_eq!(values(seen, "accept-encoding"), ["identity"]);
    assert!(!seen.headers.contains_key("connection"));
}

/// `Connection: close, Transfer-Encoding` on a request framed by `Content-Length` does not
/// unframe it: the upstream gets one request with the body whole and no framing of the
/// client's, and the client one answer before the connection closes.
#[tokio::test]
async fn connection_naming_transfer_encoding_does_not_unframe_a_request() {
    let w = world("").await;
    let token = sign(
        "rsa-a",
        Some("rsa-a"),
        &claims(&w.idp.issuer, "patient/*.rs"),
    );
    let body = "code=8867-4";
    let request = format!(
        "POST /fhir/Observation/_search HTTP/1.1\r\nHost: gw.test\r\n\
         Authorization: Bearer {token}\r\nConnection: close, Transfer-Encoding\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n\
         {body}GET /fhir/Patient/pat-B HTTP/1.1\r\nHost: gw.test\r\nX-Smuggled: 1\r\n\r\n",
        body.len()
    );
    let exchange = exchange(&w.gateway.base, request.as_bytes(), CLOSE_DEADLINE).await;
    let response = one_answer_then_closed(&exchange).unwrap();
    assert_eq!(response.status, 200, "{:?}", response.body);
    let seen = w.fhir.seen();
    assert_eq!(seen.len(), 1, "one request upstream");
    assert!(!smuggled(&seen));
    assert_eq!(
        seen[0].uri,
        "/fhir/Observation/_search?subject=Patient%2Fpat-A"
    );
    assert_eq!(seen[0].body, body.as_bytes());
    for name in ["connection", "transfer-encoding"] {
        assert!(!seen[0].headers.contains_key(name), "{name} went upstream");
    }
}

/// Identity and forwarding headers a client sends, however often, never reach the upstream
/// as sent: `X-Fhirgate-*` come from the token, `X-Forwarded-*` from the connection,
/// `Forwarded` is removed, and an `X-Request-Id` that is not a sensible token is replaced
/// (a sensible one is kept for correlation, once). The audit trail names the connection's
/// address, not the claimed one.
#[tokio::test]
async fn spoofed_identity_and_forwarding_headers_never_reach_the_upstream_as_sent() {
    let w = world("  identity_headers: true\n").await;
    let token = sign(
        "rsa-a",
        Some("rsa-a"),
        &claims(&w.idp.issuer, "patient/*.rs"),
    );
    let spoofed = [
        ("x-fhirgate-patient", "pat-B"),
        ("x-fhirgate-patient", "pat-C"),
        ("x-fhirgate-client-id", "admin-console"),
        ("x-fhirgate-scope", "system/*.cruds"),
        ("x-fhirgate-break-glass", "BTG"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-for", "198.51.100.7"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("forwarded", "for=203.0.113.9;proto=https;host=evil.example"),
        ("x-real-ip", "203.0.113.9"),
        ("true-client-ip", "203.0.113.9"),
        ("x-client-ip", "203.0.113.9"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-prefix", "/evil"),
        ("x-forwarded-server", "evil.example"),
        ("x-original-url", "/fhir/Patient/pat-B"),
        ("x-rewrite-url", "/fhir/Patient/pat-B"),
        ("x-request-id", "spoofed id\twith spaces"),
        ("x-request-id", "second-id"),
    ];
    let mut headers: Vec<(String, String)> = spoofed
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    headers.push(("authorization".into(), format!("Bearer {token}")));
    let response = send_raw(
        &w.gateway.base,
        "GET",
        "/fhir/Patient/pat-A",
        &headers,
        Bytes::new(),
    )
    .await;
    assert_eq!(response.status, 200);
    let seen = w.fhir.seen();
    let seen = &seen[0];
    assert_eq!(values(seen, "x-fhirgate-patient"), ["pat-A"]);
    assert_eq!(values(seen, "x-fhirgate-client-id"), ["app-1"]);
    assert_eq!(values(seen, "x-fhirgate-scope"), ["patient/*.rs"]);
    assert!(values(seen, "x-fhirgate-break-glass").is_empty());
    assert_eq!(values(seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values(seen, "x-forwarded-proto"), ["http"]);
    let authority = w
        .gateway
        .base
        .trim_start_matches("http://")
        .trim_end_matches("/fhir");
    assert_eq!(values(seen, "x-forwarded-host"), [authority]);
    assert!(values(seen, "forwarded").is_empty());
    // Nor another address, base or path that upstream servers and frameworks read.
    for name in [
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-server",
        "x-original-url",
        "x-rewrite-url",
    ] {
        assert!(values(seen, name).is_empty(), "{name} went upstream");
    }
    let request_id = response.headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(values(seen, "x-request-id"), [request_id.as_str()]);
    assert!(!request_id.contains("spoofed") && request_id != "second-id");

    // A sensible id is the client's to choose: kept, once, on both sides.
    let headers = vec![
        ("x-request-id".to_owned(), "trace-7f3a".to_owned()),
        ("x-request-id".to_owned(), "trace-other".to_owned()),
        ("authorization".to_owned(), format!("Bearer {token}")),
    ];
    w.fhir.clear();
    let response = send_raw(
        &w.gateway.base,
        "GET",
        "/fhir/Patient/pat-A",
        &headers,
        Bytes::new(),
    )
    .await;
    assert_eq!(response.headers["x-request-id"], "trace-7f3a");
    assert_eq!(values(&w.fhir.seen()[0], "x-request-id"), ["trace-7f3a"]);

    let audit = w.gateway.stop().await;
    let record = record_of(&audit, &request_id).unwrap();
    assert_eq!(record["source"], "127.0.0.1");
    assert_eq!(record["patient"], "pat-A");
}

/// How a suite runs the cases it claims.
enum Runs {
    /// Every case, from a table.
    All,
    /// The cases without a `sequence` from a table, the others each by id.
    SingleRequests,
    /// Each case by id.
    ById,
}

/// Every case of the corpus is claimed by exactly one suite, and that suite runs it: a table
/// suite takes its cases from `corpus::cases_for`, and a case run by id is named by
/// `case("ID")` in the suite's source. A case of a new kind fails here until a suite runs it.
#[test]
fn every_case_of_the_corpus_is_run_by_a_suite() {
    let suites = [
        ("attack_cases", include_str!("attack_cases.rs"), Runs::All),
        (
            "token_cases",
            include_str!("token_cases.rs"),
            Runs::SingleRequests,
        ),
        ("ratelimit", include_str!("ratelimit.rs"), Runs::All),
        ("attack_raw", include_str!("attack_raw.rs"), Runs::ById),
    ];
    assert_eq!(suites.len(), corpus::SUITES.len());
    let mut unrun = Vec::new();
    for case in corpus::corpus()["cases"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let claimed = corpus::suites_for(case["kind"].as_str().unwrap());
        let [suite] = claimed[..] else {
            unrun.push(format!("{id}: claimed by {claimed:?}"));
            continue;
        };
        let (_, source, runs) = suites.iter().find(|(name, ..)| *name == suite).unwrap();
        let from_table = source.contains(&format!("corpus::cases_for(\"{suite}\")"))
            && match runs {
                Runs::All => true,
                Runs::SingleRequests => case["request"].get("sequence").is_none(),
                Runs::ById => false,
            };
        if !from_table && !source.contains(&format!("case(\"{id}\")")) {
            unrun.push(format!("{id}: not run by {suite}"));
        }
    }
    assert!(unrun.is_empty(), "{unrun:#?}");
}
