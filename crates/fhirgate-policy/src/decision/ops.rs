//! Operations and batch/transaction Bundles.
//!
//! Operations are denied unless listed here (DESIGN.md): `$everything` on the context patient
//! (wildcard read and search), Bulk Data `$export` for unrestricted `system/` scopes with read
//! and search on every exported type, and `$export-poll-status` for such clients.
//!
//! Every entry of a batch or transaction is decided as if sent alone. Narrowing and response
//! checks become entry obligations the proxy carries out inside the Bundle; entries that need
//! a request of their own first (a target pre-check, narrowed `If-None-Exist`) are refused.
//! Transactions are all-or-nothing: any refused entry refuses the whole Bundle, naming
//! `Bundle.entry[n]`. Batches are refused whole too, unless the options answer refused entries
//! in place (`BatchRefusal::PerEntry`).

use super::criteria::other_patient;
use super::{
    Decision, Denial, DenyReason, EntryObligations, Obligations, Precheck, cover, decide_with, deny,
};
use crate::grant::Grant;
use crate::options::{BatchRefusal, OperationLevel, OperationRule, PolicyOptions, ReadRefusal};
use crate::request::{FhirRequest, Interaction};
use crate::scope::{Context, Perms, ResourceScope, TypeSel};
use crate::verify::{Expect, ResponseCheck};

/// Decides `$operation` requests: built-in rules first, then the operator's table.
pub(super) fn decide_operation(
    grant: &Grant,
    req: &FhirRequest,
    options: &PolicyOptions,
) -> Decision {
    let op = req.operation.as_deref().unwrap_or("");
    match (op, req.resource_type.as_deref(), req.id.as_deref()) {
        ("everything", Some("Patient"), Some(id)) => everything(grant, id),
        ("export", None | Some("Patient"), None) | ("export", Some("Group"), Some(_)) => {
            export(grant, req)
        }
        ("export-poll-status", None, None) => poll_status(grant),
        ("graphql", _, _) => graphql(grant),
        _ => configured(grant, req, options, op),
    }
}

fn not_listed(op: &str) -> Decision {
    deny(
        DenyReason::OperationNotPermitted,
        "operation-not-listed",
        format!(
            "operation ${} is not permitted by the access policy",
            op.chars().take(64).collect::<String>()
        ),
    )
}

/// `$graphql`: a GraphQL document can reach any resource, and its answer is not a Bundle the
/// gateway can filter; only unrestricted wildcard read and search allow it.
fn graphql(grant: &Grant) -> Decision {
    let full = |perm| {
        grant.scopes.resource_scopes().iter().find(|s| {
            s.context != Context::Patient
                && s.resource_type == TypeSel::Any
                && !s.is_granular()
                && s.perms.contains(perm)
        })
    };
    match (full(Perms::R), full(Perms::S)) {
        (Some(r), Some(_)) => Decision::Allow(Obligations::rule("graphql-unrestricted", Some(r))),
        _ => deny(
            DenyReason::OperationNotPermitted,
            "graphql-needs-unrestricted-read",
            "$graphql needs unrestricted user/ or system/ read and search on every type",
        ),
    }
}

/// An operation from the operator's table.
fn configured(grant: &Grant, req: &FhirRequest, options: &PolicyOptions, op: &str) -> Decision {
    let level = match (req.resource_type.as_deref(), req.id.as_deref()) {
        (None, _) => OperationLevel::System,
        (Some(_), None) => OperationLevel::Type,
        (Some(_), Some(_)) => OperationLevel::Instance,
    };
    let ty = req.resource_type.as_deref();
    let Some(rule) = options.operations.find(op, level, ty) else {
        return not_listed(op);
    };
    configured_rule(grant, req, rule, ty.unwrap_or("*"))
}

fn configured_rule(grant: &Grant, req: &FhirRequest, rule: &OperationRule, ty: &str) -> Decision {
    let letters = [Perms::C, Perms::R, Perms::U, Perms::D, Perms::S];
    let mut all_full = true;
    let mut first = None;
    for perm in letters.into_iter().filter(|p| rule.requires.contains(*p)) {
        let cover = match cover(grant, ty, perm) {
            Ok(c) => c,
            Err(d) => return Decision::Deny(d),
        };
        all_full &= cover.full().is_some();
        first = first.or(cover.full()).or(cover.first());
        if cover.full().is_none()
            && cover.only_patient()
            && ty == "Patient"
            && req
                .id
                .as_deref()
                .is_some_and(|id| Some(id) != grant.patient.as_deref())
        {
            return Decision::Deny(other_patient("operation-other-patient"));
        }
    }
    if all_full {
        return Decision::Allow(Obligations::rule("operation-table", first));
    }
    if rule.level != OperationLevel::Instance {
        return deny(
            DenyReason::InsufficientScope,
            "operation-needs-unrestricted-scope",
            "type and system level operations need unrestricted user/ or system/ scopes",
        );
    }
    // Instance level under patient/ or granular scopes: the instance must be one the grant
    // covers; the gateway fetches and checks it before forwarding.
    let mut ob = Obligations::rule("operation-table-instance-checked", first);
    ob.precheck = Some(Precheck::Target(Box::new(ResponseCheck::new(
        grant,
        rule.requires,
        Expect::Resource,
    ))));
    Decision::Allow(ob)
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
    let mut ob = Obligations::rule("export", first);
    ob.bind_export_to_client = true;
    Decision::Allow(ob)
}

fn poll_status(grant: &Grant) -> Decision {
    let scope = grant.scopes.resource_scopes().iter().find(|s| {
        s.context == Context::System
            && !s.is_granular()
            && s.perms.contains(Perms::R.union(Perms::S))
    });
    match scope {
        Some(s) => {
            let mut ob = Obligations::rule("export-status", Some(s));
            ob.bind_export_to_client = true;
            Decision::Allow(ob)
        }
        None => deny(
            DenyReason::InsufficientScope,
            "export-status-not-covered",
            "$export status needs an unrestricted system/ scope with read and search",
        ),
    }
}

/// Batch and transaction: every entry decided as if sent alone; allowed only when every entry
/// is allowed without obligations, else refused whole, naming each refused entry.
pub(super) fn decide_bundle(grant: &Grant, req: &FhirRequest, options: &PolicyOptions) -> Decision {
    // A refused entry is never answered as "not found": the batch-response names it.
    let entry_options = PolicyOptions {
        read_refusal: ReadRefusal::Forbidden,
        ..options.clone()
    };
    let mut entries: Vec<EntryObligations> = Vec::new();
    let mut refused: Vec<(usize, Denial)> = Vec::new();
    for (index, entry) in req.entries.iter().enumerate() {
        match decide_with(grant, entry, &entry_options) {
            Decision::Allow(ob) if ob.is_empty() => {}
            Decision::Allow(ob) if ob.fits_inside_bundle() => entries.push(EntryObligations {
                index,
                add_params: ob.add_params,
                response_check: ob.response_check,
            }),
            Decision::Allow(_) => refused.push((index, needs_own_request())),
            Decision::Deny(d) => refused.push((index, d)),
        }
    }
    let answered_in_place = req.interaction == Interaction::Batch
        && options.batch_refusal == BatchRefusal::PerEntry
        && refused.len() < req.entries.len();
    if refused.is_empty() || answered_in_place {
        let rule = if refused.is_empty() {
            "bundle-all-entries-allowed"
        } else {
            "batch-entries-decided-alone"
        };
        let mut ob = Obligations::rule(rule, None);
        ob.entries = entries;
        ob.refused_entries = refused
            .into_iter()
            .map(|(index, mut denial)| {
                denial.expression = vec![format!("Bundle.entry[{index}]")];
                (index, denial)
            })
            .collect();
        return Decision::Allow(ob);
    }
    let first = refused
        .iter()
        .find(|(_, d)| d.reason != DenyReason::NotSupported)
        .or(refused.first())
        .map(|(_, d)| d.reason)
        .unwrap_or(DenyReason::InsufficientScope);
    let listed: Vec<String> = refused
        .iter()
        .map(|(i, d)| format!("Bundle.entry[{i}]: {}", d.message))
        .collect();
    let kind = req.interaction.code();
    let mut denial = super::denial(
        first,
        "bundle-entry-refused",
        format!("{kind} refused as a whole; {}", listed.join("; ")),
    );
    denial.expression = refused
        .iter()
        .map(|(i, _)| format!("Bundle.entry[{i}]"))
        .collect();
    Decision::Deny(denial)
}

fn needs_own_request() -> Denial {
    super::denial(
        DenyReason::NotSupported,
        "bundle-entry-needs-own-request",
        "entry needs a check of its target or narrowed If-None-Exist criteria before it is \
         written, which fhirgate cannot apply inside a Bundle; send it on its own",
    )
}
