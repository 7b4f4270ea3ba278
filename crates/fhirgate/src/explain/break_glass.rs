//! Break-the-glass in an explanation: the gateway's own step
//! ([`crate::proxy::BreakGlassPolicy`]) run on the policy decision, and what it made of it.

use fhirgate_policy::decision::Decision;
use fhirgate_policy::grant::Grant;
use fhirgate_policy::options::PolicyOptions;
use fhirgate_policy::request::FhirRequest;
use http::HeaderMap;

use super::report::BreakGlassReport;
use crate::config::Config;
use crate::proxy::{self, BreakGlassPolicy};
use crate::token::Identity;

/// The request as the gateway decides it after break-the-glass, and the report of that step:
/// none when break-the-glass is not configured and the request states no purpose of use.
pub(super) fn reopen(
    config: &Config,
    identity: &Identity,
    headers: &HeaderMap,
    grant: &Grant,
    request: &FhirRequest,
    decision: Decision,
    options: &PolicyOptions,
) -> (Decision, Option<BreakGlassReport>) {
    let policy = config.break_glass.as_ref().map(BreakGlassPolicy::new);
    let purposes = proxy::purposes(identity, policy.as_ref().and_then(|p| p.header()), headers);
    let Some(policy) = policy else {
        if purposes.is_empty() {
            return (decision, None);
        }
        let report = BreakGlassReport {
            configured: false,
            purposes,
            applied: false,
            codes: Vec::new(),
            emergency_scopes: Vec::new(),
            not_applied: Some(
                "break-the-glass is off: the configuration has no break_glass section".into(),
            ),
        };
        return (decision, Some(report));
    };
    let emergency_scopes = policy
        .emergency()
        .scopes()
        .into_iter()
        .map(|scope| scope.text)
        .collect();
    let mut report = BreakGlassReport {
        configured: true,
        purposes: purposes.clone(),
        applied: false,
        codes: Vec::new(),
        emergency_scopes,
        not_applied: None,
    };
    match policy.attempt(identity, &purposes, grant, request, &decision, options) {
        Ok(broken) => {
            report.applied = true;
            report.codes = broken.codes;
            (Decision::Allow(broken.obligations), Some(report))
        }
        Err(why) => {
            report.not_applied = Some(why.describe().to_owned());
            (decision, Some(report))
        }
    }
}
