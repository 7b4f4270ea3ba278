//! FHIR R4 REST request classification.
//!
//! Turns method + base-relative path + query (+ body where it matters) into a [`FhirRequest`]:
//! the interaction, the types and ids it touches, its search parameters and, for batches and
//! transactions, one classified request per entry. Anything ambiguous is refused here, before
//! authorization: non-canonical paths (dot segments, encoded slashes, empty segments, `;`),
//! unknown or mis-cased resource types, invalid ids, undecodable queries or form bodies.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::compartment::is_fhir_id;
use crate::options::PolicyOptions;
use crate::query::{QueryError, parse_pairs};
use crate::scope::is_resource_type;

mod patch;

pub use patch::Patch;

/// The raw parts of an incoming request, as the server received them.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestParts<'a> {
    /// `GET`, `POST`, ... (upper case as received; `HEAD` is treated as `GET`).
    pub method: &'a str,
    /// Path relative to the FHIR base, no leading `/`, still percent-encoded.
    pub path: &'a str,
    /// Raw query string without `?`.
    pub query: Option<&'a str>,
    /// `Content-Type` header value.
    pub content_type: Option<&'a str>,
    /// Buffered body for POST/PUT/PATCH.
    pub body: Option<&'a [u8]>,
    /// `If-None-Exist` header value (conditional create), raw query syntax.
    pub if_none_exist: Option<&'a str>,
}

/// The FHIR RESTful interaction of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    /// `GET T/id`.
    Read,
    /// `GET T/id/_history/vid`.
    Vread,
    /// `GET T/id/_history`.
    HistoryInstance,
    /// `GET T/_history`.
    HistoryType,
    /// `GET _history`.
    HistorySystem,
    /// `GET T?...`, `POST T/_search`.
    SearchType,
    /// `GET ?...`, `POST _search`.
    SearchSystem,
    /// `GET Patient/id/T`, `GET Patient/id/*`.
    SearchCompartment,
    /// `POST T`.
    Create,
    /// `PUT T/id`, conditional `PUT T?...`.
    Update,
    /// `PATCH T/id`, conditional `PATCH T?...`.
    Patch,
    /// `DELETE T/id`, conditional `DELETE T?...`.
    Delete,
    /// `POST` of a Bundle with `type = batch`.
    Batch,
    /// `POST` of a Bundle with `type = transaction`.
    Transaction,
    /// `GET metadata`.
    Capabilities,
    /// `GET .well-known/smart-configuration`.
    SmartConfiguration,
    /// `$operation` at system, type or instance level (`$graphql` included).
    Operation,
    /// `GET [base]?_getpages=...`: a further page of an earlier search or history, held by
    /// the server.
    PageContinuation,
}

impl Interaction {
    /// Every interaction.
    pub const ALL: [Interaction; 18] = [
        Self::Read,
        Self::Vread,
        Self::HistoryInstance,
        Self::HistoryType,
        Self::HistorySystem,
        Self::SearchType,
        Self::SearchSystem,
        Self::SearchCompartment,
        Self::Create,
        Self::Update,
        Self::Patch,
        Self::Delete,
        Self::Batch,
        Self::Transaction,
        Self::Capabilities,
        Self::SmartConfiguration,
        Self::Operation,
        Self::PageContinuation,
    ];

    /// FHIR restful-interaction style code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Vread => "vread",
            Self::HistoryInstance => "history-instance",
            Self::HistoryType => "history-type",
            Self::HistorySystem => "history-system",
            Self::SearchType => "search-type",
            Self::SearchSystem => "search-system",
            Self::SearchCompartment => "search-compartment",
            Self::Create => "create",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::Batch => "batch",
            Self::Transaction => "transaction",
            Self::Capabilities => "capabilities",
            Self::SmartConfiguration => "smart-configuration",
            Self::Operation => "operation",
            Self::PageContinuation => "page-continuation",
        }
    }

    /// Does a successful response carry a Bundle of resources (to be checked with
    /// `verify::filter_bundle`) rather than one resource?
    pub fn returns_bundle(&self) -> bool {
        matches!(
            self,
            Self::HistoryInstance
                | Self::HistoryType
                | Self::HistorySystem
                | Self::SearchType
                | Self::SearchSystem
                | Self::SearchCompartment
                | Self::Operation
                | Self::PageContinuation
        )
    }
}

/// A classified FHIR request.
#[derive(Debug, Clone, PartialEq)]
pub struct FhirRequest {
    /// The interaction.
    pub interaction: Interaction,
    /// The resource type in the path (`T`, or the target type of a compartment search; `*` for
    /// an all-types compartment search).
    pub resource_type: Option<String>,
    /// The instance id.
    pub id: Option<String>,
    /// The version id of a vread.
    pub version_id: Option<String>,
    /// `("Patient", id)` for compartment searches (any compartment type is recorded).
    pub compartment: Option<(String, String)>,
    /// Operation name without `$`.
    pub operation: Option<String>,
    /// Decoded query parameters (and form-body parameters of `POST _search`).
    pub params: Vec<(String, String)>,
    /// Conditional update/patch/delete (criteria in `params`) or conditional create
    /// (criteria in `if_none_exist`).
    pub conditional: bool,
    /// Decoded `If-None-Exist` criteria of a conditional create.
    pub if_none_exist: Vec<(String, String)>,
    /// Body resource of create/update (and batch entries), when the body is JSON.
    pub resource: Option<Value>,
    /// The classified body of a patch.
    pub patch: Option<Patch>,
    /// Classified batch/transaction entries, in order.
    pub entries: Vec<FhirRequest>,
}

impl FhirRequest {
    /// A request of `interaction` with nothing else set.
    pub fn new(interaction: Interaction) -> Self {
        Self {
            interaction,
            resource_type: None,
            id: None,
            version_id: None,
            compartment: None,
            operation: None,
            params: Vec::new(),
            conditional: false,
            if_none_exist: Vec::new(),
            resource: None,
            patch: None,
            entries: Vec::new(),
        }
    }

    /// The value of the first parameter called `name` (exact name, modifiers included).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request could not be classified (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// A path segment that is not an exact-case R4 resource type.
    #[error("unknown resource type {0:?}")]
    UnknownResourceType(String),
    /// A path segment that is not a valid FHIR id.
    #[error("invalid resource id {0:?}")]
    InvalidId(String),
    /// Dot segments, encoded slashes or backslashes, empty segments or `;` parameters.
    #[error("path is not in canonical form: {0}")]
    NonCanonicalPath(&'static str),
    /// A path that is not a FHIR REST URL pattern.
    #[error("path does not match any FHIR REST interaction")]
    BadPathShape,
    /// A method fhirgate does not forward.
    #[error("method {0} is not supported")]
    UnsupportedMethod(String),
    /// A method not allowed on this path.
    #[error("method {method} is not allowed on this path")]
    MethodNotAllowed {
        /// The method.
        method: String,
    },
    /// Undecodable query string.
    #[error("malformed query string: {0}")]
    BadQuery(#[from] QueryError),
    /// `POST _search` without a form body.
    #[error("POST _search needs an application/x-www-form-urlencoded body")]
    BadFormBody,
    /// A body that should be a FHIR JSON resource but is not.
    #[error("request body is not a valid FHIR JSON resource")]
    BadBody,
    /// An absolute entry URL that does not start with one of the gateway's base URLs.
    #[error("entry request.url names another server")]
    ForeignEntryUrl,
    /// A batch/transaction Bundle that cannot be read.
    #[error("unparsable Bundle: {0}")]
    BadBundle(&'static str),
    /// One batch/transaction entry failed classification.
    #[error("Bundle.entry[{index}]: {source}")]
    BadEntry {
        /// Entry index.
        index: usize,
        /// The entry's error.
        source: Box<ClassifyError>,
    },
}

/// Classifies one request with the default options (absolute Bundle entry URLs refused).
pub fn classify(parts: &RequestParts<'_>) -> Result<FhirRequest, ClassifyError> {
    classify_with(parts, &PolicyOptions::default())
}

/// Classifies one request. Batch/transaction entries are classified recursively; absolute
/// entry URLs are accepted only under one of `options.base_urls`.
pub fn classify_with(
    parts: &RequestParts<'_>,
    options: &PolicyOptions,
) -> Result<FhirRequest, ClassifyError> {
    let method = match parts.method {
        "HEAD" => "GET",
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE") => m,
        other => {
            return Err(ClassifyError::UnsupportedMethod(
                other.chars().take(16).collect(),
            ));
        }
    };
    let segments = split_path(parts.path)?;
    let mut req = FhirRequest::new(Interaction::SearchSystem);
    req.params = parse_pairs(parts.query.unwrap_or(""))?;
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    route(method, &segs, parts, &mut req, options)?;
    Ok(req)
}

/// Splits and validates the path; returns decoded segments (empty for the base).
fn split_path(path: &str) -> Result<Vec<String>, ClassifyError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || path.contains('\\') {
        return Err(ClassifyError::NonCanonicalPath(
            "encoded slash or backslash",
        ));
    }
    if path.contains(';') || lower.contains("%3b") {
        return Err(ClassifyError::NonCanonicalPath("path parameters (;)"));
    }
    let mut out = Vec::new();
    for raw in path.split('/') {
        if raw.is_empty() {
            return Err(ClassifyError::NonCanonicalPath("empty path segment"));
        }
        let seg = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| ClassifyError::NonCanonicalPath("undecodable segment"))?;
        if seg == "." || seg == ".." {
            return Err(ClassifyError::NonCanonicalPath("dot segment"));
        }
        if seg.chars().any(|c| c.is_control() || c == '/') {
            return Err(ClassifyError::NonCanonicalPath("control character"));
        }
        out.push(seg.into_owned());
    }
    Ok(out)
}

fn resource_type(seg: &str) -> Result<String, ClassifyError> {
    if is_resource_type(seg) {
        Ok(seg.to_owned())
    } else {
        Err(ClassifyError::UnknownResourceType(
            seg.chars().take(64).collect(),
        ))
    }
}

fn fhir_id(seg: &str) -> Result<String, ClassifyError> {
    if is_fhir_id(seg) {
        Ok(seg.to_owned())
    } else {
        Err(ClassifyError::InvalidId(seg.chars().take(64).collect()))
    }
}

fn operation(seg: &str) -> Option<String> {
    let name = seg.strip_prefix('$')?;
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| name.to_owned())
}

fn not_allowed(method: &str) -> ClassifyError {
    ClassifyError::MethodNotAllowed {
        method: method.to_owned(),
    }
}

fn route(
    method: &str,
    segs: &[&str],
    parts: &RequestParts<'_>,
    req: &mut FhirRequest,
    options: &PolicyOptions,
) -> Result<(), ClassifyError> {
    use Interaction as I;
    let interaction = match (method, segs) {
        ("GET", []) if req.params.iter().any(|(n, _)| n == "_getpages") => I::PageContinuation,
        ("GET", []) => I::SearchSystem,
        ("POST", []) => return classify_bundle(parts, req, options),
        ("GET", ["metadata"]) => I::Capabilities,
        ("GET", [".well-known", "smart-configuration"]) => I::SmartConfiguration,
        ("GET", ["_history"]) => I::HistorySystem,
        ("GET" | "POST", ["_search"]) => {
            add_form_params(method, parts, req)?;
            I::SearchSystem
        }
        ("GET" | "POST", [op]) if op.starts_with('$') => {
            req.operation = Some(operation(op).ok_or(ClassifyError::BadPathShape)?);
            I::Operation
        }
        (_, [t, rest @ ..]) => {
            req.resource_type = Some(resource_type(t)?);
            return route_type(method, rest, parts, req);
        }
        (m, _) => return Err(not_allowed(m)),
    };
    req.interaction = interaction;
    Ok(())
}

fn route_type(
    method: &str,
    rest: &[&str],
    parts: &RequestParts<'_>,
    req: &mut FhirRequest,
) -> Result<(), ClassifyError> {
    use Interaction as I;
    req.interaction = match (method, rest) {
        ("GET", []) => I::SearchType,
        ("POST", []) => {
            req.resource = json_body(parts)?;
            if let Some(criteria) = parts.if_none_exist {
                req.conditional = true;
                req.if_none_exist = parse_pairs(criteria)?;
            }
            I::Create
        }
        ("PUT" | "PATCH" | "DELETE", []) => {
            if req.params.is_empty() {
                return Err(not_allowed(method));
            }
            req.conditional = true;
            write_interaction(method, parts, req)?
        }
        ("GET" | "POST", ["_search"]) => {
            add_form_params(method, parts, req)?;
            I::SearchType
        }
        ("GET", ["_history"]) => I::HistoryType,
        ("GET" | "POST", [op]) if op.starts_with('$') => {
            req.operation = Some(operation(op).ok_or(ClassifyError::BadPathShape)?);
            I::Operation
        }
        (_, [id, more @ ..]) => {
            req.id = Some(fhir_id(id)?);
            return route_instance(method, more, parts, req);
        }
        (m, _) => return Err(not_allowed(m)),
    };
    Ok(())
}

fn route_instance(
    method: &str,
    more: &[&str],
    parts: &RequestParts<'_>,
    req: &mut FhirRequest,
) -> Result<(), ClassifyError> {
    use Interaction as I;
    req.interaction = match (method, more) {
        ("GET", []) => I::Read,
        ("PUT" | "PATCH" | "DELETE", []) => write_interaction(method, parts, req)?,
        ("GET", ["_history"]) => I::HistoryInstance,
        ("GET", ["_history", vid]) => {
            req.version_id = Some(fhir_id(vid)?);
            I::Vread
        }
        ("GET" | "POST", [op]) if op.starts_with('$') => {
            req.operation = Some(operation(op).ok_or(ClassifyError::BadPathShape)?);
            I::Operation
        }
        ("GET" | "POST", [target, tail @ ..]) if matches!(tail, [] | ["_search"]) => {
            let target = if *target == "*" {
                "*".to_owned()
            } else {
                resource_type(target)?
            };
            if method == "POST" && tail.is_empty() {
                return Err(not_allowed(method));
            }
            add_form_params(method, parts, req)?;
            let owner = req.resource_type.take().unwrap_or_default();
            let id = req.id.take().unwrap_or_default();
            req.compartment = Some((owner, id));
            req.resource_type = Some(target);
            I::SearchCompartment
        }
        (m, _) => return Err(not_allowed(m)),
    };
    Ok(())
}

fn write_interaction(
    method: &str,
    parts: &RequestParts<'_>,
    req: &mut FhirRequest,
) -> Result<Interaction, ClassifyError> {
    Ok(match method {
        "PUT" => {
            req.resource = json_body(parts)?;
            Interaction::Update
        }
        "PATCH" => {
            req.patch = Some(patch::classify_patch(parts.content_type, parts.body)?);
            Interaction::Patch
        }
        _ => Interaction::Delete,
    })
}

fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        matches!(
            essence.as_str(),
            "application/fhir+json" | "application/json" | "application/json+fhir"
        )
    })
}

/// Parses a JSON resource body; `None` when the body is not declared as JSON (e.g. XML).
fn json_body(parts: &RequestParts<'_>) -> Result<Option<Value>, ClassifyError> {
    let Some(body) = parts.body.filter(|_| is_json(parts.content_type)) else {
        return Ok(None);
    };
    let value: Value = serde_json::from_slice(body).map_err(|_| ClassifyError::BadBody)?;
    if value.get("resourceType").and_then(Value::as_str).is_none() {
        return Err(ClassifyError::BadBody);
    }
    Ok(Some(value))
}

fn add_form_params(
    method: &str,
    parts: &RequestParts<'_>,
    req: &mut FhirRequest,
) -> Result<(), ClassifyError> {
    if method != "POST" {
        return Ok(());
    }
    let essence = parts
        .content_type
        .and_then(|ct| ct.split(';').next())
        .map(str::trim);
    if !essence.is_some_and(|e| e.eq_ignore_ascii_case("application/x-www-form-urlencoded")) {
        return Err(ClassifyError::BadFormBody);
    }
    let body =
        std::str::from_utf8(parts.body.unwrap_or(b"")).map_err(|_| ClassifyError::BadFormBody)?;
    req.params
        .extend(parse_pairs(body.trim_end_matches(['\r', '\n']))?);
    Ok(())
}

#[derive(Deserialize)]
struct BundleIn<'a> {
    #[serde(rename = "resourceType")]
    resource_type: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, borrow)]
    entry: Vec<EntryIn<'a>>,
}

#[derive(Deserialize)]
struct EntryIn<'a> {
    #[serde(default, borrow)]
    resource: Option<&'a RawValue>,
    request: Option<EntryRequest>,
}

#[derive(Deserialize)]
struct EntryRequest {
    method: String,
    url: String,
    #[serde(rename = "ifNoneExist")]
    if_none_exist: Option<String>,
}

/// `POST [base]` with a batch or transaction Bundle: classify every entry as if sent alone.
fn classify_bundle(
    parts: &RequestParts<'_>,
    req: &mut FhirRequest,
    options: &PolicyOptions,
) -> Result<(), ClassifyError> {
    if !is_json(parts.content_type) {
        return Err(ClassifyError::BadBundle(
            "only JSON Bundles can be authorized",
        ));
    }
    let body = parts.body.ok_or(ClassifyError::BadBundle("empty body"))?;
    let bundle: BundleIn<'_> =
        serde_json::from_slice(body).map_err(|_| ClassifyError::BadBundle("not a JSON Bundle"))?;
    if bundle.resource_type != "Bundle" {
        return Err(ClassifyError::BadBundle("resourceType is not Bundle"));
    }
    req.interaction = match bundle.kind.as_str() {
        "batch" => Interaction::Batch,
        "transaction" => Interaction::Transaction,
        _ => {
            return Err(ClassifyError::BadBundle(
                "type must be batch or transaction",
            ));
        }
    };
    for (index, entry) in bundle.entry.iter().enumerate() {
        let classified = classify_entry(entry, options).map_err(|e| ClassifyError::BadEntry {
            index,
            source: Box::new(e),
        })?;
        req.entries.push(classified);
    }
    Ok(())
}

fn classify_entry(
    entry: &EntryIn<'_>,
    options: &PolicyOptions,
) -> Result<FhirRequest, ClassifyError> {
    let request = entry
        .request
        .as_ref()
        .ok_or(ClassifyError::BadBundle("entry without request"))?;
    let url = entry_relative_url(&request.url, &options.base_urls)?;
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    if path.is_empty() {
        return Err(ClassifyError::BadBundle(
            "nested batch or system-level entry",
        ));
    }
    let body = entry.resource.map(|r| r.get().as_bytes());
    let content_type = if request.method == "PATCH" {
        // A patch entry carries a Binary (JSON Patch) or Parameters (FHIRPath Patch) resource.
        patch_entry_content_type(entry.resource)
    } else {
        "application/fhir+json"
    };
    let binary_patch = binary_patch_body(entry.resource, content_type);
    let parts = RequestParts {
        method: &request.method,
        path,
        query,
        content_type: Some(content_type),
        body: binary_patch.as_deref().or(body),
        if_none_exist: request.if_none_exist.as_deref(),
    };
    if parts.method == "POST" && path.ends_with("_search") {
        return Err(ClassifyError::BadBundle("POST _search inside a Bundle"));
    }
    classify_with(&parts, options)
}

/// An entry's `request.url` relative to the base: relative URLs as they are, absolute ones
/// only under one of the gateway's base URLs. `urn:` and other schemes are refused.
fn entry_relative_url<'u>(url: &'u str, bases: &[String]) -> Result<&'u str, ClassifyError> {
    if url.starts_with('/') {
        return Err(ClassifyError::BadBundle(
            "entry request.url must be relative to the base or absolute",
        ));
    }
    if !url.contains(':') {
        return Ok(url);
    }
    for base in bases {
        let base = base.trim_end_matches('/');
        if let Some(rest) = url.strip_prefix(base).and_then(|r| r.strip_prefix('/')) {
            return Ok(rest);
        }
    }
    // A colon before any `/` or `?` is a scheme; after it, it is part of the query.
    let scheme_end = url.find(':').unwrap_or(usize::MAX);
    let path_end = url.find(['/', '?']).unwrap_or(usize::MAX);
    if scheme_end < path_end {
        return Err(ClassifyError::ForeignEntryUrl);
    }
    Ok(url)
}

/// The content type of a PATCH entry: FHIRPath Patch for a Parameters resource, else the
/// `contentType` of a Binary holding the patch document.
fn patch_entry_content_type(resource: Option<&RawValue>) -> &'static str {
    let kind = resource
        .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
        .and_then(|v| {
            let ty = v.get("resourceType")?.as_str()?.to_owned();
            let ct = v
                .get("contentType")
                .and_then(Value::as_str)
                .map(str::to_owned);
            Some((ty, ct))
        });
    match kind {
        Some((ty, _)) if ty == "Parameters" => "application/fhir+json",
        Some((ty, Some(ct))) if ty == "Binary" && ct.starts_with("application/json-patch+json") => {
            "application/json-patch+json"
        }
        _ => "application/octet-stream",
    }
}

/// The decoded JSON Patch document of a Binary entry resource.
fn binary_patch_body(resource: Option<&RawValue>, content_type: &str) -> Option<Vec<u8>> {
    if content_type != "application/json-patch+json" {
        return None;
    }
    let value: Value = serde_json::from_str(resource?.get()).ok()?;
    let data = value.get("data")?.as_str()?;
    decode_base64(data)
}

/// Standard base64 (with or without padding); `None` when invalid.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            break;
        }
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests;
