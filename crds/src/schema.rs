//! Schemas for fields whose Rust type does not say what Kubernetes should accept.
//!
//! Every node a CEL rule reads needs a `type` (or `x-kubernetes-int-or-string`): the API server
//! gives an untyped node no CEL type, and a rule that reads it does not compile.

use schemars::{json_schema, Schema, SchemaGenerator};

/// A string or an integer: a filter's comparison value. The API server types it `dyn` in CEL;
/// `maxLength` bounds the estimated cost of the rules that read it.
pub fn int_or_string(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "A string or a whole number.",
        "maxLength": 1024,
        "x-kubernetes-int-or-string": true
    })
}

/// A map from field path to any JSON value: `map.set`. The map itself is a typed object, so a
/// rule can test `has(self.set)`; its values are kept as written.
pub fn map_of_any(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Field path → value to set.",
        "type": "object",
        "maxProperties": 64,
        "x-kubernetes-preserve-unknown-fields": true
    })
}
