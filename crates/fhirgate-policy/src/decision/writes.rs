//! Create, update, patch and delete decisions.
//!
//! Under `patient/` (or granular) coverage:
//! - the submitted resource must be covered itself: same type as the URL, same id for updates,
//!   in the patient's compartment (compartment types) and matching the scope's granular
//!   parameters;
//! - instance updates, patches and deletes oblige the proxy to fetch and check the current
//!   target first ([`Precheck::Target`]);
//! - conditional update, patch and delete must name the context patient in their criteria
//!   themselves (their effect happens before any response could be checked, so fhirgate does
//!   not rewrite what they select); granular parameters are ANDed in, and the proxy searches
//!   the criteria first and checks every match ([`Precheck::Matches`]);
//! - conditional create narrows its `If-None-Exist` criteria the same way, so the existence
//!   test cannot probe another patient's data;
//! - a patch may not touch what binds the resource to the patient (its compartment-linking
//!   elements) or to a granular scope (the scope's parameter elements), nor `id`, `meta` or
//!   the whole resource; patch formats fhirgate cannot read are refused.

use serde_json::Value;

use super::criteria::{
    Pin, narrowing_param, other_patient, other_patient_instance, patient_pin, refuse_unbounded,
};
use super::{Cover, Decision, Denial, DenyReason, Obligations, Precheck, cover, denial};
use crate::compartment::{in_patient_compartment, is_compartment_type};
use crate::data::{TABLES, granular_paths};
use crate::grant::Grant;
use crate::granular::matches_all;
use crate::request::{FhirRequest, Interaction, Patch};
use crate::scope::{Context, Perms, ResourceScope, ScopeSet};
use crate::verify::{Expect, ResponseCheck};

/// Decides create, update, patch and delete.
pub(super) fn decide_write(grant: &Grant, req: &FhirRequest) -> Decision {
    match write(grant, req) {
        Ok(ob) => Decision::Allow(ob),
        Err(d) => Decision::Deny(d),
    }
}

fn write(grant: &Grant, req: &FhirRequest) -> Result<Obligations, Denial> {
    let ty = req.resource_type.as_deref().unwrap_or("*");
    let perm = match req.interaction {
        Interaction::Create => Perms::C,
        Interaction::Update | Interaction::Patch => Perms::U,
        _ => Perms::D,
    };
    let cover = cover(grant, ty, perm)?;
    if let Some(full) = cover.full() {
        return Ok(Obligations::rule("scope", Some(full)));
    }
    if cover.only_patient()
        && let Some(d) = req
            .id
            .as_deref()
            .and_then(|id| other_patient_instance(grant, ty, Some(id)))
    {
        return Err(d);
    }
    let mut ob = Obligations::rule("write-checked", cover.first());
    if matches!(req.interaction, Interaction::Create | Interaction::Update) {
        check_body(grant, req, ty, &cover)?;
    }
    // The scopes the target must be covered by: for a patch, only those it leaves bound.
    let mut target_grant = grant.clone();
    if req.interaction == Interaction::Patch {
        target_grant = Grant {
            patient: grant.patient.clone(),
            ..patch_scopes(req, ty, &cover)?
        };
    }
    match (req.interaction, req.conditional) {
        (Interaction::Create, true) => {
            ob.add_if_none_exist = narrowing(grant, &req.if_none_exist, ty, &cover)?;
            ob.rule = "conditional-create-narrowed";
        }
        (Interaction::Create, false) => {}
        (_, true) => {
            if cover.only_patient()
                && is_compartment_type(ty)
                && patient_pin(grant, ty, &req.params)? == Pin::None
            {
                return Err(denial(
                    DenyReason::UnenforceableQuery,
                    "conditional-write-unpinned",
                    format!(
                        "a conditional write under patient/ scopes must name the launch patient in its criteria (e.g. {}=Patient/{})",
                        narrowing_param(ty, "").0,
                        grant.patient.as_deref().unwrap_or("")
                    ),
                ));
            }
            ob.add_params = narrowing(grant, &req.params, ty, &cover)?;
            ob.precheck = Some(Precheck::Matches(Box::new(ResponseCheck::new(
                &target_grant,
                perm,
                Expect::Bundle,
            ))));
            ob.rule = "conditional-write-narrowed";
        }
        (_, false) => {
            ob.precheck = Some(Precheck::Target(Box::new(ResponseCheck::new(
                &target_grant,
                perm,
                Expect::Resource,
            ))));
        }
    }
    Ok(ob)
}

/// The submitted resource must itself be covered.
fn check_body(grant: &Grant, req: &FhirRequest, ty: &str, cover: &Cover<'_>) -> Result<(), Denial> {
    let Some(body) = req.resource.as_ref() else {
        return Err(denial(
            DenyReason::BodyNotCheckable,
            "write-body-not-json",
            "only FHIR JSON bodies can be checked against patient/ or granular scopes",
        ));
    };
    if body.get("resourceType").and_then(Value::as_str) != Some(ty) {
        return Err(denial(
            DenyReason::BadRequest,
            "write-type-mismatch",
            "body resourceType differs from the URL type",
        ));
    }
    if req.id.is_some() && body.get("id").and_then(Value::as_str) != req.id.as_deref() {
        return Err(denial(
            DenyReason::BadRequest,
            "write-id-mismatch",
            "body id differs from the URL id",
        ));
    }
    let pid = grant.patient.as_deref().unwrap_or("");
    let covered = cover.scopes.iter().any(|s| {
        let in_scope = s.context != Context::Patient
            || !is_compartment_type(ty)
            || in_patient_compartment(body, pid);
        in_scope && (!s.is_granular() || matches_all(body, &s.params))
    });
    if covered {
        Ok(())
    } else if cover.only_patient() && is_compartment_type(ty) && !in_patient_compartment(body, pid)
    {
        Err(other_patient("write-body-outside-compartment"))
    } else {
        Err(denial(
            DenyReason::InsufficientScope,
            "write-body-not-covered",
            "the submitted resource is not covered by the granted scopes",
        ))
    }
}

/// Element names a patch may not touch for `scope` to cover it.
fn protected_elements(ty: &str, scope: &ResourceScope) -> Vec<String> {
    let mut names = vec!["id".to_owned(), "resourceType".to_owned()];
    let top = |path: &str| path.split('.').nth(1).map(str::to_owned);
    if scope.context == Context::Patient {
        if let Some(params) = TABLES.paths.get(ty) {
            names.extend(
                params
                    .iter()
                    .flat_map(|p| &p.element_paths)
                    .filter_map(|p| top(p)),
            );
        }
        if ty == "Patient" {
            names.push("link".to_owned());
        }
    }
    for (name, _) in &scope.params {
        match TABLES.granular.get(ty).and_then(|m| m.get(name)) {
            Some(p) => names.extend(granular_paths(&p.expression).iter().filter_map(|p| top(p))),
            None => names.push("meta".to_owned()),
        }
    }
    names
}

/// The covering scopes whose binding elements a patch leaves untouched: the target must be
/// covered by one of them (the pre-check uses only these), else the patch is refused.
fn patch_scopes(req: &FhirRequest, ty: &str, cover: &Cover<'_>) -> Result<Grant, Denial> {
    let Some(patch) = req.patch.as_ref().filter(|p| **p != Patch::Opaque) else {
        return Err(denial(
            DenyReason::BodyNotCheckable,
            "patch-not-readable",
            "only JSON Patch and FHIRPath Patch can be checked against patient/ or granular scopes",
        ));
    };
    let keeping: Vec<ResourceScope> = cover
        .scopes
        .iter()
        .filter(|s| {
            let protected = protected_elements(ty, s);
            let refs: Vec<&str> = protected.iter().map(String::as_str).collect();
            !patch.touches(&refs)
        })
        .map(|s| (*s).clone())
        .collect();
    if keeping.is_empty() {
        return Err(denial(
            DenyReason::InsufficientScope,
            "patch-touches-binding",
            "the patch changes elements that bind the resource to the patient or to a granular scope",
        ));
    }
    Ok(Grant::new(ScopeSet::of(keeping), None))
}

/// Parameters to AND into conditional criteria so they only match what the grant covers.
fn narrowing(
    grant: &Grant,
    criteria: &[(String, String)],
    ty: &str,
    cover: &Cover<'_>,
) -> Result<Vec<(String, String)>, Denial> {
    let mut add = Vec::new();
    if cover.only_patient() {
        refuse_unbounded(criteria)?;
        if patient_pin(grant, ty, criteria)? == Pin::None && is_compartment_type(ty) {
            add.push(narrowing_param(ty, grant.patient.as_deref().unwrap_or("")));
        }
    }
    // Several granular scopes that cannot be ANDed in as one set: nothing is added, and the
    // match pre-check (every match covered by some scope) bounds the write instead.
    let granular = cover.granular_params();
    add.extend(granular);
    Ok(add)
}
