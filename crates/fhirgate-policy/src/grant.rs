//! What a validated access token grants: its scopes and its patient launch context.
//!
//! The server crate builds a [`Grant`] from token claims; this crate never sees the token.

use crate::scope::{Context, Perms, ResourceScope, ScopeSet};

/// The authorization carried by one access token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// Granted scopes.
    pub scopes: ScopeSet,
    /// Launch-context patient id (plain id, not `Patient/id`), if any.
    pub patient: Option<String>,
}

impl Grant {
    /// Builds a grant.
    pub fn new(scopes: ScopeSet, patient: Option<String>) -> Self {
        Self { scopes, patient }
    }

    /// Resource scopes that grant `perm` on `resource_type` and can take effect: `patient/`
    /// scopes only count when the grant carries a patient context.
    pub fn effective(
        &self,
        resource_type: &str,
        perm: Perms,
    ) -> impl Iterator<Item = &ResourceScope> {
        self.scopes
            .resource_scopes()
            .iter()
            .filter(move |s| s.grants(resource_type, perm))
            .filter(|s| s.context != Context::Patient || self.patient.is_some())
    }

    /// Would a `patient/` scope grant `perm` on `resource_type` if a patient context existed?
    pub fn patient_scope_without_context(&self, resource_type: &str, perm: Perms) -> bool {
        self.patient.is_none()
            && self
                .scopes
                .resource_scopes()
                .iter()
                .any(|s| s.context == Context::Patient && s.grants(resource_type, perm))
    }
}
