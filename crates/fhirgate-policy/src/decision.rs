//! The authorization decision: `decide(grant, request) -> Decision`.
//!
//! Scopes are a union (SMART 2.x "scope equivalence"). An unrestricted `user/` or `system/` scope
//! allows without obligations; `patient/` and granular scopes allow only with obligations the
//! proxy must honour (narrow the query, pre-check the write target, check the response). Every
//! path that does not positively find a covering scope denies. Policy choices where SMART and
//! FHIR are silent follow `DESIGN.md` (operations denied unless listed, batches all-or-nothing).

mod criteria;
mod includes;
mod ops;
mod writes;

use crate::grant::Grant;
use crate::options::{PolicyOptions, ReadRefusal};
use crate::outcome::IssueCode;
use crate::request::{FhirRequest, Interaction};
use crate::scope::{Context, Perms, ResourceScope, TypeSel};
use crate::verify::{Expect, ResponseCheck};

pub use crate::query::narrowed_query;

/// Search result parameters that pull other resources into a Bundle.
const INCLUDE_PARAMS: &[&str] = &["_include", "_revinclude"];

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one Decision per request, moved once; boxing would only add an allocation"
)]
pub enum Decision {
    /// Forward, honouring the obligations.
    Allow(Obligations),
    /// Answer with an OperationOutcome.
    Deny(Denial),
}

/// What the proxy must do when forwarding an allowed request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Obligations {
    /// Parameters to AND into the upstream query (decoded; encode with [`narrowed_query`]).
    pub add_params: Vec<(String, String)>,
    /// Check the response with `verify::verify_resource` or `verify::filter_bundle`
    /// (per `ResponseCheck::expect`).
    pub response_check: Option<ResponseCheck>,
    /// Parameters to AND into the `If-None-Exist` criteria of a conditional create (decoded).
    pub add_if_none_exist: Vec<(String, String)>,
    /// A check the proxy makes upstream before forwarding a write.
    pub precheck: Option<Precheck>,
    /// Bind the status-poll and file URLs of a Bulk Data export started by this request to the
    /// client that started it (the proxy keeps that state; see docs/ARCHITECTURE.md).
    pub bind_export_to_client: bool,
    /// A resource that fails the response check is answered 404 `not-found` instead of 403
    /// (reads, with `ReadRefusal::NotFound`).
    pub withheld_as_not_found: bool,
    /// Name of the rule that allowed.
    pub rule: &'static str,
    /// Text of a scope that granted the request.
    pub scope: Option<String>,
    /// Batch and transaction entries allowed with obligations the proxy carries out inside
    /// the Bundle, in entry order.
    pub entries: Vec<EntryObligations>,
    /// Batch entries refused on their own (with `BatchRefusal::PerEntry`): left out of what
    /// goes upstream and answered in place in the batch-response.
    pub refused_entries: Vec<(usize, Denial)>,
}

/// What the proxy does for one Bundle entry, as it would for the same request sent alone.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryObligations {
    /// Position of the entry in the request Bundle.
    pub index: usize,
    /// Parameters to AND into the query of the entry's `request.url` (decoded).
    pub add_params: Vec<(String, String)>,
    /// Check of the `resource` the response entry carries.
    pub response_check: Option<ResponseCheck>,
}

impl Obligations {
    fn rule(rule: &'static str, scope: Option<&ResourceScope>) -> Self {
        Self {
            rule,
            scope: scope.map(|s| s.text.clone()),
            ..Self::default()
        }
    }

    /// Are there no obligations at all (forward unchanged)?
    pub fn is_empty(&self) -> bool {
        self.add_params.is_empty()
            && self.add_if_none_exist.is_empty()
            && self.response_check.is_none()
            && self.precheck.is_none()
            && !self.bind_export_to_client
            && self.entries.is_empty()
            && self.refused_entries.is_empty()
    }

    /// Can the proxy carry these out for a Bundle entry (narrowing and response checks only;
    /// pre-checks and narrowed `If-None-Exist` criteria need a request of their own)?
    fn fits_inside_bundle(&self) -> bool {
        self.precheck.is_none()
            && self.add_if_none_exist.is_empty()
            && !self.bind_export_to_client
            && !self.withheld_as_not_found
    }
}

/// A check the proxy makes upstream before it forwards a write.
#[derive(Debug, Clone, PartialEq)]
pub enum Precheck {
    /// GET the current target `T/id` and check it with `verify::verify_resource`; a 404/410
    /// target passes (update-as-create, idempotent delete).
    Target(Box<ResponseCheck>),
    /// GET `T?criteria` with the write's (narrowed) criteria and check the matches with
    /// `verify::check_matches`: every match must be covered, and all must fit in one page.
    Matches(Box<ResponseCheck>),
}

impl Precheck {
    /// The check applied to what the upstream returns.
    pub fn check(&self) -> &ResponseCheck {
        match self {
            Self::Target(c) | Self::Matches(c) => c,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The reason class (status and issue code).
    pub reason: DenyReason,
    /// Human text for `issue.details.text`; never contains tokens.
    pub message: String,
    /// Name of the rule that refused.
    pub rule: &'static str,
    /// FHIRPath expressions of what was refused (`Bundle.entry[n]` for Bundle entries).
    pub expression: Vec<String>,
}

/// Reason classes of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// No scope grants the needed permission on the type (403).
    InsufficientScope,
    /// Only `patient/` scopes would cover it and the token has no patient (403).
    NoPatientContext,
    /// The request targets another patient's data (403).
    OtherPatient,
    /// A search construct fhirgate cannot bound under `patient/` scopes (chains, `_has`) (403).
    UnenforceableQuery,
    /// An operation not in the policy table (403).
    OperationNotPermitted,
    /// An interaction fhirgate refuses by policy (405).
    NotSupported,
    /// A body fhirgate cannot check (XML, missing) where a check is needed (415).
    BodyNotCheckable,
    /// The request contradicts itself (type or id mismatch between URL and body) (400).
    BadRequest,
    /// A read refused while the options answer refused reads as absent (404).
    NotFound,
}

impl DenyReason {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::InsufficientScope
            | Self::NoPatientContext
            | Self::OtherPatient
            | Self::UnenforceableQuery
            | Self::OperationNotPermitted => 403,
            Self::NotSupported => 405,
            Self::NotFound => 404,
            Self::BodyNotCheckable => 415,
            Self::BadRequest => 400,
        }
    }

    /// OperationOutcome issue code.
    pub fn issue_code(&self) -> IssueCode {
        match self {
            Self::NotSupported | Self::BodyNotCheckable => IssueCode::NotSupported,
            Self::BadRequest => IssueCode::Invalid,
            Self::NotFound => IssueCode::NotFound,
            _ => IssueCode::Forbidden,
        }
    }

    /// Short label for metrics and audit.
    pub fn label(&self) -> &'static str {
        match self {
            Self::InsufficientScope => "insufficient_scope",
            Self::NoPatientContext => "no_patient_context",
            Self::OtherPatient => "other_patient",
            Self::UnenforceableQuery => "unenforceable_query",
            Self::OperationNotPermitted => "operation_not_permitted",
            Self::NotSupported => "not_supported",
            Self::BodyNotCheckable => "body_not_checkable",
            Self::BadRequest => "bad_request",
            Self::NotFound => "not_found",
        }
    }
}

pub(crate) fn deny(reason: DenyReason, rule: &'static str, message: impl Into<String>) -> Decision {
    Decision::Deny(denial(reason, rule, message))
}

pub(crate) fn denial(reason: DenyReason, rule: &'static str, message: impl Into<String>) -> Denial {
    Denial {
        reason,
        message: message.into(),
        rule,
        expression: Vec::new(),
    }
}

/// The scopes of a grant that cover one (type, letter) pair.
pub(crate) struct Cover<'a> {
    pub(crate) scopes: Vec<&'a ResourceScope>,
}

impl<'a> Cover<'a> {
    /// An unrestricted `user/` or `system/` scope: no obligations needed.
    pub(crate) fn full(&self) -> Option<&'a ResourceScope> {
        self.scopes
            .iter()
            .copied()
            .find(|s| s.context != Context::Patient && !s.is_granular())
    }

    /// Are all covering scopes `patient/` scopes?
    pub(crate) fn only_patient(&self) -> bool {
        self.scopes.iter().all(|s| s.context == Context::Patient)
    }

    /// An unrestricted `patient/` scope.
    pub(crate) fn patient_plain(&self) -> Option<&'a ResourceScope> {
        self.scopes
            .iter()
            .copied()
            .find(|s| s.context == Context::Patient && !s.is_granular())
    }

    pub(crate) fn first(&self) -> Option<&'a ResourceScope> {
        self.scopes.first().copied()
    }

    /// Query parameters expressing the granular restriction, when it can be expressed as one
    /// AND-ed set: one granular scope, or several restricting the same single parameter.
    pub(crate) fn granular_params(&self) -> Vec<(String, String)> {
        if self.scopes.iter().any(|s| !s.is_granular()) {
            return Vec::new();
        }
        match self.scopes.as_slice() {
            [] => Vec::new(),
            [one] => one.params.clone(),
            [head, ..] => {
                let name = &head.params[0].0;
                let same = self
                    .scopes
                    .iter()
                    .all(|s| s.params.len() == 1 && &s.params[0].0 == name);
                if !same {
                    return Vec::new();
                }
                let values: Vec<&str> =
                    self.scopes.iter().map(|s| s.params[0].1.as_str()).collect();
                vec![(name.clone(), values.join(","))]
            }
        }
    }
}

/// Finds the scopes granting `perm` on `ty` (`"*"` = only wildcard scopes), or the denial.
pub(crate) fn cover<'a>(grant: &'a Grant, ty: &str, perm: Perms) -> Result<Cover<'a>, Denial> {
    let scopes: Vec<&ResourceScope> = if ty == "*" {
        grant
            .scopes
            .resource_scopes()
            .iter()
            .filter(|s| s.resource_type == TypeSel::Any && s.perms.contains(perm))
            .filter(|s| s.context != Context::Patient || grant.patient.is_some())
            .collect()
    } else {
        grant.effective(ty, perm).collect()
    };
    if !scopes.is_empty() {
        return Ok(Cover { scopes });
    }
    let letter = perm.to_string();
    if grant.patient_scope_without_context(ty, perm) {
        return Err(denial(
            DenyReason::NoPatientContext,
            "patient-scope-without-context",
            format!(
                "patient/ scopes grant '{letter}' on {ty} but the token carries no patient context"
            ),
        ));
    }
    let what = if ty == "*" {
        "all resource types".to_owned()
    } else {
        ty.to_owned()
    };
    Err(denial(
        DenyReason::InsufficientScope,
        "no-covering-scope",
        format!("no granted scope permits '{letter}' on {what}"),
    ))
}

/// Decides whether `grant` allows `req` under the default [`PolicyOptions`].
pub fn decide(grant: &Grant, req: &FhirRequest) -> Decision {
    decide_with(grant, req, &PolicyOptions::default())
}

/// Decides whether `grant` allows `req`, and under which obligations.
pub fn decide_with(grant: &Grant, req: &FhirRequest, options: &PolicyOptions) -> Decision {
    use Interaction as I;
    let decision = decide_interaction(grant, req, options);
    let is_read = matches!(req.interaction, I::Read | I::Vread | I::HistoryInstance);
    if !is_read || options.read_refusal != ReadRefusal::NotFound {
        return decision;
    }
    match decision {
        Decision::Deny(mut d) if hidden_by_not_found(d.reason) => {
            d.reason = DenyReason::NotFound;
            d.message = "resource not found".to_owned();
            Decision::Deny(d)
        }
        Decision::Allow(mut ob) => {
            ob.withheld_as_not_found = ob.response_check.is_some();
            Decision::Allow(ob)
        }
        other => other,
    }
}

/// Refusals that a 404 answers when refused reads are to look absent.
fn hidden_by_not_found(reason: DenyReason) -> bool {
    matches!(
        reason,
        DenyReason::InsufficientScope | DenyReason::OtherPatient | DenyReason::NoPatientContext
    )
}

/// The decision before a refused read is answered as not found.
pub(crate) fn decide_interaction(
    grant: &Grant,
    req: &FhirRequest,
    options: &PolicyOptions,
) -> Decision {
    use Interaction as I;
    match req.interaction {
        I::Capabilities | I::SmartConfiguration => {
            Decision::Allow(Obligations::rule("public", None))
        }
        I::Read | I::Vread | I::HistoryInstance => instance_read(grant, req),
        I::SearchType => criteria::search_type(grant, req),
        I::SearchCompartment => criteria::search_compartment(grant, req),
        I::HistoryType => history_type(grant, req),
        I::SearchSystem | I::HistorySystem => system_level(grant, req),
        I::Create | I::Update | I::Patch | I::Delete => writes::decide_write(grant, req),
        I::Operation => ops::decide_operation(grant, req, options),
        I::Batch | I::Transaction => ops::decide_bundle(grant, req, options),
        I::PageContinuation => page_continuation(grant),
    }
}

fn type_of(req: &FhirRequest) -> &str {
    req.resource_type.as_deref().unwrap_or("*")
}

fn instance_read(grant: &Grant, req: &FhirRequest) -> Decision {
    let ty = type_of(req);
    let cover = match cover(grant, ty, Perms::R) {
        Ok(c) => c,
        Err(d) => return Decision::Deny(d),
    };
    if let Some(full) = cover.full() {
        return Decision::Allow(Obligations::rule("scope", Some(full)));
    }
    let expect = if req.interaction == Interaction::HistoryInstance {
        Expect::Bundle
    } else {
        Expect::Resource
    };
    if cover.only_patient() {
        if let Some(d) = criteria::other_patient_instance(grant, ty, req.id.as_deref()) {
            return Decision::Deny(d);
        }
        let own_record = ty == "Patient";
        let outside = !crate::compartment::is_compartment_type(ty);
        if let Some(plain) = cover.patient_plain().filter(|_| own_record || outside) {
            return Decision::Allow(Obligations::rule("patient-scope", Some(plain)));
        }
    }
    let mut ob = Obligations::rule("scope-with-response-check", cover.first());
    ob.response_check = Some(ResponseCheck::new(grant, Perms::R, expect));
    Decision::Allow(ob)
}

fn history_type(grant: &Grant, req: &FhirRequest) -> Decision {
    let cover = match cover(grant, type_of(req), Perms::S) {
        Ok(c) => c,
        Err(d) => return Decision::Deny(d),
    };
    if let Some(full) = cover.full() {
        return Decision::Allow(Obligations::rule("scope", Some(full)));
    }
    if cover.only_patient() {
        return Decision::Deny(history_unbounded());
    }
    let mut ob = Obligations::rule("history-filtered", cover.first());
    ob.response_check = Some(ResponseCheck::new(
        grant,
        Perms::R.union(Perms::S),
        Expect::Bundle,
    ));
    Decision::Allow(ob)
}

/// `GET [base]?_type=...`, `POST [base]/_search`, `GET [base]/_history`.
fn system_level(grant: &Grant, req: &FhirRequest) -> Decision {
    let mut types: Vec<&str> = req
        .params
        .iter()
        .filter(|(n, _)| n == "_type" && req.interaction == Interaction::SearchSystem)
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .collect();
    if types.is_empty() || types.contains(&"") {
        types = vec!["*"];
    }
    if let Err(d) = includes::check_includes(grant, req) {
        return Decision::Deny(d);
    }
    let history = req.interaction == Interaction::HistorySystem;
    let mut all_full = true;
    let mut first = None;
    for ty in types {
        let cover = match cover(grant, ty, Perms::S) {
            Ok(c) => c,
            Err(d) => return Decision::Deny(d),
        };
        if cover.full().is_none() && cover.only_patient() {
            if history {
                return Decision::Deny(history_unbounded());
            }
            if let Err(d) = criteria::refuse_unbounded(&req.params) {
                return Decision::Deny(d);
            }
        }
        all_full &= cover.full().is_some();
        first = first.or(cover.first());
    }
    if all_full && !has_includes(req) {
        return Decision::Allow(Obligations::rule("scope", first));
    }
    let mut ob = Obligations::rule("system-level-filtered", first);
    ob.response_check = Some(ResponseCheck::new(
        grant,
        Perms::R.union(Perms::S),
        Expect::Bundle,
    ));
    Decision::Allow(ob)
}

/// `GET [base]?_getpages=...`: the page belongs to a search the server holds, whose
/// narrowing fhirgate cannot see, so every entry is checked unless the grant reads everything.
fn page_continuation(grant: &Grant) -> Decision {
    let rs = Perms::R.union(Perms::S);
    let scope = grant
        .scopes
        .resource_scopes()
        .iter()
        .filter(|s| s.context != Context::Patient || grant.patient.is_some())
        .find(|s| s.perms.intersects(rs));
    let Some(scope) = scope else {
        return deny(
            DenyReason::InsufficientScope,
            "no-covering-scope",
            "no granted scope permits reading search pages",
        );
    };
    if full_wildcard_read(grant) {
        return Decision::Allow(Obligations::rule("scope", Some(scope)));
    }
    let mut ob = Obligations::rule("page-checked", Some(scope));
    ob.response_check = Some(ResponseCheck::new(grant, rs, Expect::Bundle));
    Decision::Allow(ob)
}

/// Type and system history take no search parameters, so they cannot be bounded to a patient.
fn history_unbounded() -> Denial {
    denial(
        DenyReason::UnenforceableQuery,
        "history-patient-scope",
        "type and system history cannot be bounded to the launch patient; read each resource's history instead",
    )
}

pub(crate) fn has_includes(req: &FhirRequest) -> bool {
    req.params.iter().any(|(n, _)| {
        let base = n.split(':').next().unwrap_or("");
        INCLUDE_PARAMS.contains(&base)
    })
}

/// Does the grant hold unrestricted `user/`/`system/` wildcard read or search?
pub(crate) fn full_wildcard_read(grant: &Grant) -> bool {
    grant.scopes.resource_scopes().iter().any(|s| {
        s.context != Context::Patient
            && s.resource_type == TypeSel::Any
            && !s.is_granular()
            && s.perms.intersects(Perms::R.union(Perms::S))
    })
}

#[cfg(test)]
mod tests;
