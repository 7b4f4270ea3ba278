//! Claims normalisation: a JWT payload of arbitrary bytes, read as the gateway reads a
//! token's claims, then normalised under each fixed claim mapping (the first input byte picks
//! one). Malformed payloads are errors, never panics; the identity never names a patient,
//! encounter, scope or purpose the named claims do not hold.

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fhirgate::token::{Identity, jwt};
use fhirgate_fuzz::{MAPPINGS, assert_identity};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const ISSUER: &str = "https://issuer.example";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let mapping = &MAPPINGS[usize::from(selector) % MAPPINGS.len()];
    // An RS256 header, the payload and a signature that is never checked here.
    let token = format!(
        "eyJhbGciOiJSUzI1NiJ9.{}.c2lnbmF0dXJl",
        URL_SAFE_NO_PAD.encode(payload)
    );
    let parts = jwt::split(&token).expect("a token of three segments splits");
    let parsed = serde_json::from_slice::<Map<String, Value>>(payload);
    let claims = match (jwt::peek_claims(&parts), parsed) {
        (Ok(peeked), Ok(parsed)) => {
            assert_eq!(peeked, parsed, "the token's claims are not its payload");
            parsed
        }
        (Err(_), Err(_)) => return,
        (peeked, parsed) => panic!(
            "payload read differently: token {:?}, JSON {:?}",
            peeked.is_ok(),
            parsed.is_ok()
        ),
    };
    if let Ok(issuer) = jwt::peek_issuer(&parts) {
        assert_eq!(
            claims.get("iss").and_then(Value::as_str),
            Some(issuer.as_str())
        );
    }
    let identity = Identity::from_claims(ISSUER.to_owned(), &claims, mapping);
    assert_eq!(identity.caller.issuer, ISSUER);
    assert_identity(&identity, &claims, mapping);
});
