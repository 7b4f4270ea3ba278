//! The verify step: the response obligations of an allow decision, carried out.

use bytes::Bytes;
use fhirgate_policy::verify::{self, Expect, ResponseCheck};

use crate::refusal::Refusal;

/// A checked response body and how many entries it lost.
pub struct Checked {
    pub body: Bytes,
    pub withheld: usize,
}

/// Checks an upstream body against the grant: one resource must pass whole; a Bundle keeps
/// only the entries that pass.
pub fn check_body(check: &ResponseCheck, body: Bytes) -> Result<Checked, Refusal> {
    if check.expect == Expect::Bundle {
        let checked = verify::check_bundle(check, &body)
            .map_err(|e| Refusal::UpstreamUnverifiable(e.to_string()))?;
        return Ok(Checked {
            body: checked.rebuilt.map_or(body, Bytes::from),
            withheld: checked.withheld,
        });
    }
    match verify::verify_resource(check, &body) {
        Ok(()) => Ok(Checked { body, withheld: 0 }),
        Err(verify::VerifyError::NotCovered { .. }) => Err(Refusal::ResponseWithheld),
        Err(error) => Err(Refusal::UpstreamUnverifiable(error.to_string())),
    }
}
