//! Break-the-glass: an emergency lets a user's request that the token's scopes do not cover
//! through, under a narrow emergency grant.
//!
//! Only a refusal for lack of scope is reopened, and only for a user's token: one whose
//! resource scopes are all `user/`. Refusals for a missing patient context, another patient's
//! data, queries fhirgate cannot bound, unsupported interactions and malformed requests stand;
//! so does every refusal of an operation (also one inside a Bundle), and every refusal of a
//! `patient/` or `system/` token. The request is decided again by the same [`decide_with`],
//! under the token's scopes plus the emergency scopes (`user/<type>.<letters>`), so Bundle
//! entries, includes and response checks follow the ordinary rules. When that decision refuses
//! too, the original refusal stands.
//!
//! Whether the request carries an emergency purpose of use, and whether its client and user may
//! break the glass, is for the server to decide: this module sees neither tokens nor headers.

use crate::decision::{self, Decision, DenyReason, Obligations, decide_with};
use crate::grant::Grant;
use crate::options::PolicyOptions;
use crate::request::{FhirRequest, Interaction};
use crate::scope::{Context, Perms, ResourceScope, TypeSel};

/// The rule of a decision break-the-glass made.
pub const RULE: &str = "break-glass";

/// What an emergency adds to a user's grant: `permissions` on `resource_types`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emergency {
    /// SMART v2 letters granted.
    pub permissions: Perms,
    /// Resource types they are granted on; every type when empty.
    pub resource_types: Vec<String>,
}

impl Emergency {
    /// The emergency scopes: `user/<type>.<letters>` for each type, or `user/*.<letters>`.
    pub fn scopes(&self) -> Vec<ResourceScope> {
        let scope = |resource_type: TypeSel| {
            let name = match &resource_type {
                TypeSel::Any => "*",
                TypeSel::Named(name) => name.as_str(),
            };
            ResourceScope {
                text: format!("user/{name}.{}", self.permissions),
                context: Context::User,
                resource_type,
                perms: self.permissions,
                params: Vec::new(),
            }
        };
        if self.resource_types.is_empty() {
            return vec![scope(TypeSel::Any)];
        }
        self.resource_types
            .iter()
            .map(|name| scope(TypeSel::Named(name.clone())))
            .collect()
    }

    /// `grant` with the emergency scopes added to its own.
    pub fn grant(&self, grant: &Grant) -> Grant {
        Grant {
            scopes: grant.scopes.with_resource_scopes(self.scopes()),
            ..grant.clone()
        }
    }
}

/// Why break-the-glass leaves a decision as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unbroken {
    /// The decision allows, or refuses for another reason than missing scope.
    NotForScope,
    /// An operation, or a Bundle holding one: never reopened.
    Operation,
    /// Not a user's token: it has no `user/` scope, or it has `patient/` or `system/` ones.
    NotUserToken,
    /// The emergency grant does not allow the request either.
    StillRefused,
}

impl Unbroken {
    /// Why, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::NotForScope => "the decision does not refuse for missing scope",
            Self::Operation => "break-the-glass never opens operations",
            Self::NotUserToken => {
                "the token's resource scopes are not all user/ scopes (patient/ and system/ \
                 tokens, and patient apps, never break the glass)"
            }
            Self::StillRefused => "the emergency scopes do not allow the request either",
        }
    }
}

/// What the original decision refused for lack of scope.
enum ScopeRefusal {
    /// The whole request.
    Whole,
    /// This many entries of a batch answered in place (at least one for lack of scope).
    Entries(usize),
}

/// Decides `request` again under the emergency grant, after `decision` (the ordinary decision
/// for `grant`) refused it for lack of scope. The allow carries the rule [`RULE`].
pub fn decide(
    grant: &Grant,
    request: &FhirRequest,
    decision: &Decision,
    options: &PolicyOptions,
    emergency: &Emergency,
) -> Result<Obligations, Unbroken> {
    let refused = scope_refusal(grant, request, decision, options).ok_or(Unbroken::NotForScope)?;
    let operation = |r: &FhirRequest| r.interaction == Interaction::Operation;
    if operation(request) || request.entries.iter().any(operation) {
        return Err(Unbroken::Operation);
    }
    if !is_user_token(grant) {
        return Err(Unbroken::NotUserToken);
    }
    match (
        refused,
        decide_with(&emergency.grant(grant), request, options),
    ) {
        (_, Decision::Deny(_)) => Err(Unbroken::StillRefused),
        (ScopeRefusal::Entries(before), Decision::Allow(ob))
            if ob.refused_entries.len() >= before =>
        {
            Err(Unbroken::StillRefused)
        }
        (_, Decision::Allow(mut ob)) => {
            ob.rule = RULE;
            Ok(ob)
        }
    }
}

/// Did `decision` refuse for lack of scope: the whole request, or entries of a batch answered
/// in place? A read refused as not found is judged by the refusal it stands for.
fn scope_refusal(
    grant: &Grant,
    request: &FhirRequest,
    decision: &Decision,
    options: &PolicyOptions,
) -> Option<ScopeRefusal> {
    match decision {
        Decision::Deny(denial) if denial.reason == DenyReason::NotFound => {
            match decision::decide_interaction(grant, request, options) {
                Decision::Deny(d) if d.reason == DenyReason::InsufficientScope => {
                    Some(ScopeRefusal::Whole)
                }
                _ => None,
            }
        }
        Decision::Deny(denial) => {
            (denial.reason == DenyReason::InsufficientScope).then_some(ScopeRefusal::Whole)
        }
        Decision::Allow(ob) => ob
            .refused_entries
            .iter()
            .any(|(_, d)| d.reason == DenyReason::InsufficientScope)
            .then_some(ScopeRefusal::Entries(ob.refused_entries.len())),
    }
}

/// A user's token: at least one resource scope, all of them `user/`, and no sign of a patient
/// app: no launch patient in context, and a user who is not a Patient (or RelatedPerson).
fn is_user_token(grant: &Grant) -> bool {
    let scopes = grant.scopes.resource_scopes();
    let patient_user = grant.fhir_user.as_deref().is_some_and(|user| {
        let ty = user.rsplit('/').nth(1).unwrap_or("");
        matches!(ty, "Patient" | "RelatedPerson")
    });
    !scopes.is_empty()
        && scopes.iter().all(|s| s.context == Context::User)
        && grant.patient.is_none()
        && !patient_user
}

#[cfg(test)]
mod tests;
