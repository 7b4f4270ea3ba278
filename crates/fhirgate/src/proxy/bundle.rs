//! Batch and transaction obligations, carried out inside the Bundle.
//!
//! Each entry was decided as if sent alone ([`fhirgate_policy::decision`]). Here the proxy
//! does for each entry what it would do for that request: a refused batch entry is left out
//! of the Bundle sent upstream and answered in place; a search entry's `request.url` gets the
//! narrowing parameters; the resource a response entry carries is checked like the response
//! of the same request (a single resource passes whole or the entry becomes a 403, a searchset
//! keeps only what passes). The response Bundle keeps the request's entry order.

use bytes::Bytes;
use fhirgate_policy::decision::{self, Denial, EntryObligations, Obligations};
use serde_json::{Map, Value};

use super::verify::check_body;
use crate::refusal::Refusal;

/// What a Bundle's obligations do to the request and its response.
pub struct BundlePlan<'a> {
    obligations: &'a Obligations,
    /// Entries in the client's Bundle.
    total: usize,
}

/// A checked response Bundle and how many resources it lost to the checks.
pub struct CheckedBundle {
    pub body: Bytes,
    pub withheld: usize,
}

impl<'a> BundlePlan<'a> {
    /// The plan for `obligations`, when they concern Bundle entries at all.
    pub fn new(obligations: &'a Obligations, request_body: &[u8]) -> Option<Self> {
        if obligations.entries.is_empty() && obligations.refused_entries.is_empty() {
            return None;
        }
        let total = serde_json::from_slice::<Value>(request_body)
            .ok()
            .and_then(|v| v.get("entry").and_then(Value::as_array).map(Vec::len))
            .unwrap_or(0);
        Some(Self { obligations, total })
    }

    /// The Bundle sent upstream: refused entries left out, search entries narrowed.
    pub fn upstream_body(&self, body: &[u8]) -> Result<Bytes, Refusal> {
        let narrows = self
            .obligations
            .entries
            .iter()
            .any(|e| !e.add_params.is_empty());
        if self.obligations.refused_entries.is_empty() && !narrows {
            return Ok(Bytes::copy_from_slice(body));
        }
        let mut bundle: Value = serde_json::from_slice(body)
            .map_err(|_| Refusal::BadRequest("the Bundle is not valid JSON".into()))?;
        let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) else {
            return Err(Refusal::BadRequest("the Bundle has no entries".into()));
        };
        for obligation in &self.obligations.entries {
            if obligation.add_params.is_empty() {
                continue;
            }
            let url = entries
                .get_mut(obligation.index)
                .and_then(|e| e.get_mut("request"))
                .and_then(|r| r.get_mut("url"));
            let Some(Value::String(url)) = url else {
                return Err(Refusal::BadRequest(format!(
                    "Bundle.entry[{}].request.url is missing",
                    obligation.index
                )));
            };
            *url = narrowed_url(url, &obligation.add_params);
        }
        let kept: Vec<Value> = std::mem::take(entries)
            .into_iter()
            .enumerate()
            .filter(|(index, _)| self.refusal_of(*index).is_none())
            .map(|(_, entry)| entry)
            .collect();
        *entries = kept;
        let bytes = serde_json::to_vec(&bundle)
            .map_err(|_| Refusal::BadRequest("the Bundle cannot be re-encoded".into()))?;
        Ok(Bytes::from(bytes))
    }

    /// The response Bundle for the client: refused entries answered in place, every forwarded
    /// entry's resource checked by its obligation.
    pub fn checked_response(&self, body: &[u8]) -> Result<CheckedBundle, Refusal> {
        let unverifiable = |what: &str| Refusal::UpstreamUnverifiable(what.to_owned());
        let mut bundle: Value =
            serde_json::from_slice(body).map_err(|_| unverifiable("not a FHIR JSON Bundle"))?;
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(unverifiable("not a Bundle"));
        }
        let forwarded = self.total - self.obligations.refused_entries.len();
        let upstream_entries = match bundle.get_mut("entry") {
            Some(Value::Array(entries)) => std::mem::take(entries),
            None if forwarded == 0 => Vec::new(),
            _ => return Err(unverifiable("the Bundle has no entry list")),
        };
        if upstream_entries.len() != forwarded {
            return Err(unverifiable(
                "the response Bundle does not answer every forwarded entry",
            ));
        }
        let mut upstream_entries = upstream_entries.into_iter();
        let mut entries = Vec::with_capacity(self.total);
        let mut withheld = 0;
        for index in 0..self.total {
            if let Some(denial) = self.refusal_of(index) {
                entries.push(refused_entry(Refusal::Policy(denial.clone())));
                continue;
            }
            let entry = upstream_entries
                .next()
                .ok_or_else(|| unverifiable("too few response entries"))?;
            let (entry, lost) = match self.obligation_of(index) {
                Some(obligation) => check_entry(entry, obligation)?,
                None => (entry, 0),
            };
            withheld += lost;
            entries.push(entry);
        }
        bundle["entry"] = Value::Array(entries);
        let bytes = serde_json::to_vec(&bundle).map_err(|_| unverifiable("re-encoding failed"))?;
        Ok(CheckedBundle {
            body: Bytes::from(bytes),
            withheld,
        })
    }

    fn refusal_of(&self, index: usize) -> Option<&Denial> {
        self.obligations
            .refused_entries
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, d)| d)
    }

    fn obligation_of(&self, index: usize) -> Option<&EntryObligations> {
        self.obligations.entries.iter().find(|e| e.index == index)
    }
}

/// An entry URL (`T?query`, or absolute) with `add` ANDed into its query.
fn narrowed_url(url: &str, add: &[(String, String)]) -> String {
    let (path, query) = match url.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (url, None),
    };
    format!("{path}?{}", decision::narrowed_query(query, add))
}

/// Checks the resource of one response entry. Entries that did not succeed keep only an
/// OperationOutcome; a resource outside the grant turns the entry into a 403.
fn check_entry(mut entry: Value, obligation: &EntryObligations) -> Result<(Value, usize), Refusal> {
    let Some(check) = &obligation.response_check else {
        return Ok((entry, 0));
    };
    let succeeded = entry
        .pointer("/response/status")
        .and_then(Value::as_str)
        .is_some_and(|status| status.trim_start().starts_with('2'));
    let Some(resource) = entry.get("resource") else {
        return Ok((entry, 0));
    };
    if !succeeded {
        if resource.get("resourceType").and_then(Value::as_str) != Some("OperationOutcome")
            && let Some(fields) = entry.as_object_mut()
        {
            fields.remove("resource");
        }
        return Ok((entry, 0));
    }
    let bytes = serde_json::to_vec(resource)
        .map_err(|_| Refusal::UpstreamUnverifiable("entry re-encoding failed".into()))?;
    match check_body(check, Bytes::from(bytes)) {
        Ok(checked) if checked.withheld == 0 => Ok((entry, 0)),
        Ok(checked) => {
            let filtered: Value = serde_json::from_slice(&checked.body)
                .map_err(|_| Refusal::UpstreamUnverifiable("filtered entry unreadable".into()))?;
            entry["resource"] = filtered;
            Ok((entry, checked.withheld))
        }
        Err(Refusal::ResponseWithheld) => Ok((refused_entry(Refusal::ResponseWithheld), 1)),
        Err(other) => Err(other),
    }
}

/// A batch-response entry answering a refused request: its status and OperationOutcome.
fn refused_entry(refusal: Refusal) -> Value {
    let status = refusal.status();
    let outcome: Value =
        serde_json::from_slice(&refusal.outcome().to_json()).unwrap_or(Value::Null);
    let mut response = Map::new();
    response.insert(
        "status".into(),
        Value::from(format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )),
    );
    response.insert("outcome".into(), outcome);
    let mut entry = Map::new();
    entry.insert("response".into(), Value::Object(response));
    Value::Object(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirgate_policy::decision::{Decision, decide_with};
    use fhirgate_policy::options::{BatchRefusal, PolicyOptions};
    use fhirgate_policy::{Grant, RequestParts, ScopeSet, classify_with};

    const REQUEST: &str = r#"{"resourceType":"Bundle","type":"batch","entry":[
        {"request":{"method":"GET","url":"Patient/A"}},
        {"request":{"method":"GET","url":"Patient/B"}},
        {"request":{"method":"GET","url":"Observation?code=8867-4"}},
        {"request":{"method":"GET","url":"Observation/o2"}}]}"#;

    const OBS_A: &str = r#"{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/A"}}"#;
    const OBS_B: &str = r#"{"resourceType":"Observation","id":"o2","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/B"}}"#;

    fn obligations() -> Obligations {
        let options = PolicyOptions {
            batch_refusal: BatchRefusal::PerEntry,
            ..PolicyOptions::default()
        };
        let parts = RequestParts {
            method: "POST",
            path: "",
            query: None,
            content_type: Some("application/fhir+json"),
            body: Some(REQUEST.as_bytes()),
            if_none_exist: None,
        };
        let request = classify_with(&parts, &options).unwrap();
        let grant = Grant::new(ScopeSet::parse("patient/*.rs"), Some("A".into()));
        match decide_with(&grant, &request, &options) {
            Decision::Allow(ob) => ob,
            Decision::Deny(d) => panic!("{d:?}"),
        }
    }

    #[test]
    fn refused_entries_stay_home_and_searches_are_narrowed() {
        let ob = obligations();
        let plan = BundlePlan::new(&ob, REQUEST.as_bytes()).unwrap();
        let sent: Value =
            serde_json::from_slice(&plan.upstream_body(REQUEST.as_bytes()).unwrap()).unwrap();
        let urls: Vec<&str> = sent["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["request"]["url"].as_str().unwrap())
            .collect();
        assert_eq!(
            urls,
            [
                "Patient/A",
                "Observation?code=8867-4&subject=Patient%2FA",
                "Observation/o2"
            ]
        );
    }

    #[test]
    fn response_entries_are_checked_and_refusals_put_back_in_order() {
        let ob = obligations();
        let plan = BundlePlan::new(&ob, REQUEST.as_bytes()).unwrap();
        let response = format!(
            r#"{{"resourceType":"Bundle","type":"batch-response","entry":[
            {{"resource":{{"resourceType":"Patient","id":"A"}},"response":{{"status":"200 OK"}}}},
            {{"resource":{{"resourceType":"Bundle","type":"searchset","entry":[{{"resource":{OBS_A}}},{{"resource":{OBS_B}}}]}},"response":{{"status":"200 OK"}}}},
            {{"resource":{OBS_B},"response":{{"status":"200 OK"}}}}]}}"#
        );
        let checked = plan.checked_response(response.as_bytes()).unwrap();
        let doc: Value = serde_json::from_slice(&checked.body).unwrap();
        let entries = doc["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0]["resource"]["id"], "A");
        assert!(
            entries[1]["response"]["status"]
                .as_str()
                .unwrap()
                .starts_with("403")
        );
        assert_eq!(
            entries[1]["response"]["outcome"]["issue"][0]["expression"][0],
            "Bundle.entry[1]"
        );
        let found = entries[2]["resource"]["entry"].as_array().unwrap();
        let ids: Vec<&str> = found
            .iter()
            .filter_map(|e| e["resource"]["id"].as_str())
            .collect();
        assert!(ids.contains(&"o1") && !ids.contains(&"o2"), "{ids:?}");
        assert!(
            entries[3]["response"]["status"]
                .as_str()
                .unwrap()
                .starts_with("403")
        );
        assert!(!String::from_utf8_lossy(&checked.body).contains("\"o2\""));
        assert_eq!(checked.withheld, 2);
    }

    #[test]
    fn a_response_that_does_not_answer_every_entry_is_unverifiable() {
        let ob = obligations();
        let plan = BundlePlan::new(&ob, REQUEST.as_bytes()).unwrap();
        let short = r#"{"resourceType":"Bundle","type":"batch-response","entry":[]}"#;
        assert!(matches!(
            plan.checked_response(short.as_bytes()),
            Err(Refusal::UpstreamUnverifiable(_))
        ));
        assert!(matches!(
            plan.checked_response(b"<Bundle/>"),
            Err(Refusal::UpstreamUnverifiable(_))
        ));
    }

    #[test]
    fn failed_entries_keep_only_their_outcome() {
        let obligation = &obligations().entries[1];
        let entry: Value = serde_json::from_str(&format!(
            r#"{{"resource":{OBS_B},"response":{{"status":"404 Not Found"}}}}"#
        ))
        .unwrap();
        let (entry, lost) = check_entry(entry, obligation).unwrap();
        assert!(entry.get("resource").is_none());
        assert_eq!(lost, 0);
    }
}
