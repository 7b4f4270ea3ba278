//! R4 reference tables, embedded at build time and parsed once.
//!
//! The three JSON files under `data/` are copies of the shared R4 extracts (patient compartment,
//! compartment element paths, granular-scope parameter expressions). Nothing here is retyped by
//! hand; a malformed file is a build artefact bug and panics on first use with a clear message.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use serde::Deserialize;

const COMPARTMENT_JSON: &str = include_str!("../data/patient-compartment.json");
const PATHS_JSON: &str = include_str!("../data/patient-compartment-paths.json");
const GRANULAR_JSON: &str = include_str!("../data/granular-scope-params.json");

/// One compartment-linking search parameter of a resource type.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct LinkParam {
    /// The search parameter name.
    pub(crate) param: String,
    /// Resource types its references may point at.
    #[serde(default)]
    pub(crate) targets: Vec<String>,
    /// Dotted element paths rooted at the type, e.g. `Observation.subject`.
    #[serde(rename = "elementPaths")]
    pub(crate) element_paths: Vec<String>,
}

/// One granular-scope search parameter of a resource type.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct GranularParam {
    /// `token` or `uri`.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// The R4 FHIRPath expression (simple forms only; see [`granular_paths`]).
    pub(crate) expression: String,
}

#[derive(Deserialize)]
struct CompartmentFile {
    compartment: BTreeMap<String, Vec<String>>,
    #[serde(rename = "notInCompartment")]
    not_in_compartment: Vec<String>,
}

#[derive(Deserialize)]
struct PathsFile {
    paths: BTreeMap<String, Vec<LinkParam>>,
}

#[derive(Deserialize)]
struct GranularFile {
    params: BTreeMap<String, BTreeMap<String, GranularParam>>,
}

/// The parsed tables.
pub(crate) struct Tables {
    /// Compartment types -> linking parameter names (R4 order).
    pub(crate) compartment: BTreeMap<String, Vec<String>>,
    /// Compartment types -> linking parameters with element paths.
    pub(crate) paths: BTreeMap<String, Vec<LinkParam>>,
    /// Every R4 resource type name (exact case).
    pub(crate) types: BTreeSet<String>,
    /// Type -> granular parameter name -> expression.
    pub(crate) granular: BTreeMap<String, BTreeMap<String, GranularParam>>,
}

/// The tables, parsed on first use.
pub(crate) static TABLES: LazyLock<Tables> = LazyLock::new(|| {
    let c: CompartmentFile =
        serde_json::from_str(COMPARTMENT_JSON).expect("embedded patient-compartment.json parses");
    let p: PathsFile =
        serde_json::from_str(PATHS_JSON).expect("embedded patient-compartment-paths.json parses");
    let g: GranularFile =
        serde_json::from_str(GRANULAR_JSON).expect("embedded granular-scope-params.json parses");
    let mut types: BTreeSet<String> = c.compartment.keys().cloned().collect();
    types.extend(c.not_in_compartment.iter().cloned());
    Tables {
        compartment: c.compartment,
        paths: p.paths,
        types,
        granular: g.params,
    }
});

/// Members of every resource a response check reads: its type and its id (a Patient's own
/// compartment).
const ALWAYS_CHECKED: [&str; 2] = ["resourceType", "id"];

/// The top-level members of a `resource_type` resource that decide whether it is in a
/// patient's compartment: the first step of each compartment element path, with
/// [`ALWAYS_CHECKED`].
pub(crate) fn compartment_members(resource_type: &str) -> &'static BTreeSet<String> {
    static MEMBERS: LazyLock<BTreeMap<String, BTreeSet<String>>> = LazyLock::new(|| {
        TABLES
            .paths
            .iter()
            .map(|(ty, params)| {
                let mut members: BTreeSet<String> =
                    ALWAYS_CHECKED.iter().map(|m| (*m).to_owned()).collect();
                members.extend(
                    params
                        .iter()
                        .flat_map(|p| &p.element_paths)
                        .filter_map(|path| first_step(path)),
                );
                (ty.clone(), members)
            })
            .collect()
    });
    static BASIC: LazyLock<BTreeSet<String>> =
        LazyLock::new(|| ALWAYS_CHECKED.iter().map(|m| (*m).to_owned()).collect());
    MEMBERS.get(resource_type).unwrap_or(&BASIC)
}

/// The top-level members the granular parameter `name` of `resource_type` reads (`meta` for
/// `_tag`, `_security` and `_profile`).
pub(crate) fn granular_members(resource_type: &str, name: &str) -> Vec<String> {
    let on_meta = matches!(name, "_tag" | "_security" | "_profile");
    let mut members: Vec<String> = TABLES
        .granular
        .get(resource_type)
        .and_then(|params| params.get(name))
        .map(|param| {
            granular_paths(&param.expression)
                .iter()
                .filter_map(|path| first_step(path))
                .collect()
        })
        .unwrap_or_default();
    if on_meta {
        members.push("meta".to_owned());
    }
    members
}

/// `subject` of `Observation.subject.reference`.
fn first_step(path: &str) -> Option<String> {
    path.split('.').nth(1).map(str::to_owned)
}

/// Turns a granular expression into plain dotted element paths rooted at the type.
///
/// Handles the forms present in the data: `A.b.c`, `A.b | A.c`, and `(A.b as CodeableConcept)`
/// (a choice element, rendered as its JSON name `A.bCodeableConcept`). Anything else yields no
/// path, so the parameter never matches (fail closed).
pub(crate) fn granular_paths(expression: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in expression.split('|') {
        let part = part.trim();
        let path = if let Some(inner) = part.strip_prefix('(').and_then(|p| p.strip_suffix(')')) {
            match inner.split_once(" as ") {
                Some((path, ty)) if is_simple_path(path) && is_word(ty) => format!("{path}{ty}"),
                _ => continue,
            }
        } else if is_simple_path(part) {
            part.to_owned()
        } else {
            continue;
        };
        out.push(path);
    }
    out
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric())
}

fn is_simple_path(s: &str) -> bool {
    s.split('.').all(is_word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r4_type_list_is_complete() {
        let t = &TABLES.types;
        assert_eq!(t.len(), 145);
        for name in [
            "Patient",
            "Observation",
            "Medication",
            "Bundle",
            "Binary",
            "Task",
        ] {
            assert!(t.contains(name), "{name}");
        }
    }

    #[test]
    fn every_compartment_param_has_paths() {
        for (ty, params) in &TABLES.compartment {
            let paths = &TABLES.paths[ty];
            assert_eq!(params.len(), paths.len(), "{ty}");
        }
    }

    #[test]
    fn granular_expressions_all_translate() {
        for (ty, params) in &TABLES.granular {
            for (name, p) in params {
                assert!(!granular_paths(&p.expression).is_empty(), "{ty}.{name}");
            }
        }
        assert_eq!(
            granular_paths("(MedicationRequest.medication as CodeableConcept)"),
            vec!["MedicationRequest.medicationCodeableConcept"]
        );
        assert_eq!(granular_paths("A.code | A.reaction.substance").len(), 2);
    }
}
