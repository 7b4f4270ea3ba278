//! What `fhirgate explain` found, as data: rendered for people by [`super::render`] and
//! serialized as-is for `--format json`. Every field is always present (`null` or empty when
//! it does not apply), so the JSON document keeps one shape.

use serde::Serialize;

/// Version of the JSON document; raised when a field changes meaning or disappears.
pub const REPORT_VERSION: u32 = 1;

/// The whole explanation.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub version: u32,
    /// Where the configuration came from: a file path or `embedded default`.
    pub config: String,
    pub token: TokenReport,
    pub grant: GrantReport,
    pub request: RequestReport,
    pub decision: DecisionReport,
}

/// The token or claims file, and the identity the gateway maps from it.
#[derive(Debug, Clone, Serialize)]
pub struct TokenReport {
    /// `token` or `claims`.
    pub source: &'static str,
    /// Always `false`: explain never checks a signature.
    pub verified: bool,
    /// Plain words on what was and was not checked.
    pub note: String,
    /// The JOSE `alg` of a token.
    pub algorithm: Option<String>,
    pub issuer: Option<String>,
    /// Does `issuer` name an issuer of the configuration?
    pub issuer_configured: bool,
    /// The `aud` values of the claims.
    pub audience: Vec<String>,
    /// The audience the request's route requires: its own, or the configured issuer's.
    pub expected_audience: Option<String>,
    /// `expected_audience` is the route's own, not the issuer's.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub route_audience: bool,
    /// `exp`, `nbf`, `iat` as RFC 3339 UTC.
    pub expires: Option<String>,
    pub not_before: Option<String>,
    pub issued_at: Option<String>,
    /// Why the gateway would not accept these credentials, each with its answer.
    pub problems: Vec<Problem>,
    pub identity: IdentityReport,
}

/// One reason the gateway would refuse the credentials before deciding.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub message: String,
    pub answer: Answer,
}

/// The identity as the gateway's claim mapping produces it.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityReport {
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub fhir_user: Option<String>,
    /// The patient in context, a plain id.
    pub patient: Option<String>,
    pub encounter: Option<String>,
    pub fhir_context: Option<String>,
    /// The scopes, space-separated, as mapped.
    pub scope: Option<String>,
    pub token_id: Option<String>,
    /// Set when a patient claim is present but not a usable id.
    pub patient_claim_unusable: Option<String>,
    /// The purposes of use the claims state (with those given by `--purpose`), as codes.
    pub purposes_of_use: Vec<String>,
}

/// The grant the scopes and patient context make.
#[derive(Debug, Clone, Serialize)]
pub struct GrantReport {
    pub patient: Option<String>,
    pub resource_scopes: Vec<ScopeReport>,
    /// Recognised scopes that grant no data access (launch, identity, refresh, extension).
    pub ignored: Vec<IgnoredScope>,
    /// Well-formed resource scopes the gateway cannot enforce: they grant nothing.
    pub unsupported: Vec<String>,
    /// Scopes that are not well-formed: they grant nothing.
    pub malformed: Vec<String>,
}

/// One enforceable resource scope.
#[derive(Debug, Clone, Serialize)]
pub struct ScopeReport {
    pub scope: String,
    /// `patient`, `user` or `system`.
    pub context: &'static str,
    /// A resource type or `*`.
    pub resource_type: String,
    /// SMART v2 letters, e.g. `rs`.
    pub permissions: String,
    /// The letters spelt out: `read`, `search`, ...
    pub permission_names: Vec<&'static str>,
    /// Granular restrictions, decoded.
    pub parameters: Vec<Param>,
    /// Why the scope has no effect on this grant, when it has none.
    pub inactive: Option<String>,
}

/// A recognised scope that grants no data access.
#[derive(Debug, Clone, Serialize)]
pub struct IgnoredScope {
    pub scope: String,
    /// `launch`, `identity`, `refresh` or `extension`.
    pub kind: &'static str,
}

/// A decoded `name=value` pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Param {
    pub name: String,
    pub value: String,
}

/// The request as given and as the gateway classifies it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestReport {
    pub method: String,
    /// The URL as given.
    pub url: String,
    /// The path relative to the public base (no leading `/`), once accepted.
    pub relative_path: Option<String>,
    /// The raw query string.
    pub query: Option<String>,
    /// Headers given with `--header`, and a `Content-Type` explain assumed for a body.
    pub headers: Vec<HeaderReport>,
    /// Bytes of the body file.
    pub body_bytes: Option<usize>,
    /// Set when a body was given on a method whose body the gateway does not read.
    pub body_ignored: Option<String>,
    /// Absent when the request was refused before classification.
    pub classified: Option<Classified>,
}

/// One request header.
#[derive(Debug, Clone, Serialize)]
pub struct HeaderReport {
    pub name: String,
    pub value: String,
    /// Added by explain (not given on the command line).
    pub assumed: bool,
}

/// A classified FHIR request.
#[derive(Debug, Clone, Serialize)]
pub struct Classified {
    /// FHIR interaction code: `read`, `search-type`, `transaction`, ...
    pub interaction: &'static str,
    pub resource_type: Option<String>,
    pub id: Option<String>,
    pub version_id: Option<String>,
    pub compartment: Option<Compartment>,
    pub operation: Option<String>,
    pub parameters: Vec<Param>,
    pub conditional: bool,
    pub if_none_exist: Vec<Param>,
    /// `resourceType` of a JSON body resource.
    pub body_resource_type: Option<String>,
    /// How a patch document was read: `readable` (with the element names it touches) or
    /// `opaque`.
    pub patch: Option<String>,
    /// Batch or transaction entries, in order.
    pub entries: Vec<Classified>,
}

/// The compartment of a compartment search.
#[derive(Debug, Clone, Serialize)]
pub struct Compartment {
    pub resource_type: String,
    pub id: String,
}

/// What the gateway decides and answers.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionReport {
    /// `allow` or `deny`.
    pub outcome: &'static str,
    /// The step that decided: `accept`, `public`, `limits`, `classify`, `policy` or `format`.
    pub step: &'static str,
    /// The policy rule that allowed or refused.
    pub rule: Option<String>,
    /// A scope that granted the request.
    pub scope: Option<String>,
    /// The gateway's own answer, for a refusal.
    pub answer: Option<Answer>,
    /// For an allow: what the gateway does while forwarding.
    pub obligations: Option<ObligationsReport>,
    /// Break-the-glass, after a policy decision, when it is configured or the request states
    /// a purpose of use.
    pub break_glass: Option<BreakGlassReport>,
}

/// What break-the-glass made of the policy decision.
#[derive(Debug, Clone, Serialize)]
pub struct BreakGlassReport {
    /// Is a `break_glass` section configured?
    pub configured: bool,
    /// The purposes of use the request states: the claims', `--purpose`, and the configured
    /// header's.
    pub purposes: Vec<String>,
    /// Did the glass break (the decision shown is the one under the emergency grant)?
    pub applied: bool,
    /// The purposes that broke it.
    pub codes: Vec<String>,
    /// The scopes the emergency adds to the token's.
    pub emergency_scopes: Vec<String>,
    /// Why the glass stayed whole, when it did.
    pub not_applied: Option<String>,
}

/// A response the gateway makes itself, as `refusal.rs` maps it.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub status: u16,
    pub status_text: String,
    /// OperationOutcome `issue.code`.
    pub issue_code: &'static str,
    /// The `WWW-Authenticate` header, on 401 and 403.
    pub www_authenticate: Option<String>,
    /// Its RFC 6750 `error` value.
    pub error: Option<String>,
    /// OperationOutcome `issue.details.text`.
    pub message: String,
    /// OperationOutcome `issue.expression` (`Bundle.entry[n]`).
    pub expression: Vec<String>,
    /// The `reason` written to the audit trail.
    pub audit_reason: &'static str,
}

/// The obligations of an allow, made concrete.
#[derive(Debug, Clone, Serialize)]
pub struct ObligationsReport {
    /// No obligation: the request is forwarded unchanged.
    pub none: bool,
    /// Parameters ANDed into the query.
    pub added_parameters: Vec<Param>,
    /// The upstream request line: method and URL.
    pub upstream_method: String,
    pub upstream_url: String,
    /// Parameters ANDed into `If-None-Exist`, and the header as forwarded.
    pub added_if_none_exist: Vec<Param>,
    pub upstream_if_none_exist: Option<String>,
    pub precheck: Option<PrecheckReport>,
    pub response_check: Option<CheckReport>,
    /// A read that fails its check is answered as not found.
    pub withheld_as_not_found: bool,
    /// Bulk Data status and file URLs are bound to the client that started the export.
    pub bind_export_to_client: bool,
    /// Bundle entries forwarded with obligations of their own.
    pub bundle_entries: Vec<EntryReport>,
    /// Batch entries left out of the upstream Bundle and answered in the batch-response.
    pub refused_entries: Vec<RefusedEntryReport>,
}

/// The obligations of one Bundle entry.
#[derive(Debug, Clone, Serialize)]
pub struct EntryReport {
    /// `Bundle.entry[n]`.
    pub entry: String,
    /// Parameters ANDed into the entry's `request.url`.
    pub added_parameters: Vec<Param>,
    pub response_check: Option<CheckReport>,
}

/// A batch entry refused on its own.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedEntryReport {
    /// `Bundle.entry[n]`.
    pub entry: String,
    /// What the batch-response says for it.
    pub answer: Answer,
}

/// A fetch the gateway makes before forwarding a write.
#[derive(Debug, Clone, Serialize)]
pub struct PrecheckReport {
    /// `target` (the current resource) or `matches` (a conditional write's matches).
    pub kind: &'static str,
    pub fetch_url: String,
    pub checks: String,
    /// Answers when the check fails.
    pub fails_with: Vec<Answer>,
}

/// A check of what the upstream returns.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// `resource` or `bundle`.
    pub expect: &'static str,
    /// Letters a covering scope must hold (any of them).
    pub permissions: String,
    pub patient: Option<String>,
    pub checks: String,
    /// The answer when a single resource fails (none for Bundles: entries are withheld).
    pub fails_with: Option<Answer>,
}
