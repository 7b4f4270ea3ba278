//! Runs the shared SMART scope cases (G*, I*, U*, S*) through `classify` + `decide`.
//!
//! Case bodies are described in prose in the JSON; `data/scope-case-inputs.json` holds the
//! concrete bodies, their content types, and the cases where fhirgate's documented policy
//! choice (docs/POLICY.md) differs from the case file's expectation, each with its reason.

use fhirgate_policy::{Decision, Grant, RequestParts, ScopeSet, classify, decide};
use serde_json::Value;

/// (case id, reason): cases not run.
const SKIPS: &[(&str, &str)] = &[];

fn inputs() -> Value {
    serde_json::from_str(include_str!("data/scope-case-inputs.json")).unwrap()
}

/// The request body of a case: a string as it is, JSON rendered.
fn body_for(inputs: &Value, id: &str) -> Option<String> {
    inputs["bodies"].get(id).map(|b| match b {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

fn override_for<'a>(inputs: &'a Value, id: &str) -> Option<&'a str> {
    inputs["overrides"]
        .as_array()?
        .iter()
        .find(|o| o["id"] == id)
        .and_then(|o| o["expected"].as_str())
}

struct Outcome {
    ran: usize,
    skipped: usize,
    failures: Vec<String>,
}

fn run_case(case: &Value, inputs: &Value, out: &mut Outcome) {
    let id = case["id"].as_str().unwrap();
    if let Some((_, why)) = SKIPS.iter().find(|(s, _)| *s == id) {
        println!("skip {id}: {why}");
        out.skipped += 1;
        return;
    }
    out.ran += 1;
    let scopes = case["scopes"].as_str().unwrap_or("");
    let grant = Grant::new(
        ScopeSet::parse(scopes),
        case["patient"].as_str().map(str::to_owned),
    );
    let full = case["path"].as_str().unwrap().trim_start_matches('/');
    let (path, query) = match full.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (full, None),
    };
    let headers = &case["headers"];
    let body = body_for(inputs, id);
    let content_type = headers["Content-Type"]
        .as_str()
        .or(inputs["content_types"][id].as_str())
        .or(body.as_ref().map(|_| "application/fhir+json"));
    let parts = RequestParts {
        method: case["method"].as_str().unwrap(),
        path,
        query,
        content_type,
        body: body.as_deref().map(str::as_bytes),
        if_none_exist: headers["If-None-Exist"].as_str(),
    };
    let expected = override_for(inputs, id).unwrap_or_else(|| case["expected"].as_str().unwrap());
    let decision = match classify(&parts) {
        Ok(req) => decide(&grant, &req),
        Err(e) => {
            out.failures.push(format!("{id}: classify failed: {e}"));
            return;
        }
    };
    let no_patient_scopes = !scopes.contains("patient/");
    let ok = match (&decision, expected) {
        (Decision::Allow(ob), "allow") => {
            // Bookkeeping obligations (binding an export to its client) do not restrict.
            let unrestricted = ob.add_params.is_empty()
                && ob.add_if_none_exist.is_empty()
                && ob.response_check.is_none()
                && ob.precheck.is_none();
            !no_patient_scopes || unrestricted
        }
        (Decision::Allow(ob), "allow-with-filter") => !ob.is_empty(),
        (Decision::Deny(d), "deny") => {
            let status = case["status"].as_u64().unwrap_or(403) as u16;
            let code = case["issueCode"].as_str().unwrap_or("forbidden");
            d.reason.status() == status && d.reason.issue_code().code() == code
        }
        _ => false,
    };
    if !ok {
        out.failures
            .push(format!("{id}: expected {expected}, got {decision:?}"));
    }
}

#[test]
fn scope_cases() {
    let text = include_str!("data/scope-cases.json");
    let inputs = inputs();
    let file: Value = serde_json::from_str(text).unwrap();
    let mut out = Outcome {
        ran: 0,
        skipped: 0,
        failures: Vec::new(),
    };
    for case in file["cases"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        if id.starts_with(['G', 'I', 'U', 'S']) {
            run_case(case, &inputs, &mut out);
        }
    }
    println!(
        "scope cases: {} ran, {} skipped, {} overridden, {} failed",
        out.ran,
        out.skipped,
        inputs["overrides"].as_array().map_or(0, Vec::len),
        out.failures.len()
    );
    for o in inputs["overrides"].as_array().into_iter().flatten() {
        println!("override {} -> {}: {}", o["id"], o["expected"], o["why"]);
    }
    assert!(out.failures.is_empty(), "{}", out.failures.join("\n"));
    assert!(out.ran >= 60, "ran only {}", out.ran);
}
