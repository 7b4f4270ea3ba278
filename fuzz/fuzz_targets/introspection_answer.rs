//! RFC 7662 introspection answers: arbitrary bytes read as the body of a successful answer
//! (the first input byte picks the claim mapping and the longest reuse). Anything but a JSON
//! object is an error; an active identity is had only from `"active": true` with this issuer
//! and audience and an `exp` still ahead, is reused no longer than allowed, and says what the
//! claims say.

#![no_main]

use std::time::Duration;

use fhirgate::token::{Answer, AnswerRules, Identity};
use fhirgate_fuzz::{MAPPINGS, assert_identity};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "https://gw.example/fhir";
/// The clock of every run, so that seeds' `exp` values stay ahead of it.
const NOW: f64 = 1_800_000_000.0;
/// The audience of a route with one of its own.
const ROUTE_AUDIENCE: &str = "https://gw.example/tenant-b/fhir";
const INACTIVE_TTL: Duration = Duration::from_secs(10);

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let mapping = &MAPPINGS[usize::from(selector) % MAPPINGS.len()];
    let max_ttl = Duration::from_secs(if selector & 0x80 == 0 { 60 } else { 1 });
    let route_audiences = [ROUTE_AUDIENCE.to_owned()];
    let rules = AnswerRules {
        issuer: ISSUER,
        audience: AUDIENCE,
        route_audiences: &route_audiences,
        mapping,
        max_ttl,
        inactive_ttl: INACTIVE_TTL,
    };
    let key = [selector; 32];
    let answer = rules.read(body, &key, NOW);
    let Ok(claims) = serde_json::from_slice::<Map<String, Value>>(body) else {
        assert!(answer.is_err(), "a body that is no JSON object was read");
        return;
    };
    let answer = answer.expect("a JSON object is read");

    let active = claims.get("active") == Some(&Value::Bool(true));
    let issuer_ok = claims
        .get("iss")
        .is_none_or(|iss| iss.as_str() == Some(ISSUER));
    let ours = |a: &str| a == AUDIENCE || a == ROUTE_AUDIENCE;
    let audience_ok = claims.get("aud").is_none_or(|aud| match aud {
        Value::String(one) => ours(one),
        Value::Array(many) => many.iter().filter_map(Value::as_str).any(ours),
        _ => false,
    });
    let exp = claims.get("exp").and_then(Value::as_f64);
    match answer {
        Answer::Active { identity, ttl } => {
            assert!(active, "active without \"active\": true");
            assert!(issuer_ok, "active for another issuer");
            assert!(audience_ok, "active for another audience");
            assert!(!ttl.is_zero() && ttl <= max_ttl, "reused for {ttl:?}");
            if let Some(exp) = exp {
                assert!(exp > NOW, "active after exp");
                assert!(ttl.as_secs_f64() <= exp - NOW + 1e-6, "reused past exp");
            }
            // What the claims say, with a digest label when the answer has no `jti`.
            let read = Identity::from_claims(ISSUER.to_owned(), &claims, mapping);
            assert_identity(&read, &claims, mapping);
            assert_eq!(identity.caller, read.caller);
            assert_eq!(identity.grant, read.grant);
            assert_eq!(identity.expires_at, exp);
            match claims.get("jti").and_then(Value::as_str) {
                Some(jti) => assert_eq!(identity.token_id.as_deref(), Some(jti)),
                None => assert!(
                    identity
                        .token_id
                        .as_deref()
                        .is_some_and(|id| id.starts_with("sha256:")),
                    "no token id"
                ),
            }
        }
        Answer::Inactive { ttl } => {
            assert_eq!(ttl, INACTIVE_TTL);
            let current = exp.is_none_or(|exp| exp > NOW + 1e-3);
            assert!(
                !(active && issuer_ok && audience_ok && current),
                "an active answer for this gateway, exp {exp:?}, read as inactive"
            );
        }
    }
});
