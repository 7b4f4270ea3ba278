//! The batch Bundle that sends AuditEvents to a FHIR server, and the check of its answer.
//!
//! Each event is sent as `PUT AuditEvent/<id>` (update as create, R4 http 3.1.0.4.3), so a
//! batch sent again after a lost answer stores each event once. Entries carry no `fullUrl`:
//! R4 allows omitting it, a `urn:uuid:` would announce a resource without a server id
//! (which a PUT to a known id is not), and the sink's base URL is not known here.

use serde_json::{Value, json};

/// Why a batch-response does not acknowledge every AuditEvent sent.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The body is not JSON.
    #[error("the batch response is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The body is JSON but not a Bundle (often an OperationOutcome for the whole batch).
    #[error("the batch response is {found}, not a Bundle{}", diagnostics_suffix(.diagnostics))]
    NotABundle {
        /// Its `resourceType`, or what kind of JSON value it is.
        found: String,
        /// The diagnostics of an OperationOutcome answer.
        diagnostics: Option<String>,
    },
    /// A Bundle of another type than `batch-response`.
    #[error("the batch response Bundle has type {found}, not batch-response")]
    WrongType {
        /// Its `type`, or `(none)`.
        found: String,
    },
    /// Fewer or more entries than events sent.
    #[error("the batch response has {found} entries for {sent} sent")]
    EntryCount {
        /// Entries sent.
        sent: usize,
        /// Entries answered.
        found: usize,
    },
    /// An entry whose `response.status` is missing or not 2xx.
    #[error(
        "Bundle.entry[{index}] was not stored: status {status}{}",
        diagnostics_suffix(.diagnostics)
    )]
    EntryFailed {
        /// The entry's position (from 0), the same as in the batch sent.
        index: usize,
        /// Its `response.status`, or `(none)`.
        status: String,
        /// The diagnostics (or details text) of its `response.outcome` OperationOutcome.
        diagnostics: Option<String>,
    },
}

fn diagnostics_suffix(diagnostics: &Option<String>) -> String {
    diagnostics
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

/// A Bundle of type `batch` storing each AuditEvent with `PUT AuditEvent/<id>`. An event
/// without an id (which [`super::audit_event`] never makes) is sent with `POST`.
pub fn batch_bundle(events: &[Value]) -> Value {
    let entries: Vec<Value> = events.iter().map(entry).collect();
    json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": entries,
    })
}

fn entry(event: &Value) -> Value {
    let request = match event["id"].as_str().filter(|id| !id.is_empty()) {
        Some(id) => json!({ "method": "PUT", "url": format!("AuditEvent/{id}") }),
        None => json!({ "method": "POST", "url": "AuditEvent" }),
    };
    json!({ "resource": event, "request": request })
}

/// Checks that a FHIR server's answer to a batch of `sent` AuditEvents stored them all: a
/// Bundle of type `batch-response` with one entry per event sent, each with a 2xx
/// `response.status`. The first entry that failed is reported.
pub fn batch_acknowledged(response: &[u8], sent: usize) -> Result<(), BatchError> {
    let bundle: Value = serde_json::from_slice(response).map_err(BatchError::NotJson)?;
    check_bundle(&bundle)?;
    let entries = bundle["entry"].as_array().map_or(&[][..], Vec::as_slice);
    if entries.len() != sent {
        return Err(BatchError::EntryCount {
            sent,
            found: entries.len(),
        });
    }
    entries
        .iter()
        .enumerate()
        .try_for_each(|(i, e)| check_entry(i, e))
}

/// A Bundle of type `batch-response`.
fn check_bundle(bundle: &Value) -> Result<(), BatchError> {
    let found = match bundle {
        Value::Object(_) => bundle["resourceType"]
            .as_str()
            .unwrap_or("(no resourceType)"),
        _ => "not a JSON object",
    };
    if found != "Bundle" {
        return Err(BatchError::NotABundle {
            found: found.to_owned(),
            diagnostics: diagnostics(bundle),
        });
    }
    match bundle["type"].as_str() {
        Some("batch-response") => Ok(()),
        other => Err(BatchError::WrongType {
            found: other.unwrap_or("(none)").to_owned(),
        }),
    }
}

/// One entry: stored when its status starts with 2.
fn check_entry(index: usize, entry: &Value) -> Result<(), BatchError> {
    let response = &entry["response"];
    match response["status"].as_str() {
        Some(status) if status.trim_start().starts_with('2') => Ok(()),
        status => Err(BatchError::EntryFailed {
            index,
            status: status.unwrap_or("(none)").to_owned(),
            diagnostics: diagnostics(&response["outcome"]),
        }),
    }
}

/// The `diagnostics` (or `details.text`) of an OperationOutcome's issues, joined.
fn diagnostics(outcome: &Value) -> Option<String> {
    if outcome["resourceType"] != "OperationOutcome" {
        return None;
    }
    let texts: Vec<&str> = outcome["issue"]
        .as_array()?
        .iter()
        .filter_map(|issue| {
            issue["diagnostics"]
                .as_str()
                .or_else(|| issue["details"]["text"].as_str())
        })
        .filter(|t| !t.trim().is_empty())
        .collect();
    (!texts.is_empty()).then(|| texts.join("; "))
}
