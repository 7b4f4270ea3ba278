//! Reading a response for its check in one pass over the text: of each resource only the
//! members the check reads are parsed (borrowed where they have no escapes), everything
//! else is skipped unparsed. Entries of a Bundle are decided as they are read.
//!
//! A member the check reads named twice, at any level, makes the response unreadable: which
//! of the two a client believes is not for the gateway to guess. (The members it skips do
//! not decide anything, and are not compared.)

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::ResponseCheck;
use crate::element::{Element, MemberName};

/// The members each resource type needs for a check, worked out once per type.
pub(super) struct Wanted<'c> {
    pub(super) check: &'c ResponseCheck,
    known: Vec<(String, Vec<String>)>,
}

impl<'c> Wanted<'c> {
    pub(super) fn new(check: &'c ResponseCheck) -> Self {
        Self {
            check,
            known: Vec::new(),
        }
    }

    /// The index of `resource_type`'s members.
    fn index_of(&mut self, resource_type: &str) -> usize {
        match self
            .known
            .iter()
            .position(|(known, _)| known == resource_type)
        {
            Some(index) => index,
            None => {
                let members = self.check.members(resource_type).into_iter().collect();
                self.known.push((resource_type.to_owned(), members));
                self.known.len() - 1
            }
        }
    }

    fn wants(&self, index: usize, member: &str) -> bool {
        self.known[index].1.iter().any(|wanted| wanted == member)
    }
}

/// A resource as its check reads it: `resourceType` and the members the check reads.
pub(super) struct ResourceView<'a> {
    pub(super) resource_type: Cow<'a, str>,
    pub(super) element: Element<'a>,
}

/// Reads one resource object into a [`ResourceView`].
pub(super) struct ResourceSeed<'w, 'c> {
    pub(super) wanted: &'w mut Wanted<'c>,
}

impl<'de> DeserializeSeed<'de> for ResourceSeed<'_, '_> {
    type Value = ResourceView<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ResourceSeed<'_, '_> {
    type Value = ResourceView<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a FHIR resource")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut resource_type: Option<(Cow<'de, str>, usize)> = None;
        // Members met before `resourceType`, kept unparsed until it says which are read.
        let mut before_type: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::new();
        let mut members: Vec<(Cow<'de, str>, Element<'de>)> = Vec::new();
        let twice = || A::Error::custom("duplicate member");
        while let Some(MemberName(name)) = map.next_key()? {
            if name == "resourceType" {
                if resource_type.is_some() {
                    return Err(twice());
                }
                let MemberName(ty) = map.next_value()?;
                let index = self.wanted.index_of(&ty);
                for (member, raw) in before_type.drain(..) {
                    if self.wanted.wants(index, &member) {
                        let value = serde_json::from_str(raw.get()).map_err(A::Error::custom)?;
                        members.push((member, value));
                    }
                }
                members.push((name, Element::String(ty.clone())));
                resource_type = Some((ty, index));
            } else if let Some((_, index)) = &resource_type {
                if self.wanted.wants(*index, &name) {
                    if members.iter().any(|(seen, _)| *seen == name) {
                        return Err(twice());
                    }
                    members.push((name, map.next_value()?));
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            } else {
                if before_type.iter().any(|(seen, _)| *seen == name) {
                    return Err(twice());
                }
                before_type.push((name, map.next_value()?));
            }
        }
        let (resource_type, _) =
            resource_type.ok_or_else(|| A::Error::custom("no resourceType"))?;
        Ok(ResourceView {
            resource_type,
            element: Element::Object(members),
        })
    }
}

/// A Bundle as its check reads it: its type and, for each entry in order, whether it stays.
pub(super) struct BundleView<'a> {
    pub(super) resource_type: Cow<'a, str>,
    pub(super) keep: Vec<bool>,
}

/// Reads a Bundle into a [`BundleView`], deciding each entry as it goes.
pub(super) struct BundleSeed<'w, 'c> {
    pub(super) wanted: &'w mut Wanted<'c>,
}

impl<'de> DeserializeSeed<'de> for BundleSeed<'_, '_> {
    type Value = BundleView<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BundleSeed<'_, '_> {
    type Value = BundleView<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a FHIR Bundle")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut names: Vec<Cow<'de, str>> = Vec::new();
        let mut resource_type = None;
        let mut keep = Vec::new();
        while let Some(MemberName(name)) = map.next_key()? {
            if names.contains(&name) {
                return Err(A::Error::custom("duplicate member"));
            }
            match name.as_ref() {
                "resourceType" => resource_type = Some(map.next_value::<MemberName<'de>>()?.0),
                "entry" => {
                    keep = map.next_value_seed(EntriesSeed {
                        wanted: &mut *self.wanted,
                    })?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            names.push(name);
        }
        let resource_type = resource_type.ok_or_else(|| A::Error::custom("no resourceType"))?;
        Ok(BundleView {
            resource_type,
            keep,
        })
    }
}

struct EntriesSeed<'w, 'c> {
    wanted: &'w mut Wanted<'c>,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_, '_> {
    type Value = Vec<bool>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_, '_> {
    type Value = Vec<bool>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of Bundle entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut keep = Vec::new();
        while let Some(kept) = seq.next_element_seed(EntrySeed {
            wanted: &mut *self.wanted,
        })? {
            keep.push(kept);
        }
        Ok(keep)
    }
}

/// Reads one entry and says whether it stays: its resource is covered, or it is the
/// server's own OperationOutcome (`search.mode` = `outcome`). An entry without a resource
/// goes.
struct EntrySeed<'w, 'c> {
    wanted: &'w mut Wanted<'c>,
}

impl<'de> DeserializeSeed<'de> for EntrySeed<'_, '_> {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

#[derive(Deserialize)]
struct SearchView<'a> {
    #[serde(borrow)]
    mode: Option<Cow<'a, str>>,
}

impl<'de> Visitor<'de> for EntrySeed<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Bundle entry")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut resource: Option<Option<ResourceView<'de>>> = None;
        let mut search: Option<Option<SearchView<'de>>> = None;
        let twice = || A::Error::custom("duplicate member");
        while let Some(MemberName(name)) = map.next_key()? {
            match name.as_ref() {
                "resource" if resource.is_some() => return Err(twice()),
                "resource" => {
                    resource = Some(map.next_value_seed(OptionalResource {
                        wanted: &mut *self.wanted,
                    })?);
                }
                "search" if search.is_some() => return Err(twice()),
                "search" => search = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let outcome_mode = search.flatten().and_then(|s| s.mode).as_deref() == Some("outcome");
        let resource = resource.flatten();
        Ok(resource.is_some_and(|resource| {
            (outcome_mode && resource.resource_type == "OperationOutcome")
                || self.wanted.check.covers(&resource.element)
        }))
    }
}

/// A resource that may be `null`.
struct OptionalResource<'w, 'c> {
    wanted: &'w mut Wanted<'c>,
}

impl<'de> DeserializeSeed<'de> for OptionalResource<'_, '_> {
    type Value = Option<ResourceView<'de>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for OptionalResource<'_, '_> {
    type Value = Option<ResourceView<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a FHIR resource or null")
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        ResourceSeed {
            wanted: self.wanted,
        }
        .deserialize(d)
        .map(Some)
    }
}

/// Reads all of `text` with `seed`: trailing characters make it unreadable.
pub(super) fn read<'de, S: DeserializeSeed<'de>>(
    text: &'de str,
    seed: S,
) -> Result<S::Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = seed.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// A JSON object's members as (name, unparsed value), borrowed from the text where the name
/// has no escapes; for copying a Bundle's members byte for byte. A name given twice makes it
/// unreadable.
pub(super) struct BorrowedObject<'a>(pub(super) Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedObject<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BorrowedObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::new();
                while let Some((MemberName(k), v)) =
                    map.next_entry::<MemberName<'de>, &'de RawValue>()?
                {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(A::Error::custom("duplicate member"));
                    }
                    out.push((k, v));
                }
                Ok(BorrowedObject(out))
            }
        }
        let BorrowedObject(members) = d.deserialize_map(V)?;
        Ok(BorrowedObject(members))
    }
}
