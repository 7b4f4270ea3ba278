//! Evaluation of SMART v2 granular scope parameters on a single resource.
//!
//! Implements FHIR token matching (`SYSTEM|CODE`, `CODE`, `|CODE`, `SYSTEM|`) and `uri`
//! equality over the R4 expressions of `granular-scope-params.json`; comma-separated values
//! are OR-ed, separate parameters AND-ed. A parameter without a known expression never matches.

use serde_json::Value;

use crate::compartment::element_values;
use crate::data::{TABLES, granular_paths};

/// Does `resource` match every `name=value` restriction in `params`?
pub fn matches_all(resource: &Value, params: &[(String, String)]) -> bool {
    let Some(ty) = resource.get("resourceType").and_then(Value::as_str) else {
        return false;
    };
    params
        .iter()
        .all(|(name, value)| matches_param(resource, ty, name, value))
}

fn matches_param(resource: &Value, ty: &str, name: &str, value: &str) -> bool {
    let (kind, paths) = match TABLES.granular.get(ty).and_then(|m| m.get(name)) {
        Some(p) => (p.kind.as_str(), granular_paths(&p.expression)),
        None => match meta_path(name) {
            Some((kind, path)) => (kind, vec![format!("{ty}.{path}")]),
            None => return false,
        },
    };
    let values: Vec<&Value> = paths
        .iter()
        .flat_map(|p| element_values(resource, p))
        .collect();
    value.split(',').any(|wanted| {
        values.iter().any(|v| match kind {
            "uri" => v.as_str() == Some(wanted),
            _ => token_matches(v, wanted),
        })
    })
}

fn meta_path(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "_tag" => Some(("token", "meta.tag")),
        "_security" => Some(("token", "meta.security")),
        "_profile" => Some(("uri", "meta.profile")),
        _ => None,
    }
}

/// FHIR token matching of one element value against one search value.
fn token_matches(element: &Value, wanted: &str) -> bool {
    match element {
        Value::String(code) => !wanted.contains('|') && code == wanted,
        Value::Bool(b) => !wanted.contains('|') && wanted == if *b { "true" } else { "false" },
        Value::Object(map) => {
            if let Some(Value::Array(codings)) = map.get("coding") {
                return codings.iter().any(|c| coding_matches(c, "code", wanted));
            }
            if map.contains_key("value") && !map.contains_key("code") {
                return coding_matches(element, "value", wanted);
            }
            coding_matches(element, "code", wanted)
        }
        _ => false,
    }
}

fn coding_matches(coding: &Value, code_key: &str, wanted: &str) -> bool {
    let system = coding.get("system").and_then(Value::as_str);
    let code = coding.get(code_key).and_then(Value::as_str);
    match wanted.split_once('|') {
        None => code == Some(wanted),
        Some(("", c)) => system.is_none() && code == Some(c),
        Some((s, "")) => system == Some(s),
        Some((s, c)) => system == Some(s) && code == Some(c),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const LAB: &str = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";

    fn obs(code: &str) -> Value {
        json!({"resourceType":"Observation","status":"final","category":[{"coding":[
            {"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":code}]}]})
    }

    fn p(name: &str, value: &str) -> Vec<(String, String)> {
        vec![(name.to_owned(), value.to_owned())]
    }

    #[test]
    fn token_forms() {
        let lab = obs("laboratory");
        assert!(matches_all(&lab, &p("category", LAB)));
        assert!(matches_all(&lab, &p("category", "laboratory")));
        assert!(matches_all(
            &lab,
            &p(
                "category",
                "http://terminology.hl7.org/CodeSystem/observation-category|"
            )
        ));
        assert!(!matches_all(&lab, &p("category", "|laboratory")));
        assert!(!matches_all(&obs("vital-signs"), &p("category", LAB)));
        assert!(matches_all(
            &obs("vital-signs"),
            &p("category", &format!("{LAB},vital-signs"))
        ));
    }

    #[test]
    fn code_elements_and_meta() {
        assert!(matches_all(&obs("x"), &p("status", "final")));
        assert!(!matches_all(&obs("x"), &p("status", "amended")));
        let tagged =
            json!({"resourceType":"Observation","meta":{"tag":[{"system":"s","code":"c"}]}});
        assert!(matches_all(&tagged, &p("_tag", "s|c")));
        assert!(!matches_all(&tagged, &p("_tag", "s|d")));
        assert!(!matches_all(&tagged, &p("nosuch", "x")));
    }
}
