//! What runs on a token before any signature check: the `Authorization` header, the JWS shape,
//! the JOSE header, the unverified issuer, and claims normalisation. Never panics; only
//! asymmetric algorithms pass the header check.

#![no_main]

use arbitrary::Arbitrary;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fhirgate::token::{ClaimMapping, Identity, bearer_token, jwt, purpose};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    /// A whole `Authorization` header value.
    Header(&'a [u8]),
    /// A token built from header and payload JSON (base64url-encoded here) and a signature.
    Parts {
        header: &'a [u8],
        payload: &'a [u8],
        signature: &'a str,
    },
    /// Claims as a verified token would carry them.
    Claims(&'a [u8]),
}

fn check_token(token: &str) {
    let Ok(parts) = jwt::split(token) else {
        return;
    };
    if let Ok(header) = jwt::peek_header(&parts) {
        let alg = format!("{:?}", header.alg);
        assert!(!alg.starts_with("HS"), "symmetric algorithm {alg} accepted");
    }
    let _ = jwt::peek_issuer(&parts);
}

fuzz_target!(|input: Input<'_>| match input {
    Input::Header(value) => {
        let Ok(value) = http::HeaderValue::from_bytes(value) else {
            return;
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value);
        if let Ok(token) = bearer_token(&headers) {
            assert!(!token.is_empty());
            check_token(token);
        }
    }
    Input::Parts {
        header,
        payload,
        signature,
    } => {
        let token = format!(
            "{}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        check_token(&token);
    }
    Input::Claims(json) => {
        if let Ok(claims) = serde_json::from_slice(json) {
            let mapping = ClaimMapping::default();
            let identity =
                Identity::from_claims("https://issuer.example".into(), &claims, &mapping);
            if let Some(patient) = &identity.caller.patient {
                assert!(!patient.is_empty() && patient.len() <= 64);
                assert!(!patient.contains('/'));
            }
            assert!(identity.caller.purposes_of_use.len() <= purpose::MAX_PURPOSES);
            for code in &identity.caller.purposes_of_use {
                assert!(purpose::is_code(code), "purpose of use {code:?} is no code");
            }
        }
    }
});
