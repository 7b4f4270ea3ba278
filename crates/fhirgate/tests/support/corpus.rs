//! Which suite runs which cases of `attack-cases.json`, so that a case added to the corpus
//! is run somewhere or fails `attack_raw::every_case_of_the_corpus_is_run_by_a_suite`.

use serde_json::Value;

/// The attack and regression corpus shared with the policy crate.
pub const CORPUS: &str = include_str!("../../../fhirgate-policy/tests/data/attack-cases.json");

/// Each integration suite (its file under `tests/`) and the case kinds it runs: a kind ending
/// in `.` is a prefix, any other kind is matched whole.
pub const SUITES: &[(&str, &[&str])] = &[
    ("attack_cases", &["fhir.", "path.", "http.method_override"]),
    (
        "token_cases",
        &["jwt.", "jwks.", "introspection.", "scopes."],
    ),
    ("ratelimit", &["ratelimit."]),
    ("attack_raw", &["http.request_smuggling_cl_te", "response."]),
];

/// The suites that claim a case of `kind`.
pub fn suites_for(kind: &str) -> Vec<&'static str> {
    SUITES
        .iter()
        .filter(|(_, kinds)| {
            kinds.iter().any(|k| match k.strip_suffix('.') {
                Some(_) => kind.starts_with(k),
                None => kind == *k,
            })
        })
        .map(|(suite, _)| *suite)
        .collect()
}

/// The corpus file: conventions and cases.
pub fn corpus() -> Value {
    serde_json::from_str(CORPUS).expect("attack-cases.json parses")
}

/// The cases `suite` runs, in corpus order.
pub fn cases_for(suite: &str) -> Vec<Value> {
    corpus()["cases"]
        .as_array()
        .expect("cases array")
        .iter()
        .filter(|case| suites_for(case["kind"].as_str().unwrap_or_default()).contains(&suite))
        .cloned()
        .collect()
}
