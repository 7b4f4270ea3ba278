//! The entities of an AuditEvent: the patients, the resource or the query, and the exchange.
//!
//! * patient (BALP `patient` slice): `Patient/X` for the token's patient in context and for
//!   the patient the request names, one entity each when they differ; type
//!   `audit-entity-type#1`, role `object-role#1`;
//! * data (BALP `data`): the resource of an instance interaction (`Type/id`), or only its
//!   type for a create or a conditional interaction; type `#2`, role `#4`;
//! * query (BALP `query`): for searches, histories over a type or the system, and type or
//!   system operations; type `#2`, role `#24`, `query` the base64 of the request line
//!   `METHOD path?query` and `description` the `path?query` itself. No `what`, no `name`
//!   (R4 sev-1: name or query, not both) and no `detail`;
//! * exchange (BALP `transaction`): `X-Request-Id` in `what.identifier.value`, and the
//!   gateway's facts as `detail` entries: `request`, `route` (the route the request took),
//!   `decision`, `reason`, `rule`, `status`,
//!   `upstream-status`, `withheld`, `break-glass` (`true`, only for a request allowed under
//!   break-the-glass) and `scope` (the scopes the token grants, as stated).
//!
//! The query recorded is already redacted (see [`crate::audit::redact_query`]).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use super::{Kind, Object, coding, text};
use crate::audit::AuditRecord;

/// `AuditEvent.entity.type` code system (R4).
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
/// `AuditEvent.entity.role` code system (R4).
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
/// BALP's own entity types (`XrequestId`).
const BALP_ENTITY_TYPE: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";

/// The patients, then the resource or query the request touched, then the exchange.
pub(super) fn entities(record: &AuditRecord, kind: Kind) -> Vec<Value> {
    let mut entities = patients(record);
    match kind.object {
        Object::Instance => entities.extend(data(record)),
        Object::Query => entities.push(query(record)),
        Object::Exchange => {}
    }
    entities.push(exchange(record));
    entities
}

/// The patient in the token's context and the patient the request names, once each.
fn patients(record: &AuditRecord) -> Vec<Value> {
    let context = record.patient.as_deref().and_then(patient_id);
    let target = record.target_patient.as_deref().and_then(patient_id);
    let mut ids: Vec<&str> = context.into_iter().collect();
    if let Some(target) = target.filter(|t| Some(*t) != context) {
        ids.push(target);
    }
    ids.into_iter().map(patient).collect()
}

/// A patient id from a bare id or a `Patient/id` reference.
fn patient_id(value: &str) -> Option<&str> {
    text(Some(value.strip_prefix("Patient/").unwrap_or(value)))
}

fn patient(id: &str) -> Value {
    json!({
        "what": { "reference": format!("Patient/{id}") },
        "type": coding(ENTITY_TYPE, "1", "Person"),
        "role": coding(OBJECT_ROLE, "1", "Patient"),
    })
}

/// The resource of an instance interaction, or its type alone when the request names no
/// id; with the request target as `description` when the id does not say it all
/// (operations, conditional interactions, parameters).
fn data(record: &AuditRecord) -> Option<Value> {
    let kind = text(record.resource_type.as_deref()).filter(|k| is_type_name(k))?;
    let what = match text(record.resource_id.as_deref()) {
        Some(id) => json!({ "reference": format!("{kind}/{id}") }),
        None => json!({ "type": kind }),
    };
    let mut entity = Map::new();
    entity.insert("what".into(), what);
    entity.insert("type".into(), coding(ENTITY_TYPE, "2", "System Object"));
    entity.insert("role".into(), coding(OBJECT_ROLE, "4", "Domain Resource"));
    if record.query.is_some() || record.resource_id.is_none() || record.path.contains('$') {
        entity.insert("description".into(), request_target(record).into());
    }
    Some(Value::Object(entity))
}

/// A FHIR resource type name (`Observation`), not `*` or anything else.
fn is_type_name(kind: &str) -> bool {
    kind.starts_with(|c: char| c.is_ascii_uppercase())
        && kind.chars().all(|c| c.is_ascii_alphanumeric())
}

/// The query: the raw request line in base64, and the path and query as text.
fn query(record: &AuditRecord) -> Value {
    json!({
        "type": coding(ENTITY_TYPE, "2", "System Object"),
        "role": coding(OBJECT_ROLE, "24", "Query"),
        "description": request_target(record),
        "query": STANDARD.encode(request_line(record)),
    })
}

/// The exchange itself: its request id, and what the gateway decided and answered.
fn exchange(record: &AuditRecord) -> Value {
    let mut entity = Map::new();
    if let Some(id) = text(Some(&record.request_id)) {
        entity.insert("what".into(), json!({ "identifier": { "value": id } }));
    }
    entity.insert(
        "type".into(),
        coding(BALP_ENTITY_TYPE, "XrequestId", "X-Request-Id"),
    );
    entity.insert("detail".into(), details(record).into());
    Value::Object(entity)
}

/// The gateway's facts about the exchange, as `detail` entries.
fn details(record: &AuditRecord) -> Vec<Value> {
    let mut details = vec![detail("request", &request_line(record))];
    if let Some(route) = text(record.route.as_deref()) {
        details.push(detail("route", route));
    }
    details.extend([
        detail("decision", record.decision.as_str()),
        detail("reason", &record.reason),
    ]);
    if let Some(rule) = text(record.rule.as_deref()) {
        details.push(detail("rule", rule));
    }
    details.push(detail("status", &record.status.to_string()));
    if let Some(status) = record.upstream_status {
        details.push(detail("upstream-status", &status.to_string()));
    }
    if let Some(withheld) = record.withheld {
        details.push(detail("withheld", &withheld.to_string()));
    }
    if record.break_glass {
        details.push(detail("break-glass", "true"));
    }
    if let Some(scopes) = text(record.scopes.as_deref()) {
        details.push(detail("scope", scopes));
    }
    details.retain(|d| {
        !d["valueString"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .is_empty()
    });
    details
}

fn detail(kind: &str, value: &str) -> Value {
    json!({ "type": kind, "valueString": value })
}

/// `METHOD path?query`, as the request arrived (query redacted).
fn request_line(record: &AuditRecord) -> String {
    format!("{} {}", record.method, request_target(record))
}

/// `path?query`, or the path alone.
fn request_target(record: &AuditRecord) -> String {
    match text(record.query.as_deref()) {
        Some(query) => format!("{}?{query}", record.path),
        None => record.path.clone(),
    }
}
