//! Records as the pipeline sees them, and dotted field paths into them.

use serde_json::{Map, Value};

/// One record in flight through the pipeline.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    /// The decoded value: a JSON object for `json` sources, `{"value": ...}` for text and bytes.
    pub fields: Value,
    /// The key set by `keyBy` (text), else the input's Kafka key, byte for byte.
    pub key: Option<Vec<u8>>,
    /// Event time in epoch milliseconds: the Kafka timestamp until a window reads `timeField`.
    pub timestamp_ms: i64,
}

impl Record {
    /// A record with no fields: only a key (text) and a timestamp.
    pub fn key_only(key: Option<&str>, timestamp_ms: i64) -> Self {
        Self { fields: Value::Object(Map::new()), key: key.map(|k| k.as_bytes().to_vec()), timestamp_ms }
    }
}

/// A dotted path (`user.id`) split once into its segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPath {
    text: String,
    segments: Vec<String>,
}

impl FieldPath {
    pub fn parse(text: &str) -> Self {
        Self { text: text.to_owned(), segments: text.split('.').map(str::to_owned).collect() }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The top-level field the path starts in.
    pub fn top(&self) -> &str {
        self.segments.first().map_or("", String::as_str)
    }

    /// Whether one path is the other or lies inside it (`a` and `a.b`).
    pub fn overlaps(&self, other: &FieldPath) -> bool {
        self.segments.iter().zip(&other.segments).all(|(a, b)| a == b)
    }

    pub fn get<'v>(&self, value: &'v Value) -> Option<&'v Value> {
        self.segments.iter().try_fold(value, |current, segment| current.as_object()?.get(segment))
    }

    /// Sets the field, creating intermediate objects; a non-object in the way is replaced.
    pub fn set(&self, value: &mut Value, new: Value) {
        let Some((last, parents)) = self.segments.split_last() else {
            return;
        };
        let mut current = value;
        for segment in parents {
            current = ensure_object(current).entry(segment.clone()).or_insert_with(|| Value::Object(Map::new()));
        }
        ensure_object(current).insert(last.clone(), new);
    }

    pub fn remove(&self, value: &mut Value) -> Option<Value> {
        let (last, parents) = self.segments.split_last()?;
        let mut current = value;
        for segment in parents {
            current = current.as_object_mut()?.get_mut(segment)?;
        }
        current.as_object_mut()?.remove(last)
    }
}

fn ensure_object(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => map,
        _ => unreachable!("the value was just made an object"),
    }
}

/// A JSON value as key text: strings as they are, anything else as compact JSON.
pub fn key_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_get_set_and_remove_nested_fields() {
        let mut value = json!({"user": {"id": 7}, "n": 1});
        let path = FieldPath::parse("user.id");
        assert_eq!(path.get(&value), Some(&json!(7)));
        FieldPath::parse("a.b").set(&mut value, json!("x"));
        assert_eq!(value["a"]["b"], json!("x"));
        assert_eq!(path.remove(&mut value), Some(json!(7)));
        assert_eq!(path.get(&value), None);
        assert_eq!(FieldPath::parse("n.deeper").get(&value), None);
    }

    #[test]
    fn paths_overlap_when_one_is_the_other_or_inside_it() {
        let path = FieldPath::parse;
        assert!(path("a").overlaps(&path("a")));
        assert!(path("a").overlaps(&path("a.b")));
        assert!(path("a.b").overlaps(&path("a")));
        assert!(!path("a.b").overlaps(&path("a.c")));
        assert!(!path("a").overlaps(&path("ab")));
    }

    #[test]
    fn key_text_keeps_strings_and_prints_the_rest() {
        assert_eq!(key_text(&json!("the")), "the");
        assert_eq!(key_text(&json!(42)), "42");
    }
}
