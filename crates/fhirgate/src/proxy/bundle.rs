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
use indexmap::IndexMap;
use serde_json::value::RawValue;
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
    /// Do these obligations reach inside a batch or transaction (entries carried out or
    /// refused in place)?
    pub fn applies(obligations: &Obligations) -> bool {
        !(obligations.entries.is_empty() && obligations.refused_entries.is_empty())
    }

    /// The plan for `obligations`, when they concern Bundle entries at all.
    pub fn new(obligations: &'a Obligations, request_body: &[u8]) -> Option<Self> {
        if !Self::applies(obligations) {
            return None;
        }
        let total = serde_json::from_slice::<Value>(request_body)
            .ok()
            .and_then(|v| v.get("entry").and_then(Value::as_array).map(Vec::len))
            .unwrap_or(0);
        Some(Self { obligations, total })
    }

    /// The Bundle sent upstream: refused entries left out, search entries narrowed. Every
    /// other byte of the client's Bundle (resources to write included) goes on as sent.
    pub fn upstream_body(&self, body: &[u8]) -> Result<Bytes, Refusal> {
        let narrows = self
            .obligations
            .entries
            .iter()
            .any(|e| !e.add_params.is_empty());
        if self.obligations.refused_entries.is_empty() && !narrows {
            return Ok(Bytes::copy_from_slice(body));
        }
        let invalid = |what: &str| Refusal::BadRequest(what.to_owned());
        let mut bundle: RawObject =
            serde_json::from_slice(body).map_err(|_| invalid("the Bundle is not valid JSON"))?;
        let entries: Vec<Box<RawValue>> = match bundle.get("entry") {
            Some(raw) => serde_json::from_str(raw.get())
                .map_err(|_| invalid("Bundle.entry is not a list"))?,
            None => return Err(invalid("the Bundle has no entries")),
        };
        let mut kept = Vec::with_capacity(entries.len());
        for (index, entry) in entries.into_iter().enumerate() {
            if self.refusal_of(index).is_some() {
                continue;
            }
            match self
                .obligation_of(index)
                .filter(|o| !o.add_params.is_empty())
            {
                Some(obligation) => kept.push(narrowed_entry(&entry, obligation)?),
                None => kept.push(entry),
            }
        }
        bundle.insert("entry".into(), raw(&kept)?);
        let bytes =
            serde_json::to_vec(&bundle).map_err(|_| invalid("the Bundle cannot be re-encoded"))?;
        Ok(Bytes::from(bytes))
    }

    /// The response Bundle for the client: refused entries answered in place, every forwarded
    /// entry's resource checked by its obligation. Entries and members the checks leave alone
    /// are copied byte for byte (FHIR decimals keep their precision).
    pub fn checked_response(&self, body: &[u8]) -> Result<CheckedBundle, Refusal> {
        let unverifiable = |what: &str| Refusal::UpstreamUnverifiable(what.to_owned());
        let mut bundle: RawObject =
            serde_json::from_slice(body).map_err(|_| unverifiable("not a FHIR JSON Bundle"))?;
        let resource_type: Option<String> = bundle
            .get("resourceType")
            .and_then(|raw| serde_json::from_str(raw.get()).ok());
        if resource_type.as_deref() != Some("Bundle") {
            return Err(unverifiable("not a Bundle"));
        }
        let forwarded = self.total - self.obligations.refused_entries.len();
        let upstream_entries: Vec<Box<RawValue>> = match bundle.get("entry") {
            Some(raw) => serde_json::from_str(raw.get())
                .map_err(|_| unverifiable("the Bundle has no entry list"))?,
            None if forwarded == 0 => Vec::new(),
            None => return Err(unverifiable("the Bundle has no entry list")),
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
                entries.push(refused_entry(Refusal::Policy(denial.clone()))?);
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
        bundle.insert("entry".into(), raw(&entries)?);
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

/// A JSON object whose member values are kept as the bytes they arrived as.
type RawObject = IndexMap<String, Box<RawValue>>;

fn raw(value: &impl serde::Serialize) -> Result<Box<RawValue>, Refusal> {
    serde_json::value::to_raw_value(value)
        .map_err(|_| Refusal::UpstreamUnverifiable("re-encoding failed".into()))
}

/// A request entry whose `request.url` has `add` ANDed into its query; its resource and every
/// other member stay as sent.
fn narrowed_entry(
    entry: &RawValue,
    obligation: &EntryObligations,
) -> Result<Box<RawValue>, Refusal> {
    let invalid = || {
        Refusal::BadRequest(format!(
            "Bundle.entry[{}].request.url is missing",
            obligation.index
        ))
    };
    let mut members: RawObject = serde_json::from_str(entry.get()).map_err(|_| invalid())?;
    let mut request: Map<String, Value> = members
        .get("request")
        .and_then(|r| serde_json::from_str(r.get()).ok())
        .ok_or_else(invalid)?;
    let Some(Value::String(url)) = request.get_mut("url") else {
        return Err(invalid());
    };
    *url = narrowed_url(url, &obligation.add_params);
    members.insert("request".into(), raw(&request)?);
    raw(&members)
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
fn check_entry(
    entry: Box<RawValue>,
    obligation: &EntryObligations,
) -> Result<(Box<RawValue>, usize), Refusal> {
    let Some(check) = &obligation.response_check else {
        return Ok((entry, 0));
    };
    let unverifiable = |what: &str| Refusal::UpstreamUnverifiable(what.to_owned());
    let mut members: RawObject =
        serde_json::from_str(entry.get()).map_err(|_| unverifiable("an entry is not an object"))?;
    #[derive(serde::Deserialize)]
    struct Status {
        status: Option<String>,
    }
    let succeeded = members
        .get("response")
        .and_then(|r| serde_json::from_str::<Status>(r.get()).ok())
        .and_then(|r| r.status)
        .is_some_and(|status| status.trim_start().starts_with('2'));
    let Some(resource) = members.get("resource") else {
        return Ok((entry, 0));
    };
    if !succeeded {
        #[derive(serde::Deserialize)]
        struct Kind {
            #[serde(rename = "resourceType")]
            resource_type: Option<String>,
        }
        let kind = serde_json::from_str::<Kind>(resource.get())
            .ok()
            .and_then(|k| k.resource_type);
        if kind.as_deref() == Some("OperationOutcome") {
            return Ok((entry, 0));
        }
        members.shift_remove("resource");
        return Ok((raw(&members)?, 0));
    }
    let bytes = Bytes::copy_from_slice(resource.get().as_bytes());
    match check_body(check, bytes) {
        Ok(checked) if checked.withheld == 0 => Ok((entry, 0)),
        Ok(checked) => {
            let text = String::from_utf8(checked.body.to_vec())
                .map_err(|_| unverifiable("filtered entry unreadable"))?;
            let filtered = RawValue::from_string(text)
                .map_err(|_| unverifiable("filtered entry unreadable"))?;
            members.insert("resource".into(), filtered);
            Ok((raw(&members)?, checked.withheld))
        }
        Err(Refusal::ResponseWithheld) => Ok((refused_entry(Refusal::ResponseWithheld)?, 1)),
        Err(other) => Err(other),
    }
}

/// A batch-response entry answering a refused request: its status and OperationOutcome.
fn refused_entry(refusal: Refusal) -> Result<Box<RawValue>, Refusal> {
    let status = refusal.status();
    let outcome = String::from_utf8(refusal.outcome().to_json())
        .ok()
        .and_then(|text| RawValue::from_string(text).ok())
        .ok_or_else(|| Refusal::UpstreamUnverifiable("outcome encoding failed".into()))?;
    let mut response = RawObject::new();
    response.insert(
        "status".into(),
        raw(&format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        ))?,
    );
    response.insert("outcome".into(), outcome);
    let mut entry = RawObject::new();
    entry.insert("response".into(), raw(&response)?);
    raw(&entry)
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
    fn untouched_content_keeps_its_bytes() {
        let ob = obligations();
        let plan = BundlePlan::new(&ob, REQUEST.as_bytes()).unwrap();
        // Decimals whose precision is significant in FHIR, in the kept Patient and in the
        // kept Observation of the searchset.
        let obs = OBS_A.replace(
            r#""status":"final""#,
            r#""status":"final","valueQuantity":{"value":1.50}"#,
        );
        let response = format!(
            r#"{{"resourceType":"Bundle","type":"batch-response","entry":[
            {{"resource":{{"resourceType":"Patient","id":"A","multipleBirthInteger":2,"extension":[{{"url":"x","valueDecimal":72.000}}]}},"response":{{"status":"200 OK"}}}},
            {{"resource":{{"resourceType":"Bundle","type":"searchset","entry":[{{"resource":{obs}}}]}},"response":{{"status":"200 OK"}}}},
            {{"resource":{OBS_A},"response":{{"status":"200 OK"}}}}]}}"#
        );
        let checked = plan.checked_response(response.as_bytes()).unwrap();
        let text = String::from_utf8(checked.body.to_vec()).unwrap();
        assert!(text.contains(r#""valueDecimal":72.000"#), "{text}");
        assert!(text.contains(r#""value":1.50"#), "{text}");
        assert!(text.starts_with(r#"{"resourceType":"Bundle""#), "{text}");

        let write = r#"{"resourceType":"Bundle","type":"batch","entry":[
            {"request":{"method":"GET","url":"Patient/A"}},
            {"request":{"method":"GET","url":"Patient/B"}},
            {"request":{"method":"GET","url":"Observation?code=8867-4"},"fullUrl":"urn:x","extra":{"v":0.10}},
            {"request":{"method":"GET","url":"Observation/o2"}}]}"#;
        let sent =
            String::from_utf8(plan.upstream_body(write.as_bytes()).unwrap().to_vec()).unwrap();
        assert!(sent.contains(r#""extra":{"v":0.10}"#), "{sent}");
        assert!(!sent.contains("Patient/B"), "{sent}");
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
        let entry = RawValue::from_string(format!(
            r#"{{"resource":{OBS_B},"response":{{"status":"404 Not Found"}}}}"#
        ))
        .unwrap();
        let (entry, lost) = check_entry(entry, obligation).unwrap();
        let entry: Value = serde_json::from_str(entry.get()).unwrap();
        assert!(entry.get("resource").is_none());
        assert_eq!(lost, 0);
    }
}
