//! Content codings at both ends: checked upstream bodies are decoded whatever their
//! `Content-Encoding`; what the gateway sends is compressed for clients that accept it; an
//! encoded body passed through unchecked keeps its coding.

use std::io::{Read as _, Write as _};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;
use support::*;

mod support;

fn obs(id: &str, patient: &str) -> String {
    format!(
        r#"{{"resourceType":"Observation","id":"{id}","status":"final","code":{{"text":"{}"}},"subject":{{"reference":"Patient/{patient}"}}}}"#,
        "a long enough text to be worth compressing ".repeat(4)
    )
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// An upstream that gzips everything it answers, whatever it was asked, and keeps the
/// `Accept-Encoding` each request arrived with.
async fn gzipping_upstream(asked: Arc<Mutex<Vec<String>>>) -> std::net::SocketAddr {
    spawn_server(move |request: Request<Incoming>| {
        let asked = asked.clone();
        async move {
            asked.lock().unwrap().push(
                request
                    .headers()
                    .get("accept-encoding")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned(),
            );
            let body = match request.uri().path() {
                "/fhir/Observation" => format!(
                    r#"{{"resourceType":"Bundle","type":"searchset","entry":[{{"resource":{}}},{{"resource":{}}}]}}"#,
                    obs("obs-A1", "pat-A"),
                    obs("obs-B1", "pat-B")
                ),
                _ => obs("obs-A1", "pat-A"),
            };
            let mut response = respond(StatusCode::OK, "application/fhir+json", Bytes::from(gzip(body.as_bytes())));
            response
                .headers_mut()
                .insert("content-encoding", http::HeaderValue::from_static("gzip"));
            response
        }
    })
    .await
}

#[tokio::test]
async fn checked_bodies_are_decoded_and_answers_compressed_for_clients_that_accept_it() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let asked = Arc::new(Mutex::new(Vec::new()));
    let upstream = gzipping_upstream(asked.clone()).await;
    let gateway = TestGateway::start(&idp, upstream, "").await;
    let patient_token = sign(
        "rsa-a",
        Some("rsa-a"),
        &claims(&idp.issuer, "patient/Observation.rs"),
    );
    let user_token = sign(
        "rsa-a",
        Some("rsa-a"),
        &claims(&idp.issuer, "user/Observation.rs"),
    );

    // A checked search from a gzipping upstream, for a client that accepts gzip.
    let response = client()
        .get(format!("{}/Observation?patient=pat-A", gateway.base))
        .bearer_auth(&patient_token)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let bundle: Value = serde_json::from_slice(&gunzip(&response.bytes().await.unwrap())).unwrap();
    let ids: Vec<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["obs-A1"],
        "the other patient's entry withheld after decoding"
    );

    // The same for a client that accepts nothing: plain JSON.
    let response = client()
        .get(format!("{}/Observation?patient=pat-A", gateway.base))
        .bearer_auth(&patient_token)
        .send()
        .await
        .unwrap();
    assert!(!response.headers().contains_key("content-encoding"));
    let bundle: Value = response.json().await.unwrap();
    let observations = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Observation")
        .count();
    assert_eq!(observations, 1);

    // Passed through unchecked (user scopes): the upstream's coding and bytes unchanged.
    let response = client()
        .get(format!("{}/Observation/obs-A1", gateway.base))
        .bearer_auth(&user_token)
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let body = response.bytes().await.unwrap();
    assert_eq!(gunzip(&body), obs("obs-A1", "pat-A").into_bytes());

    // Refusals are compressed too when accepted.
    let response = client()
        .get(format!("{}/Observation/obs-A1", gateway.base))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let outcome: Value = match response.headers().get("content-encoding") {
        Some(_) => serde_json::from_slice(&gunzip(&response.bytes().await.unwrap())).unwrap(),
        None => response.json().await.unwrap(),
    };
    assert_eq!(outcome["resourceType"], "OperationOutcome");

    // The upstream is always asked for an unencoded body.
    let asked = asked.lock().unwrap().clone();
    assert!(!asked.is_empty());
    assert!(asked.iter().all(|a| a == "identity"), "{asked:?}");
    let _ = gateway.stop().await;
}
