//! fhirgate: a SMART-on-FHIR enforcement gateway.
//!
//! A reverse proxy in front of any FHIR R4 server. Every request is authenticated with an
//! OAuth2 access token, classified as a FHIR interaction, authorized against the token's
//! SMART scopes and patient context by [`fhirgate_policy`], forwarded, its response checked
//! where the decision requires it, and recorded in the audit trail. See
//! `docs/ARCHITECTURE.md` for the pipeline and where each step lives.

pub mod admin;
pub mod audit;
pub mod body;
pub mod config;
pub mod discovery;
pub mod explain;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod refusal;
pub mod reload;
pub mod run;
pub mod telemetry;
pub mod token;
