//! The agents of an AuditEvent: the client application, the server it spoke to (the
//! gateway, at its public FHIR base), and the user the token names.
//!
//! Roles follow BALP: for a read the client is the DICOM Destination (110152) and the server
//! the Source (110153); for a create, update or query the other way round; for a delete the
//! client is the Application (110150) and the server the Custodian. The user is the
//! information recipient (v3-ParticipationType `IRCP`). The requestor is the user when the
//! token names one, the client otherwise; only the requestor carries the token's `jti` (in
//! `policy`) and the purpose of use.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value, json};

use super::{EventSource, Flow, coding, purpose_of_use, text};
use crate::audit::AuditRecord;

/// DICOM controlled terminology, for the client and server roles.
const DICOM: &str = "http://dicom.nema.org/resources/ontology/DCM";
/// The user agent's type.
const PARTICIPATION_TYPE: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
/// The server's type in a delete.
const PROVENANCE_PARTICIPANT: &str =
    "http://terminology.hl7.org/CodeSystem/provenance-participant-type";
/// How BALP names an OAuth token in `agent.policy` (RFC 3553 URN for a JWT ID).
const JTI_URN: &str = "urn:ietf:params:oauth:jti:";
/// R4 `network-type`: an IP address, and a URI.
const NETWORK_IP: &str = "2";
const NETWORK_URI: &str = "5";

/// Characters a URN's specific string may hold unencoded (RFC 8141: `pchar` and `/`).
const URN_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@')
    .remove(b'/');

/// The resource types R4 allows as `AuditEvent.agent.who`.
const WHO_TYPES: [&str; 6] = [
    "Practitioner",
    "PractitionerRole",
    "Patient",
    "RelatedPerson",
    "Organization",
    "Device",
];

/// The client, the server and, when the token names a subject, the user.
pub(super) fn agents(record: &AuditRecord, source: &EventSource, flow: Flow) -> Vec<Value> {
    let user = user(record);
    let (client_type, server_type) = roles(flow);
    let mut agents = vec![
        client(record, client_type, user.is_none()),
        server(source, server_type),
    ];
    agents.extend(user);
    agents
}

/// The client's and the server's `type` for a flow.
fn roles(flow: Flow) -> (Value, Value) {
    let destination = coding(DICOM, "110152", "Destination Role ID");
    let source = coding(DICOM, "110153", "Source Role ID");
    match flow {
        Flow::ToClient => (destination, source),
        Flow::ToServer => (source, destination),
        Flow::Delete => (
            coding(DICOM, "110150", "Application"),
            coding(PROVENANCE_PARTICIPANT, "custodian", "Custodian"),
        ),
    }
}

/// The client application: its `client_id` under the issuer when the token names one, and
/// its network address. Without a token only the address is known.
fn client(record: &AuditRecord, kind: Value, requestor: bool) -> Value {
    let mut agent = Map::new();
    agent.insert("type".into(), json!({ "coding": [kind] }));
    if let Some(client_id) = text(record.client_id.as_deref()) {
        let identifier = identifier(record.issuer.as_deref(), client_id);
        agent.insert("who".into(), json!({ "identifier": identifier }));
    }
    agent.insert("requestor".into(), requestor.into());
    if requestor {
        requestor_fields(&mut agent, record);
    }
    if let Some(address) = text(Some(&record.source)) {
        agent.insert("network".into(), network(address, NETWORK_IP));
    }
    Value::Object(agent)
}

/// The server the client spoke to: the gateway, at its public FHIR base.
fn server(source: &EventSource, kind: Value) -> Value {
    let mut agent = Map::new();
    agent.insert("type".into(), json!({ "coding": [kind] }));
    agent.insert("who".into(), source.reference());
    agent.insert("requestor".into(), false.into());
    if let Some(base) = text(Some(&source.public_base)) {
        agent.insert("network".into(), network(base, NETWORK_URI));
    }
    Value::Object(agent)
}

/// The user: the token's subject under its issuer, named by `fhirUser` when the token
/// carries it (which also becomes `who.reference` when it names a person type R4 allows).
fn user(record: &AuditRecord) -> Option<Value> {
    let subject = text(record.subject.as_deref())?;
    let fhir_user = text(record.fhir_user.as_deref());
    let mut who = Map::new();
    if let Some(reference) = fhir_user.filter(|u| is_who_reference(u)) {
        who.insert("reference".into(), reference.into());
    }
    who.insert(
        "identifier".into(),
        identifier(record.issuer.as_deref(), subject),
    );

    let mut agent = Map::new();
    let kind = coding(PARTICIPATION_TYPE, "IRCP", "information recipient");
    agent.insert("type".into(), json!({ "coding": [kind] }));
    agent.insert("who".into(), Value::Object(who));
    if let Some(name) = fhir_user {
        agent.insert("name".into(), name.into());
    }
    agent.insert("requestor".into(), true.into());
    requestor_fields(&mut agent, record);
    Some(Value::Object(agent))
}

/// What only the requestor carries: the token's id and the purpose of use.
fn requestor_fields(agent: &mut Map<String, Value>, record: &AuditRecord) {
    if let Some(jti) = text(record.token_id.as_deref()) {
        agent.insert("policy".into(), json!([token_policy(jti)]));
    }
    if let Some(purposes) = purpose_of_use(record) {
        agent.insert("purposeOfUse".into(), purposes);
    }
}

/// The token's id as BALP's `urn:ietf:params:oauth:jti:` URN.
fn token_policy(jti: &str) -> String {
    format!("{JTI_URN}{}", utf8_percent_encode(jti, URN_KEEP))
}

/// An Identifier, with a system when one is known.
fn identifier(system: Option<&str>, value: &str) -> Value {
    let mut identifier = Map::new();
    if let Some(system) = text(system) {
        identifier.insert("system".into(), system.into());
    }
    identifier.insert("value".into(), value.into());
    Value::Object(identifier)
}

fn network(address: &str, kind: &str) -> Value {
    json!({ "address": address, "type": kind })
}

/// Does a `fhirUser` value (`Type/id`, or an absolute URL ending so) name a type R4 allows
/// as an agent?
fn is_who_reference(fhir_user: &str) -> bool {
    let mut segments = fhir_user.rsplit('/');
    let id = segments.next().unwrap_or_default();
    let kind = segments.next().unwrap_or_default();
    !id.is_empty() && !id.contains(char::is_whitespace) && WHO_TYPES.contains(&kind)
}
