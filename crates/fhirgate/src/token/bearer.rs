//! Reading the bearer token from the request headers (RFC 6750 section 2.1).

use http::HeaderMap;
use http::header::AUTHORIZATION;

use super::TokenError;

/// The token of the one `Authorization: Bearer` header, if there is one.
///
/// Another scheme counts as no credentials (a bare challenge follows); two `Authorization`
/// headers, an empty token or characters outside RFC 6750's `b64token` are malformed.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, TokenError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(TokenError::Missing);
    };
    if values.next().is_some() {
        return Err(TokenError::Malformed("more than one Authorization header"));
    }
    let value = value
        .to_str()
        .map_err(|_| TokenError::Malformed("Authorization header is not ASCII"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Missing);
    }
    let token = rest.trim_matches(' ');
    if token.is_empty() {
        return Err(TokenError::Malformed("empty bearer token"));
    }
    if !is_b64token(token) {
        return Err(TokenError::Malformed(
            "bearer token has characters outside b64token",
        ));
    }
    Ok(token)
}

fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn reads_bearer_case_insensitively() {
        assert_eq!(
            bearer_token(&headers(&["Bearer abc.def.ghi"])).unwrap(),
            "abc.def.ghi"
        );
        assert_eq!(bearer_token(&headers(&["bearer abc"])).unwrap(), "abc");
    }

    #[test]
    fn other_schemes_count_as_missing() {
        assert!(matches!(
            bearer_token(&headers(&[])),
            Err(TokenError::Missing)
        ));
        assert!(matches!(
            bearer_token(&headers(&["Basic dXNlcjpwYXNz"])),
            Err(TokenError::Missing)
        ));
    }

    #[test]
    fn malformed_credentials_are_refused() {
        for bad in [
            &["Bearer "][..],
            &["Bearer a b"],
            &["Bearer a", "Bearer b"],
            &["Bearer a\"b"],
        ] {
            assert!(
                matches!(bearer_token(&headers(bad)), Err(TokenError::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
