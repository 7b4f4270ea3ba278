//! With the `otlp` feature: request spans reach an OTLP/HTTP collector, as protobuf, with
//! the request's id, interaction, decision and status and without its patient or token.

#![cfg(feature = "otlp")]

mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use support::*;

/// A POST as the fake collector received it.
#[derive(Clone, Debug)]
struct Export {
    path: String,
    content_type: String,
    body: Bytes,
}

/// Accepts every OTLP/HTTP export and keeps it.
async fn collector() -> (String, Arc<Mutex<Vec<Export>>>) {
    let exports: Arc<Mutex<Vec<Export>>> = Arc::default();
    let kept = exports.clone();
    let addr = spawn_server(move |request: Request<Incoming>| {
        let kept = kept.clone();
        async move {
            let path = request.uri().path().to_owned();
            let content_type = request
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            kept.lock().unwrap().push(Export {
                path,
                content_type,
                body,
            });
            respond(StatusCode::OK, "application/x-protobuf", "")
        }
    })
    .await;
    (format!("http://{addr}"), exports)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// How an OTLP `KeyValue` with a string value is encoded: the key, then the `AnyValue`
/// message (field 2) holding `string_value` (field 1). Short values only.
fn string_attribute(key: &str, value: &str) -> Vec<u8> {
    let length = u8::try_from(value.len()).unwrap();
    let mut out = key.as_bytes().to_vec();
    out.extend([0x12, length + 2, 0x0a, length]);
    out.extend(value.as_bytes());
    out
}

/// An OTLP `KeyValue` with an `int_value` (field 3) of two varint bytes (128 to 16383).
fn int_attribute(key: &str, value: u16) -> Vec<u8> {
    let mut out = key.as_bytes().to_vec();
    let low = u8::try_from(value & 0x7f).unwrap() | 0x80;
    let high = u8::try_from(value >> 7).unwrap();
    out.extend([0x12, 0x03, 0x18, low, high]);
    out
}

// One thread: the subscriber installed for this test sees the gateway's tasks too.
#[tokio::test(flavor = "current_thread")]
async fn request_spans_are_exported_over_otlp_http_without_patient_or_token() {
    let (endpoint, exports) = collector().await;
    let section = format!("otlp_endpoint: \"{endpoint}\"\nservice_name: \"fhirgate-otlp-test\"\n");
    let config: fhirgate::config::Telemetry = serde_saphyr::from_str(&section).unwrap();
    let (subscriber, telemetry) = fhirgate::telemetry::Telemetry::subscriber(&config).unwrap();
    let installed = tracing::subscriber::set_default(subscriber);

    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route(
        "GET",
        "Patient/pat-A",
        200,
        r#"{"resourceType":"Patient","id":"pat-A"}"#,
    );
    let gateway = TestGateway::start(&idp, fhir.addr, "").await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    let response = client()
        .get(format!("{}/Patient/pat-A", gateway.base))
        .bearer_auth(&token)
        .header("x-request-id", "rid-otlp-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    gateway.stop().await;
    drop(installed);
    // The exporter's own thread POSTs to the collector, which this runtime serves meanwhile.
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .unwrap();

    let exports = exports.lock().unwrap().clone();
    assert!(!exports.is_empty(), "nothing exported");
    for export in &exports {
        assert_eq!(export.path, "/v1/traces");
        assert_eq!(export.content_type, "application/x-protobuf");
    }
    let body: Vec<u8> = exports.iter().flat_map(|e| e.body.to_vec()).collect();
    for (what, expected) in [
        (
            "service name",
            string_attribute("service.name", "fhirgate-otlp-test"),
        ),
        ("request id", string_attribute("request.id", "rid-otlp-1")),
        ("interaction", string_attribute("fhir.interaction", "read")),
        ("decision", string_attribute("fhirgate.decision", "allow")),
        ("reason", string_attribute("fhirgate.reason", "allowed")),
        ("route", string_attribute("fhirgate.route", "default")),
        ("status", int_attribute("http.response.status_code", 200)),
        ("token span", b"authenticate".to_vec()),
        ("upstream span", b"upstream".to_vec()),
    ] {
        assert!(contains(&body, &expected), "{what} not exported");
    }
    for secret in ["pat-A", "user-A", "app-1", "patient/", token.as_str()] {
        assert!(!contains(&body, secret.as_bytes()), "{secret} exported");
    }
}
