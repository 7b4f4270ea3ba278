//! DPoP-bound tokens (RFC 9449) through a running gateway: a good proof passes; a replayed,
//! stale, mismatched or missing proof, a bound token sent as a bearer token, and a proof with
//! an unbound token are refused with 401 and a `DPoP` challenge, never reaching the upstream.

mod support;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::*;

const PATIENT_A: &str = r#"{"resourceType":"Patient","id":"pat-A"}"#;

struct World {
    idp: FakeIdp,
    fhir: FakeFhir,
    gateway: TestGateway,
}

async fn world(issuer_extra: &str) -> World {
    let idp = FakeIdp::start(vec![jwk("rsa-a")]).await;
    let fhir = FakeFhir::start().await;
    fhir.route("GET", "Patient/pat-A", 200, PATIENT_A);
    let gateway = TestGateway::start(&idp, fhir.addr, issuer_extra).await;
    World { idp, fhir, gateway }
}

/// The thumbprint of a fixture key's public JWK.
fn jkt(key: &str) -> String {
    fhirgate::token::thumbprint(jwk(key).as_object().unwrap()).unwrap()
}

/// An access token bound to `key` (or unbound).
fn access_token(world: &World, bound_to: Option<&str>) -> String {
    let mut claims = claims(&world.idp.issuer, "patient/*.rs");
    if let Some(key) = bound_to {
        claims["cnf"] = json!({ "jkt": jkt(key) });
    }
    sign("rsa-a", Some("rsa-a"), &claims)
}

fn ath(token: &str) -> String {
    use base64::Engine as _;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

/// A proof signed by fixture key `key` with `claims`.
fn proof_with(key: &str, claims: &Value) -> String {
    let pem = std::fs::read(format!(
        "{}/tests/fixtures/{key}.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let (alg, encoding) = if key.starts_with("ec") {
        (Algorithm::ES256, EncodingKey::from_ec_pem(&pem).unwrap())
    } else {
        (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem).unwrap())
    };
    let mut header = Header::new(alg);
    header.typ = Some("dpop+jwt".into());
    header.jwk = Some(serde_json::from_value(jwk(key)).unwrap());
    jsonwebtoken::encode(&header, claims, &encoding).unwrap()
}

fn proof_claims(method: &str, url: &str, token: &str) -> Value {
    json!({
        "jti": uuid::Uuid::new_v4().to_string(),
        "htm": method,
        "htu": url,
        "iat": jsonwebtoken::get_current_timestamp(),
        "ath": ath(token),
    })
}

async fn send(world: &World, scheme: &str, token: &str, proof: Option<&str>) -> (u16, String) {
    let mut request = client()
        .get(format!("{}/Patient/pat-A", world.gateway.base))
        .header("authorization", format!("{scheme} {token}"));
    if let Some(proof) = proof {
        request = request.header("dpop", proof);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, challenge)
}

fn url(world: &World) -> String {
    format!("{}/Patient/pat-A", world.gateway.base)
}

#[tokio::test]
async fn a_bound_token_with_a_good_proof_is_accepted_once() {
    let w = world("").await;
    let token = access_token(&w, Some("ec-a"));
    let proof = proof_with("ec-a", &proof_claims("GET", &url(&w), &token));
    assert_eq!(send(&w, "DPoP", &token, Some(&proof)).await.0, 200);
    assert_eq!(w.fhir.seen().len(), 1);
    assert!(
        w.fhir.seen()[0].headers.get("dpop").is_none(),
        "the proof is the client's, not the upstream's"
    );

    let (status, challenge) = send(&w, "DPoP", &token, Some(&proof)).await;
    assert_eq!(status, 401, "a replayed proof");
    assert!(challenge.starts_with("DPoP "), "{challenge}");
    assert!(
        challenge.contains(r#"error="invalid_dpop_proof""#),
        "{challenge}"
    );
    assert!(challenge.contains("algs=\""), "{challenge}");
    assert_eq!(w.fhir.seen().len(), 1, "refusals never reach the upstream");

    // A fresh proof for the same token works again.
    let again = proof_with("ec-a", &proof_claims("GET", &url(&w), &token));
    assert_eq!(send(&w, "DPoP", &token, Some(&again)).await.0, 200);
}

#[tokio::test]
async fn bad_proofs_are_refused_with_a_dpop_challenge() {
    let w = world("").await;
    let token = access_token(&w, Some("ec-a"));
    let other_token = access_token(&w, Some("ec-a"));
    let now = jsonwebtoken::get_current_timestamp();
    let mut cases: Vec<(&str, String)> = Vec::new();
    let mut variant = |what: &'static str, edit: &dyn Fn(&mut Value)| {
        let mut claims = proof_claims("GET", &url(&w), &token);
        edit(&mut claims);
        cases.push((what, proof_with("ec-a", &claims)));
    };
    variant("stale iat", &|c| c["iat"] = json!(now - 600));
    variant("iat in the future", &|c| c["iat"] = json!(now + 600));
    variant("another method", &|c| c["htm"] = json!("POST"));
    variant("another URL", &|c| {
        c["htu"] = json!("http://127.0.0.1:1/fhir/Patient/pat-A")
    });
    variant("another path", &|c| {
        c["htu"] = json!(url(&w).replace("pat-A", "pat-B"))
    });
    variant("another token", &|c| c["ath"] = json!(ath(&other_token)));
    variant("no ath", &|c| {
        c.as_object_mut().unwrap().remove("ath");
    });
    variant("no jti", &|c| {
        c.as_object_mut().unwrap().remove("jti");
    });
    cases.push((
        "signed by another key",
        proof_with("rsa-b", &proof_claims("GET", &url(&w), &token)),
    ));
    cases.push(("not a JWT", "not-a-proof".to_owned()));

    for (what, proof) in &cases {
        let (status, challenge) = send(&w, "DPoP", &token, Some(proof)).await;
        assert_eq!(status, 401, "{what}");
        assert!(
            challenge.starts_with("DPoP ") && challenge.contains(r#"error="invalid_dpop_proof""#),
            "{what}: {challenge}"
        );
    }
    let (status, challenge) = send(&w, "DPoP", &token, None).await;
    assert_eq!(status, 401, "no proof at all");
    assert!(
        challenge.contains(r#"error="invalid_dpop_proof""#),
        "{challenge}"
    );
    assert!(
        w.fhir.seen().is_empty(),
        "no refused request reached the upstream"
    );

    let records = w.gateway.stop().await;
    assert_eq!(records.len(), cases.len() + 1);
    assert!(
        records
            .iter()
            .all(|r| r["decision"] == "deny" && r["reason"] == "invalid_dpop_proof"),
        "{records:?}"
    );
}

#[tokio::test]
async fn bound_tokens_need_the_dpop_scheme_and_unbound_tokens_must_not_use_it() {
    let w = world("").await;
    let bound = access_token(&w, Some("ec-a"));
    let (status, challenge) = send(&w, "Bearer", &bound, None).await;
    assert_eq!(status, 401);
    assert!(
        challenge.starts_with("DPoP ") && challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );

    let unbound = access_token(&w, None);
    assert_eq!(
        send(&w, "Bearer", &unbound, None).await.0,
        200,
        "unbound tokens keep working"
    );
    let proof = proof_with("ec-a", &proof_claims("GET", &url(&w), &unbound));
    let (status, challenge) = send(&w, "DPoP", &unbound, Some(&proof)).await;
    assert_eq!(status, 401);
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    assert_eq!(w.fhir.seen().len(), 1);
}

#[tokio::test]
async fn an_issuer_can_require_dpop() {
    let w = world("    dpop:\n      required: true").await;
    let (status, challenge) = send(&w, "Bearer", &access_token(&w, None), None).await;
    assert_eq!(status, 401);
    assert!(challenge.starts_with("DPoP "), "{challenge}");
    let token = access_token(&w, Some("ec-a"));
    let proof = proof_with("ec-a", &proof_claims("GET", &url(&w), &token));
    assert_eq!(send(&w, "DPoP", &token, Some(&proof)).await.0, 200);
}

#[tokio::test]
async fn certificate_bound_and_unknown_bindings_are_never_accepted() {
    let w = world("").await;
    for cnf in [
        json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}),
        json!({"jwk": {}}),
    ] {
        let mut claims = claims(&w.idp.issuer, "patient/*.rs");
        claims["cnf"] = cnf;
        let token = sign("rsa-a", Some("rsa-a"), &claims);
        let (status, challenge) = send(&w, "Bearer", &token, None).await;
        assert_eq!(status, 401);
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{challenge}"
        );
    }
    assert!(w.fhir.seen().is_empty());
}
