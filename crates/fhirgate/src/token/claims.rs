//! What a verified token (or an introspection answer) says about the caller, normalised
//! across identity providers by a per-issuer claim mapping.

use std::sync::Arc;

use fhirgate_policy::{Grant, ScopeSet};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Which claims carry what, per issuer; each entry lists claim names tried in order.
///
/// The defaults read SMART App Launch tokens and the common shapes of Okta (`scp` array,
/// `cid`), Entra ID (`scp`, `appid`) and Keycloak (`azp`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimMapping {
    /// Granted scopes: a space-separated string or an array of strings.
    pub scope: Vec<String>,
    /// Patient in context: `123`, `Patient/123` or an absolute `.../Patient/123` URL.
    pub patient: Vec<String>,
    /// The user as a FHIR resource reference.
    pub fhir_user: Vec<String>,
    /// The client application.
    pub client_id: Vec<String>,
    /// The subject.
    pub subject: Vec<String>,
    /// Encounter in context.
    pub encounter: Vec<String>,
    /// SMART 2.x `fhirContext` array.
    pub fhir_context: Vec<String>,
    /// Purposes of use (v3-ActReason codes such as `BTG`): a space-separated string, an array
    /// of strings, a Coding or an array of Codings.
    pub purpose_of_use: Vec<String>,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect();
        Self {
            scope: names(&["scope", "scp"]),
            patient: names(&["patient"]),
            fhir_user: names(&["fhirUser"]),
            client_id: names(&["client_id", "cid", "azp", "appid"]),
            subject: names(&["sub"]),
            encounter: names(&["encounter"]),
            fhir_context: names(&["fhirContext"]),
            purpose_of_use: names(&["purpose_of_use"]),
        }
    }
}

/// Who a verified token speaks for: the caller, its app, its patient and its scopes. Every
/// token of one session (a refresh, a new `jti`) says the same, so the verified-token cache
/// keeps one `Caller` for all of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Caller {
    pub issuer: String,
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub fhir_user: Option<String>,
    /// The patient in context, as a plain id.
    pub patient: Option<String>,
    /// The encounter in context, as a plain id.
    pub encounter: Option<String>,
    /// SMART 2.x `fhirContext`, as compact JSON.
    pub fhir_context: Option<String>,
    /// The granted scopes, space-separated.
    pub scope: Option<String>,
    /// What the token is bound to (its `cnf` claim, RFC 7800).
    pub binding: Binding,
    /// The purposes of use the token states, as codes (at most
    /// [`MAX_PURPOSES`](super::purpose::MAX_PURPOSES), each once).
    pub purposes_of_use: Vec<String>,
}

impl Caller {
    /// The grant the caller's claims make: its scopes and its launch context.
    pub fn grant(&self) -> Grant {
        Grant::new(
            ScopeSet::parse(self.scope.as_deref().unwrap_or("")),
            self.patient.clone(),
        )
        .with_context(self.encounter.clone(), self.fhir_user.clone())
    }
}

/// A verified token: its caller, the grant the caller's claims make (parsed once), and what
/// is the token's own.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub caller: Arc<Caller>,
    pub grant: Arc<Grant>,
    /// `jti` of a JWT, or a digest of an opaque token; never the token.
    pub token_id: Option<String>,
    /// `exp` as Unix seconds, where the token has one.
    pub expires_at: Option<f64>,
    /// Which of the audiences the gateway accepts the token names.
    pub audience: TokenAudience,
}

/// The audiences a token names (`aud`), as far as the gateway's routes tell them apart: its
/// issuer's configured `audience`, and the routes' own audiences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenAudience {
    /// The token names its issuer's `audience` (or, from introspection, names no audience at
    /// all, and is judged by its issuer alone).
    pub issuer: bool,
    /// The routes' own audiences the token names.
    pub routes: Vec<String>,
}

impl Default for TokenAudience {
    /// What a token says that the gateway did not check for routes: its issuer's audience.
    fn default() -> Self {
        Self {
            issuer: true,
            routes: Vec::new(),
        }
    }
}

impl TokenAudience {
    /// The audiences named by an `aud` claim (a string or an array of strings) among
    /// `issuer` (the issuer's `audience`) and `routes` (the routes' own audiences); `None`
    /// when it names none of them.
    pub fn of(aud: &Value, issuer: &str, routes: &[String]) -> Option<Self> {
        let named: Vec<&str> = match aud {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let audience = Self {
            issuer: named.contains(&issuer),
            routes: routes
                .iter()
                .filter(|route| named.contains(&route.as_str()))
                .cloned()
                .collect(),
        };
        (audience.issuer || !audience.routes.is_empty()).then_some(audience)
    }

    /// Does the token name `wanted`, a route's own audience, or its issuer's when `None`?
    pub fn accepts(&self, wanted: Option<&str>) -> bool {
        match wanted {
            None => self.issuer,
            Some(wanted) => self.routes.iter().any(|named| named == wanted),
        }
    }
}

impl From<Caller> for Identity {
    /// The identity of a token that says no more than who calls (no `jti`, no `exp`).
    fn from(caller: Caller) -> Self {
        Self::new(caller, None, None)
    }
}

impl Default for Identity {
    fn default() -> Self {
        Self::new(Caller::default(), None, None)
    }
}

/// The sender constraint of a token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Binding {
    /// A bearer token: whoever holds it may use it.
    #[default]
    Unbound,
    /// Bound to a DPoP key (RFC 9449): the thumbprint from `cnf.jkt`.
    Dpop(String),
    /// Bound to a client certificate (RFC 8705): the thumbprint from `cnf.x5t#S256`.
    Certificate(String),
    /// A `cnf` claim the gateway cannot check; such a token is never accepted.
    Unsupported,
}

impl Identity {
    /// The identity of a token with these claims; the grant is parsed from them here.
    pub fn new(caller: Caller, token_id: Option<String>, expires_at: Option<f64>) -> Self {
        let grant = Arc::new(caller.grant());
        Self::shared(Arc::new(caller), grant, token_id, expires_at)
    }

    /// The identity of a token whose caller and grant are already known (and shared).
    pub fn shared(
        caller: Arc<Caller>,
        grant: Arc<Grant>,
        token_id: Option<String>,
        expires_at: Option<f64>,
    ) -> Self {
        Self {
            caller,
            grant,
            token_id,
            expires_at,
            audience: TokenAudience::default(),
        }
    }

    /// Normalises verified claims with `mapping`.
    pub fn from_claims(
        issuer: String,
        claims: &Map<String, Value>,
        mapping: &ClaimMapping,
    ) -> Self {
        let first_text = |names: &[String]| {
            names
                .iter()
                .find_map(|name| claims.get(name).and_then(Value::as_str))
                .map(str::to_owned)
        };
        let scope = mapping
            .scope
            .iter()
            .find_map(|name| scope_text(claims.get(name)?));
        let fhir_context = mapping
            .fhir_context
            .iter()
            .find_map(|name| claims.get(name))
            .filter(|value| !value.is_null())
            .map(Value::to_string);
        let purposes_of_use = mapping
            .purpose_of_use
            .iter()
            .find_map(|name| claims.get(name))
            .map(super::purpose::from_claim)
            .unwrap_or_default();
        let caller = Caller {
            issuer,
            subject: first_text(&mapping.subject),
            client_id: first_text(&mapping.client_id),
            fhir_user: first_text(&mapping.fhir_user),
            patient: first_text(&mapping.patient).and_then(|v| reference_id(&v, "Patient")),
            encounter: first_text(&mapping.encounter).and_then(|v| reference_id(&v, "Encounter")),
            fhir_context,
            scope,
            binding: binding(claims),
            purposes_of_use,
        };
        Self::new(
            caller,
            claims.get("jti").and_then(Value::as_str).map(str::to_owned),
            claims.get("exp").and_then(Value::as_f64),
        )
    }
}

/// The sender constraint a `cnf` claim (RFC 7800) sets.
fn binding(claims: &Map<String, Value>) -> Binding {
    let Some(cnf) = claims.get("cnf") else {
        return Binding::Unbound;
    };
    let member = |name: &str| cnf.get(name).and_then(Value::as_str).map(str::to_owned);
    match (member("jkt"), member("x5t#S256")) {
        (Some(jkt), None) => Binding::Dpop(jkt),
        (None, Some(x5t)) => Binding::Certificate(x5t),
        _ => Binding::Unsupported,
    }
}

/// Scopes given as a space-separated string (RFC 9068) or an array of strings.
fn scope_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Array(items) => {
            let words: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            words.map(|words| words.join(" "))
        }
        _ => None,
    }
}

/// The id of a context claim given as `123`, `Type/123` or `https://ehr/fhir/Type/123`.
fn reference_id(value: &str, resource_type: &str) -> Option<String> {
    let marker = format!("{resource_type}/");
    let id = match value.rsplit_once(&marker) {
        Some((_, id)) => id,
        None => value,
    };
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_are_told_apart_for_routes() {
        use serde_json::json;
        let routes = ["https://gw/a".to_owned(), "https://gw/b".to_owned()];
        let of = |aud: Value| TokenAudience::of(&aud, "https://gw/fhir", &routes);
        let issuer = of(json!("https://gw/fhir")).unwrap();
        assert!(issuer.accepts(None) && !issuer.accepts(Some("https://gw/a")));
        let a = of(json!(["https://gw/a", "other"])).unwrap();
        assert!(!a.accepts(None) && a.accepts(Some("https://gw/a")));
        assert!(!a.accepts(Some("https://gw/b")));
        assert_eq!(of(json!("https://elsewhere")), None);
        assert_eq!(of(json!(7)), None);
        assert!(TokenAudience::default().accepts(None));
    }

    fn identity(json: &str) -> Identity {
        let claims: Map<String, Value> = serde_json::from_str(json).unwrap();
        Identity::from_claims("i".into(), &claims, &ClaimMapping::default())
    }

    #[test]
    fn confirmation_claims_set_the_binding() {
        use serde_json::json;
        let of = |cnf: Value| {
            let claims = json!({ "sub": "s", "cnf": cnf });
            Identity::from_claims(
                "i".into(),
                claims.as_object().unwrap(),
                &ClaimMapping::default(),
            )
            .caller
            .binding
            .clone()
        };
        assert_eq!(of(json!({"jkt": "abc"})), Binding::Dpop("abc".into()));
        assert_eq!(
            of(json!({"x5t#S256": "def"})),
            Binding::Certificate("def".into())
        );
        assert_eq!(of(json!({"jwk": {"kty": "EC"}})), Binding::Unsupported);
        assert_eq!(of(json!({"jkt": 7})), Binding::Unsupported);
        assert_eq!(of(json!("x")), Binding::Unsupported);
    }

    #[test]
    fn scope_string_or_array() {
        let a = identity(r#"{"scope":"a b"}"#);
        let b = identity(r#"{"scp":["a","b"]}"#);
        assert_eq!(a.caller.scope.as_deref(), Some("a b"));
        assert_eq!(b.caller.scope, a.caller.scope);
        assert_eq!(identity(r#"{"scp":["a",1]}"#).caller.scope, None);
    }

    #[test]
    fn patient_forms_are_normalised() {
        for form in ["123", "Patient/123", "https://ehr.test/fhir/Patient/123"] {
            let id = identity(&format!(r#"{{"patient":"{form}"}}"#));
            assert_eq!(id.caller.patient.as_deref(), Some("123"), "{form}");
        }
        assert_eq!(identity(r#"{"patient":"a/b c"}"#).caller.patient, None);
        assert_eq!(identity(r#"{"patient":42}"#).caller.patient, None);
    }

    #[test]
    fn client_id_fallbacks() {
        assert_eq!(
            identity(r#"{"cid":"okta-app"}"#)
                .caller
                .client_id
                .as_deref(),
            Some("okta-app")
        );
        assert_eq!(
            identity(r#"{"appid":"entra-app"}"#)
                .caller
                .client_id
                .as_deref(),
            Some("entra-app")
        );
        assert_eq!(
            identity(r#"{"client_id":"a","azp":"b"}"#)
                .caller
                .client_id
                .as_deref(),
            Some("a")
        );
    }

    #[test]
    fn a_custom_mapping_reads_named_claims() {
        let mapping = ClaimMapping {
            patient: vec!["launch_patient".into()],
            scope: vec!["scp".into()],
            ..ClaimMapping::default()
        };
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"scp":["patient/*.rs"],"launch_patient":"Patient/123","patient":"999","cid":"c"}"#,
        )
        .unwrap();
        let id = Identity::from_claims("i".into(), &claims, &mapping);
        assert_eq!(id.caller.patient.as_deref(), Some("123"));
        assert_eq!(id.caller.scope.as_deref(), Some("patient/*.rs"));
        assert_eq!(id.caller.client_id.as_deref(), Some("c"));
    }

    #[test]
    fn purposes_of_use_come_from_the_first_named_claim() {
        let id = identity(
            r#"{"purpose_of_use":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActReason","code":"BTG"},"TREAT"]}"#,
        );
        assert_eq!(id.caller.purposes_of_use, ["BTG", "TREAT"]);
        assert!(identity(r#"{"sub":"s"}"#).caller.purposes_of_use.is_empty());
        assert!(
            identity(r#"{"purpose_of_use":42}"#)
                .caller
                .purposes_of_use
                .is_empty()
        );
        let mapping = ClaimMapping {
            purpose_of_use: vec!["pou".into(), "purpose_of_use".into()],
            ..ClaimMapping::default()
        };
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"purpose_of_use":"TREAT","pou":"urn:oid:2.16.840.1.113883.5.8#BTG"}"#,
        )
        .unwrap();
        let id = Identity::from_claims("i".into(), &claims, &mapping);
        assert_eq!(id.caller.purposes_of_use, ["BTG"]);
    }

    #[test]
    fn launch_context_beyond_the_patient() {
        let id = identity(
            r#"{"encounter":"Encounter/e1","fhirContext":[{"reference":"Appointment/a1"}],"jti":"j","exp":1900000000}"#,
        );
        assert_eq!(id.caller.encounter.as_deref(), Some("e1"));
        assert_eq!(
            id.caller.fhir_context.as_deref(),
            Some(r#"[{"reference":"Appointment/a1"}]"#)
        );
        assert_eq!(id.token_id.as_deref(), Some("j"));
        assert_eq!(id.expires_at, Some(1_900_000_000.0));
    }
}
