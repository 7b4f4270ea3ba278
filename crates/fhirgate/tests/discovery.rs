//! SMART discovery and the CapabilityStatement at the edge: `.well-known/smart-configuration`
//! made from the identity provider's discovery document, and `metadata` from the upstream's
//! statement with the gateway's security declared.

mod support;

use serde_json::{Value, json};
use support::*;

/// A discovery document of an OpenID provider offering the code flow to public and
/// confidential clients, refresh tokens and EHR launch.
fn rich_discovery() -> Value {
    json!({
        "authorization_endpoint": "{issuer}/authorize",
        "token_endpoint": "{issuer}/token",
        "registration_endpoint": "{issuer}/register",
        "introspection_endpoint": "{issuer}/introspect",
        "revocation_endpoint": "{issuer}/revoke",
        "userinfo_endpoint": "{issuer}/me",
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "private_key_jwt"],
        "code_challenge_methods_supported": ["plain", "S256"],
        "scopes_supported": [
            "openid", "fhirUser", "launch", "launch/patient", "offline_access",
            "patient/*.rs", "user/*.cruds", "custom:scope", "not a scope"
        ]
    })
}

fn capability_statement(upstream: &str) -> String {
    json!({
        "resourceType": "CapabilityStatement",
        "url": format!("{upstream}/metadata"),
        "status": "active",
        "date": "2026-01-01",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json", "xml"],
        "implementation": {"description": "synthetic upstream", "url": upstream},
        "rest": [{
            "mode": "server",
            "security": {"cors": true, "description": "Accepted inbound auth: none"},
            "resource": [{"type": "Patient", "interaction": [{"code": "read"}]}]
        }]
    })
    .to_string()
}

struct World {
    idp: FakeIdp,
    fhir: FakeFhir,
    gateway: TestGateway,
}

async fn world(sections: &str) -> World {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    idp.set_discovery(rich_discovery());
    let fhir = FakeFhir::start().await;
    fhir.route(
        "GET",
        "metadata",
        200,
        &capability_statement(&format!("http://{}/fhir", fhir.addr)),
    );
    let gateway = TestGateway::start_with_sections(&idp, fhir.addr, "", "", sections).await;
    World { idp, fhir, gateway }
}

async fn get(w: &World, path: &str, accept: &str) -> reqwest::Response {
    client()
        .get(format!("{}/{path}", w.gateway.base))
        .header("accept", accept)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn smart_configuration_states_the_idp_endpoints_and_fhirgates_capabilities() {
    let w = world("").await;
    let response = get(
        &w,
        ".well-known/smart-configuration",
        "application/fhir+xml",
    )
    .await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["access-control-allow-origin"], "*");
    let cache_control = headers["cache-control"].to_str().unwrap().to_owned();
    let max_age: u64 = cache_control
        .strip_prefix("public, max-age=")
        .unwrap()
        .parse()
        .unwrap();
    assert!((290..=300).contains(&max_age), "{cache_control}");
    let doc: Value = response.json().await.unwrap();
    let issuer = &w.idp.issuer;
    assert_eq!(doc["issuer"], issuer.as_str());
    assert_eq!(doc["jwks_uri"], format!("{issuer}/jwks"));
    assert_eq!(doc["authorization_endpoint"], format!("{issuer}/authorize"));
    assert_eq!(doc["token_endpoint"], format!("{issuer}/token"));
    assert_eq!(doc["registration_endpoint"], format!("{issuer}/register"));
    assert_eq!(
        doc["introspection_endpoint"],
        format!("{issuer}/introspect")
    );
    assert_eq!(doc["revocation_endpoint"], format!("{issuer}/revoke"));
    assert!(doc.get("management_endpoint").is_none(), "not invented");
    assert!(doc.get("userinfo_endpoint").is_none());
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        doc["grant_types_supported"],
        json!(["authorization_code", "refresh_token", "client_credentials"])
    );
    assert_eq!(doc["response_types_supported"], json!(["code"]));
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!(["none", "client_secret_basic", "private_key_jwt"])
    );
    assert_eq!(
        doc["scopes_supported"],
        json!([
            "openid",
            "fhirUser",
            "launch",
            "launch/patient",
            "offline_access",
            "patient/*.rs",
            "user/*.cruds"
        ])
    );
    assert_eq!(
        doc["capabilities"],
        json!([
            "launch-standalone",
            "launch-ehr",
            "client-public",
            "client-confidential-symmetric",
            "client-confidential-asymmetric",
            "sso-openid-connect",
            "context-standalone-patient",
            "context-ehr-patient",
            "permission-offline",
            "permission-patient",
            "permission-user",
            "permission-v1",
            "permission-v2"
        ])
    );
    assert!(
        w.fhir.seen().is_empty(),
        "discovery never reaches the upstream"
    );
    let audit = w.gateway.stop().await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["interaction"], "smart-configuration");
    assert_eq!(audit[0]["decision"], "allow");
    assert_eq!(audit[0]["reason"], "allowed");
    assert_eq!(audit[0]["status"], 200);
}

#[tokio::test]
async fn one_idp_fetch_serves_many_requests() {
    let w = world("").await;
    let before = w.idp.discovery_fetches();
    let url = format!("{}/.well-known/smart-configuration", w.gateway.base);
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { client().get(url).send().await.unwrap().status() })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(w.idp.discovery_fetches() - before, 1);
    let head = client()
        .head(format!(
            "{}/.well-known/smart-configuration",
            w.gateway.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert!(head.bytes().await.unwrap().is_empty());
    assert_eq!(w.idp.discovery_fetches() - before, 1);
}

#[tokio::test]
async fn idp_down_is_503_until_a_document_is_had_then_the_last_good_one_is_served() {
    let w = world("smart:\n  cache_ttl: \"1s\"\n").await;
    w.idp.set_discovery_down(true);
    let response = get(&w, ".well-known/smart-configuration", "application/json").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "transient");

    w.idp.set_discovery_down(false);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let response = get(&w, ".well-known/smart-configuration", "application/json").await;
    assert_eq!(response.status(), 200);

    // Down again once the document is past its lifetime: the last good one, not to be kept.
    w.idp.set_discovery_down(true);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let response = get(&w, ".well-known/smart-configuration", "application/json").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "public, max-age=0");
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["token_endpoint"], format!("{}/token", w.idp.issuer));

    let audit = w.gateway.stop().await;
    assert_eq!(audit[0]["reason"], "discovery_unavailable");
    assert_eq!(audit[0]["status"], 503);
    assert_eq!(audit[0]["decision"], "allow");
    assert!(audit[1..].iter().all(|r| r["status"] == 200));
}

#[tokio::test]
async fn overrides_are_merged_last() {
    let w = world(
        "smart:\n  configuration_overrides:\n    capabilities: [\"launch-standalone\", \"context-banner\"]\n    revocation_endpoint: null\n    user_access_brand_bundle: \"https://brands.example/bundle.json\"\n",
    )
    .await;
    let doc: Value = get(&w, ".well-known/smart-configuration", "application/json")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["capabilities"],
        json!(["launch-standalone", "context-banner"])
    );
    assert!(doc.get("revocation_endpoint").is_none());
    assert_eq!(
        doc["user_access_brand_bundle"],
        "https://brands.example/bundle.json"
    );
    assert_eq!(doc["token_endpoint"], format!("{}/token", w.idp.issuer));
}

#[tokio::test]
async fn the_authorization_issuer_can_be_another_than_the_first() {
    let first = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let second = FakeIdp::start(vec![jwk("rsa-b")]).await;
    second.set_discovery(json!({"token_endpoint": "{issuer}/second-token"}));
    let fhir = FakeFhir::start().await;
    let also = format!(
        "  - issuer: \"{}\"\n    audience: \"https://gw.test/fhir\"\n",
        second.issuer
    );
    let sections = format!("smart:\n  authorization_issuer: \"{}\"\n", second.issuer);
    let gateway = TestGateway::start_with_sections(&first, fhir.addr, &also, "", &sections).await;
    let doc: Value = client()
        .get(format!("{}/.well-known/smart-configuration", gateway.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], second.issuer.as_str());
    assert_eq!(
        doc["token_endpoint"],
        format!("{}/second-token", second.issuer)
    );
}

#[tokio::test]
async fn metadata_declares_smart_security_and_never_names_the_upstream_base() {
    let w = world("cors:\n  allowed_origins: [\"https://app.example.org\"]\n").await;
    let response = client()
        .get(format!("{}/metadata", w.gateway.base))
        .header("origin", "https://elsewhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let body = response.text().await.unwrap();
    assert!(!body.contains(&w.fhir.addr.to_string()), "{body}");
    let statement: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(statement["implementation"]["url"], w.gateway.base.as_str());
    assert_eq!(
        statement["url"],
        format!("{}/metadata", w.gateway.base).as_str()
    );
    let security = &statement["rest"][0]["security"];
    assert_eq!(security["cors"], true);
    assert_eq!(
        security["service"][0]["coding"][0],
        json!({
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR",
            "display": "SMART-on-FHIR"
        })
    );
    let oauth = &security["extension"][0];
    assert_eq!(
        oauth["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    let issuer = &w.idp.issuer;
    assert_eq!(
        oauth["extension"],
        json!([
            {"url": "authorize", "valueUri": format!("{issuer}/authorize")},
            {"url": "token", "valueUri": format!("{issuer}/token")},
            {"url": "register", "valueUri": format!("{issuer}/register")},
            {"url": "introspect", "valueUri": format!("{issuer}/introspect")},
            {"url": "revoke", "valueUri": format!("{issuer}/revoke")}
        ])
    );
    assert_eq!(statement["rest"][0]["resource"][0]["type"], "Patient");
    let audit = w.gateway.stop().await;
    assert_eq!(audit[0]["interaction"], "capabilities");
    assert_eq!(audit[0]["upstream_status"], 200);
}

#[tokio::test]
async fn metadata_is_fetched_once_for_many_requests_and_cors_is_false_without_cors() {
    let w = world("").await;
    for _ in 0..10 {
        let response = get(&w, "metadata", "application/fhir+json").await;
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/fhir+json")
        );
        let statement: Value = response.json().await.unwrap();
        assert_eq!(statement["rest"][0]["security"]["cors"], false);
    }
    let head = client()
        .head(format!("{}/metadata", w.gateway.base))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    let seen = w.fhir.seen();
    assert_eq!(seen.len(), 1, "one upstream call: {seen:?}");
    assert_eq!(seen[0].headers["accept"], "application/fhir+json");
    let audit = w.gateway.stop().await;
    assert_eq!(audit.len(), 11);
    assert_eq!(audit[0]["upstream_status"], 200);
    assert!(audit[1].get("upstream_status").is_none_or(Value::is_null));
}

#[tokio::test]
async fn xml_metadata_passes_through_uncached_without_the_upstream_base() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    let upstream = format!("http://{}/fhir", fhir.addr);
    let xml = format!(
        "<CapabilityStatement xmlns=\"http://hl7.org/fhir\"><url value=\"{upstream}/metadata\"/></CapabilityStatement>"
    );
    fhir.route_with(
        "GET",
        "metadata",
        &capability_statement(&upstream),
        &[],
        Some(&xml),
    );
    let gateway = TestGateway::start(&idp, fhir.addr, "").await;
    for _ in 0..2 {
        let response = client()
            .get(format!("{}/metadata?_format=xml", gateway.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/fhir+xml");
        let body = response.text().await.unwrap();
        assert_eq!(
            body,
            format!(
                "<CapabilityStatement xmlns=\"http://hl7.org/fhir\"><url value=\"{}/metadata\"/></CapabilityStatement>",
                gateway.base
            )
        );
    }
    assert_eq!(fhir.seen().len(), 2, "XML is not kept");
    // A JSON request with a query is answered fresh, its security declared all the same.
    let statement: Value = client()
        .get(format!("{}/metadata?mode=full", gateway.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        statement["rest"][0]["security"]["service"][0]["coding"][0]["code"],
        "SMART-on-FHIR"
    );
    assert_eq!(fhir.seen().len(), 3);
}

#[tokio::test]
async fn an_upstream_error_is_passed_on_and_not_kept() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    let upstream = format!("http://{}/fhir", fhir.addr);
    fhir.route(
        "GET",
        "metadata",
        500,
        &format!(
            r#"{{"resourceType":"OperationOutcome","issue":[{{"severity":"error","code":"exception","diagnostics":"{upstream} is busy"}}]}}"#
        ),
    );
    let gateway = TestGateway::start(&idp, fhir.addr, "").await;
    for _ in 0..2 {
        let response = client()
            .get(format!("{}/metadata", gateway.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 500);
        let body = response.text().await.unwrap();
        assert!(!body.contains(&fhir.addr.to_string()), "{body}");
    }
    assert_eq!(fhir.seen().len(), 2);
}
