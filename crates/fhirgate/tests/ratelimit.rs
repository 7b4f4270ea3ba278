//! Rate limits through a running gateway (memory store): the `ratelimit.*` attack cases, a
//! refusal's shape, the headers of allowed answers, and client addresses behind proxies.

mod support;

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::Value;
use support::*;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A"}"#;

async fn world(limits: &str) -> (FakeIdp, FakeFhir, TestGateway) {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let gateway = TestGateway::start(&idp, fhir.addr, limits).await;
    (idp, fhir, gateway)
}

async fn send(gateway: &TestGateway, token: &str, forwarded_for: &str) -> RawResponse {
    let headers = vec![
        ("accept".to_owned(), "application/fhir+json".to_owned()),
        ("authorization".to_owned(), format!("Bearer {token}")),
        ("x-forwarded-for".to_owned(), forwarded_for.to_owned()),
    ];
    send_raw(
        &gateway.base,
        "GET",
        "/fhir/Patient/pat-A",
        &headers,
        Bytes::new(),
    )
    .await
}

fn random_ip(n: usize) -> String {
    format!("198.51.{}.{}", n / 250, 1 + n % 250)
}

/// B53: rotating `X-Forwarded-For` from an untrusted peer does not buy fresh allowances.
#[tokio::test]
async fn xff_rotation_cases_hold() {
    let file = corpus::corpus();
    let cases = corpus::cases_for("ratelimit");
    assert!(!cases.is_empty());
    for case in cases {
        let step = &case["request"]["sequence"][0];
        let repeat = step["repeat"].as_u64().unwrap() as usize;
        let expected = &case["expected"]["per_request_index"];
        // The case's assumption: 10 requests a minute per client_id+sub and per socket address.
        let (idp, fhir, gateway) = world(
            "rate_limits:\n  rules:\n    - { name: per-client, key: [client_id, subject], rate: 10, per: 60s, burst: 10 }\n    - { name: per-address, key: [client_ip], rate: 10, per: 60s, burst: 10 }",
        )
        .await;
        let claims = claims_for(
            step["request"]["token"]["claims"].as_object().unwrap(),
            file["conventions"]["issuer"].as_str().unwrap(),
            &idp.issuer,
        );
        let token = sign("rsa-a", Some("rsa-a"), &claims);
        let mut statuses = Vec::new();
        for n in 0..repeat {
            let response = send(&gateway, &token, &random_ip(n)).await;
            let window = if n < 10 { "1-10" } else { "11-15" };
            let problems = check_answer(&expected[window], &response);
            assert!(
                problems.is_empty(),
                "{} request {}: {problems:?}",
                case["id"],
                n + 1
            );
            if response.status == 429 {
                let retry: u64 = response.headers["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&retry), "Retry-After {retry}");
            }
            statuses.push(response.status);
        }
        assert_eq!(
            fhir.seen().len() as u64,
            case["expected"]["upstream_request_count"].as_u64().unwrap()
        );
        let audit = gateway.stop().await;
        let throttled: Vec<&Value> = audit
            .iter()
            .filter(|r| r["reason"] == "throttled")
            .collect();
        assert_eq!(throttled.len(), repeat - 10, "{statuses:?}");
        assert!(
            throttled
                .iter()
                .all(|r| r["decision"] == "deny" && r["status"] == 429)
        );
    }
}

#[tokio::test]
async fn allowed_answers_carry_ratelimit_headers() {
    let (idp, _fhir, gateway) = world(
        "rate_limits:\n  rules:\n    - { name: per-client, key: [client_id], rate: 5, per: 10s, burst: 5 }",
    )
    .await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    let first = send(&gateway, &token, "192.0.2.1").await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.headers["ratelimit-policy"],
        r#""per-client";q=5;w=10"#
    );
    assert_eq!(first.headers["ratelimit"], r#""per-client";r=4;t=2"#);
}

/// Behind a trusted proxy, clients are told apart by their forwarded address; a client
/// writing its own header in front of the proxy's gains nothing.
#[tokio::test]
async fn trusted_proxies_name_the_client() {
    let (idp, _fhir, gateway) = world(
        "rate_limits:\n  trusted_proxies: [\"127.0.0.1/32\"]\n  rules:\n    - { name: per-address, key: [client_ip], rate: 2, per: 60s, burst: 2 }",
    )
    .await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    let mut by_client: HashMap<&str, Vec<u16>> = HashMap::new();
    for client in ["203.0.113.1", "203.0.113.2"] {
        for _ in 0..3 {
            by_client
                .entry(client)
                .or_default()
                .push(send(&gateway, &token, client).await.status);
        }
    }
    assert_eq!(by_client["203.0.113.1"], [200, 200, 429]);
    assert_eq!(
        by_client["203.0.113.2"],
        [200, 200, 429],
        "a separate allowance"
    );
    // The same client prepending made-up addresses is still the same client.
    let spoofed = send(&gateway, &token, "9.9.9.9, 203.0.113.1").await;
    assert_eq!(spoofed.status, 429);
}

/// A stream of bad tokens from one address is limited by the address rules too.
#[tokio::test]
async fn refused_tokens_count_against_the_address() {
    let (idp, fhir, gateway) = world(
        "rate_limits:\n  rules:\n    - { name: per-address, key: [client_ip], rate: 1, per: 60s, burst: 3 }\n    - { name: per-client, key: [client_id], rate: 100, per: 1s, burst: 100 }",
    )
    .await;
    let mut statuses = Vec::new();
    for n in 0..5 {
        statuses.push(
            send(&gateway, &format!("not-a-token-{n}"), "192.0.2.1")
                .await
                .status,
        );
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    assert_eq!(send(&gateway, &token, "192.0.2.1").await.status, 429);
    assert!(fhir.seen().is_empty());
}

/// Requests too malformed to classify are charged too.
#[tokio::test]
async fn malformed_requests_are_charged() {
    let (idp, fhir, gateway) = world(
        "rate_limits:\n  rules:\n    - { name: per-client, key: [client_id], rate: 1, per: 60s, burst: 2 }",
    )
    .await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    let headers = vec![("authorization".to_owned(), format!("Bearer {token}"))];
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = send_raw(
            &gateway.base,
            "GET",
            "/fhir/NotAType/1",
            &headers,
            Bytes::new(),
        )
        .await;
        statuses.push(response.status);
    }
    assert_eq!(statuses, [400, 400, 429]);
    assert!(fhir.seen().is_empty());
}

/// A rule narrowed to searches sees the searches inside a batch.
#[tokio::test]
async fn batch_entries_are_charged_one_by_one() {
    let (idp, fhir, gateway) = world(
        "rate_limits:\n  rules:\n    - { name: searches, key: [client_id], rate: 1, per: 60s, burst: 6, interactions: [search-type] }",
    )
    .await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    let batch = r#"{"resourceType":"Bundle","type":"batch","entry":[
        {"request":{"method":"GET","url":"Observation?code=a"}},
        {"request":{"method":"GET","url":"Observation?code=b"}},
        {"request":{"method":"GET","url":"Observation?code=c"}}]}"#;
    let headers = vec![
        ("authorization".to_owned(), format!("Bearer {token}")),
        (
            "content-type".to_owned(),
            "application/fhir+json".to_owned(),
        ),
    ];
    let response = send_raw(&gateway.base, "POST", "/fhir", &headers, Bytes::from(batch)).await;
    // Three searches at 2 units each fit a burst of 6 ...
    assert_ne!(response.status, 429);
    let response = send_raw(&gateway.base, "POST", "/fhir", &headers, Bytes::from(batch)).await;
    // ... and a second batch of them does not.
    assert_eq!(
        response.status, 429,
        "the searches inside the batches exhausted the rule"
    );
    assert_eq!(
        fhir.seen().len(),
        1,
        "only the first batch reached the upstream"
    );
}

/// A `closed` Redis store that is down from the start makes the gateway not ready.
#[tokio::test]
async fn readyz_asks_the_rate_limit_store() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let (_idp, _fhir, gateway) = world(&format!(
        "rate_limits:\n  redis: {{ url: \"redis://127.0.0.1:{port}\", failure_mode: closed, timeout: \"200ms\" }}\n  rules:\n    - {{ name: a, key: [client_id], rate: 1, per: 1s, burst: 1 }}"
    ))
    .await;
    let response = client()
        .get(format!("{}/readyz", gateway.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body = response.text().await.unwrap();
    assert!(body.contains(r#""rate_limit_store":false"#), "{body}");
}
