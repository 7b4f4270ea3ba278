//! The break-the-glass step: a request the policy refused for lack of scope is decided again
//! under an emergency grant when its user states an emergency purpose of use
//! (docs/BREAK-GLASS.md).
//!
//! This step decides who may break the glass: the request must state one of the configured
//! codes (in the token's purpose-of-use claim, or in the configured header), its client must be
//! allowed, and its token must name the user when that is required. Which refusals are reopened
//! and what the emergency grants is the policy core's ([`fhirgate_policy::break_glass`]), so a
//! token error, a rate limit, another patient's data or an operation is never let through here.

use fhirgate_policy::break_glass::{self as policy, Emergency, Unbroken};
use fhirgate_policy::decision::{Decision, Obligations};
use fhirgate_policy::grant::Grant;
use fhirgate_policy::options::PolicyOptions;
use fhirgate_policy::request::FhirRequest;
use http::{HeaderMap, HeaderName};

use crate::config::BreakGlass;
use crate::token::{Identity, purpose};

/// Names the codes a request broke the glass with: on the answer to the client, and to the
/// upstream with `upstream.identity_headers`.
pub const BREAK_GLASS_HEADER: HeaderName = HeaderName::from_static("x-fhirgate-break-glass");

/// Break-the-glass as configured.
#[derive(Debug, Clone)]
pub struct BreakGlassPolicy {
    codes: Vec<String>,
    header: Option<HeaderName>,
    emergency: Emergency,
    clients: Vec<String>,
    require_fhir_user: bool,
}

/// A request the glass was broken for.
#[derive(Debug, Clone, PartialEq)]
pub struct Broken {
    /// The obligations of the decision under the emergency grant (rule `break-glass`).
    pub obligations: Obligations,
    /// The request's purposes of use that broke the glass.
    pub codes: Vec<String>,
}

/// Why the glass stays whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotBroken {
    /// The request states none of the codes that break the glass.
    NoEmergencyPurpose,
    /// The client is not one of `break_glass.clients`.
    ClientNotAllowed,
    /// The token does not name its user (`fhirUser`), and `require_fhir_user` is set.
    NoFhirUser,
    /// The policy core leaves the decision as it was.
    Policy(Unbroken),
}

impl NotBroken {
    /// Why, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::NoEmergencyPurpose => {
                "the request states no purpose of use that breaks the glass"
            }
            Self::ClientNotAllowed => "the client may not break the glass",
            Self::NoFhirUser => "the token does not name its user (fhirUser)",
            Self::Policy(why) => why.describe(),
        }
    }

    /// Is this worth telling an operator: an emergency stated for a refusal the glass could
    /// have opened, turned down?
    pub fn is_refused_emergency(self) -> bool {
        !matches!(
            self,
            Self::NoEmergencyPurpose | Self::Policy(Unbroken::NotForScope)
        )
    }
}

/// The purposes of use a request states: the token's, then those of `header` when one is
/// configured, each once.
pub fn purposes(
    identity: &Identity,
    header: Option<&HeaderName>,
    headers: &HeaderMap,
) -> Vec<String> {
    let mut all = identity.caller.purposes_of_use.clone();
    if let Some(name) = header {
        let values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
        for code in purpose::from_header(values) {
            if !all.contains(&code) {
                all.push(code);
            }
        }
    }
    all
}

impl BreakGlassPolicy {
    /// The policy of a `break_glass` section.
    pub fn new(config: &BreakGlass) -> Self {
        Self {
            codes: config.codes.clone(),
            header: config.header.clone(),
            emergency: config.emergency(),
            clients: config.clients.clone(),
            require_fhir_user: config.require_fhir_user,
        }
    }

    /// The header clients may state purposes of use in, if any.
    pub fn header(&self) -> Option<&HeaderName> {
        self.header.as_ref()
    }

    /// What the emergency adds to a user's grant.
    pub fn emergency(&self) -> &Emergency {
        &self.emergency
    }

    /// Breaks the glass for a request `decision` (the ordinary decision for `grant`) did not
    /// allow whole, when `identity` may and `purposes` (from [`purposes`]) state an emergency.
    pub fn attempt(
        &self,
        identity: &Identity,
        purposes: &[String],
        grant: &Grant,
        request: &FhirRequest,
        decision: &Decision,
        options: &PolicyOptions,
    ) -> Result<Broken, NotBroken> {
        let codes: Vec<String> = purposes
            .iter()
            .filter(|code| self.codes.contains(code))
            .cloned()
            .collect();
        if codes.is_empty() {
            return Err(NotBroken::NoEmergencyPurpose);
        }
        let client = identity.caller.client_id.as_deref().unwrap_or_default();
        if !self.clients.is_empty() && !self.clients.iter().any(|c| c == client) {
            return Err(NotBroken::ClientNotAllowed);
        }
        let named = identity
            .caller
            .fhir_user
            .as_deref()
            .is_some_and(|u| !u.trim().is_empty());
        if self.require_fhir_user && !named {
            return Err(NotBroken::NoFhirUser);
        }
        let obligations = policy::decide(grant, request, decision, options, &self.emergency)
            .map_err(NotBroken::Policy)?;
        Ok(Broken { obligations, codes })
    }
}

#[cfg(test)]
mod tests;
