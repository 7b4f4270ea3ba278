//! The smart-configuration document: the authorization server's endpoints and lists as its
//! own discovery document states them, SMART capabilities from what fhirgate enforces and
//! what that document supports, and the operator's overrides last.
//!
//! Nothing the authorization server does not state is claimed: members it omits are left
//! out, and a capability is listed only where its document shows the support it needs.

use fhirgate_policy::scope::{OtherKind, Scope};
use serde_json::{Map, Value};

/// Endpoint members copied from the authorization server's document, when they are absolute
/// http(s) URLs.
const ENDPOINTS: [&str; 8] = [
    "issuer",
    "jwks_uri",
    "authorization_endpoint",
    "token_endpoint",
    "registration_endpoint",
    "management_endpoint",
    "introspection_endpoint",
    "revocation_endpoint",
];

/// List members copied as the authorization server states them (strings only).
const LISTS: [&str; 3] = [
    "grant_types_supported",
    "response_types_supported",
    "token_endpoint_auth_methods_supported",
];

/// RFC 8414 section 2: what an omitted `grant_types_supported` means.
const DEFAULT_GRANT_TYPES: [&str; 2] = ["authorization_code", "implicit"];
/// RFC 8414 section 2: what an omitted `token_endpoint_auth_methods_supported` means.
const DEFAULT_AUTH_METHODS: [&str; 1] = ["client_secret_basic"];

/// The `oauth-uris` sub-extension names of a CapabilityStatement and the smart-configuration
/// members they come from.
const OAUTH_URIS: [(&str, &str); 6] = [
    ("authorize", "authorization_endpoint"),
    ("token", "token_endpoint"),
    ("register", "registration_endpoint"),
    ("manage", "management_endpoint"),
    ("introspect", "introspection_endpoint"),
    ("revoke", "revocation_endpoint"),
];

/// The smart-configuration for an authorization server's discovery document `idp`, with
/// `overrides` merged in last (RFC 7396).
pub fn synthesise(idp: &Map<String, Value>, overrides: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for name in ENDPOINTS {
        if let Some(url) = endpoint(idp, name) {
            out.insert(name.into(), Value::from(url));
        }
    }
    for name in LISTS {
        if let Some(list) = strings(idp, name) {
            out.insert(name.into(), Value::from(list));
        }
    }
    if strings(idp, "code_challenge_methods_supported").is_some_and(|m| m.contains(&"S256")) {
        out.insert(
            "code_challenge_methods_supported".into(),
            Value::from(["S256"]),
        );
    }
    if let Some(scopes) = scopes_supported(idp) {
        out.insert("scopes_supported".into(), Value::from(scopes));
    }
    out.insert("capabilities".into(), Value::from(capabilities(idp)));
    merge_patch(&mut out, overrides);
    out
}

/// The `oauth-uris` sub-extensions a CapabilityStatement names for a smart-configuration:
/// `(name, URL)` for each endpoint it has.
pub fn oauth_uris(configuration: &Map<String, Value>) -> Vec<(&'static str, String)> {
    OAUTH_URIS
        .iter()
        .filter_map(|(name, member)| {
            let url = configuration.get(*member)?.as_str()?;
            Some((*name, url.to_owned()))
        })
        .collect()
}

/// Member `name` when it is an absolute http(s) URL, as SMART requires of endpoints.
fn endpoint<'a>(idp: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    let text = idp.get(name)?.as_str()?;
    let uri: http::Uri = text.parse().ok()?;
    let absolute = matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some();
    if !absolute {
        tracing::warn!(
            member = name,
            value = text,
            "discovery member is not an absolute http(s) URL; left out"
        );
    }
    absolute.then_some(text)
}

/// Member `name` as a list of strings (other items dropped), if it is a list.
fn strings<'a>(idp: &'a Map<String, Value>, name: &str) -> Option<Vec<&'a str>> {
    let items = idp.get(name)?.as_array()?;
    Some(items.iter().filter_map(Value::as_str).collect())
}

/// The authorization server's `scopes_supported`, kept where fhirgate honours the scope:
/// SMART resource scopes it enforces, and the launch, identity and refresh scopes that are
/// the authorization server's to give. Scopes fhirgate would treat as granting nothing
/// (malformed, unenforceable granular forms, extension scopes) are left out; none are added.
fn scopes_supported(idp: &Map<String, Value>) -> Option<Vec<&str>> {
    let listed = strings(idp, "scopes_supported")?;
    let kept: Vec<&str> = listed
        .into_iter()
        .filter(|scope| match Scope::parse(scope) {
            Scope::Resource(_) => true,
            Scope::Other(kind) => kind != OtherKind::Extension,
            Scope::Unsupported | Scope::Malformed => false,
        })
        .collect();
    (!kept.is_empty()).then_some(kept)
}

/// What an authorization server's document says it supports, lists it omits read with their
/// RFC 8414 defaults.
struct Support<'a> {
    grants: Vec<&'a str>,
    auth_methods: Vec<&'a str>,
    response_types: Option<Vec<&'a str>>,
    scopes: Vec<&'a str>,
    authorization_endpoint: bool,
    issuer_and_keys: bool,
}

impl<'a> Support<'a> {
    fn of(idp: &'a Map<String, Value>) -> Self {
        Self {
            grants: strings(idp, "grant_types_supported")
                .unwrap_or_else(|| DEFAULT_GRANT_TYPES.to_vec()),
            auth_methods: strings(idp, "token_endpoint_auth_methods_supported")
                .unwrap_or_else(|| DEFAULT_AUTH_METHODS.to_vec()),
            response_types: strings(idp, "response_types_supported"),
            scopes: strings(idp, "scopes_supported").unwrap_or_default(),
            authorization_endpoint: endpoint(idp, "authorization_endpoint").is_some(),
            issuer_and_keys: endpoint(idp, "issuer").is_some()
                && endpoint(idp, "jwks_uri").is_some(),
        }
    }

    /// An app can be sent to authorize and come back with a code: the authorization endpoint,
    /// the `authorization_code` grant and the `code` response type (when response types are
    /// listed at all).
    fn code_flow(&self) -> bool {
        self.authorization_endpoint
            && self.grants.contains(&"authorization_code")
            && self
                .response_types
                .as_ref()
                .is_none_or(|types| types.contains(&"code"))
    }

    fn scope(&self, scope: &str) -> bool {
        self.scopes.contains(&scope)
    }

    fn auth_method(&self, method: &str) -> bool {
        self.auth_methods.contains(&method)
    }

    /// Refresh tokens are issued: the `refresh_token` grant is listed.
    fn refresh(&self) -> bool {
        self.grants.contains(&"refresh_token")
    }
}

/// SMART capabilities, in a fixed order. fhirgate enforces v1 and v2 scopes and `patient/`
/// and `user/` contexts itself, so those four are always listed; every other one needs the
/// support named beside it in the authorization server's document.
pub fn capabilities(idp: &Map<String, Value>) -> Vec<&'static str> {
    let support = Support::of(idp);
    let code = support.code_flow();
    let ehr = code && support.scope("launch");
    let rules: [(&'static str, bool); 14] = [
        ("launch-standalone", code),
        ("launch-ehr", ehr),
        ("client-public", code && support.auth_method("none")),
        (
            "client-confidential-symmetric",
            support.auth_method("client_secret_basic") || support.auth_method("client_secret_post"),
        ),
        (
            "client-confidential-asymmetric",
            support.auth_method("private_key_jwt"),
        ),
        (
            "sso-openid-connect",
            code && support.scope("openid") && support.issuer_and_keys,
        ),
        (
            "context-standalone-patient",
            code && support.scope("launch/patient"),
        ),
        ("context-ehr-patient", ehr),
        (
            "permission-offline",
            support.scope("offline_access") && support.refresh(),
        ),
        (
            "permission-online",
            support.scope("online_access") && support.refresh(),
        ),
        ("permission-patient", true),
        ("permission-user", true),
        ("permission-v1", true),
        ("permission-v2", true),
    ];
    rules
        .into_iter()
        .filter_map(|(name, listed)| listed.then_some(name))
        .collect()
}

/// RFC 7396 JSON merge patch of `target` with `patch`: `null` removes a member, a map merges
/// into a map, anything else replaces.
pub fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (name, value) in patch {
        match value {
            Value::Null => {
                target.remove(name);
            }
            Value::Object(inner) => {
                let slot = target
                    .entry(name.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(existing) = slot {
                    merge_patch(existing, inner);
                }
            }
            other => {
                target.insert(name.clone(), other.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    /// An OpenID provider offering the code flow to public and confidential clients.
    fn full_idp() -> Map<String, Value> {
        object(json!({
            "issuer": "https://as.example",
            "jwks_uri": "https://as.example/jwks",
            "authorization_endpoint": "https://as.example/auth",
            "token_endpoint": "https://as.example/token",
            "registration_endpoint": "https://as.example/reg",
            "introspection_endpoint": "https://as.example/introspect",
            "revocation_endpoint": "https://as.example/revoke",
            "userinfo_endpoint": "https://as.example/me",
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "response_types_supported": ["code", "id_token"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "private_key_jwt"],
            "code_challenge_methods_supported": ["plain", "S256"],
            "scopes_supported": [
                "openid", "fhirUser", "launch", "launch/patient", "offline_access",
                "patient/*.rs", "user/Observation.read", "system/*.cruds",
                "patient/Observation.rs?category=laboratory", "patient/Observation.rs?code:in=x",
                "patient/Nope.read",
                "email", "__custom", "https://as.example/scope"
            ]
        }))
    }

    #[test]
    fn members_are_passed_through_and_never_invented() {
        let doc = synthesise(&full_idp(), &Map::new());
        assert_eq!(doc["token_endpoint"], "https://as.example/token");
        assert_eq!(doc["revocation_endpoint"], "https://as.example/revoke");
        assert!(doc.get("management_endpoint").is_none());
        assert!(doc.get("userinfo_endpoint").is_none(), "not a SMART member");
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(
            doc["grant_types_supported"],
            json!(["authorization_code", "refresh_token", "client_credentials"])
        );
        assert_eq!(
            doc["scopes_supported"],
            json!([
                "openid",
                "fhirUser",
                "launch",
                "launch/patient",
                "offline_access",
                "patient/*.rs",
                "user/Observation.read",
                "system/*.cruds",
                "patient/Observation.rs?category=laboratory"
            ])
        );

        let bare = synthesise(
            &object(
                json!({"issuer": "https://as.example", "token_endpoint": "/token",
                "code_challenge_methods_supported": ["plain"]}),
            ),
            &Map::new(),
        );
        assert!(bare.get("token_endpoint").is_none(), "relative URL dropped");
        assert!(bare.get("code_challenge_methods_supported").is_none());
        assert!(bare.get("grant_types_supported").is_none());
        assert!(bare.get("scopes_supported").is_none());
    }

    #[test]
    fn capabilities_follow_what_the_document_supports() {
        assert_eq!(
            capabilities(&full_idp()),
            vec![
                "launch-standalone",
                "launch-ehr",
                "client-public",
                "client-confidential-symmetric",
                "client-confidential-asymmetric",
                "sso-openid-connect",
                "context-standalone-patient",
                "context-ehr-patient",
                "permission-offline",
                "permission-patient",
                "permission-user",
                "permission-v1",
                "permission-v2",
            ]
        );
        // A token endpoint for backend services only: no launch, no SSO, no refresh.
        let backend = object(json!({
            "issuer": "https://as.example",
            "token_endpoint": "https://as.example/token",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "scopes_supported": ["system/*.rs", "offline_access", "openid"]
        }));
        assert_eq!(
            capabilities(&backend),
            vec![
                "client-confidential-asymmetric",
                "permission-patient",
                "permission-user",
                "permission-v1",
                "permission-v2",
            ]
        );
        // Omitted lists read as RFC 8414 defaults: code flow and client_secret_basic.
        let defaults = object(json!({
            "issuer": "https://as.example",
            "authorization_endpoint": "https://as.example/auth",
            "token_endpoint": "https://as.example/token",
        }));
        let listed = capabilities(&defaults);
        assert!(listed.contains(&"launch-standalone"));
        assert!(listed.contains(&"client-confidential-symmetric"));
        assert!(!listed.contains(&"client-public"));
        assert!(!listed.contains(&"sso-openid-connect"));
        // The code response type must be offered when response types are listed.
        let mut implicit_only = full_idp();
        implicit_only.insert("response_types_supported".into(), json!(["id_token"]));
        assert!(!capabilities(&implicit_only).contains(&"launch-standalone"));
    }

    #[test]
    fn overrides_are_a_merge_patch() {
        let overrides = object(json!({
            "capabilities": ["launch-ehr", "context-banner"],
            "revocation_endpoint": null,
            "user_access_brand_bundle": "https://brands.example/bundle.json",
            "associated_endpoints": {"x": 1}
        }));
        let doc = synthesise(&full_idp(), &overrides);
        assert_eq!(doc["capabilities"], json!(["launch-ehr", "context-banner"]));
        assert!(doc.get("revocation_endpoint").is_none());
        assert_eq!(
            doc["user_access_brand_bundle"],
            "https://brands.example/bundle.json"
        );
        let mut nested = object(json!({"a": {"b": 1, "c": 2}, "d": 3}));
        merge_patch(
            &mut nested,
            &object(json!({"a": {"b": null, "e": 4}, "d": {"f": 5}})),
        );
        assert_eq!(
            Value::Object(nested),
            json!({"a": {"c": 2, "e": 4}, "d": {"f": 5}})
        );
    }

    #[test]
    fn oauth_uris_name_the_endpoints_present() {
        let doc = synthesise(&full_idp(), &Map::new());
        let uris = oauth_uris(&doc);
        let names: Vec<&str> = uris.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            vec!["authorize", "token", "register", "introspect", "revoke"]
        );
        assert_eq!(uris[1].1, "https://as.example/token");
    }
}
