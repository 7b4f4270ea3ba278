//! The admin listener's `/metrics` after a known mix of requests, and the Grafana dashboard
//! checked against it: every metric the dashboard names must be one the gateway exports.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use support::*;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A"}"#;
const PATIENT_B: &str = r#"{"resourceType":"Patient","id":"pat-B"}"#;
const OBS_A1: &str = r#"{"resourceType":"Observation","id":"obs-A1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/pat-A"}}"#;
const OBS_B1: &str = r#"{"resourceType":"Observation","id":"obs-B1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/pat-B"}}"#;
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/grafana/fhirgate.json"
);

/// A gateway trusting a JWT issuer and an opaque-token issuer whose introspection endpoint
/// calls every token inactive, in front of a FHIR server with two patients, a search whose
/// answer holds one foreign entry, and a read that never answers.
struct World {
    idp: FakeIdp,
    _fhir: FakeFhir,
    gateway: TestGateway,
}

/// An RFC 7662 endpoint that answers every token `{"active": false}`.
async fn inactive_introspection() -> String {
    let addr = spawn_server(|_request: Request<Incoming>| async {
        respond(StatusCode::OK, "application/json", r#"{"active":false}"#)
    })
    .await;
    format!("http://{addr}/introspect")
}

async fn world() -> World {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    fhir.route("GET", "Patient/pat-B", 200, PATIENT_B);
    fhir.route("GET", "Observation/obs-hang", HANG, "");
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"fullUrl": "x/Observation/obs-A1", "resource": serde_json::from_str::<Value>(OBS_A1).unwrap(), "search": {"mode": "match"}},
            {"fullUrl": "x/Observation/obs-B1", "resource": serde_json::from_str::<Value>(OBS_B1).unwrap(), "search": {"mode": "match"}},
        ],
    });
    fhir.route("GET", "Observation", 200, &bundle.to_string());
    let secret = secret_file("s3cret");
    let opaque = format!(
        r#"
  - issuer: "https://opaque.idp.test"
    audience: "https://gw.test/fhir"
    jwt: false
    introspection:
      endpoint: "{}"
      client_id: "fhirgate"
      client_secret_file: "{secret}"
"#,
        inactive_introspection().await
    );
    let gateway = TestGateway::start(&idp, fhir.addr, &opaque).await;
    World {
        idp,
        _fhir: fhir,
        gateway,
    }
}

async fn get(world: &World, path: &str, token: Option<&str>) -> u16 {
    let mut request = client().get(format!("{}/{path}", world.gateway.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status().as_u16()
}

/// Sends the mix every assertion below counts on.
async fn send_the_mix(world: &World) {
    let token = sign(
        "rsa-a",
        Some("rsa-a"),
        &claims(&world.idp.issuer, "patient/*.rs"),
    );
    for _ in 0..3 {
        assert_eq!(get(world, "Patient/pat-A", Some(&token)).await, 200);
    }
    for _ in 0..2 {
        assert_eq!(get(world, "Patient/pat-B", Some(&token)).await, 403);
    }
    assert_eq!(get(world, "Patient/pat-A", None).await, 401);
    assert_eq!(get(world, "Patient/pat-A", Some("opaque-token")).await, 401);
    assert_eq!(get(world, "Observation?code=x", Some(&token)).await, 200);
    // The upstream never answers: the gateway gives up after its 2 s response timeout.
    assert_eq!(get(world, "Observation/obs-hang", Some(&token)).await, 504);
}

async fn scrape(world: &World) -> String {
    let response = client()
        .get(format!("{}/metrics", world.gateway.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The samples of an exposition: series (name and labels as written) to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// The samples of one metric name (before any `{`).
fn series_of<'a>(samples: &'a BTreeMap<String, f64>, name: &str) -> BTreeMap<&'a str, f64> {
    samples
        .iter()
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .map(|(series, value)| (series.as_str(), *value))
        .collect()
}

fn expect_exactly(samples: &BTreeMap<String, f64>, name: &str, expected: &[(&str, f64)]) {
    let got = series_of(samples, name);
    let expected: BTreeMap<&str, f64> = expected.iter().copied().collect();
    assert_eq!(got, expected, "{name}");
}

fn expect(samples: &BTreeMap<String, f64>, series: &str, value: f64) {
    assert_eq!(samples.get(series), Some(&value), "{series}");
}

#[tokio::test]
async fn a_known_mix_of_requests_is_counted_exactly() {
    let w = world().await;
    send_the_mix(&w).await;
    let text = scrape(&w).await;
    let samples = samples(&text);
    let issuer = w.idp.issuer.clone();
    let requests = |labels: &str| format!(r#"fhirgate_requests_total{{route="default",{labels}}}"#);
    let (allowed, other, no_token, inactive, filtered, timed_out) = (
        requests(r#"decision="allow",reason="allowed",interaction="read",status_class="2xx""#),
        requests(r#"decision="deny",reason="other_patient",interaction="read",status_class="4xx""#),
        requests(r#"decision="deny",reason="no_token",interaction="none",status_class="4xx""#),
        requests(r#"decision="deny",reason="invalid_token",interaction="none",status_class="4xx""#),
        requests(
            r#"decision="filter",reason="allowed",interaction="search-type",status_class="2xx""#,
        ),
        requests(
            r#"decision="allow",reason="upstream_timeout",interaction="read",status_class="5xx""#,
        ),
    );
    expect_exactly(
        &samples,
        "fhirgate_requests_total",
        &[
            (&allowed, 3.0),
            (&other, 2.0),
            (&no_token, 1.0),
            (&inactive, 1.0),
            (&filtered, 1.0),
            (&timed_out, 1.0),
        ],
    );
    expect_exactly(
        &samples,
        "fhirgate_request_duration_seconds_count",
        &[
            (
                r#"fhirgate_request_duration_seconds_count{route="default",interaction="read"}"#,
                6.0,
            ),
            (
                r#"fhirgate_request_duration_seconds_count{route="default",interaction="none"}"#,
                2.0,
            ),
            (
                r#"fhirgate_request_duration_seconds_count{route="default",interaction="search-type"}"#,
                1.0,
            ),
        ],
    );
    expect(
        &samples,
        r#"fhirgate_request_duration_seconds_bucket{le="+Inf",route="default",interaction="read"}"#,
        6.0,
    );
    // Three reads, the search and the read that timed out reached the upstream.
    expect(
        &samples,
        r#"fhirgate_upstream_duration_seconds_count{route="default"}"#,
        5.0,
    );
    let timed_out_at = samples[r#"fhirgate_upstream_duration_seconds_sum{route="default"}"#];
    assert!(
        timed_out_at >= 2.0,
        "the timeout is in the sum: {timed_out_at}"
    );
    expect_exactly(
        &samples,
        "fhirgate_upstream_errors_total",
        &[
            (
                r#"fhirgate_upstream_errors_total{route="default",kind="connect"}"#,
                0.0,
            ),
            (
                r#"fhirgate_upstream_errors_total{route="default",kind="timeout"}"#,
                1.0,
            ),
            (
                r#"fhirgate_upstream_errors_total{route="default",kind="invalid_response"}"#,
                0.0,
            ),
            (
                r#"fhirgate_upstream_errors_total{route="default",kind="response_too_large"}"#,
                0.0,
            ),
        ],
    );
    let cache = |cache: &str, result: &str| {
        format!(r#"fhirgate_token_cache_lookups_total{{cache="{cache}",result="{result}"}}"#)
    };
    expect_exactly(
        &samples,
        "fhirgate_token_cache_lookups_total",
        &[
            // The JWT once and the opaque token once; the JWT six more times.
            (&cache("verified_tokens", "miss"), 2.0),
            (&cache("verified_tokens", "hit"), 6.0),
            (&cache("introspection", "miss"), 1.0),
            (&cache("introspection", "hit"), 0.0),
        ],
    );
    // Discovery and the JWKS at start-up.
    expect(
        &samples,
        &format!(r#"fhirgate_jwks_fetches_total{{issuer="{issuer}",outcome="ok"}}"#),
        2.0,
    );
    expect(
        &samples,
        &format!(r#"fhirgate_jwks_fetches_total{{issuer="{issuer}",outcome="error"}}"#),
        0.0,
    );
    expect(
        &samples,
        &format!(r#"fhirgate_signing_key_lookups_total{{issuer="{issuer}",result="known"}}"#),
        1.0,
    );
    expect(
        &samples,
        r#"fhirgate_introspections_total{issuer="https://opaque.idp.test",outcome="ok"}"#,
        1.0,
    );
    expect(
        &samples,
        r#"fhirgate_introspection_duration_seconds_count{issuer="https://opaque.idp.test"}"#,
        1.0,
    );
    expect(&samples, "fhirgate_audit_records_total", 9.0);
    expect(
        &samples,
        &format!(
            r#"fhirgate_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        ),
        1.0,
    );
    for secret in [
        "pat-A",
        "pat-B",
        "user-A",
        "app-1",
        "patient/",
        "opaque-token",
        "Bearer",
    ] {
        assert!(!text.contains(secret), "{secret} in the metrics:\n{text}");
    }
}

/// Metric names in a PromQL expression: identifiers outside strings, label matchers and
/// range brackets that start with `fhirgate_`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    let mut closing: Option<char> = None;
    let flush = |word: &mut String, names: &mut BTreeSet<String>| {
        if word.starts_with("fhirgate_") {
            names.insert(word.clone());
        }
        word.clear();
    };
    for c in expr.chars() {
        if let Some(end) = closing {
            if c == end {
                closing = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => closing = Some(c),
            '{' => closing = Some('}'),
            '[' => closing = Some(']'),
            c if c.is_ascii_alphanumeric() || c == '_' || c == ':' => {
                word.push(c);
                continue;
            }
            _ => {}
        }
        flush(&mut word, &mut names);
    }
    flush(&mut word, &mut names);
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    let expr = r#"histogram_quantile(0.95, sum by (le, route) (rate(fhirgate_request_duration_seconds_bucket{route=~"$route", x="fhirgate_not_a_metric"}[$__rate_interval]))) / on() fhirgate_build_info"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(
        names,
        [
            "fhirgate_build_info",
            "fhirgate_request_duration_seconds_bucket"
        ]
    );
}

/// Every PromQL text of a dashboard: panel target `expr`s and template variable queries.
fn queries(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query" | "definition", Value::String(text)) => {
                        out.push(text.clone());
                    }
                    _ => queries(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| queries(item, out)),
        _ => {}
    }
}

/// The families an exposition declares, with their types.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|rest| {
            let (name, kind) = rest.split_once(' ').unwrap();
            (name.to_owned(), kind.to_owned())
        })
        .collect()
}

/// The family and type a sample name belongs to, if it is one of `families`.
fn family_of<'a>(name: &'a str, families: &BTreeMap<String, String>) -> Option<&'a str> {
    let suffixes: [(&str, &str); 5] = [
        ("_total", "counter"),
        ("_bucket", "histogram"),
        ("_sum", "histogram"),
        ("_count", "histogram"),
        ("", "gauge"),
    ];
    suffixes.iter().find_map(|(suffix, kind)| {
        let family = name.strip_suffix(suffix)?;
        (families.get(family).map(String::as_str) == Some(*kind)).then_some(family)
    })
}

#[tokio::test]
async fn the_dashboard_names_only_metrics_the_gateway_exports() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut texts = Vec::new();
    queries(&dashboard, &mut texts);
    assert!(texts.len() > 20, "{} queries", texts.len());
    for text in &texts {
        assert!(!metric_names(text).is_empty(), "names no metric: {text}");
    }
    let used: BTreeSet<String> = texts.iter().flat_map(|t| metric_names(t)).collect();

    let w = world().await;
    send_the_mix(&w).await;
    let text = scrape(&w).await;
    let families = families(&text);
    let sample_names: BTreeSet<String> = samples(&text)
        .into_keys()
        .map(|series| series.split('{').next().unwrap().to_owned())
        .collect();
    let mut covered = BTreeSet::new();
    for name in &used {
        let family = family_of(name, &families)
            .unwrap_or_else(|| panic!("the dashboard names {name}, which is not exported"));
        assert!(sample_names.contains(name), "no samples of {name}");
        covered.insert(family.to_owned());
    }
    let unused: Vec<&String> = families.keys().filter(|f| !covered.contains(*f)).collect();
    assert!(unused.is_empty(), "families no panel shows: {unused:?}");
}
