//! Response checks: the obligations `decide` attaches to allowed requests.
//!
//! A returned resource is covered when some resource scope of the grant names its type with one
//! of the check's letters, is satisfied by its granular parameters, and, for `patient/` scopes
//! on compartment types, the resource is in the context patient's compartment. Bundles are
//! filtered entry by entry; kept entries and every other top-level member are re-emitted byte
//! for byte (clinical content is never re-serialised). When entries are withheld the Bundle's
//! `total` is removed (a count over all pages cannot be corrected safely, and it would reveal
//! how many inaccessible matches exist) and one `suppressed` OperationOutcome entry is appended.

use std::collections::BTreeSet;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::compartment::{in_patient_compartment, is_compartment_type};
use crate::element::Node;
use crate::grant::Grant;
use crate::granular::matches_all;
use crate::scope::{Context, Perms};

/// Largest response body fhirgate will parse for checking (64 MiB).
pub const MAX_CHECKED_BODY: usize = 64 * 1024 * 1024;

/// What the response is expected to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// One resource: use [`verify_resource`].
    Resource,
    /// A Bundle: use [`filter_bundle`].
    Bundle,
}

/// A response obligation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseCheck {
    /// The context patient (copied from the grant).
    pub patient: Option<String>,
    /// The grant the resources must be covered by.
    pub grant: Grant,
    /// A resource is covered by a scope holding any of these letters.
    pub perms: Perms,
    /// Single resource or Bundle.
    pub expect: Expect,
}

impl ResponseCheck {
    /// A check of `expect` against `grant` for scopes holding any of `perms`.
    pub fn new(grant: &Grant, perms: Perms, expect: Expect) -> Self {
        Self {
            patient: grant.patient.clone(),
            grant: grant.clone(),
            perms,
            expect,
        }
    }

    /// The top-level members of a `resource_type` resource that [`ResponseCheck::covers`]
    /// reads: those placing it in the compartment, and those of the granular parameters of
    /// the scopes that could cover it.
    fn members(&self, resource_type: &str) -> BTreeSet<String> {
        let mut members = crate::data::compartment_members(resource_type).clone();
        for scope in self.grant.scopes.resource_scopes() {
            if scope.resource_type.covers(resource_type) {
                for (name, _) in &scope.params {
                    members.extend(crate::data::granular_members(resource_type, name));
                }
            }
        }
        members
    }

    /// Is `resource` covered?
    pub fn covers<J: Node>(&self, resource: &J) -> bool {
        let Some(ty) = resource.member("resourceType").and_then(Node::text) else {
            return false;
        };
        self.grant.scopes.resource_scopes().iter().any(|s| {
            if !s.resource_type.covers(ty) || !s.perms.intersects(self.perms) {
                return false;
            }
            if s.context == Context::Patient {
                let Some(pid) = self.patient.as_deref() else {
                    return false;
                };
                if is_compartment_type(ty) && !in_patient_compartment(resource, pid) {
                    return false;
                }
            }
            !s.is_granular() || matches_all(resource, &s.params)
        })
    }
}

/// Why a response failed its check (the server answers 403 or 502).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The body is not the expected FHIR JSON (server: 502).
    #[error("upstream response is not a FHIR JSON {0}")]
    NotFhirJson(&'static str),
    /// The body is larger than [`MAX_CHECKED_BODY`] (server: 502).
    #[error("upstream response too large to check")]
    TooLarge,
    /// A conditional write's criteria match more than one page of resources (server: 412).
    #[error("the criteria match more resources than can be checked")]
    TooManyMatches,
    /// The resource is not covered by the grant (server: 403).
    #[error("the returned {resource_type} is not covered by the granted scopes")]
    NotCovered {
        /// Its type.
        resource_type: String,
    },
}

/// Checks a single-resource response (read, vread, write pre-check). An OperationOutcome
/// passes (upstream errors are forwarded).
pub fn verify_resource(check: &ResponseCheck, body: &[u8]) -> Result<(), VerifyError> {
    if body.len() > MAX_CHECKED_BODY {
        return Err(VerifyError::TooLarge);
    }
    let mut wanted = Wanted::new(check);
    let resource = std::str::from_utf8(body)
        .ok()
        .and_then(|text| {
            view::read(
                text,
                ResourceSeed {
                    wanted: &mut wanted,
                },
            )
            .ok()
        })
        .ok_or(VerifyError::NotFhirJson("resource"))?;
    let ty = resource.resource_type.as_ref();
    if ty == "OperationOutcome" || check.covers(&resource.element) {
        Ok(())
    } else {
        Err(VerifyError::NotCovered {
            resource_type: ty.to_owned(),
        })
    }
}

/// Checks the search answer of a conditional write's criteria (`Precheck::Matches`): every
/// matching resource must be covered, and the matches must fit in one page (no `next` link).
/// Returns the number of matches.
pub fn check_matches(check: &ResponseCheck, body: &[u8]) -> Result<usize, VerifyError> {
    let filtered = filter_bundle(check, body)?;
    if filtered.withheld > 0 {
        return Err(VerifyError::NotCovered {
            resource_type: "match".to_owned(),
        });
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|_| VerifyError::NotFhirJson("Bundle"))?;
    let has_next = value
        .get("link")
        .and_then(Value::as_array)
        .is_some_and(|links| {
            links
                .iter()
                .any(|l| l.get("relation").and_then(Value::as_str) == Some("next"))
        });
    if has_next {
        return Err(VerifyError::TooManyMatches);
    }
    Ok(filtered.kept)
}

/// Result of [`filter_bundle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilteredBundle {
    /// The body to send (the original bytes when `unchanged`).
    pub body: Vec<u8>,
    /// Entries kept.
    pub kept: usize,
    /// Entries withheld.
    pub withheld: usize,
    /// Nothing was withheld: `body` is the original.
    pub unchanged: bool,
}

const SUPPRESSED_ENTRY_HEAD: &str = r#"{"resource":{"resourceType":"OperationOutcome","issue":[{"severity":"warning","code":"suppressed","diagnostics":""#;
const SUPPRESSED_ENTRY_TAIL: &str =
    r#" entries withheld by access policy"}]},"search":{"mode":"outcome"}}"#;

/// Filters a Bundle response, removing every entry the grant does not cover.
pub fn filter_bundle(check: &ResponseCheck, body: &[u8]) -> Result<FilteredBundle, VerifyError> {
    let checked = check_bundle(check, body)?;
    Ok(FilteredBundle {
        unchanged: checked.rebuilt.is_none(),
        body: checked.rebuilt.unwrap_or_else(|| body.to_vec()),
        kept: checked.kept,
        withheld: checked.withheld,
    })
}

/// Result of [`check_bundle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleCheck {
    /// Entries kept.
    pub kept: usize,
    /// Entries withheld.
    pub withheld: usize,
    /// The Bundle without the withheld entries; `None` when nothing was withheld and the
    /// original body goes out as it is.
    pub rebuilt: Option<Vec<u8>>,
}

/// [`filter_bundle`] without a copy of a body that passes whole.
pub fn check_bundle(check: &ResponseCheck, body: &[u8]) -> Result<BundleCheck, VerifyError> {
    if body.len() > MAX_CHECKED_BODY {
        return Err(VerifyError::TooLarge);
    }
    let unreadable = || VerifyError::NotFhirJson("Bundle");
    let text = std::str::from_utf8(body).map_err(|_| unreadable())?;
    // One pass over the body decides every entry; only when some are withheld is the text
    // read again, to copy the kept entries byte for byte.
    let mut wanted = Wanted::new(check);
    let view = view::read(
        text,
        BundleSeed {
            wanted: &mut wanted,
        },
    )
    .map_err(|_| unreadable())?;
    let unchanged = |kept| BundleCheck {
        kept,
        withheld: 0,
        rebuilt: None,
    };
    match view.resource_type.as_ref() {
        "OperationOutcome" => return Ok(unchanged(0)),
        "Bundle" => {}
        _ => return Err(unreadable()),
    }
    let keep = view.keep;
    let withheld = keep.iter().filter(|kept| !**kept).count();
    if withheld == 0 {
        return Ok(unchanged(keep.len()));
    }
    let top: BorrowedObject<'_> = serde_json::from_str(text).map_err(|_| unreadable())?;
    let entries: Vec<&RawValue> = match top.0.iter().find(|(k, _)| k == "entry") {
        Some((_, raw)) => serde_json::from_str(raw.get()).map_err(|_| unreadable())?,
        None => Vec::new(),
    };
    if entries.len() != keep.len() {
        return Err(unreadable());
    }
    let kept: Vec<&str> = entries
        .iter()
        .zip(&keep)
        .filter(|(_, kept)| **kept)
        .map(|(entry, _)| entry.get())
        .collect();
    let rebuilt = rebuild(&top, &kept, withheld);
    Ok(BundleCheck {
        kept: kept.len(),
        withheld,
        rebuilt: Some(rebuilt.into_bytes()),
    })
}

fn rebuild(top: &BorrowedObject<'_>, kept: &[&str], withheld: usize) -> String {
    let mut out = String::from("{");
    let mut first = true;
    let mut wrote_entry = false;
    for (key, raw) in &top.0 {
        if key == "total" {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&serde_json::to_string(key.as_ref()).unwrap_or_default());
        out.push(':');
        if key == "entry" {
            push_entries(&mut out, kept, withheld);
            wrote_entry = true;
        } else {
            out.push_str(raw.get());
        }
    }
    if !wrote_entry {
        out.push_str(if first { "\"entry\":" } else { ",\"entry\":" });
        push_entries(&mut out, kept, withheld);
    }
    out.push('}');
    out
}

fn push_entries(out: &mut String, kept: &[&str], withheld: usize) {
    out.push('[');
    for e in kept {
        out.push_str(e);
        out.push(',');
    }
    out.push_str(SUPPRESSED_ENTRY_HEAD);
    out.push_str(&withheld.to_string());
    out.push_str(SUPPRESSED_ENTRY_TAIL);
    out.push(']');
}

#[cfg(test)]
mod tests;
mod view;

use view::{BorrowedObject, BundleSeed, ResourceSeed, Wanted};
