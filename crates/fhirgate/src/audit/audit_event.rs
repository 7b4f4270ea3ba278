//! The audit record as a FHIR R4 AuditEvent, shaped after the IHE Basic Audit Log Patterns
//! (BALP 1.1) RESTful profiles, and the batch Bundle that carries AuditEvents to a FHIR
//! audit repository.
//!
//! One record becomes one AuditEvent whose `id` is the record id, so a sink that receives it
//! twice stores it once. The event says:
//!
//! * what happened: `type` `rest`, `subtype` the restful interaction, `action` C/R/U/D/E,
//!   `period` from arrival to response, `outcome` 0 / 4 / 8 from the decision and the status
//!   the client was answered with, and `outcomeDesc` with the reason code, a short text and
//!   the rule;
//! * who took part (see `agents.rs`): the client application, the gateway as the server it
//!   spoke to, and the user when the token names one. Exactly one agent is the requestor;
//! * who recorded it: `source`, the gateway instance, typed `security-source-type#6`
//!   (Security Server). The gateway is the enforcement point in front of the FHIR server;
//!   code 6 keeps its records apart from the ones the FHIR server itself writes as an
//!   Application Server (4), as BALP expects both to record the same exchange;
//! * what was touched (see `entities.rs`): the patient(s), the resource or the query, and the
//!   exchange itself (`X-Request-Id`), whose `detail` entries carry the decision, the
//!   statuses, the number of entries withheld and the token's scopes.
//!
//! Refusals keep the shapes of the successful BALP profiles, with `outcome` 4 or 8 and the
//! reason in `outcomeDesc`, so the events claim no BALP profile in `meta.profile` (those
//! profiles fix the outcome at success).
//!
//! Nothing here reads a token: the token is named only by its `jti` (as
//! `urn:ietf:params:oauth:jti:<jti>` in the requestor's `policy`), and scopes appear only in
//! the exchange entity's `scope` detail. The functions are pure and do no I/O.

use serde_json::{Map, Value, json};

use super::record::{AuditDecision, AuditRecord};

mod agents;
mod batch;
mod entities;

pub use batch::{BatchError, batch_acknowledged, batch_bundle};

/// `AuditEvent.type` code system (R4).
const EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
/// `AuditEvent.subtype` code system for RESTful interactions (R4).
const RESTFUL_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
/// `AuditEvent.source.type` code system (R4).
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
/// `purposeOfEvent` / `purposeOfUse` code system for plain purpose codes (`ETREAT`, `BTG`).
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// Who records the events: the gateway instance and where it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSource {
    /// The gateway instance that decided (the record's `instance`, or a configured id).
    pub observer: String,
    /// The site or enterprise the gateway belongs to, when configured.
    pub site: Option<String>,
    /// The gateway's public FHIR base URL, as clients address it.
    pub public_base: String,
}

impl EventSource {
    /// The Reference naming the gateway instance, used by `source.observer` and the server
    /// agent.
    fn reference(&self) -> Value {
        json!({
            "identifier": { "value": self.observer },
            "display": format!("fhirgate {}", self.observer),
        })
    }
}

/// Which way data flowed, which decides the DICOM roles of the client and server agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Data went to the client (read, vread): the client is the Destination.
    ToClient,
    /// Data or criteria went to the server (create, update, search, ...): the client is
    /// the Source (BALP keeps this DICOM convention for queries too).
    ToServer,
    /// A delete: BALP names the client Application and the server Custodian.
    Delete,
}

/// What the request touched, which decides the entity describing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Object {
    /// One resource, or one resource type for a create or a conditional interaction.
    Instance,
    /// A search, a type or system history, or a type or system operation.
    Query,
    /// Nothing beyond the exchange (capabilities, batch, transaction, unclassified).
    Exchange,
}

/// What the request did, as far as the AuditEvent's shape goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kind {
    /// The `restful-interaction` code, when the interaction has one.
    subtype: Option<&'static str>,
    /// `AuditEvent.action`.
    action: &'static str,
    flow: Flow,
    object: Object,
}

impl Kind {
    /// The kind of a recorded request: from its interaction, or from its method when the
    /// gateway could not classify it.
    fn of(record: &AuditRecord) -> Self {
        let instance = record.resource_id.is_some();
        match record.interaction.as_deref() {
            Some(code) => Self::of_interaction(code, instance)
                .unwrap_or_else(|| Self::of_method(&record.method)),
            None => Self::of_method(&record.method),
        }
    }

    fn of_interaction(code: &str, instance: bool) -> Option<Self> {
        use {Flow::*, Object::*};
        let (action, flow, object) = match code {
            "read" | "vread" | "history-instance" => ("R", ToClient, Instance),
            "create" => ("C", ToServer, Instance),
            "update" | "patch" => ("U", ToServer, Instance),
            "delete" => ("D", Delete, Instance),
            "search-type" | "search-system" | "search-compartment" => ("E", ToServer, Query),
            "history-type" | "history-system" | "page-continuation" => ("E", ToServer, Query),
            "operation" if instance => ("E", ToServer, Instance),
            "operation" => ("E", ToServer, Query),
            "batch" | "transaction" => ("E", ToServer, Exchange),
            "capabilities" | "smart-configuration" => ("R", ToClient, Exchange),
            _ => return None,
        };
        Some(Self {
            subtype: restful_code(code),
            action,
            flow,
            object,
        })
    }

    /// An unclassified request, judged by its method alone.
    fn of_method(method: &str) -> Self {
        let (action, flow) = match method {
            "GET" | "HEAD" => ("R", Flow::ToClient),
            "POST" => ("C", Flow::ToServer),
            "PUT" | "PATCH" => ("U", Flow::ToServer),
            "DELETE" => ("D", Flow::Delete),
            _ => ("E", Flow::ToServer),
        };
        Self {
            subtype: None,
            action,
            flow,
            object: Object::Exchange,
        }
    }
}

/// The R4 `restful-interaction` code of a recorded interaction: the same code where R4 has
/// it, `search` for a compartment search, none for SMART discovery and further pages.
fn restful_code(code: &str) -> Option<&'static str> {
    const CODES: [&str; 15] = [
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "history-system",
        "create",
        "search-type",
        "search-system",
        "capabilities",
        "transaction",
        "batch",
        "operation",
    ];
    match code {
        "search-compartment" => Some("search"),
        other => CODES.into_iter().find(|c| *c == other),
    }
}

/// The AuditEvent for one audit record (FHIR R4 AuditEvent, BALP RESTful shapes).
pub fn audit_event(record: &AuditRecord, source: &EventSource) -> Value {
    let kind = Kind::of(record);
    let mut event = Map::new();
    event.insert("resourceType".into(), "AuditEvent".into());
    event.insert("id".into(), record.record_id.clone().into());
    event.insert(
        "type".into(),
        coding(EVENT_TYPE, "rest", "Restful Operation"),
    );
    if let Some(code) = kind.subtype {
        event.insert(
            "subtype".into(),
            json!([{ "system": RESTFUL_INTERACTION, "code": code }]),
        );
    }
    event.insert("action".into(), kind.action.into());
    event.insert("period".into(), period(record));
    event.insert("recorded".into(), record.time.clone().into());
    event.insert("outcome".into(), outcome(record).into());
    event.insert("outcomeDesc".into(), outcome_text(record).into());
    if let Some(purposes) = purpose_of_use(record) {
        event.insert("purposeOfEvent".into(), purposes);
    }
    event.insert(
        "agent".into(),
        agents::agents(record, source, kind.flow).into(),
    );
    event.insert("source".into(), event_source(source));
    event.insert("entity".into(), entities::entities(record, kind).into());
    Value::Object(event)
}

/// A Coding with a display.
fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({ "system": system, "code": code, "display": display })
}

/// A string field that is present and not blank (FHIR strings cannot be empty).
fn text(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.trim().is_empty())
}

/// From the request's arrival to its response being ready.
fn period(record: &AuditRecord) -> Value {
    json!({ "start": record.started, "end": record.time })
}

/// `AuditEvent.outcome`: `8` when the client was answered with a 5xx (the upstream failing
/// included, although the decision was to allow), `4` for any other refusal or 4xx, `0`
/// otherwise.
fn outcome(record: &AuditRecord) -> &'static str {
    match record.status {
        500..=599 => "8",
        400..=499 => "4",
        _ if record.decision == AuditDecision::Deny => "4",
        _ => "0",
    }
}

/// `AuditEvent.outcomeDesc`: the reason code and what it means, what the upstream answered
/// when that is why the outcome is not a success, the entries withheld, and the rule.
fn outcome_text(record: &AuditRecord) -> String {
    let mut desc = format!("{}: {}", record.reason, reason_text(&record.reason));
    if let Some(status) = record.upstream_status.filter(|s| *s >= 400) {
        desc.push_str(&format!("; the FHIR server answered {status}"));
    }
    if let Some(withheld) = record.withheld {
        let entries = if withheld == 1 { "entry" } else { "entries" };
        desc.push_str(&format!(
            "; {withheld} {entries} withheld from the response"
        ));
    }
    if let Some(rule) = text(record.rule.as_deref()) {
        desc.push_str(&format!("; rule {rule}"));
    }
    desc
}

/// A short human text for each reason code the gateway records.
fn reason_text(reason: &str) -> &'static str {
    match reason {
        "allowed" => "forwarded to the FHIR server",
        "break_glass" => {
            "forwarded to the FHIR server under break-the-glass: the token's scopes did not \
             cover it, an emergency purpose of use did"
        }
        "no_token" => "no access token was presented",
        "invalid_request" => "the credentials were malformed",
        "invalid_token" => "the access token was rejected",
        "invalid_dpop_proof" => "the DPoP proof was rejected",
        "dpop_binding" => "the token is not bound to the DPoP key presented",
        "token_expired" => "the access token has expired",
        "keys_unavailable" => "the issuer's signing keys were unavailable",
        "introspection_unavailable" => "token introspection was unavailable",
        "bad_request" => "the request was not understood",
        "insufficient_scope" => "the token's scopes do not cover the request",
        "no_patient_context" => "patient scopes without a patient in context",
        "other_patient" => "the request names a patient other than the one in context",
        "unenforceable_query" => "the query cannot be limited to what the token allows",
        "operation_not_permitted" => "the operation is not permitted to this token",
        "not_supported" => "the interaction is not supported",
        "body_not_checkable" => "the request body could not be checked",
        "not_found" => "not found",
        "response_outside_grant" => "the response held data outside the token's grant",
        "too_many_matches" => "the conditional request matched too many resources",
        "throttled" => "a rate limit was exceeded",
        "rate_limit_store_unavailable" => "the rate-limit store was unavailable",
        "no_route" => "no such endpoint",
        "method_not_allowed" => "the method is not allowed",
        "body_too_large" => "the request body was too large",
        "upstream_unavailable" => "the FHIR server was unavailable",
        "upstream_credential_unavailable" => {
            "the gateway had no valid credential for the FHIR server"
        }
        "upstream_timeout" => "the FHIR server did not answer in time",
        "upstream_down" => "every server of the FHIR API was out of rotation",
        "upstream_unverifiable" => "the FHIR server's response could not be checked",
        "cors_preflight" => "a CORS preflight from an allowed origin was answered",
        "cors_origin_not_allowed" => "the origin may not make cross-origin requests",
        "discovery_unavailable" => "the authorization server's discovery document was unavailable",
        "not_acceptable" => "the client accepts no format the gateway writes",
        "json_required" => "XML was asked for a response the gateway checks in JSON",
        _ => "see the reason code",
    }
}

/// `purposeOfEvent` / `purposeOfUse`: each recorded purpose of use, a v3-ActReason code, as
/// a CodeableConcept of its own.
fn purpose_of_use(record: &AuditRecord) -> Option<Value> {
    let codes: Vec<Value> = text(record.purpose_of_use.as_deref())?
        .split_ascii_whitespace()
        .map(|code| json!({ "coding": [{ "system": ACT_REASON, "code": code }] }))
        .collect();
    Some(Value::Array(codes))
}

/// `AuditEvent.source`: the gateway instance, a Security Server.
fn event_source(source: &EventSource) -> Value {
    let mut out = Map::new();
    if let Some(site) = text(source.site.as_deref()) {
        out.insert("site".into(), site.into());
    }
    out.insert("observer".into(), source.reference());
    out.insert(
        "type".into(),
        json!([coding(SOURCE_TYPE, "6", "Security Server")]),
    );
    Value::Object(out)
}

#[cfg(test)]
mod tests;
