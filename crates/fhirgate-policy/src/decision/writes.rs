//! Create, update, patch and delete decisions.
//!
//! Under `patient/` (or granular) coverage the submitted resource must be covered itself: same
//! type as the URL, same id for updates, in the patient's compartment (compartment types) and
//! matching the scope's granular parameters. Instance updates, patches and deletes also oblige
//! the proxy to fetch and check the current target first. Conditional writes are narrowed like
//! searches. Patch documents are not interpreted: a patch that moves a resource out of the
//! compartment is caught only if the proxy checks the returned representation.

use serde_json::Value;

use super::criteria::{
    Pin, narrowing_param, other_patient, other_patient_instance, patient_pin, refuse_unbounded,
};
use super::{Cover, Decision, Denial, DenyReason, Obligations, cover, denial};
use crate::compartment::in_patient_compartment;
use crate::compartment::is_compartment_type;
use crate::grant::Grant;
use crate::granular::matches_all;
use crate::request::{FhirRequest, Interaction};
use crate::scope::{Context, Perms};
use crate::verify::{Expect, ResponseCheck};

/// Decides create, update, patch and delete.
pub(super) fn decide_write(grant: &Grant, req: &FhirRequest) -> Decision {
    let ty = req.resource_type.as_deref().unwrap_or("*");
    let perm = match req.interaction {
        Interaction::Create => Perms::C,
        Interaction::Update | Interaction::Patch => Perms::U,
        _ => Perms::D,
    };
    let cover = match cover(grant, ty, perm) {
        Ok(c) => c,
        Err(d) => return Decision::Deny(d),
    };
    if let Some(full) = cover.full() {
        return Decision::Allow(Obligations::rule("scope", Some(full)));
    }
    let only_patient = cover.only_patient();
    if let Some(d) = req
        .id
        .as_deref()
        .filter(|_| only_patient)
        .and_then(|id| other_patient_instance(grant, ty, Some(id)))
    {
        return Decision::Deny(d);
    }
    let mut ob = Obligations::rule("write-checked", cover.first());
    let has_body = matches!(req.interaction, Interaction::Create | Interaction::Update);
    let body_check = if has_body {
        check_body(grant, req, ty, &cover)
    } else {
        Ok(())
    };
    if let Err(d) = body_check {
        return Decision::Deny(d);
    }
    if req.conditional && req.interaction != Interaction::Create {
        if let Err(d) = narrow_conditional(grant, req, ty, &cover, &mut ob) {
            return Decision::Deny(d);
        }
    } else if req.interaction != Interaction::Create {
        ob.precheck_target = true;
        ob.response_check = Some(ResponseCheck::new(grant, perm, Expect::Resource));
    }
    Decision::Allow(ob)
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

/// Conditional update/patch/delete: bound the criteria like a search.
fn narrow_conditional(
    grant: &Grant,
    req: &FhirRequest,
    ty: &str,
    cover: &Cover<'_>,
    ob: &mut Obligations,
) -> Result<(), Denial> {
    if cover.only_patient() {
        refuse_unbounded(req)?;
        if patient_pin(grant, ty, &req.params)? == Pin::None && is_compartment_type(ty) {
            ob.add_params
                .push(narrowing_param(ty, grant.patient.as_deref().unwrap_or("")));
        }
    }
    ob.add_params.extend(cover.granular_params());
    if ob.add_params.is_empty() && !cover.only_patient() {
        return Err(denial(
            DenyReason::NotSupported,
            "conditional-write-unbounded",
            "conditional writes under several granular scopes cannot be bounded",
        ));
    }
    ob.rule = "conditional-write-narrowed";
    Ok(())
}
