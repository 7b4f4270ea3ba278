//! Operations and batch/transaction Bundles.
//!
//! Operations are denied unless listed here (DESIGN.md): `$everything` on the context patient
//! (wildcard read and search), Bulk Data `$export` for unrestricted `system/` scopes with read
//! and search on every exported type, and `$export-poll-status` for such clients. Batches and
//! transactions are all-or-nothing: every entry is decided as if sent alone; any refused entry
//! refuses the whole Bundle, naming `Bundle.entry[n]`. Entries that would need obligations
//! (narrowing, checks) are refused too, since obligations cannot be applied inside a Bundle.

use super::criteria::other_patient;
use super::{Decision, Denial, DenyReason, Obligations, cover, decide, deny};
use crate::grant::Grant;
use crate::request::FhirRequest;
use crate::scope::{Context, Perms, ResourceScope, TypeSel};
use crate::verify::{Expect, ResponseCheck};

/// Decides `$operation` requests.
pub(super) fn decide_operation(grant: &Grant, req: &FhirRequest) -> Decision {
    let op = req.operation.as_deref().unwrap_or("");
    match (op, req.resource_type.as_deref(), req.id.as_deref()) {
        ("everything", Some("Patient"), Some(id)) => everything(grant, id),
        ("export", None | Some("Patient"), None) | ("export", Some("Group"), Some(_)) => {
            export(grant, req)
        }
        ("export-poll-status", None, None) => poll_status(grant),
        _ => deny(
            DenyReason::OperationNotPermitted,
            "operation-not-listed",
            format!(
                "operation ${} is not permitted by the access policy",
                op.chars().take(64).collect::<String>()
            ),
        ),
    }
}

fn everything(grant: &Grant, id: &str) -> Decision {
    let read = match cover(grant, "*", Perms::R) {
        Ok(c) => c,
        Err(d) => return Decision::Deny(d),
    };
    let search = match cover(grant, "*", Perms::S) {
        Ok(c) => c,
        Err(d) => return Decision::Deny(d),
    };
    if read.full().is_some() && search.full().is_some() {
        return Decision::Allow(Obligations::rule("everything", read.full()));
    }
    if read.only_patient() && grant.patient.as_deref() != Some(id) {
        return Decision::Deny(other_patient("everything-other-patient"));
    }
    let mut ob = Obligations::rule("everything-filtered", read.first());
    ob.response_check = Some(ResponseCheck::new(
        grant,
        Perms::R.union(Perms::S),
        Expect::Bundle,
    ));
    Decision::Allow(ob)
}

/// An unrestricted `system/` scope with read and search on `ty` (`*` = wildcard only).
fn system_rs<'a>(grant: &'a Grant, ty: &str) -> Option<&'a ResourceScope> {
    let rs = Perms::R.union(Perms::S);
    let ok = |s: &&ResourceScope| {
        let type_ok = if ty == "*" {
            s.resource_type == TypeSel::Any
        } else {
            s.resource_type.covers(ty)
        };
        s.context == Context::System && !s.is_granular() && type_ok
    };
    let scopes: Vec<&ResourceScope> = grant.scopes.resource_scopes().iter().filter(ok).collect();
    let perms = scopes.iter().fold(Perms::NONE, |p, s| p.union(s.perms));
    perms.contains(rs).then(|| scopes[0])
}

fn export(grant: &Grant, req: &FhirRequest) -> Decision {
    let mut types: Vec<&str> = req
        .params
        .iter()
        .filter(|(n, _)| n == "_type")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .collect();
    if types.is_empty() || types.contains(&"") {
        types = vec!["*"];
    }
    if req.resource_type.as_deref() == Some("Group") {
        types.push("Group");
    }
    let mut first = None;
    for ty in types {
        let Some(scope) = system_rs(grant, ty) else {
            let what = if ty == "*" { "every resource type" } else { ty };
            return deny(
                DenyReason::InsufficientScope,
                "export-not-covered",
                format!("$export needs unrestricted system/ read and search on {what}"),
            );
        };
        first = first.or(Some(scope));
    }
    Decision::Allow(Obligations::rule("export", first))
}

fn poll_status(grant: &Grant) -> Decision {
    let scope = grant.scopes.resource_scopes().iter().find(|s| {
        s.context == Context::System
            && !s.is_granular()
            && s.perms.contains(Perms::R.union(Perms::S))
    });
    match scope {
        Some(s) => Decision::Allow(Obligations::rule("export-status", Some(s))),
        None => deny(
            DenyReason::InsufficientScope,
            "export-status-not-covered",
            "$export status needs an unrestricted system/ scope with read and search",
        ),
    }
}

/// Batch and transaction: all entries allowed without obligations, or refused whole.
pub(super) fn decide_bundle(grant: &Grant, req: &FhirRequest) -> Decision {
    let mut refused: Vec<(usize, Denial)> = Vec::new();
    for (index, entry) in req.entries.iter().enumerate() {
        match decide(grant, entry) {
            Decision::Allow(ob) if ob.is_empty() => {}
            Decision::Allow(_) => refused.push((index, needs_obligations())),
            Decision::Deny(d) => refused.push((index, d)),
        }
    }
    let Some((_, first)) = refused
        .iter()
        .find(|(_, d)| d.reason != DenyReason::NotSupported)
        .or(refused.first())
    else {
        return Decision::Allow(Obligations::rule("bundle-all-entries-allowed", None));
    };
    let listed: Vec<String> = refused
        .iter()
        .map(|(i, d)| format!("Bundle.entry[{i}]: {}", d.message))
        .collect();
    let kind = req.interaction.code();
    deny(
        first.reason,
        "bundle-entry-refused",
        format!("{kind} refused as a whole; {}", listed.join("; ")),
    )
}

fn needs_obligations() -> Denial {
    Denial {
        reason: DenyReason::NotSupported,
        message: "entry needs query narrowing or response checks, which fhirgate cannot apply inside a Bundle; send it on its own".to_owned(),
        rule: "bundle-entry-needs-obligations",
    }
}
