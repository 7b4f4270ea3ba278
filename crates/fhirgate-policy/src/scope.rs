//! SMART App Launch scope grammar (v1 and v2, SMART 1.0 / 2.x).
//!
//! Each space-separated scope is parsed on its own. A scope that is not a well-formed resource,
//! launch, identity, refresh or extension scope is kept in [`ScopeSet::malformed`] and grants
//! nothing; a well-formed resource scope that fhirgate cannot enforce (chained or modified
//! granular parameters, parameters with no known R4 expression) is kept in
//! [`ScopeSet::unsupported`] and grants nothing either. Parsing never fails and never widens.

use std::fmt;

use percent_encoding::percent_decode_str;

use crate::data::TABLES;

/// Granular parameter names that SMART marks experimental or that cannot be evaluated on a
/// single resource; a scope using one of them grants nothing.
const UNENFORCEABLE_PARAMS: &[&str] = &[
    "_include",
    "_revinclude",
    "_has",
    "_filter",
    "_list",
    "_query",
    "_text",
    "_content",
];

/// Meta parameters that apply to every resource type.
const META_PARAMS: &[&str] = &["_tag", "_security", "_profile"];

/// Is `name` an R4 resource type (exact case)?
pub fn is_resource_type(name: &str) -> bool {
    TABLES.types.contains(name)
}

/// The `patient/`, `user/` or `system/` prefix of a resource scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    /// `patient/`: bounded by the token's patient context and the patient compartment.
    Patient,
    /// `user/`: whatever the user may access (enforced upstream).
    User,
    /// `system/`: backend services, no user.
    System,
}

impl Context {
    /// The scope prefix without the slash.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Patient => "patient",
            Self::User => "user",
            Self::System => "system",
        }
    }
}

/// A set of SMART v2 permission letters (`c r u d s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Perms(u8);

impl Perms {
    /// No permission.
    pub const NONE: Self = Self(0);
    /// `c`: type-level create.
    pub const C: Self = Self(1);
    /// `r`: read, vread, instance history.
    pub const R: Self = Self(2);
    /// `u`: update (incl. upsert), patch.
    pub const U: Self = Self(4);
    /// `d`: delete.
    pub const D: Self = Self(8);
    /// `s`: search and type/system history.
    pub const S: Self = Self(16);
    /// All five letters.
    pub const ALL: Self = Self(31);

    /// Union of two sets.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Does `self` contain every letter of `other`?
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Do the sets share a letter?
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// Is the set empty?
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Parses v1 (`read`, `write`, `*`) or v2 (ordered subset of `cruds`) permissions.
    /// Returns the permissions and whether they were v2.
    pub fn parse(s: &str) -> Option<(Self, bool)> {
        match s {
            "read" => return Some((Self::R.union(Self::S), false)),
            "write" => return Some((Self::C.union(Self::U).union(Self::D), false)),
            "*" => return Some((Self::ALL, false)),
            "" => return None,
            _ => {}
        }
        let mut perms = Self::NONE;
        let mut rest = s;
        for (letter, bit) in [
            ('c', Self::C),
            ('r', Self::R),
            ('u', Self::U),
            ('d', Self::D),
            ('s', Self::S),
        ] {
            if let Some(r) = rest.strip_prefix(letter) {
                perms = perms.union(bit);
                rest = r;
            }
        }
        rest.is_empty().then_some((perms, true))
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (letter, bit) in [
            ('c', Self::C),
            ('r', Self::R),
            ('u', Self::U),
            ('d', Self::D),
            ('s', Self::S),
        ] {
            if self.contains(bit) {
                write!(f, "{letter}")?;
            }
        }
        Ok(())
    }
}

/// The resource type a scope names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TypeSel {
    /// `*`: every type, including ones added later.
    Any,
    /// One R4 type, exact case.
    Named(String),
}

impl TypeSel {
    /// Does the selector cover `resource_type`?
    pub fn covers(&self, resource_type: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Named(t) => t == resource_type,
        }
    }
}

/// A well-formed, enforceable resource scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceScope {
    /// The scope text as granted.
    pub text: String,
    /// `patient/`, `user/` or `system/`.
    pub context: Context,
    /// The type or `*`.
    pub resource_type: TypeSel,
    /// Granted letters (v1 suffixes mapped to v2).
    pub perms: Perms,
    /// Granular `name=value` restrictions (v2 only), percent-decoded; empty when unrestricted.
    pub params: Vec<(String, String)>,
}

impl ResourceScope {
    /// Does the scope grant `perm` on `resource_type` (ignoring context and granular params)?
    pub fn grants(&self, resource_type: &str, perm: Perms) -> bool {
        self.perms.contains(perm) && self.resource_type.covers(resource_type)
    }

    /// Is the scope restricted by granular parameters?
    pub fn is_granular(&self) -> bool {
        !self.params.is_empty()
    }
}

/// The kind of a recognised scope that grants no FHIR data access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherKind {
    /// `launch`, `launch/patient`, ...
    Launch,
    /// `openid`, `fhirUser`, `profile`.
    Identity,
    /// `offline_access`, `online_access`.
    Refresh,
    /// Absolute-URI or `__` extension scope.
    Extension,
}

/// One parsed scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// An enforceable resource scope.
    Resource(ResourceScope),
    /// A recognised non-resource scope.
    Other(OtherKind),
    /// Well-formed but not enforceable by fhirgate: grants nothing.
    Unsupported,
    /// Not well-formed: grants nothing.
    Malformed,
}

impl Scope {
    /// Parses one scope token.
    pub fn parse(s: &str) -> Self {
        if let Some((ctx, rest)) = s.split_once('/') {
            let context = match ctx {
                "patient" => Some(Context::Patient),
                "user" => Some(Context::User),
                "system" => Some(Context::System),
                _ => None,
            };
            if let Some(context) = context {
                return parse_resource(s, context, rest);
            }
        }
        match s {
            "openid" | "fhirUser" | "profile" => Self::Other(OtherKind::Identity),
            "offline_access" | "online_access" => Self::Other(OtherKind::Refresh),
            _ if is_launch(s) => Self::Other(OtherKind::Launch),
            _ if is_extension(s) => Self::Other(OtherKind::Extension),
            _ => Self::Malformed,
        }
    }
}

fn is_launch(s: &str) -> bool {
    if s == "launch" {
        return true;
    }
    let Some(rest) = s.strip_prefix("launch/") else {
        return false;
    };
    let (ty, role) = match rest.split_once("?role=") {
        Some((ty, role)) => (ty, Some(role)),
        None => (rest, None),
    };
    let ty_ok = !ty.is_empty() && ty.bytes().all(|b| b.is_ascii_lowercase());
    ty_ok && role.is_none_or(|r| !r.is_empty() && !r.contains(['?', '&']))
}

fn is_extension(s: &str) -> bool {
    if let Some(rest) = s.strip_prefix("__") {
        return !rest.is_empty();
    }
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    first_ok
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
}

fn parse_resource(text: &str, context: Context, rest: &str) -> Scope {
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let Some((ty, perms)) = main.split_once('.') else {
        return Scope::Malformed;
    };
    let resource_type = match ty {
        "*" => TypeSel::Any,
        t if is_resource_type(t) => TypeSel::Named(t.to_owned()),
        _ => return Scope::Malformed,
    };
    let Some((perms, v2)) = Perms::parse(perms) else {
        return Scope::Malformed;
    };
    let params = match query {
        None => Vec::new(),
        Some(_) if !v2 => return Scope::Malformed,
        Some(q) => match parse_granular(q) {
            Some(p) => p,
            None => return Scope::Malformed,
        },
    };
    if !params
        .iter()
        .all(|(name, _)| enforceable(&resource_type, name))
    {
        return Scope::Unsupported;
    }
    Scope::Resource(ResourceScope {
        text: text.to_owned(),
        context,
        resource_type,
        perms,
        params,
    })
}

fn parse_granular(q: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in q.split('&') {
        let (name, value) = pair.split_once('=')?;
        let name = percent_decode_str(name).decode_utf8().ok()?.into_owned();
        let value = percent_decode_str(value).decode_utf8().ok()?.into_owned();
        if name.is_empty() || value.is_empty() {
            return None;
        }
        out.push((name, value));
    }
    Some(out)
}

/// Can fhirgate evaluate granular parameter `name` on resources of `ty`?
fn enforceable(ty: &TypeSel, name: &str) -> bool {
    if name.contains(['.', ':']) || UNENFORCEABLE_PARAMS.contains(&name) {
        return false;
    }
    if META_PARAMS.contains(&name) {
        return true;
    }
    match ty {
        TypeSel::Any => false,
        TypeSel::Named(t) => TABLES.granular.get(t).is_some_and(|p| p.contains_key(name)),
    }
}

/// A parsed scope string: the union of its members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet {
    resources: Vec<ResourceScope>,
    malformed: Vec<String>,
    unsupported: Vec<String>,
    others: Vec<String>,
}

impl ScopeSet {
    /// Parses a space-separated scope string (the `scope` claim). Never panics.
    pub fn parse(s: &str) -> Self {
        Self::from_list(s.split(' ').filter(|t| !t.is_empty()))
    }

    /// Builds a set from a list of scopes (the `scp` claim). Entries containing spaces are split.
    pub fn from_list<I, S>(items: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = Self::default();
        for item in items {
            for token in item.as_ref().split(' ').filter(|t| !t.is_empty()) {
                set.push(token);
            }
        }
        set
    }

    fn push(&mut self, token: &str) {
        match Scope::parse(token) {
            Scope::Resource(r) => self.resources.push(r),
            Scope::Other(_) => self.others.push(token.to_owned()),
            Scope::Unsupported => self.unsupported.push(token.to_owned()),
            Scope::Malformed => self.malformed.push(token.to_owned()),
        }
    }

    /// The enforceable resource scopes.
    pub fn resource_scopes(&self) -> &[ResourceScope] {
        &self.resources
    }

    /// Scopes that are not well-formed (they grant nothing).
    pub fn malformed(&self) -> &[String] {
        &self.malformed
    }

    /// Well-formed resource scopes fhirgate cannot enforce (they grant nothing).
    pub fn unsupported(&self) -> &[String] {
        &self.unsupported
    }

    /// Recognised launch, identity, refresh and extension scopes.
    pub fn others(&self) -> &[String] {
        &self.others
    }

    /// The set with `extra` resource scopes added after its own (an emergency grant's).
    pub fn with_resource_scopes(&self, extra: impl IntoIterator<Item = ResourceScope>) -> Self {
        let mut set = self.clone();
        set.resources.extend(extra);
        set
    }

    /// A set holding only `scope` (used to test the union property).
    pub fn single(scope: ResourceScope) -> Self {
        Self::of(vec![scope])
    }

    /// A set holding exactly `scopes`.
    pub fn of(scopes: Vec<ResourceScope>) -> Self {
        Self {
            resources: scopes,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> ResourceScope {
        match Scope::parse(s) {
            Scope::Resource(r) => r,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn v1_suffixes_map_to_v2_letters() {
        assert_eq!(
            one("patient/Observation.read").perms,
            Perms::R.union(Perms::S)
        );
        assert_eq!(
            one("user/*.write").perms,
            Perms::C.union(Perms::U).union(Perms::D)
        );
        assert_eq!(one("system/*.*").perms, Perms::ALL);
        assert_eq!(one("system/*.*").resource_type, TypeSel::Any);
    }

    #[test]
    fn v2_letters_must_be_an_ordered_subset() {
        assert_eq!(one("patient/Observation.rs").perms.to_string(), "rs");
        assert_eq!(one("user/Condition.cruds").perms, Perms::ALL);
        for bad in [
            "patient/Observation.sr",
            "patient/Observation.rrs",
            "patient/Observation.",
        ] {
            assert_eq!(Scope::parse(bad), Scope::Malformed, "{bad}");
        }
        assert_eq!(Scope::parse("patient/Observation.x"), Scope::Malformed);
        assert_eq!(Scope::parse("patient/Observation.Read"), Scope::Malformed);
    }

    #[test]
    fn v1_with_query_is_malformed() {
        assert_eq!(
            Scope::parse("patient/Observation.read?x=y"),
            Scope::Malformed
        );
    }

    #[test]
    fn unknown_or_miscased_types_are_malformed() {
        assert_eq!(Scope::parse("patient/observation.rs"), Scope::Malformed);
        assert_eq!(Scope::parse("patient/Foo.rs"), Scope::Malformed);
        assert_eq!(Scope::parse("Patient/Observation.rs"), Scope::Malformed);
        assert_eq!(Scope::parse("patient/Observation"), Scope::Malformed);
    }

    #[test]
    fn granular_values_keep_pipes_and_decode_percent() {
        let raw = "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
        let enc = "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category%7Claboratory";
        let expected = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
        assert_eq!(
            one(raw).params,
            vec![("category".to_owned(), expected.to_owned())]
        );
        assert_eq!(one(enc).params, one(raw).params);
        let two = one("user/Condition.rs?category=a,b&clinical-status=active");
        assert_eq!(two.params.len(), 2);
        assert_eq!(two.params[0].1, "a,b");
    }

    #[test]
    fn granular_edge_cases() {
        assert_eq!(Scope::parse("patient/Observation.rs?"), Scope::Malformed);
        assert_eq!(
            Scope::parse("patient/Observation.rs?category"),
            Scope::Malformed
        );
        assert_eq!(
            Scope::parse("patient/Observation.rs?category="),
            Scope::Malformed
        );
        assert_eq!(
            Scope::parse("patient/Observation.rs?patient.birthdate=1990"),
            Scope::Unsupported
        );
        assert_eq!(
            Scope::parse("patient/Observation.rs?code:in=http://x"),
            Scope::Unsupported
        );
        assert_eq!(
            Scope::parse("patient/Observation.rs?nosuch=1"),
            Scope::Unsupported
        );
        assert_eq!(Scope::parse("patient/*.rs?category=x"), Scope::Unsupported);
        assert!(matches!(
            Scope::parse("patient/*.rs?_tag=x|y"),
            Scope::Resource(_)
        ));
    }

    #[test]
    fn non_resource_scopes_are_recognised() {
        for s in [
            "launch",
            "launch/patient",
            "launch/encounter",
            "openid",
            "fhirUser",
            "profile",
        ] {
            assert!(matches!(Scope::parse(s), Scope::Other(_)), "{s}");
        }
        for s in [
            "offline_access",
            "online_access",
            "__profilePhoto.manage",
            "https://ehr.example.org/scopes/x",
        ] {
            assert!(matches!(Scope::parse(s), Scope::Other(_)), "{s}");
        }
        assert!(matches!(
            Scope::parse("launch/diagnosticreport?role=http://x/y"),
            Scope::Other(_)
        ));
        for s in ["launch/Patient", "__", "OpenID", "patient", "garbage"] {
            assert_eq!(Scope::parse(s), Scope::Malformed, "{s}");
        }
    }

    #[test]
    fn set_sorts_members_and_ignores_extra_spaces() {
        let set = ScopeSet::parse("  openid patient/Observation.sr  user/*.rs x/y.z ");
        assert_eq!(set.resource_scopes().len(), 1);
        assert_eq!(set.malformed(), ["patient/Observation.sr", "x/y.z"]);
        assert_eq!(set.others(), ["openid"]);
        let list = ScopeSet::from_list(["user/*.rs", "openid"]);
        assert_eq!(list.resource_scopes().len(), 1);
    }
}
