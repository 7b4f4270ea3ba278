//! The forward step: the request as the FHIR server sees it ([`super::upstream`] sends it).

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, Method};

use super::Peer;
use super::headers::{self, REQUEST_ID};
use crate::token::Identity;

/// Headers a client may not set for the upstream: credentials, and what the gateway itself
/// says about the request.
const CLIENT_MAY_NOT_SET: [&str; 17] = [
    "authorization",
    "dpop",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    // Other names servers and frameworks read the client's address, the public base or the
    // request's path from: a client must not choose what the upstream believes of them, nor
    // a path other than the one the gateway checked (`X-Original-URL`, `X-Rewrite-URL`).
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-forwarded-for",
];

/// Prefix of the headers in which the gateway tells the upstream who is calling.
const IDENTITY_PREFIX: &str = "x-fhirgate-";

/// Adds the verified caller's identity and launch context as `X-Fhirgate-*` headers. Values
/// that cannot be header values (never expected of ids) are left out rather than altered.
pub fn add_identity_headers(out: &mut HeaderMap, identity: &Identity) {
    let fields = [
        ("x-fhirgate-client-id", identity.caller.client_id.as_deref()),
        ("x-fhirgate-subject", identity.caller.subject.as_deref()),
        ("x-fhirgate-fhir-user", identity.caller.fhir_user.as_deref()),
        ("x-fhirgate-patient", identity.caller.patient.as_deref()),
        ("x-fhirgate-encounter", identity.caller.encounter.as_deref()),
        (
            "x-fhirgate-fhir-context",
            identity.caller.fhir_context.as_deref(),
        ),
        ("x-fhirgate-scope", identity.caller.scope.as_deref()),
        ("x-fhirgate-issuer", Some(identity.caller.issuer.as_str())),
    ];
    for (name, value) in fields {
        if let Some(value) = value.and_then(|v| http::HeaderValue::from_str(v).ok()) {
            out.insert(HeaderName::from_static(name), value);
        }
    }
}

/// The upstream URL of a request: the upstream base, the base-relative path and the query.
pub fn target_url(base: &str, path: &str, query: Option<&str>) -> String {
    let mut target = format!("{base}/{path}");
    if path.is_empty() {
        target.pop();
    }
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        target.push('?');
        target.push_str(query);
    }
    target
}

/// What is sent upstream.
pub struct Outbound<'a> {
    pub method: &'a Method,
    /// Path relative to the FHIR base, still percent-encoded.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The headers sent upstream: the client's, less hop-by-hop headers, credentials and anything
/// the gateway asserts itself, plus the gateway's forwarding headers.
///
/// When the response must be checked, the upstream is asked for uncompressed FHIR JSON.
pub fn upstream_headers(
    client: &HeaderMap,
    peer: &Peer,
    request_id: &str,
    response_checked: bool,
) -> HeaderMap {
    let connection_named = headers::connection_named(client);
    // What the client may not send on, and what the gateway sets itself below.
    let dropped = |name: &HeaderName| {
        headers::is_hop_by_hop(name, &connection_named)
            || CLIENT_MAY_NOT_SET.iter().any(|n| name == *n)
            || super::cors::CLIENT_CORS_HEADERS.iter().any(|n| name == *n)
            || name.as_str().starts_with(IDENTITY_PREFIX)
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::ACCEPT_ENCODING
            || (response_checked && name == header::ACCEPT)
    };
    let mut out = HeaderMap::with_capacity(client.len() + 6);
    for (name, value) in client {
        if !dropped(name) {
            out.append(name.clone(), value.clone());
        }
    }
    if let Some(host) = client.get(header::HOST) {
        out.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    out.insert(
        HeaderName::from_static("x-forwarded-for"),
        headers::value(&peer.address.ip().to_string()),
    );
    out.insert(
        HeaderName::from_static("x-forwarded-proto"),
        headers::value(if peer.tls { "https" } else { "http" }),
    );
    out.insert(REQUEST_ID.clone(), headers::value(request_id));
    // Bodies come back unencoded so that they can be checked and their upstream URLs
    // rewritten; the gateway compresses what it sends to clients that accept it.
    out.insert(header::ACCEPT_ENCODING, headers::value("identity"));
    if response_checked {
        out.insert(header::ACCEPT, headers::value("application/fhir+json"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_spoofed_forwarding_never_go_upstream() {
        let mut client = HeaderMap::new();
        client.insert(header::AUTHORIZATION, "Bearer secret".parse().unwrap());
        client.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        client.insert("forwarded", "for=6.6.6.6".parse().unwrap());
        client.insert(header::HOST, "gw.test".parse().unwrap());
        client.insert(header::ACCEPT, "application/fhir+xml".parse().unwrap());
        let peer = Peer {
            address: "10.1.2.3:5555".parse().unwrap(),
            tls: true,
            certificate: None,
        };
        let out = upstream_headers(&client, &peer, "rid", false);
        assert!(!out.contains_key(header::AUTHORIZATION));
        assert!(!out.contains_key("forwarded"));
        assert!(!out.contains_key(header::HOST));
        assert_eq!(out["x-forwarded-for"], "10.1.2.3");
        assert_eq!(out["x-forwarded-host"], "gw.test");
        assert_eq!(out["x-request-id"], "rid");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out[header::ACCEPT], "application/fhir+xml");
        let checked = upstream_headers(&client, &peer, "rid", true);
        assert_eq!(checked[header::ACCEPT], "application/fhir+json");
    }
}
