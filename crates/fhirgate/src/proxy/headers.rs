//! Header rules shared by requests and responses: hop-by-hop removal and request ids.

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};

/// The request id header, set on every request sent upstream and every response.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that belong to one connection (RFC 9110 section 7.6.1), plus the ones a proxy must
/// never pass along.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The names a `Connection` header lists, which belong to that connection alone.
pub fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// Is `name` hop-by-hop: one of the fixed set, or named by the message's `Connection`?
pub fn is_hop_by_hop(name: &HeaderName, connection_named: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(name) || name == "proxy-connection" || connection_named.contains(name)
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named = connection_named(headers);
    if !headers.keys().any(|name| is_hop_by_hop(name, &named)) {
        return;
    }
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove("proxy-connection");
}

/// The client's request id when it is a sensible token, otherwise a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// A header value from text the gateway controls or has checked.
pub fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "close, x-secret".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert(header::ACCEPT, "application/fhir+json".parse().unwrap());
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::ACCEPT));
    }

    #[test]
    fn request_ids() {
        let mut headers = HeaderMap::new();
        headers.insert(&REQUEST_ID, "abc-123".parse().unwrap());
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(&REQUEST_ID, "bad id with spaces".parse().unwrap());
        assert_ne!(request_id(&headers), "bad id with spaces");
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }
}
