//! Search decisions and the patient criterion of `patient/` searches.
//!
//! Under `patient/`-only coverage a search on a compartment type must be bounded to the context
//! patient: a criterion naming another patient is refused, one naming the context patient is
//! kept, and a search without one is narrowed (`_id` for Patient, else `patient`, `subject`, or
//! the first linking parameter = `Patient/<id>`). Chains and `_has` are refused there because
//! they test data the scopes may not grant. Results are always checked as well.

use super::{
    Cover, Decision, Denial, DenyReason, Obligations, cover, denial, full_wildcard_read,
    has_includes,
};
use crate::compartment::{is_compartment_type, linking_params, patient_id_of_reference};
use crate::grant::Grant;
use crate::request::FhirRequest;
use crate::scope::Perms;
use crate::verify::{Expect, ResponseCheck};

/// What a search's parameters say about the patient.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pin {
    /// No parameter pins the patient.
    None,
    /// Every patient criterion names the context patient.
    Context,
}

/// `GET T?...` / `POST T/_search`.
pub(super) fn search_type(grant: &Grant, req: &FhirRequest) -> Decision {
    let ty = req.resource_type.as_deref().unwrap_or("*");
    let cover = match cover(grant, ty, Perms::S) {
        Ok(c) => c,
        Err(d) => return Decision::Deny(d),
    };
    bounded_search(grant, req, ty, &cover, true)
}

/// `GET Patient/X/T` / `GET Patient/X/*`.
pub(super) fn search_compartment(grant: &Grant, req: &FhirRequest) -> Decision {
    let ty = req.resource_type.as_deref().unwrap_or("*");
    let cover = match cover(grant, ty, Perms::S) {
        Ok(c) => c,
        Err(d) => return Decision::Deny(d),
    };
    if cover.full().is_none() && cover.only_patient() {
        let (owner, id) = req.compartment.clone().unwrap_or_default();
        let pid = grant.patient.as_deref().unwrap_or("");
        if owner != "Patient" {
            return Decision::Deny(denial(
                DenyReason::UnenforceableQuery,
                "compartment-not-patient",
                format!("{owner} compartment searches cannot be bounded by patient/ scopes"),
            ));
        }
        if id != pid {
            return Decision::Deny(other_patient("compartment-other-patient"));
        }
    }
    bounded_search(grant, req, ty, &cover, false)
}

/// Shared tail of searches: obligations from coverage, criteria and includes.
fn bounded_search(
    grant: &Grant,
    req: &FhirRequest,
    ty: &str,
    cover: &Cover<'_>,
    narrow_patient: bool,
) -> Decision {
    if let Err(d) = super::includes::check_includes(grant, req) {
        return Decision::Deny(d);
    }
    if let Some(full) = cover.full() {
        let mut ob = Obligations::rule("scope", Some(full));
        if has_includes(req) && !full_wildcard_read(grant) {
            ob.rule = "scope-includes-checked";
            ob.response_check = Some(bundle_check(grant));
        }
        return Decision::Allow(ob);
    }
    let mut ob = Obligations::rule("scope-with-response-check", cover.first());
    if cover.only_patient() {
        if let Err(d) = refuse_unbounded(&req.params) {
            return Decision::Deny(d);
        }
        let pin = match patient_pin(grant, ty, &req.params) {
            Ok(p) => p,
            Err(d) => return Decision::Deny(d),
        };
        if narrow_patient && pin == Pin::None && is_compartment_type(ty) {
            ob.add_params
                .push(narrowing_param(ty, grant.patient.as_deref().unwrap_or("")));
        }
        ob.rule = "patient-search";
    }
    ob.add_params.extend(cover.granular_params());
    ob.response_check = Some(bundle_check(grant));
    Decision::Allow(ob)
}

fn bundle_check(grant: &Grant) -> ResponseCheck {
    ResponseCheck::new(grant, Perms::R.union(Perms::S), Expect::Bundle)
}

pub(super) fn other_patient(rule: &'static str) -> Denial {
    denial(
        DenyReason::OtherPatient,
        rule,
        "the request targets data outside the launch patient's compartment",
    )
}

/// Refuses `Patient/X` instance access for X other than the context patient.
pub(super) fn other_patient_instance(grant: &Grant, ty: &str, id: Option<&str>) -> Option<Denial> {
    (ty == "Patient" && id != grant.patient.as_deref())
        .then(|| other_patient("patient-instance-other-patient"))
}

/// Parameters that select by other resources' content (chains, `_has`, `_filter`, named
/// `_query`) cannot be bounded to the compartment.
pub(super) fn refuse_unbounded(params: &[(String, String)]) -> Result<(), Denial> {
    for (name, _) in params {
        let base = name.split(':').next().unwrap_or("");
        let reverse_or_free = matches!(base, "_has" | "_filter" | "_query");
        if reverse_or_free || (name.contains('.') && !base.starts_with('_')) {
            return Err(denial(
                DenyReason::UnenforceableQuery,
                "patient-search-chain",
                format!(
                    "parameter '{}' (chain, _has, _filter or _query) is not allowed under patient/ scopes",
                    short(name)
                ),
            ));
        }
    }
    Ok(())
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Reads the patient criterion of `params` for a search on `ty`.
pub(super) fn patient_pin(
    grant: &Grant,
    ty: &str,
    params: &[(String, String)],
) -> Result<Pin, Denial> {
    let pid = grant.patient.as_deref().unwrap_or("");
    let mut pin = Pin::None;
    for (name, value) in params {
        let (base, modifier) = match name.split_once(':') {
            Some((b, m)) => (b, Some(m)),
            None => (name.as_str(), None),
        };
        let Some(ids) = criterion_ids(ty, base, modifier, value) else {
            continue;
        };
        if ids.iter().any(|id| id.as_deref() != Some(pid)) {
            if ids.iter().any(|id| id.as_deref().is_some_and(|i| i != pid)) {
                return Err(other_patient("patient-search-other-patient"));
            }
            continue;
        }
        pin = Pin::Context;
    }
    Ok(pin)
}

/// For a patient-linking criterion, the patient ids its comma-separated values name (`None`
/// items: values that are not patient references). `None` when the parameter does not link.
fn criterion_ids(
    ty: &str,
    base: &str,
    modifier: Option<&str>,
    value: &str,
) -> Option<Vec<Option<String>>> {
    let links = if ty == "Patient" {
        base == "_id"
    } else {
        base == "patient" || base == "subject" || linking_params(ty).iter().any(|p| p == base)
    };
    if !links {
        return None;
    }
    match modifier {
        None | Some("Patient") => {}
        Some(_) => return None,
    }
    let ids = value
        .split(',')
        .map(|v| {
            // A bare id may name a patient (polymorphic parameters included): treat it as one.
            if v.contains('/') {
                patient_id_of_reference(v).map(str::to_owned)
            } else {
                Some(v.to_owned())
            }
        })
        .collect();
    Some(ids)
}

/// The parameter added to bound a search on `ty` to Patient/`pid`.
pub(super) fn narrowing_param(ty: &str, pid: &str) -> (String, String) {
    if ty == "Patient" {
        return ("_id".to_owned(), pid.to_owned());
    }
    let links = linking_params(ty);
    let name = ["patient", "subject"]
        .into_iter()
        .find(|p| links.iter().any(|l| l == p))
        .or_else(|| links.first().map(String::as_str))
        .unwrap_or("patient");
    (name.to_owned(), format!("Patient/{pid}"))
}
