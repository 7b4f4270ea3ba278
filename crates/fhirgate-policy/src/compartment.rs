//! R4 (4.0.1) patient compartment membership.
//!
//! A resource is in Patient/X's compartment when any of its type's linking parameters, evaluated
//! through the element paths of `patient-compartment-paths.json`, yields a reference to Patient/X.
//! Patient/X itself is in its compartment, and so are Patient records whose `link.other` points
//! at X.
//!
//! Reference matching accepts `Patient/X`, `Patient/X/_history/N` and absolute
//! `<any base>/Patient/X[/_history/N]`. The base of absolute references is not compared: this
//! crate does not know the public base, and the upstream server only stores references it
//! accepted; callers that need a strict base check can pre-filter. Contained (`#id`),
//! identifier-only, `urn:` and other-type references never match (fail closed).

use crate::data::TABLES;
use crate::element::Node;

/// Is `resource_type` one of the 66 R4 types with patient-compartment linking parameters?
pub fn is_compartment_type(resource_type: &str) -> bool {
    TABLES.compartment.contains_key(resource_type)
}

/// The compartment-linking search parameter names of `resource_type` (empty when outside).
pub fn linking_params(resource_type: &str) -> &'static [String] {
    TABLES
        .compartment
        .get(resource_type)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Is `resource` (a FHIR JSON resource) in Patient/`patient_id`'s compartment?
pub fn in_patient_compartment<J: Node>(resource: &J, patient_id: &str) -> bool {
    let Some(ty) = resource.member("resourceType").and_then(Node::text) else {
        return false;
    };
    if ty == "Patient" && resource.member("id").and_then(Node::text) == Some(patient_id) {
        return true;
    }
    let Some(params) = TABLES.paths.get(ty) else {
        return false;
    };
    params.iter().flat_map(|p| &p.element_paths).any(|path| {
        any_value_at(resource, path.split('.').skip(1), &mut |v| {
            reference_is_patient(v, patient_id)
        })
    })
}

/// Does any value at the element path `steps` (after the type) satisfy `hit`, descending
/// through arrays at every step? What [`element_values`] collects, tried in place.
fn any_value_at<'a, J: Node>(
    value: &'a J,
    mut steps: std::iter::Skip<std::str::Split<'_, char>>,
    hit: &mut impl FnMut(&'a J) -> bool,
) -> bool {
    let Some(step) = steps.next() else {
        return hit(value);
    };
    let Some(found) = value.member(step) else {
        return false;
    };
    match found.items() {
        Some(items) => items
            .iter()
            .any(|item| any_value_at(item, steps.clone(), hit)),
        None => any_value_at(found, steps, hit),
    }
}

/// Collects every value at a dotted element path rooted at the type (`Observation.subject`),
/// descending through arrays at every step.
pub(crate) fn element_values<'a, J: Node>(resource: &'a J, path: &str) -> Vec<&'a J> {
    let mut current = vec![resource];
    for step in path.split('.').skip(1) {
        let mut next = Vec::new();
        for v in current {
            if let Some(found) = v.member(step) {
                match found.items() {
                    Some(items) => next.extend(items.iter()),
                    None => next.push(found),
                }
            }
        }
        current = next;
    }
    current
}

/// Is `value` a Reference whose `reference` points at Patient/`patient_id`?
fn reference_is_patient<J: Node>(value: &J, patient_id: &str) -> bool {
    value
        .member("reference")
        .and_then(Node::text)
        .and_then(patient_id_of_reference)
        .is_some_and(|id| id == patient_id)
}

/// Extracts X from `Patient/X`, `Patient/X/_history/N` or `<base>/Patient/X[/_history/N]`.
pub fn patient_id_of_reference(reference: &str) -> Option<&str> {
    if reference.starts_with('#') || reference.starts_with("urn:") {
        return None;
    }
    // The last four segments, last first, and how many there are.
    let mut last = [""; 4];
    let mut n = 0;
    for (i, segment) in reference.rsplit('/').enumerate() {
        if let Some(slot) = last.get_mut(i) {
            *slot = segment;
        }
        n = i + 1;
    }
    let (ty, id) = if n >= 4 && last[1] == "_history" {
        (last[3], last[2])
    } else if n >= 2 {
        (last[1], last[0])
    } else {
        return None;
    };
    let relative_ok = n == 2 || (n == 4 && last[1] == "_history");
    let absolute_ok = reference.contains("://");
    (ty == "Patient" && is_fhir_id(id) && (relative_ok || absolute_ok)).then_some(id)
}

/// FHIR `id` syntax: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn values_are_tried_where_they_would_be_collected() {
        let resource = json!({
            "resourceType": "CarePlan",
            "activity": [
                {"detail": {"performer": [{"reference": "Practitioner/1"}, {"reference": "Patient/p"}]}},
                {"detail": [[{"reference": "Patient/q"}]]},
                "text",
                {"detail": {"performer": {"reference": "Patient/r"}}}
            ]
        });
        let path = "CarePlan.activity.detail.performer";
        let collected: Vec<&serde_json::Value> = element_values(&resource, path);
        let mut tried = Vec::new();
        let found = any_value_at(&resource, path.split('.').skip(1), &mut |v| {
            tried.push(v);
            false
        });
        assert!(!found);
        assert_eq!(tried, collected);
        assert_eq!(collected.len(), 3);
    }

    #[test]
    fn observation_subject_and_performer_link() {
        let obs = json!({"resourceType":"Observation","subject":{"reference":"Patient/123"}});
        assert!(in_patient_compartment(&obs, "123"));
        assert!(!in_patient_compartment(&obs, "456"));
        let perf = json!({"resourceType":"Observation","performer":[{"reference":"Practitioner/1"},{"reference":"Patient/9"}]});
        assert!(in_patient_compartment(&perf, "9"));
    }

    #[test]
    fn reference_forms() {
        assert_eq!(patient_id_of_reference("Patient/1"), Some("1"));
        assert_eq!(patient_id_of_reference("Patient/1/_history/2"), Some("1"));
        assert_eq!(
            patient_id_of_reference("http://h/fhir/Patient/1"),
            Some("1")
        );
        assert_eq!(
            patient_id_of_reference("https://h/Patient/1/_history/3"),
            Some("1")
        );
        for bad in [
            "#p1",
            "Group/1",
            "1",
            "urn:uuid:1",
            "x/Patient/1",
            "Patient/",
            "Patient/a b",
        ] {
            assert_eq!(patient_id_of_reference(bad), None, "{bad}");
        }
    }

    #[test]
    fn patient_itself_and_links() {
        let p = json!({"resourceType":"Patient","id":"123"});
        assert!(in_patient_compartment(&p, "123"));
        assert!(!in_patient_compartment(&p, "1234"));
        let linked = json!({"resourceType":"Patient","id":"9","link":[{"other":{"reference":"Patient/123"},"type":"seealso"}]});
        assert!(in_patient_compartment(&linked, "123"));
    }

    #[test]
    fn identifier_only_and_contained_references_do_not_match() {
        let ident = json!({"resourceType":"Observation","subject":{"identifier":{"value":"123"}}});
        assert!(!in_patient_compartment(&ident, "123"));
        let contained = json!({"resourceType":"Observation","subject":{"reference":"#123"}});
        assert!(!in_patient_compartment(&contained, "123"));
    }

    #[test]
    fn nested_paths_walk_arrays() {
        let appt = json!({"resourceType":"Appointment","participant":[{"actor":{"reference":"Practitioner/1"}},{"actor":{"reference":"Patient/123"}}]});
        assert!(in_patient_compartment(&appt, "123"));
        let ae =
            json!({"resourceType":"AuditEvent","entity":[{"what":{"reference":"Patient/123"}}]});
        assert!(in_patient_compartment(&ae, "123"));
    }

    #[test]
    fn types_outside_the_compartment_are_never_members() {
        let med = json!({"resourceType":"Medication","subject":{"reference":"Patient/123"}});
        assert!(!in_patient_compartment(&med, "123"));
        assert!(!is_compartment_type("Medication"));
        assert!(is_compartment_type("Observation"));
        assert_eq!(linking_params("Observation"), ["subject", "performer"]);
        assert!(linking_params("Practitioner").is_empty());
    }
}
