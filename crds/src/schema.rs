//! Schemas for fields whose Rust type does not say what Kubernetes should accept.

use schemars::{json_schema, Schema, SchemaGenerator};

/// Any JSON scalar (string, number, boolean): a filter's comparison value.
pub fn any_scalar(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "A string, number or boolean.",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A map from field path to any JSON value: `map.set`.
pub fn map_of_any(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Field path → value to set.",
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": { "x-kubernetes-preserve-unknown-fields": true }
    })
}
