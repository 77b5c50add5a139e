//! Which parts of a record the stages after a point still read.
//!
//! The compiled pipeline works this out once, from its last stage back, so that JSON input is
//! decoded only as far as some stage reads it, `keyBy` moves a value nobody reads again into
//! the key instead of copying it, and `split` copies only what the stages after it read.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::record::FieldPath;

/// The top-level fields read from here on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fields {
    /// The whole record, for example because it reaches the sink as it is.
    All,
    Only(BTreeSet<String>),
}

impl Fields {
    pub fn none() -> Self {
        Self::Only(BTreeSet::new())
    }

    pub fn with(mut self, path: &FieldPath) -> Self {
        if let Self::Only(fields) = &mut self {
            fields.insert(path.top().to_owned());
        }
        self
    }

    pub fn reads(&self, path: &FieldPath) -> bool {
        match self {
            Self::All => true,
            Self::Only(fields) => fields.contains(path.top()),
        }
    }

    /// Nothing but `path`'s top-level field is read.
    pub fn at_most(&self, path: &FieldPath) -> bool {
        match self {
            Self::All => false,
            Self::Only(fields) => fields.iter().all(|field| field == path.top()),
        }
    }
}

/// What the stages from some point on read of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Liveness {
    pub fields: Fields,
    /// The record's key (the input's Kafka key until a `keyBy` replaces it).
    pub key: bool,
}

impl Liveness {
    /// The sink writes the whole record and its key.
    pub fn sink() -> Self {
        Self { fields: Fields::All, key: true }
    }
}

/// Decodes a JSON value, keeping of a top-level object only the `fields` asked for. The rest is
/// still checked to be valid JSON. Anything but an object is decoded whole.
pub fn decode_json(payload: &[u8], fields: &Fields) -> serde_json::Result<Value> {
    let Fields::Only(fields) = fields else {
        return serde_json::from_slice(payload);
    };
    if payload.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
        return serde_json::from_slice(payload);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(payload);
    let value = deserializer.deserialize_map(ProjectedObject(fields))?;
    deserializer.end()?;
    Ok(value)
}

struct ProjectedObject<'f>(&'f BTreeSet<String>);

impl<'de> Visitor<'de> for ProjectedObject<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut kept = Map::new();
        while let Some(FieldName(name)) = map.next_key()? {
            if self.0.contains(name.as_ref()) {
                kept.insert(name.into_owned(), map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Value::Object(kept))
    }
}

/// An object's field name, borrowed from the input unless it has escapes.
struct FieldName<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for FieldName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = FieldName<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a field name")
            }

            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Self::Value, E> {
                Ok(FieldName(Cow::Borrowed(name)))
            }

            fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
                Ok(FieldName(Cow::Owned(name.to_owned())))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn only(fields: &[&str]) -> Fields {
        Fields::Only(fields.iter().map(|f| f.to_string()).collect())
    }

    #[test]
    fn a_projected_decode_keeps_the_fields_asked_for_and_still_rejects_invalid_json() {
        let payload = br#" {"id": 1, "us\u0065r": {"n": "a"}, "type": "click", "page": [1, {"x": null}]}"#;
        assert_eq!(
            decode_json(payload, &only(&["user", "type"])).ok(),
            Some(json!({"user": {"n": "a"}, "type": "click"}))
        );
        assert_eq!(decode_json(payload, &Fields::All).ok(), serde_json::from_slice(payload).ok());
        assert!(
            decode_json(br#"{"id": 1, "page": [1,]}"#, &only(&["id"])).is_err(),
            "a skipped field is still checked"
        );
        assert!(decode_json(br#"{"id": 1} trailing"#, &only(&["id"])).is_err());
        assert_eq!(decode_json(b"[1, 2]", &only(&["id"])).ok(), Some(json!([1, 2])), "not an object: decoded whole");
    }

    #[test]
    fn nested_paths_count_as_their_top_level_field() {
        let fields = Fields::none().with(&FieldPath::parse("user.id"));
        assert!(fields.reads(&FieldPath::parse("user.name")));
        assert!(fields.at_most(&FieldPath::parse("user")));
        assert!(!fields.reads(&FieldPath::parse("id")));
        assert!(Fields::All.reads(&FieldPath::parse("id")) && !Fields::All.at_most(&FieldPath::parse("id")));
    }
}
