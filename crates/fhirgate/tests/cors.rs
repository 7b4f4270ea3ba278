//! CORS at the edge: preflights answered by the gateway, `Access-Control-*` headers on every
//! answer to an allowed origin (refusals included), none for other origins, any origin on the
//! public endpoints, and nothing of CORS passed between client and upstream.

mod support;

use serde_json::Value;
use support::*;

const APP: &str = "https://app.example.org";
const OTHER: &str = "https://other.example.net";
const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A"}"#;

struct World {
    idp: FakeIdp,
    fhir: FakeFhir,
    gateway: TestGateway,
}

async fn world() -> World {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route_with(
        "GET",
        "Patient/pat-A",
        PATIENT_A,
        &[
            (
                "access-control-allow-origin",
                "https://upstream-choice.example",
            ),
            ("access-control-allow-credentials", "true"),
            ("access-control-expose-headers", "x-internal"),
        ],
        None,
    );
    fhir.route(
        "GET",
        "metadata",
        200,
        r#"{"resourceType":"CapabilityStatement","rest":[{"mode":"server"}]}"#,
    );
    let gateway = TestGateway::start_with_sections(
        &idp,
        fhir.addr,
        "",
        "",
        &format!("cors:\n  allowed_origins: [\"{APP}\"]\n  max_age: \"10m\"\n"),
    )
    .await;
    World { idp, fhir, gateway }
}

fn token(w: &World) -> String {
    sign(
        "rsa-a",
        Some("rsa-a"),
        &claims(&w.idp.issuer, "patient/*.rs"),
    )
}

async fn preflight(w: &World, path: &str, origin: &str) -> reqwest::Response {
    client()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/{path}", w.gateway.base),
        )
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap()
}

async fn get(w: &World, path: &str, origin: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = client()
        .get(format!("{}/{path}", w.gateway.base))
        .header("origin", origin);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .map_or("", |v| v.to_str().unwrap())
}

fn cors_headers(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .map(|name| name.to_string())
        .collect()
}

#[tokio::test]
async fn allowed_origins_get_cors_headers_others_none_and_public_endpoints_any() {
    let w = world().await;
    let token = token(&w);

    // A preflight from the allowed origin: 204, its origin named, methods and headers.
    let response = preflight(&w, "Patient/pat-A", APP).await;
    assert_eq!(response.status(), 204);
    assert_eq!(header(&response, "access-control-allow-origin"), APP);
    assert!(header(&response, "vary").contains("Origin"));
    let methods = header(&response, "access-control-allow-methods");
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] {
        assert!(methods.contains(method), "{methods}");
    }
    let allowed = header(&response, "access-control-allow-headers").to_ascii_lowercase();
    for name in [
        "authorization",
        "content-type",
        "accept",
        "if-match",
        "if-none-exist",
        "if-none-match",
        "prefer",
        "x-request-id",
        "dpop",
    ] {
        assert!(allowed.contains(name), "{allowed}");
    }
    assert_eq!(header(&response, "access-control-max-age"), "600");

    // A cross-origin GET from the allowed origin: the same origin named.
    let response = get(&w, "Patient/pat-A", APP, Some(&token)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "access-control-allow-origin"), APP);
    assert!(header(&response, "vary").contains("Origin"));

    // The same requests from another origin: no CORS headers.
    let response = preflight(&w, "Patient/pat-A", OTHER).await;
    assert_eq!(response.status(), 403);
    assert!(
        cors_headers(&response).is_empty(),
        "{:?}",
        response.headers()
    );
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(outcome["issue"][0]["code"], "forbidden");
    let response = get(&w, "Patient/pat-A", OTHER, Some(&token)).await;
    assert_eq!(response.status(), 200);
    assert!(
        cors_headers(&response).is_empty(),
        "{:?}",
        response.headers()
    );

    // Public endpoints: any origin.
    for path in ["metadata", ".well-known/smart-configuration"] {
        let response = get(&w, path, OTHER, None).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(header(&response, "access-control-allow-origin"), "*");
        let response = preflight(&w, path, OTHER).await;
        assert_eq!(response.status(), 204, "{path}");
        assert_eq!(header(&response, "access-control-allow-origin"), "*");
        assert_eq!(
            header(&response, "access-control-allow-methods"),
            "GET, HEAD"
        );
    }
}

#[tokio::test]
async fn preflights_never_reach_the_upstream_and_are_audited() {
    let w = world().await;
    for path in ["Patient/pat-A", "Observation", "", "metadata"] {
        assert_eq!(preflight(&w, path, APP).await.status(), 204, "{path}");
    }
    assert_eq!(preflight(&w, "Patient/pat-A", OTHER).await.status(), 403);
    assert!(w.fhir.seen().is_empty(), "{:?}", w.fhir.seen());
    let outside = client()
        .request(
            reqwest::Method::OPTIONS,
            w.gateway.base.replace("/fhir", "/elsewhere"),
        )
        .header("origin", APP)
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status(), 404);
    let plain_options = client()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/Patient", w.gateway.base),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(plain_options.status(), 405, "not a preflight");

    let audit = w.gateway.stop().await;
    assert_eq!(audit.len(), 7, "one record per request");
    for record in &audit[..4] {
        assert_eq!(record["decision"], "allow");
        assert_eq!(record["reason"], "cors_preflight");
        assert_eq!(record["status"], 204);
        assert_eq!(record["method"], "OPTIONS");
        assert!(record["interaction"].is_null(), "{record}");
    }
    assert_eq!(audit[4]["decision"], "deny");
    assert_eq!(audit[4]["reason"], "cors_origin_not_allowed");
    assert_eq!(audit[4]["status"], 403);
}

#[tokio::test]
async fn refusals_carry_cors_headers_for_allowed_origins() {
    let w = world().await;
    let response = get(&w, "Patient/pat-A", APP, None).await;
    assert_eq!(response.status(), 401);
    assert_eq!(header(&response, "access-control-allow-origin"), APP);
    let exposed = header(&response, "access-control-expose-headers").to_ascii_lowercase();
    for name in [
        "www-authenticate",
        "location",
        "content-location",
        "etag",
        "last-modified",
        "x-request-id",
        "retry-after",
        "ratelimit",
    ] {
        assert!(exposed.contains(name), "{exposed}");
    }
    assert!(header(&response, "www-authenticate").starts_with("Bearer"));

    let forbidden = get(&w, "Patient/pat-B", APP, Some(&token(&w))).await;
    assert_eq!(forbidden.status(), 403);
    assert_eq!(header(&forbidden, "access-control-allow-origin"), APP);

    let other = get(&w, "Patient/pat-A", OTHER, None).await;
    assert_eq!(other.status(), 401);
    assert!(cors_headers(&other).is_empty());
}

#[tokio::test]
async fn upstream_cors_headers_are_stripped_and_client_cors_headers_stay_here() {
    let w = world().await;
    let token = token(&w);
    let response = get(&w, "Patient/pat-A", APP, Some(&token)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "access-control-allow-origin"), APP);
    assert!(
        response
            .headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    assert!(!header(&response, "access-control-expose-headers").contains("x-internal"));
    let response = get(&w, "Patient/pat-A", OTHER, Some(&token)).await;
    assert!(
        cors_headers(&response).is_empty(),
        "{:?}",
        response.headers()
    );
    let without_origin = client()
        .get(format!("{}/Patient/pat-A", w.gateway.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(cors_headers(&without_origin).is_empty());
    for seen in w.fhir.seen() {
        assert!(!seen.headers.contains_key("origin"), "{:?}", seen.headers);
    }
}

#[tokio::test]
async fn without_a_cors_section_only_public_endpoints_speak_cors() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let gateway = TestGateway::start(&idp, fhir.addr, "").await;
    let token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "patient/*.rs"));
    let response = client()
        .get(format!("{}/Patient/pat-A", gateway.base))
        .header("origin", APP)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(cors_headers(&response).is_empty());
    let vary: Vec<_> = response.headers().get_all("vary").iter().collect();
    assert!(
        vary.iter().all(|v| !v.to_str().unwrap().contains("Origin")),
        "{vary:?}"
    );
    let refused = client()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/Patient/pat-A", gateway.base),
        )
        .header("origin", APP)
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let public = client()
        .get(format!("{}/.well-known/smart-configuration", gateway.base))
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(public.headers()["access-control-allow-origin"], "*");
}
