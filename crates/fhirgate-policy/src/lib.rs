//! fhirgate policy core: SMART scopes, FHIR request classification, the R4 patient compartment,
//! authorization decisions, response checks and OperationOutcome rendering.
//!
//! Pure and synchronous: no I/O, no clock, no async. Everything a security reviewer must read
//! about *what is allowed* lives here; the server crate only carries out the [`decision::Decision`]
//! and its obligations.

pub mod break_glass;
pub mod compartment;
pub mod decision;
pub mod element;
pub mod grant;
pub mod granular;
pub mod options;
pub mod outcome;
pub mod query;
pub mod request;
pub mod scope;
pub mod verify;

mod data;

pub use decision::{
    Decision, Denial, DenyReason, Obligations, Precheck, decide, decide_with, narrowed_query,
};
pub use grant::Grant;
pub use options::{OperationLevel, OperationPolicy, OperationRule, PolicyOptions, ReadRefusal};
pub use outcome::{IssueCode, OperationOutcome, Severity};
pub use request::{
    ClassifyError, FhirRequest, Interaction, Patch, RequestParts, classify, classify_with,
};
pub use scope::ScopeSet;
pub use verify::{
    FilteredBundle, ResponseCheck, VerifyError, check_matches, filter_bundle, verify_resource,
};
