//! The accept step: what a request must look like before anything else looks at it.

use http::{HeaderMap, Method, header};

use crate::refusal::Refusal;
use crate::token::TokenError;

/// Headers that ask a server to treat a request as another method. They are refused rather
/// than ignored: a server behind the gateway might honour one the gateway did not check.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Checks method and headers, and returns the path relative to the public FHIR base of the
/// route the request took (no leading `/`), or refuses; a request that took no route
/// (`base_path` `None`) is not found.
pub fn accept<'a>(
    method: &Method,
    path: &'a str,
    query: Option<&str>,
    headers: &HeaderMap,
    base_path: Option<&str>,
) -> Result<&'a str, Refusal> {
    let allowed = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ];
    if !allowed.contains(method) {
        return Err(Refusal::MethodNotAllowed);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(framed_by_transfer_coding());
    }
    if METHOD_OVERRIDES
        .iter()
        .any(|name| headers.contains_key(*name))
    {
        return Err(Refusal::BadRequest(
            "method override headers are not accepted".into(),
        ));
    }
    if query.is_some_and(|q| has_param(q, "_method")) {
        return Err(Refusal::BadRequest(
            "the _method parameter is not accepted".into(),
        ));
    }
    if query.is_some_and(|q| has_param(q, ACCESS_TOKEN)) {
        return Err(token_in_url());
    }
    let rest = path
        .strip_prefix(base_path.ok_or(Refusal::NotFound)?)
        .ok_or(Refusal::NotFound)?;
    match rest {
        "" | "/" => Ok(""),
        _ => rest.strip_prefix('/').ok_or(Refusal::NotFound),
    }
}

/// A request body framed by a transfer coding. The HTTP/1.1 parser reads a request that has
/// both `Content-Length` and `Transfer-Encoding` by the latter and removes the former before
/// the gateway sees it (RFC 9112 section 6.3), so such a request, the means of request
/// smuggling, cannot be told from a plainly chunked one: both are refused before the body
/// is read, and clients send the body's length (HTTP/2 bodies need neither).
fn framed_by_transfer_coding() -> Refusal {
    Refusal::BadRequest(
        "a request body must be sent with Content-Length, not Transfer-Encoding".into(),
    )
}

/// The RFC 6750 parameter that carries a token in a query or form body.
pub const ACCESS_TOKEN: &str = "access_token";

/// Does a query (or form body) carry parameter `wanted`, its name percent-decoded?
pub fn has_param(query: &str, wanted: &str) -> bool {
    query.split('&').any(|pair| param_name(pair) == wanted)
}

/// The percent-decoded name of one `name=value` pair of a query.
pub fn param_name(pair: &str) -> std::borrow::Cow<'_, str> {
    let name = pair.split_once('=').map_or(pair, |(n, _)| n);
    percent_encoding::percent_decode_str(name).decode_utf8_lossy()
}

/// Tokens in URLs end up in logs and caches; RFC 6750's query and form forms are refused so
/// that such a token never goes further (upstream included).
pub fn token_in_url() -> Refusal {
    Refusal::Token(TokenError::Malformed(
        "access tokens are accepted only in the Authorization header",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<'a>(method: Method, path: &'a str, query: Option<&str>) -> Result<&'a str, Refusal> {
        accept(&method, path, query, &HeaderMap::new(), Some("/fhir"))
    }

    #[test]
    fn strips_the_base_path() {
        assert_eq!(
            run(Method::GET, "/fhir/Patient/1", None).unwrap(),
            "Patient/1"
        );
        assert_eq!(run(Method::POST, "/fhir", None).unwrap(), "");
        assert_eq!(run(Method::POST, "/fhir/", None).unwrap(), "");
        assert!(matches!(
            run(Method::GET, "/fhirx/Patient", None),
            Err(Refusal::NotFound)
        ));
        assert!(matches!(
            run(Method::GET, "/other", None),
            Err(Refusal::NotFound)
        ));
        let no_route = accept(&Method::GET, "/fhir", None, &HeaderMap::new(), None);
        assert!(matches!(no_route, Err(Refusal::NotFound)));
        let still_checked = accept(&Method::TRACE, "/x", None, &HeaderMap::new(), None);
        assert!(matches!(still_checked, Err(Refusal::MethodNotAllowed)));
    }

    #[test]
    fn refuses_other_methods_and_overrides() {
        assert!(matches!(
            run(Method::TRACE, "/fhir/x", None),
            Err(Refusal::MethodNotAllowed)
        ));
        assert!(matches!(
            run(Method::OPTIONS, "/fhir/x", None),
            Err(Refusal::MethodNotAllowed)
        ));
        assert!(matches!(
            run(Method::GET, "/fhir/Patient", Some("a=1&%5Fmethod=DELETE")),
            Err(Refusal::BadRequest(_))
        ));
        let mut headers = HeaderMap::new();
        headers.insert("X-HTTP-Method-Override", "DELETE".parse().unwrap());
        let refused = accept(
            &Method::POST,
            "/fhir/Patient/1",
            None,
            &headers,
            Some("/fhir"),
        );
        assert!(matches!(refused, Err(Refusal::BadRequest(_))));
    }

    #[test]
    fn refuses_bodies_framed_by_a_transfer_coding() {
        for coding in ["chunked", "gzip, chunked", "xchunked"] {
            let mut headers = HeaderMap::new();
            headers.insert(header::TRANSFER_ENCODING, coding.parse().unwrap());
            let refused = accept(
                &Method::POST,
                "/fhir/Patient",
                None,
                &headers,
                Some("/fhir"),
            );
            assert!(matches!(refused, Err(Refusal::BadRequest(_))), "{coding}");
        }
    }
}
