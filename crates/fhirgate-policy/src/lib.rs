//! fhirgate policy core: SMART scopes, FHIR request classification, the R4 patient compartment,
//! authorization decisions, response checks and OperationOutcome rendering.
//!
//! Pure and synchronous: no I/O, no clock, no async. Everything a security reviewer must read
//! about *what is allowed* lives here; the server crate only carries out the [`decision::Decision`]
//! and its obligations.

pub mod compartment;
pub mod decision;
pub mod grant;
pub mod granular;
pub mod outcome;
pub mod query;
pub mod request;
pub mod scope;
pub mod verify;

mod data;

pub use decision::{Decision, Denial, DenyReason, Obligations, decide, narrowed_query};
pub use grant::Grant;
pub use outcome::{IssueCode, OperationOutcome, Severity};
pub use request::{ClassifyError, FhirRequest, Interaction, RequestParts, classify};
pub use scope::ScopeSet;
pub use verify::{FilteredBundle, ResponseCheck, VerifyError, filter_bundle, verify_resource};
