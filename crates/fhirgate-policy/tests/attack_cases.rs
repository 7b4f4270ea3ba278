//! Runs the attack cases of kinds `fhir.*`, `path.*` and `http.method_override` from
//! `data/attack-cases.json` against the policy crate: `classify`, `decide`, and, when the
//! decision obliges a response check, `verify_resource` / `filter_bundle` on the answer the
//! upstream would give under the case file's conventions (pat-A in context, pat-B the other
//! patient, obs-A1 / obs-B1 their Observations).
//!
//! The status a client sees is derived the way the server derives it (`crates/fhirgate/src/
//! refusal.rs`): a classification error is 400 `invalid`; a denial carries its own status and
//! issue code, and a 403 denial carries the `insufficient_scope` challenge; a single resource
//! that fails its check is 403 `forbidden`; a filtered Bundle is 200.

use fhirgate_policy::decision::Obligations;
use fhirgate_policy::verify::Expect;
use fhirgate_policy::{
    Decision, FhirRequest, Grant, Interaction, Precheck, RequestParts, ScopeSet, check_matches,
    classify, decide, filter_bundle, verify_resource,
};
use serde_json::{Value, json};

const BASE: &str = "/fhir";

/// What the client would see, as far as the policy crate decides it.
#[derive(Debug)]
struct Seen {
    status: u16,
    issue_code: &'static str,
    /// Body released to the client (upstream's answer after checks), for 2xx only.
    body: Option<String>,
    /// The decision's obligations when the request was allowed.
    obligations: Option<Obligations>,
}

/// Cases that the accept stage of the server decides before classification: at policy level
/// the plain request (without the tunnelling header) is checked instead.
const ACCEPT_STAGE: &[(&str, &str)] = &[(
    "B39",
    "method-override headers are refused by crates/fhirgate/src/proxy/accept.rs (400 invalid); \
     the policy sees the plain GET, which must be what the upstream would receive",
)];

fn cases() -> Vec<Value> {
    let text = include_str!("data/attack-cases.json");
    let file: Value = serde_json::from_str(text).expect("attack-cases.json parses");
    file["cases"]
        .as_array()
        .expect("cases array")
        .iter()
        .filter(|c| {
            let kind = c["kind"].as_str().unwrap_or("");
            kind.starts_with("fhir.") || kind.starts_with("path.") || kind == "http.method_override"
        })
        .cloned()
        .collect()
}

fn grant_of(case: &Value) -> Grant {
    let claims = &case["request"]["token"]["claims"];
    let scope = claims["scope"]
        .as_str()
        .expect("policy cases carry a scope claim");
    Grant::new(
        ScopeSet::parse(scope),
        claims["patient"].as_str().map(str::to_owned),
    )
}

/// The upstream's stored resources under the case conventions.
fn stored(resource_type: &str, id: &str) -> Option<Value> {
    match (resource_type, id) {
        ("Patient", "pat-A" | "pat-B") => Some(json!({"resourceType":"Patient","id":id})),
        ("Observation", "obs-A1") => Some(observation("obs-A1", "pat-A")),
        ("Observation", "obs-B1") => Some(observation("obs-B1", "pat-B")),
        _ => None,
    }
}

fn observation(id: &str, patient: &str) -> Value {
    json!({"resourceType":"Observation","id":id,"status":"final",
        "code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},
        "subject":{"reference":format!("Patient/{patient}")}})
}

/// A Bundle holding both patients' data: whatever the request, a filtered answer must keep
/// nothing of pat-B's.
fn mixed_bundle() -> String {
    let entries: Vec<Value> = [
        json!({"resourceType":"Patient","id":"pat-A"}),
        json!({"resourceType":"Patient","id":"pat-B"}),
        observation("obs-A1", "pat-A"),
        observation("obs-B1", "pat-B"),
        json!({"resourceType":"Condition","id":"c-B","subject":{"reference":"Patient/pat-B"}}),
        json!({"resourceType":"Practitioner","id":"pr-1"}),
    ]
    .into_iter()
    .map(|r| json!({"resource": r}))
    .collect();
    json!({"resourceType":"Bundle","type":"searchset","total":6,"entry":entries}).to_string()
}

fn seen_deny(status: u16, issue_code: &'static str) -> Seen {
    Seen {
        status,
        issue_code,
        body: None,
        obligations: None,
    }
}

/// Runs one request through the policy and the response checks.
fn evaluate(case: &Value, path_override: Option<&str>) -> Result<Seen, String> {
    let request = &case["request"];
    let full = path_override.unwrap_or_else(|| request["path"].as_str().unwrap());
    let rest = full
        .strip_prefix(BASE)
        .ok_or_else(|| format!("path {full} is outside the base"))?;
    // As the accept step: the base itself, or the base followed by one `/`.
    let relative = match rest {
        "" | "/" => "",
        r => r
            .strip_prefix('/')
            .ok_or_else(|| format!("path {full} does not continue the base"))?,
    };
    let (path, query) = match relative.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (relative, None),
    };
    let headers = &request["headers"];
    let body = request.get("body").map(Value::to_string);
    let parts = RequestParts {
        method: request["method"].as_str().unwrap(),
        path,
        query,
        content_type: headers["Content-Type"].as_str(),
        body: body.as_deref().map(str::as_bytes),
        if_none_exist: headers["If-None-Exist"].as_str(),
    };
    let Ok(req) = classify(&parts) else {
        return Ok(seen_deny(400, "invalid"));
    };
    let grant = grant_of(case);
    let ob = match decide(&grant, &req) {
        Decision::Deny(d) => return Ok(seen_deny(d.reason.status(), d.reason.issue_code().code())),
        Decision::Allow(ob) => ob,
    };
    match &ob.precheck {
        Some(Precheck::Target(check)) => {
            let (ty, id) = (req.resource_type.as_deref(), req.id.as_deref());
            let current = stored(ty.unwrap_or(""), id.unwrap_or(""));
            let fails =
                current.is_some_and(|c| verify_resource(check, c.to_string().as_bytes()).is_err());
            if fails {
                return Ok(seen_deny(403, "forbidden"));
            }
        }
        // An upstream that ignored the narrowing would answer with both patients' data.
        Some(Precheck::Matches(check))
            if check_matches(check, mixed_bundle().as_bytes()).is_ok() =>
        {
            return Err("a match outside the grant passed the precheck".into());
        }
        _ => {}
    }
    let body = upstream_answer(&req, &ob)?;
    Ok(Seen {
        status: body.0,
        issue_code: body.1,
        body: body.2,
        obligations: Some(ob),
    })
}

/// The upstream's answer after the decision's response obligations.
fn upstream_answer(
    req: &FhirRequest,
    ob: &Obligations,
) -> Result<(u16, &'static str, Option<String>), String> {
    let Some(check) = ob.response_check.as_ref() else {
        return Ok((200, "", None));
    };
    if check.expect == Expect::Bundle || req.interaction.returns_bundle() {
        let filtered =
            filter_bundle(check, mixed_bundle().as_bytes()).map_err(|e| e.to_string())?;
        return Ok((200, "", Some(String::from_utf8(filtered.body).unwrap())));
    }
    let answer = match req.interaction {
        Interaction::Read | Interaction::Vread => stored(
            req.resource_type.as_deref().unwrap_or(""),
            req.id.as_deref().unwrap_or(""),
        )
        .ok_or_else(|| format!("no stored resource for {req:?}"))?,
        // Writes answer with the stored representation of what was written.
        _ => req
            .resource
            .clone()
            .ok_or_else(|| format!("no representation for {:?}", req.interaction))?,
    };
    let text = answer.to_string();
    match verify_resource(check, text.as_bytes()) {
        Ok(()) => Ok((200, "", Some(text))),
        Err(_) => Ok((403, "forbidden", None)),
    }
}

/// The issue code a status carries (the case file's `status_to_issue_code`).
fn code_for_status(status: u16) -> &'static [&'static str] {
    match status {
        400 => &["invalid"],
        403 => &["forbidden"],
        404 => &["not-found", "not-supported"],
        405 | 415 => &["not-supported"],
        _ => &[],
    }
}

fn check_expected(case: &Value, seen: &Seen) -> Result<(), String> {
    let expected = &case["expected"];
    let statuses: Vec<u16> = match expected["status"].as_u64() {
        Some(s) => vec![s as u16],
        None => expected["status_any_of"]
            .as_array()
            .ok_or("no expected status")?
            .iter()
            .map(|s| s.as_u64().unwrap() as u16)
            .collect(),
    };
    if !statuses.contains(&seen.status) {
        return Err(format!("status {} not in {statuses:?}", seen.status));
    }
    if seen.status >= 400 {
        let wanted = expected["operation_outcome"]["issue_code"]
            .as_str()
            .unwrap_or("");
        // With several acceptable statuses the case's code belongs to one of them; the others
        // carry the code of their own status.
        let ok = seen.issue_code == wanted
            || (statuses.len() > 1 && code_for_status(seen.status).contains(&seen.issue_code));
        if !ok {
            return Err(format!(
                "issue code {} (expected {wanted} for {})",
                seen.issue_code, seen.status
            ));
        }
    }
    let challenge = expected["www_authenticate_contains"]
        .as_array()
        .map(|a| {
            a.iter()
                .any(|v| v.as_str() == Some("error=\"insufficient_scope\""))
        })
        .unwrap_or(false);
    if challenge && seen.status != 403 {
        return Err("insufficient_scope challenge needs a 403 policy refusal".into());
    }
    if let Some(body) = &seen.body {
        for needle in expected["response_body_must_not_contain"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let needle = needle.as_str().unwrap();
            if body.contains(needle) {
                return Err(format!("released body contains {needle}"));
            }
        }
        if body.contains("pat-B") {
            return Err("released body contains pat-B data".into());
        }
    }
    Ok(())
}

#[test]
fn attack_cases_at_policy_level() {
    let cases = cases();
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in &cases {
        let id = case["id"].as_str().unwrap();
        ran += 1;
        let seen = match evaluate(case, None) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{id}: cannot evaluate: {e}"));
                continue;
            }
        };
        let result = if let Some((_, why)) = ACCEPT_STAGE.iter().find(|(a, _)| *a == id) {
            // The plain request: allowed, and the upstream would see exactly a GET of pat-A.
            match (&seen.obligations, seen.status) {
                (Some(_), 200) => Ok(()),
                _ => Err(format!("plain request not allowed ({why}): {seen:?}")),
            }
        } else {
            check_expected(case, &seen)
        };
        if let Err(e) = result {
            failures.push(format!("{id} ({}): {e}", case["kind"].as_str().unwrap()));
        }
    }
    println!(
        "attack cases at policy level: {ran} ran, {} failed",
        failures.len()
    );
    assert!(ran >= 17, "only {ran} policy-level cases found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The variants listed with each case, where they are requests of their own.
#[test]
fn attack_case_variants_at_policy_level() {
    let variants: &[(&str, &str, u16)] = &[
        (
            "B21",
            "/fhir/Observation?patient=pat-A&_include=Observation:performer",
            403,
        ),
        ("B21", "/fhir/Observation?patient=pat-A&_include=*", 403),
        (
            "B22",
            "/fhir/Patient?_id=pat-A&_revinclude=Provenance:target",
            403,
        ),
        ("B22", "/fhir/Patient?_id=pat-A&_revinclude:iterate=*", 403),
        ("B23", "/fhir/Patient/pat-B/*", 403),
        ("B23", "/fhir/Patient/Pat-A/Observation", 403),
        (
            "B26",
            "/fhir/Observation?patient.identifier=http://hospital.example/mrn|12345",
            403,
        ),
        ("B26", "/fhir/Observation?subject.birthdate=1970-01-01", 403),
        (
            "B26",
            "/fhir/Observation?_filter=subject.name%20eq%20'Example'",
            403,
        ),
        ("B29", "/fhir/Observation/_history", 403),
        ("B29", "/fhir/_history?_type=Observation", 403),
        ("B30", "/fhir/Patient/pat-B/_history", 403),
        ("B30", "/fhir/Patient/pat-B/_history/1?_format=json", 403),
        ("B31", "/fhir/Observation/obs-B1?_elements=id", 403),
        ("B31", "/fhir/Observation/obs-B1?_summary=true", 403),
        (
            "B41",
            "/fhir/Patient/pat-B/$graphql?query={name{family}}",
            403,
        ),
        ("B42", "/fhir/Patient/$everything", 403),
        ("B43", "/fhir/Patient/$export", 403),
        ("B43", "/fhir/Group/g1/$export", 403),
        ("B45", "/fhir/Patient/pat-A/%2e%2e/pat-B", 400),
        ("B45", "/fhir/Patient/./pat-B", 400),
        ("B45", "/fhir/Patient/pat-A/..%2fpat-B", 400),
        ("B45", "/fhir/Patient/pat-A/.%2E/pat-B", 400),
        ("B47", "/fhir/Patient//pat-B", 400),
        ("B47", "/fhir/Patient/pat-B/", 400),
        ("B47", "/fhir/Patient/pat-B//", 400),
    ];
    let cases = cases();
    let mut failures = Vec::new();
    for (id, path, status) in variants {
        let mut case = cases
            .iter()
            .find(|c| c["id"] == *id)
            .unwrap_or_else(|| panic!("{id} missing"))
            .clone();
        // GraphQL and the Group export variants are GETs.
        case["request"]["method"] = json!("GET");
        case["request"].as_object_mut().unwrap().remove("body");
        match evaluate(&case, Some(path)) {
            Ok(seen) if seen.status == *status => {}
            Ok(seen) => failures.push(format!("{id} {path}: {} not {status}", seen.status)),
            Err(e) => failures.push(format!("{id} {path}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
