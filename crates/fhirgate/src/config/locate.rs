//! Where a key is written: the line and column of `routes[1].path` in a configuration text,
//! so that rules checked after parsing name the line as parse errors do.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A YAML node with the positions of its keys and items.
enum Node {
    Map(Vec<(Spanned<Key>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Leaf,
}

/// A mapping key as text; `None` for a key that is not a scalar.
struct Key(Option<String>);

/// One step of a key path: a mapping key or a sequence index.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The line and column (1-based) of `key` (`a.b[2].c`) in `text`: of the key itself when the
/// path ends in a mapping key, of the item when it ends in an index. When only the start of
/// the path is written (a key that is missing), the position of the deepest part that is.
/// `None` when the text is not YAML or the first step is not written either.
pub fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    let root: Node = serde_saphyr::from_str(text).ok()?;
    let mut node = &root;
    let mut found = None;
    for step in steps(key)? {
        let (at, next) = match (step, node) {
            (Step::Key(name), Node::Map(entries)) => {
                match entries
                    .iter()
                    .find(|(k, _)| k.value.0.as_deref() == Some(name))
                {
                    Some((key, value)) => (&key.referenced, &value.value),
                    None => break,
                }
            }
            (Step::Index(i), Node::Seq(items)) => match items.get(i) {
                Some(item) => (&item.referenced, &item.value),
                None => break,
            },
            _ => break,
        };
        found = Some((at.line() as usize, at.column() as usize));
        node = next;
    }
    found.filter(|&(line, _)| line > 0)
}

/// `a.b[2].c` as steps; `None` for a path that cannot be one.
fn steps(key: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !name.is_empty() {
            out.push(Step::Key(name));
        }
        while let Some(open) = rest.strip_prefix('[') {
            let (index, after) = open.split_once(']')?;
            out.push(Step::Index(index.parse().ok()?));
            rest = after;
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Key>>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Key, E> {
        Ok(Key(Some(text.to_owned())))
    }
    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Key, E> {
        Ok(Key(Some(value.to_string())))
    }
    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Key, E> {
        Ok(Key(Some(value.to_string())))
    }
    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Key, E> {
        Ok(Key(Some(value.to_string())))
    }
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Key, E> {
        Ok(Key(Some(value.to_string())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
        Ok(Key(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Key(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Key, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Key(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "listen: \"127.0.0.1:8080\"\nroutes:\n  - name: a\n    path: \"/a\"\n  - name: b\n    path: \"/b\"\n    upstream: { url: \"http://b\", servers: [\"x\", \"y\"] }\n";

    #[test]
    fn keys_and_items_are_found_where_they_are_written() {
        assert_eq!(locate(TEXT, "listen"), Some((1, 1)));
        assert_eq!(locate(TEXT, "routes"), Some((2, 1)));
        assert_eq!(locate(TEXT, "routes[1].path"), Some((6, 5)));
        assert_eq!(
            locate(TEXT, "routes[1].upstream.servers[1]").map(|p| p.0),
            Some(7)
        );
        // A key that is missing: the deepest part that is written.
        assert_eq!(locate(TEXT, "routes[0].upstream.url"), Some((3, 5)));
        assert_eq!(locate(TEXT, "audit.spool"), None);
        assert_eq!(locate("{not yaml", "a"), None);
        assert_eq!(locate(TEXT, "routes[x]"), None);
    }
}
