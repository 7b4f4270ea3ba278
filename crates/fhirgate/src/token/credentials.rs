//! Reading the access token from the request headers: `Authorization: Bearer` (RFC 6750
//! section 2.1) or `Authorization: DPoP` (RFC 9449 section 7.1).

use http::HeaderMap;
use http::header::AUTHORIZATION;

use super::TokenError;

/// How the client presented its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    /// With a proof of possession in the `DPoP` header.
    Dpop,
}

/// The access token of a request and the scheme it came under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'a> {
    pub scheme: Scheme,
    pub token: &'a str,
}

/// The token of the one `Authorization: Bearer` header, if there is one (see [`credentials`]).
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, TokenError> {
    match credentials(headers)? {
        Credentials {
            scheme: Scheme::Bearer,
            token,
        } => Ok(token),
        Credentials { .. } => Err(TokenError::Missing),
    }
}

/// The token of the one `Authorization` header with the `Bearer` or `DPoP` scheme.
///
/// Another scheme counts as no credentials (a bare challenge follows); two `Authorization`
/// headers, an empty token or characters outside RFC 6750's `b64token` are malformed.
pub fn credentials(headers: &HeaderMap) -> Result<Credentials<'_>, TokenError> {
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
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        return Err(TokenError::Missing);
    };
    let token = rest.trim_matches(' ');
    if token.is_empty() {
        return Err(TokenError::Malformed("empty bearer token"));
    }
    if !is_b64token(token) {
        return Err(TokenError::Malformed(
            "bearer token has characters outside b64token",
        ));
    }
    Ok(Credentials { scheme, token })
}

fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|b| B64TOKEN[usize::from(b)])
}

/// The characters of RFC 6750's `b64token` before its trailing `=`s, by byte value.
static B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

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
    fn reads_dpop_tokens_with_their_scheme() {
        let sent = headers(&["DPoP abc.def.ghi"]);
        let got = credentials(&sent).unwrap();
        assert_eq!(got.scheme, Scheme::Dpop);
        assert_eq!(got.token, "abc.def.ghi");
        assert!(matches!(
            bearer_token(&headers(&["DPoP abc"])),
            Err(TokenError::Missing)
        ));
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
