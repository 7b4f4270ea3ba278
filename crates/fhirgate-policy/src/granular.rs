//! Evaluation of SMART v2 granular scope parameters on a single resource.
//!
//! Implements FHIR token matching (`SYSTEM|CODE`, `CODE`, `|CODE`, `SYSTEM|`) and `uri`
//! equality over the R4 expressions of `granular-scope-params.json`; comma-separated values
//! are OR-ed, separate parameters AND-ed. A parameter without a known expression never matches.

use crate::compartment::element_values;
use crate::data::{TABLES, granular_paths};
use crate::element::Node;

/// Does `resource` match every `name=value` restriction in `params`?
pub fn matches_all<J: Node>(resource: &J, params: &[(String, String)]) -> bool {
    let Some(ty) = resource.member("resourceType").and_then(Node::text) else {
        return false;
    };
    params
        .iter()
        .all(|(name, value)| matches_param(resource, ty, name, value))
}

fn matches_param<J: Node>(resource: &J, ty: &str, name: &str, value: &str) -> bool {
    let (kind, paths) = match TABLES.granular.get(ty).and_then(|m| m.get(name)) {
        Some(p) => (p.kind.as_str(), granular_paths(&p.expression)),
        None => match meta_path(name) {
            Some((kind, path)) => (kind, vec![format!("{ty}.{path}")]),
            None => return false,
        },
    };
    let values: Vec<&J> = paths
        .iter()
        .flat_map(|p| element_values(resource, p))
        .collect();
    value.split(',').any(|wanted| {
        values.iter().any(|v| match kind {
            "uri" => v.text() == Some(wanted),
            _ => token_matches(*v, wanted),
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
fn token_matches<J: Node>(element: &J, wanted: &str) -> bool {
    if let Some(code) = element.text() {
        return !wanted.contains('|') && code == wanted;
    }
    if let Some(b) = element.boolean() {
        return !wanted.contains('|') && wanted == if b { "true" } else { "false" };
    }
    if !element.is_object() {
        return false;
    }
    if let Some(codings) = element.member("coding").and_then(Node::items) {
        return codings.iter().any(|c| coding_matches(c, "code", wanted));
    }
    if element.member("value").is_some() && element.member("code").is_none() {
        return coding_matches(element, "value", wanted);
    }
    coding_matches(element, "code", wanted)
}

fn coding_matches<J: Node>(coding: &J, code_key: &str, wanted: &str) -> bool {
    let system = coding.member("system").and_then(Node::text);
    let code = coding.member(code_key).and_then(Node::text);
    match wanted.split_once('|') {
        None => code == Some(wanted),
        Some(("", c)) => system.is_none() && code == Some(c),
        Some((s, "")) => system == Some(s),
        Some((s, c)) => system == Some(s) && code == Some(c),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

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
