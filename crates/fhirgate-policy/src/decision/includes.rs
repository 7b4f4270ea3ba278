//! `_include` / `_revinclude` (with `:iterate` / `:recurse`): which types they can bring in.
//!
//! A search may pull other resources into its Bundle only when the grant could read every type
//! the include can return (`r` or `s` on it, as the response check uses): `_revinclude=T:p`
//! returns T; `_include=S:p:T` returns T; `_include=S:p` returns any target type of S's
//! reference parameter p (known from the R4 compartment tables), and every type when the
//! targets are unknown; `*` in either returns every type. Whatever passes this test is still
//! checked entry by entry on the response.

use super::{DenyReason, denial};
use crate::data::TABLES;
use crate::decision::Denial;
use crate::grant::Grant;
use crate::request::FhirRequest;
use crate::scope::{Context, Perms, TypeSel};

/// The include parameters of a request: `(is_reverse, value)`.
fn include_params(req: &FhirRequest) -> impl Iterator<Item = (bool, &str)> {
    req.params.iter().filter_map(|(name, value)| {
        let mut parts = name.split(':');
        let base = parts.next().unwrap_or("");
        let modifiers_ok = parts.all(|m| matches!(m, "iterate" | "recurse"));
        match base {
            "_include" if modifiers_ok => Some((false, value.as_str())),
            "_revinclude" if modifiers_ok => Some((true, value.as_str())),
            "_include" | "_revinclude" => Some((false, "")),
            _ => None,
        }
    })
}

/// The types one include value can return (`"*"` = every type), or `None` when malformed.
pub(crate) fn included_types(reverse: bool, value: &str) -> Option<Vec<String>> {
    if value == "*" {
        return Some(vec!["*".to_owned()]);
    }
    let mut parts = value.split(':');
    let source = parts.next().filter(|s| !s.is_empty())?;
    let param = parts.next().filter(|p| !p.is_empty())?;
    let target = parts.next();
    if parts.next().is_some() || !crate::scope::is_resource_type(source) {
        return None;
    }
    if let Some(t) = target {
        if !crate::scope::is_resource_type(t) {
            return None;
        }
        if !reverse {
            return Some(vec![t.to_owned()]);
        }
    }
    if reverse {
        return Some(vec![source.to_owned()]);
    }
    if param == "*" {
        return Some(vec!["*".to_owned()]);
    }
    let targets = TABLES
        .paths
        .get(source)
        .and_then(|params| params.iter().find(|p| p.param == param))
        .map(|p| p.targets.clone())
        .filter(|t| !t.is_empty());
    Some(targets.unwrap_or_else(|| vec!["*".to_owned()]))
}

/// Can the grant read (`r` or `s`) every resource of `ty` (`"*"`: of every type)?
fn readable(grant: &Grant, ty: &str) -> bool {
    let rs = Perms::R.union(Perms::S);
    grant.scopes.resource_scopes().iter().any(|s| {
        let type_ok = if ty == "*" {
            s.resource_type == TypeSel::Any
        } else {
            s.resource_type.covers(ty)
        };
        type_ok
            && s.perms.intersects(rs)
            && (s.context != Context::Patient || grant.patient.is_some())
    })
}

/// Refuses a search whose includes can return a type the grant cannot read.
pub(crate) fn check_includes(grant: &Grant, req: &FhirRequest) -> Result<(), Denial> {
    for (reverse, value) in include_params(req) {
        let short: String = value.chars().take(64).collect();
        let Some(types) = included_types(reverse, value) else {
            return Err(denial(
                DenyReason::UnenforceableQuery,
                "include-unreadable",
                format!("include '{short}' cannot be evaluated"),
            ));
        };
        if let Some(missing) = types.iter().find(|t| !readable(grant, t)) {
            let what = if missing == "*" {
                "every resource type".to_owned()
            } else {
                missing.clone()
            };
            return Err(denial(
                DenyReason::InsufficientScope,
                "include-type-not-granted",
                format!("include '{short}' can return {what}, which no granted scope reads"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(reverse: bool, v: &str) -> Option<Vec<String>> {
        included_types(reverse, v)
    }

    #[test]
    fn include_targets() {
        assert_eq!(types(false, "*").unwrap(), ["*"]);
        assert_eq!(
            types(false, "Observation:subject:Patient").unwrap(),
            ["Patient"]
        );
        let subject = types(false, "Observation:subject").unwrap();
        assert!(subject.contains(&"Patient".to_owned()) && subject.contains(&"Group".to_owned()));
        assert_eq!(types(false, "Observation:has-member").unwrap(), ["*"]);
        assert_eq!(types(true, "Provenance:target").unwrap(), ["Provenance"]);
        assert_eq!(
            types(true, "Provenance:target:Patient").unwrap(),
            ["Provenance"]
        );
        assert_eq!(types(true, "*").unwrap(), ["*"]);
        assert!(types(false, "Observation").is_none());
        assert!(types(false, "Nope:subject").is_none());
        assert!(types(false, "Observation:subject:Nope").is_none());
    }
}
