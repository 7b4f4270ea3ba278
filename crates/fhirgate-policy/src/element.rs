//! The JSON the checks read, in either of two shapes: a [`serde_json::Value`] (a request body
//! the decision reads whole) or an [`Element`] (the few members of a response resource a
//! check reads, borrowed from the response's text).
//!
//! The compartment and granular checks are written once, against [`Node`].

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// A JSON value as the checks walk it.
pub trait Node: Sized {
    /// The member `name` of an object.
    fn member(&self, name: &str) -> Option<&Self>;
    /// The text of a string.
    fn text(&self) -> Option<&str>;
    /// The items of an array.
    fn items(&self) -> Option<&[Self]>;
    /// The value of a boolean.
    fn boolean(&self) -> Option<bool>;
    /// Is this an object?
    fn is_object(&self) -> bool;
}

impl Node for Value {
    fn member(&self, name: &str) -> Option<&Self> {
        self.get(name)
    }
    fn text(&self) -> Option<&str> {
        self.as_str()
    }
    fn items(&self) -> Option<&[Self]> {
        self.as_array().map(Vec::as_slice)
    }
    fn boolean(&self) -> Option<bool> {
        self.as_bool()
    }
    fn is_object(&self) -> bool {
        self.is_object()
    }
}

/// A JSON value whose strings and member names are borrowed from the text where they have
/// no escapes. Numbers are kept as no more than "a number": no check compares one.
///
/// An object naming a member twice does not parse: which of the two a client believes is not
/// for the gateway to guess.
#[derive(Debug, Clone, PartialEq)]
pub enum Element<'a> {
    Null,
    Bool(bool),
    Number,
    String(Cow<'a, str>),
    Array(Vec<Element<'a>>),
    Object(Vec<(Cow<'a, str>, Element<'a>)>),
}

impl Node for Element<'_> {
    fn member(&self, name: &str) -> Option<&Self> {
        match self {
            Self::Object(members) => members.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }
    fn text(&self) -> Option<&str> {
        match self {
            Self::String(text) => Some(text),
            _ => None,
        }
    }
    fn items(&self) -> Option<&[Self]> {
        match self {
            Self::Array(items) => Some(items),
            _ => None,
        }
    }
    fn boolean(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }
    fn is_object(&self) -> bool {
        matches!(self, Self::Object(_))
    }
}

/// A member name, borrowed when it has no escapes.
pub(crate) struct MemberName<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for MemberName<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor).map(MemberName)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

impl<'de> Deserialize<'de> for Element<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ElementVisitor)
    }
}

struct ElementVisitor;

impl<'de> Visitor<'de> for ElementVisitor {
    type Value = Element<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Element::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Element::Bool(v))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Element::Number)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Element::Number)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Element::Number)
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Element::String(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Element::String(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Element::String(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Element::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members: Vec<(Cow<'de, str>, Element<'de>)> = Vec::new();
        while let Some(MemberName(name)) = map.next_key()? {
            if members.iter().any(|(seen, _)| *seen == name) {
                return Err(A::Error::custom("duplicate member"));
            }
            members.push((name, map.next_value()?));
        }
        Ok(Element::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let text =
            r#"{"reference":"Patient/1","display":"A \"quoted\" name","n":[1,2.5,null,true]}"#;
        let element: Element<'_> = serde_json::from_str(text).unwrap();
        let reference = element.member("reference").unwrap();
        assert!(matches!(
            reference,
            Element::String(Cow::Borrowed("Patient/1"))
        ));
        assert_eq!(
            element.member("display").and_then(Node::text),
            Some("A \"quoted\" name")
        );
        let items = element.member("n").and_then(Node::items).unwrap();
        assert_eq!(
            items,
            &[
                Element::Number,
                Element::Number,
                Element::Null,
                Element::Bool(true)
            ]
        );
        assert_eq!(items[3].boolean(), Some(true));
        assert!(element.is_object() && !reference.is_object());
    }

    #[test]
    fn a_member_named_twice_at_any_depth_does_not_parse() {
        for text in [
            r#"{"a":1,"a":2}"#,
            r#"{"subject":{"reference":"Patient/1","reference":"Patient/2"}}"#,
            r#"[{"x":{"y":[{"z":1,"z":1}]}}]"#,
        ] {
            assert!(serde_json::from_str::<Element<'_>>(text).is_err(), "{text}");
        }
    }

    #[test]
    fn values_and_elements_read_alike() {
        let text = r#"{"category":[{"coding":[{"system":"s","code":"c"}]}],"ok":false}"#;
        let value: Value = serde_json::from_str(text).unwrap();
        let element: Element<'_> = serde_json::from_str(text).unwrap();
        fn code<J: Node>(j: &J) -> Option<&str> {
            j.member("category")?.items()?[0]
                .member("coding")?
                .items()?[0]
                .member("code")?
                .text()
        }
        assert_eq!(code(&value), Some("c"));
        assert_eq!(code(&element), Some("c"));
        assert_eq!(value.member("ok").and_then(Node::boolean), Some(false));
        assert_eq!(element.member("ok").and_then(Node::boolean), Some(false));
    }
}
