//! The upstream's base URL never reaches a client, and the public base never reaches the
//! upstream: bodies (checked and passed through) and `Location` headers are rewritten.

use serde_json::Value;
use support::*;

mod support;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A","name":[{"family":"Alpha"}]}"#;

fn obs(id: &str, patient: &str) -> String {
    format!(
        r#"{{"resourceType":"Observation","id":"{id}","status":"final","code":{{"text":"x"}},"subject":{{"reference":"Patient/{patient}"}}}}"#
    )
}

/// A searchset as a FHIR server writes it: absolute links and full URLs under its own base.
fn searchset(base: &str) -> String {
    format!(
        r#"{{"resourceType":"Bundle","type":"searchset","link":[{{"relation":"self","url":"{base}/Observation?patient=pat-A"}},{{"relation":"next","url":"{base}/Observation?patient=pat-A&_offset=20"}}],"entry":[{{"fullUrl":"{base}/Observation/obs-A1","resource":{a},"search":{{"mode":"match"}}}},{{"fullUrl":"{base}/Observation/obs-A2","resource":{b},"search":{{"mode":"match"}}}}]}}"#,
        a = obs("obs-A1", "pat-A"),
        b = obs("obs-A2", "pat-A"),
    )
}

#[tokio::test]
async fn upstream_urls_become_public_in_bodies_and_headers_and_never_the_reverse() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    let upstream = fhir.base();
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    fhir.route("GET", "Observation", 200, &searchset(&upstream));
    fhir.route("POST", "Observation", 201, &obs("obs-new", "pat-A"));
    fhir.route_headers(
        "POST",
        "Observation",
        &[(
            "location",
            &format!("{upstream}/Observation/obs-new/_history/1"),
        )],
    );
    let gateway = TestGateway::start(&idp, fhir.addr, "").await;
    let public = gateway.base.clone();
    let patient_token = sign(
        "rsa-a",
        Some("rsa-a"),
        &claims(&idp.issuer, "patient/Observation.rs patient/Observation.c"),
    );
    let user_token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "user/*.cruds"));

    // A checked search (patient scopes) and the same search passed through (user scopes).
    for token in [&patient_token, &user_token] {
        let response = client()
            .get(format!("{public}/Observation?patient=pat-A"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        assert!(!text.contains(&upstream), "{text}");
        let bundle: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            bundle["link"][1]["url"],
            format!("{public}/Observation?patient=pat-A&_offset=20")
        );
        assert_eq!(
            bundle["entry"][0]["fullUrl"],
            format!("{public}/Observation/obs-A1")
        );
    }

    // A create: the Location the client follows is the public one; a reference to the
    // public base in the body reaches the upstream under its own base.
    fhir.clear();
    let body = format!(
        r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"subject":{{"reference":"{public}/Patient/pat-A"}}}}"#
    );
    let response = client()
        .post(format!("{public}/Observation"))
        .bearer_auth(&patient_token)
        .header("content-type", "application/fhir+json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(location, format!("{public}/Observation/obs-new/_history/1"));
    let sent = fhir.seen();
    let create = sent
        .iter()
        .find(|s| s.method == "POST")
        .expect("create forwarded");
    let forwarded = String::from_utf8(create.body.to_vec()).unwrap();
    assert!(
        forwarded.contains(&format!("{upstream}/Patient/pat-A")),
        "{forwarded}"
    );
    assert!(!forwarded.contains(&public), "{forwarded}");

    // A read passed through keeps its bytes where there is nothing to rewrite.
    let response = client()
        .get(format!("{public}/Patient/pat-A"))
        .bearer_auth(&user_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), PATIENT_A);
    let _ = gateway.stop().await;
}

/// Ways an upstream can name its own base other than as a URL prefix in a body: echoed
/// percent-encoded in paging links (from a search value naming the public base), in a `Link`
/// header, or run into other text. None reaches a client.
#[tokio::test]
async fn the_upstream_base_is_hidden_in_every_form_it_takes() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    let upstream = fhir.base();
    let encoded = upstream.replace(':', "%3A").replace('/', "%2F");
    let echoed = format!(
        r#"{{"resourceType":"Bundle","type":"searchset","link":[{{"relation":"self","url":"{upstream}/Observation?code={encoded}%2Fx"}}],"entry":[{{"fullUrl":"{upstream}/Observation/obs-A1","resource":{a},"search":{{"mode":"match"}}}}]}}"#,
        a = obs("obs-A1", "pat-A"),
    );
    fhir.route_with(
        "GET",
        "Observation",
        &echoed,
        &[(
            "link",
            &format!("<{upstream}/Observation?page=2>; rel=\"next\""),
        )],
        None,
    );
    let run_on = format!(
        r#"{{"resourceType":"Observation","id":"obs-B1","status":"final","code":{{"text":"see {upstream}A and {upstream}."}},"subject":{{"reference":"Patient/pat-B"}}}}"#
    );
    fhir.route("GET", "Observation/obs-B1", 200, &run_on);
    let gateway = TestGateway::start(&idp, fhir.addr, "").await;
    let public = gateway.base.clone();
    let patient_token = sign(
        "rsa-a",
        Some("rsa-a"),
        &claims(&idp.issuer, "patient/Observation.rs"),
    );
    let user_token = sign("rsa-a", Some("rsa-a"), &claims(&idp.issuer, "user/*.rs"));
    let authority = upstream.split('/').nth(2).unwrap().to_owned();

    for token in [&patient_token, &user_token] {
        let response = client()
            .get(format!("{public}/Observation?code={public}/x"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let link = response.headers()["link"].to_str().unwrap().to_owned();
        assert_eq!(link, format!("<{public}/Observation?page=2>; rel=\"next\""));
        let text = response.text().await.unwrap();
        assert!(!text.contains(&authority), "{text}");
        assert!(
            !text.to_lowercase().contains(&authority.replace(':', "%3a")),
            "{text}"
        );
    }
    let response = client()
        .get(format!("{public}/Observation/obs-B1"))
        .bearer_auth(&user_token)
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    assert!(!text.contains(&authority), "{text}");
    assert!(
        text.contains(&format!("see {public}A and {public}.")),
        "{text}"
    );
    let _ = gateway.stop().await;
}

/// A HEAD whose GET would be checked is checked too: the upstream is asked with GET, and
/// another patient's resource gets the refusal a GET gets, not its ETag and length.
#[tokio::test]
async fn a_head_is_checked_like_its_get() {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Observation/obs-B1", 200, &obs("obs-B1", "pat-B"));
    fhir.route("GET", "Observation/obs-A1", 200, &obs("obs-A1", "pat-A"));
    let gateway = TestGateway::start(&idp, fhir.addr, "").await;
    let token = sign(
        "rsa-a",
        Some("rsa-a"),
        &claims(&idp.issuer, "patient/Observation.rs"),
    );
    let head = |id: &str| {
        client()
            .head(format!("{}/Observation/{id}", gateway.base))
            .bearer_auth(&token)
            .send()
    };
    let other = head("obs-B1").await.unwrap();
    assert_eq!(other.status(), 403);
    let own = head("obs-A1").await.unwrap();
    assert_eq!(own.status(), 200);
    assert!(own.bytes().await.unwrap().is_empty());
    let methods: Vec<String> = fhir.seen().iter().map(|s| s.method.clone()).collect();
    assert!(methods.iter().all(|m| m == "GET"), "{methods:?}");
    let _ = gateway.stop().await;
}
