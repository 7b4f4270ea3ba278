//! PATCH documents: which element names a patch can touch.
//!
//! JSON Patch (`application/json-patch+json`, RFC 6902) is read as its operations' `path` and
//! `from` pointers; FHIRPath Patch (a `Parameters` resource in FHIR JSON) as its operations'
//! `path` expressions and `name` parts. Any other patch format (XML Patch) is opaque. The
//! decision refuses patches that may change what binds a resource to a patient or to a
//! granular scope; the names collected here are deliberately over-inclusive (every identifier
//! in a path), so a patch is never judged narrower than it is.

use serde_json::Value;

use super::ClassifyError;

/// A classified PATCH body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Patch {
    /// JSON Patch or FHIRPath Patch: every element name its paths mention; `whole` when an
    /// operation targets the resource root.
    Readable {
        /// Element names mentioned by the operations' paths.
        names: Vec<String>,
        /// An operation replaces or removes the whole resource (path `""` or `/`).
        whole: bool,
    },
    /// A patch format fhirgate cannot read (e.g. XML Patch).
    Opaque,
}

impl Patch {
    /// Does the patch touch any of `elements` (or the whole resource)?
    pub fn touches(&self, elements: &[&str]) -> bool {
        match self {
            Self::Readable { names, whole } => {
                *whole || names.iter().any(|n| elements.contains(&n.as_str()))
            }
            Self::Opaque => true,
        }
    }
}

/// Classifies a PATCH body by its content type.
pub(crate) fn classify_patch(
    content_type: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Patch, ClassifyError> {
    let essence = content_type
        .and_then(|ct| ct.split(';').next())
        .map(|e| e.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let Some(body) = body else {
        return Ok(Patch::Opaque);
    };
    let array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    match essence.as_str() {
        "application/json-patch+json" => json_patch(body),
        "application/json" if array => json_patch(body),
        "application/fhir+json" | "application/json" | "application/json+fhir" => {
            fhirpath_patch(body)
        }
        _ => Ok(Patch::Opaque),
    }
}

fn json_patch(body: &[u8]) -> Result<Patch, ClassifyError> {
    let ops: Vec<Value> = serde_json::from_slice(body).map_err(|_| ClassifyError::BadBody)?;
    let mut names = Vec::new();
    let mut whole = false;
    for op in &ops {
        if op.get("op").and_then(Value::as_str).is_none() {
            return Err(ClassifyError::BadBody);
        }
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or(ClassifyError::BadBody)?;
        for pointer in std::iter::once(path).chain(op.get("from").and_then(Value::as_str)) {
            if pointer.is_empty() || pointer == "/" {
                whole = true;
            }
            names.extend(
                pointer
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.replace("~1", "/").replace("~0", "~")),
            );
        }
    }
    Ok(Patch::Readable { names, whole })
}

fn fhirpath_patch(body: &[u8]) -> Result<Patch, ClassifyError> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| ClassifyError::BadBody)?;
    if doc.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(ClassifyError::BadBody);
    }
    let mut names = Vec::new();
    let mut whole = false;
    let operations = doc
        .get("parameter")
        .and_then(Value::as_array)
        .ok_or(ClassifyError::BadBody)?;
    for operation in operations {
        let parts = operation
            .get("part")
            .and_then(Value::as_array)
            .ok_or(ClassifyError::BadBody)?;
        let mut saw_path = false;
        for part in parts {
            let name = part.get("name").and_then(Value::as_str).unwrap_or("");
            let text = part.get("valueString").and_then(Value::as_str);
            match (name, text) {
                ("path", Some(path)) => {
                    saw_path = true;
                    let ids = identifiers(path);
                    whole |= ids.len() <= 1 && !path.contains('.');
                    names.extend(ids);
                }
                ("name", Some(n)) => names.push(n.to_owned()),
                _ => {}
            }
        }
        if !saw_path {
            return Err(ClassifyError::BadBody);
        }
    }
    Ok(Patch::Readable { names, whole })
}

/// Every identifier in a FHIRPath expression (over-inclusive: functions and literals count).
fn identifiers(path: &str) -> Vec<String> {
    path.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &Patch) -> &[String] {
        match p {
            Patch::Readable { names, .. } => names,
            Patch::Opaque => &[],
        }
    }

    #[test]
    fn json_patch_paths_and_from() {
        let body = br#"[{"op":"replace","path":"/valueQuantity/value","value":2},{"op":"move","from":"/subject","path":"/focus/0"}]"#;
        let p = classify_patch(Some("application/json-patch+json"), Some(body)).unwrap();
        assert!(names(&p).contains(&"subject".to_owned()));
        assert!(p.touches(&["subject"]));
        assert!(!p.touches(&["performer"]));
        let root = br#"[{"op":"replace","path":"","value":{}}]"#;
        let p = classify_patch(Some("application/json-patch+json"), Some(root)).unwrap();
        assert!(p.touches(&[]));
        assert!(classify_patch(Some("application/json-patch+json"), Some(b"{}")).is_err());
        assert!(classify_patch(Some("application/json-patch+json"), Some(b"[{}]")).is_err());
    }

    #[test]
    fn fhirpath_patch_paths_and_names() {
        let body = br#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[
            {"name":"type","valueCode":"add"},{"name":"path","valueString":"Observation"},
            {"name":"name","valueString":"subject"},{"name":"value","valueReference":{"reference":"Patient/b"}}]}]}"#;
        let p = classify_patch(Some("application/fhir+json"), Some(body)).unwrap();
        assert!(p.touches(&["subject"]));
        let body = br#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[
            {"name":"type","valueCode":"replace"},{"name":"path","valueString":"Observation.performer.where(reference='x')"}]}]}"#;
        let p = classify_patch(Some("application/fhir+json"), Some(body)).unwrap();
        assert!(p.touches(&["performer"]) && !p.touches(&["subject"]));
        assert!(
            classify_patch(
                Some("application/fhir+json"),
                Some(br#"{"resourceType":"Observation"}"#)
            )
            .is_err()
        );
    }

    #[test]
    fn other_formats_are_opaque() {
        assert_eq!(classify_patch(None, None).unwrap(), Patch::Opaque);
        let plain_json = classify_patch(
            Some("application/json"),
            Some(br#"[{"op":"remove","path":"/note"}]"#),
        );
        assert!(!plain_json.unwrap().touches(&["subject"]));
        let p = classify_patch(Some("application/xml-patch+xml"), Some(b"<diff/>")).unwrap();
        assert_eq!(p, Patch::Opaque);
        assert!(p.touches(&[]));
    }
}
