//! What a validated access token grants: its scopes and its launch context.
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
    /// Launch-context encounter id (plain id), if any. Carried for explanations and records;
    /// SMART scopes do not confine access to an encounter.
    pub encounter: Option<String>,
    /// The user as a FHIR reference (`Practitioner/1`), if the token names one.
    pub fhir_user: Option<String>,
}

impl Grant {
    /// Builds a grant.
    pub fn new(scopes: ScopeSet, patient: Option<String>) -> Self {
        Self {
            scopes,
            patient,
            encounter: None,
            fhir_user: None,
        }
    }

    /// The grant with the rest of the launch context: encounter and user.
    pub fn with_context(mut self, encounter: Option<String>, fhir_user: Option<String>) -> Self {
        self.encounter = encounter;
        self.fhir_user = fhir_user;
        self
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
