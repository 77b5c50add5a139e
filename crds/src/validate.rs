//! Client-side validation of a StreamJob manifest, as the API server would do it: structural
//! schema checks (types, required fields, unknown fields, enums, patterns, bounds), then the CEL
//! rules, then decoding into the Rust types. Messages follow the API server's wording so that a
//! user sees the same text from `streamjob-operator render`, the tests and `kubectl apply`.

use std::sync::OnceLock;

use kube::core::cel::{compile_schema, CompiledSchema, Validator};
use kube::CustomResourceExt;
use regex::Regex;
use serde_json::Value;

use crate::types::StreamJob;

/// Everything wrong with a manifest, one API-server-style message each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid StreamJob:\n  {}", .0.join("\n  "))]
pub struct ManifestErrors(pub Vec<String>);

impl ManifestErrors {
    /// Whether any message contains `needle`.
    pub fn mentions(&self, needle: &str) -> bool {
        self.0.iter().any(|message| message.contains(needle))
    }
}

/// The `openAPIV3Schema` of the generated CRD, as JSON.
pub fn openapi_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let crd = StreamJob::crd();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|validation| validation.open_api_v3_schema.as_ref())
            .map(serde_json::to_value);
        match schema {
            Some(Ok(schema)) => schema,
            _ => unreachable!("the derived CRD always carries a serializable openAPIV3Schema"),
        }
    })
}

/// The CRD schema with its CEL rules compiled, once per process.
fn compiled_schema() -> &'static CompiledSchema {
    static COMPILED: OnceLock<CompiledSchema> = OnceLock::new();
    COMPILED.get_or_init(|| compile_schema(openapi_schema()))
}

/// Parses one YAML document into a StreamJob, validating it as the API server would.
pub fn parse_manifest(yaml: &str) -> Result<StreamJob, ManifestErrors> {
    let value: Value =
        serde_yaml::from_str(yaml).map_err(|error| ManifestErrors(vec![format!("not a YAML document: {error}")]))?;
    validate_value(&value)
}

/// Validates a decoded manifest and returns it with schema defaults applied.
pub fn validate_value(value: &Value) -> Result<StreamJob, ManifestErrors> {
    let mut errors = check_identity(value);
    check_structure(openapi_schema(), value, "", &mut errors);
    if !errors.is_empty() {
        return Err(ManifestErrors(only_unknown_fields_if_any(errors)));
    }
    if let Err(failures) = Validator::new().validate_compiled(compiled_schema(), &without_nulls(value), None) {
        let messages = failures
            .iter()
            .map(|failure| format!("{}: Invalid value: {}", display_path(&failure.field_path), failure.message))
            .collect();
        return Err(ManifestErrors(messages));
    }
    let defaulted = kube::core::cel::apply_defaults(openapi_schema(), value);
    serde_json::from_value(defaulted).map_err(|error| ManifestErrors(vec![format!("cannot decode StreamJob: {error}")]))
}

/// The API server's strict decoding refuses unknown fields before any schema check runs, so
/// they are all it reports.
fn only_unknown_fields_if_any(errors: Vec<String>) -> Vec<String> {
    let unknown: Vec<String> = errors.iter().filter(|e| e.starts_with("unknown field ")).cloned().collect();
    if unknown.is_empty() {
        errors
    } else {
        unknown
    }
}

/// The value as the API server's CEL sees it: a field set to null is absent (`has()` is false).
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields.iter().filter(|(_, field)| !field.is_null()).map(|(k, v)| (k.clone(), without_nulls(v))).collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "<root>"
    } else {
        path
    }
}

fn check_identity(value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    if value.get("apiVersion").and_then(Value::as_str) != Some("streamjob.io/v1alpha1") {
        errors.push(format!(
            "apiVersion: Unsupported value: {}: supported values: \"streamjob.io/v1alpha1\"",
            value.get("apiVersion").unwrap_or(&Value::Null)
        ));
    }
    if value.get("kind").and_then(Value::as_str) != Some("StreamJob") {
        errors.push(format!(
            "kind: Unsupported value: {}: supported values: \"StreamJob\"",
            value.get("kind").unwrap_or(&Value::Null)
        ));
    }
    let metadata = value.get("metadata");
    let named = ["name", "generateName"]
        .iter()
        .any(|key| metadata.and_then(|m| m.get(*key)).and_then(Value::as_str).is_some_and(|s| !s.is_empty()));
    if !named {
        errors.push("metadata.name: Required value: name or generateName is required".to_owned());
    }
    errors
}

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(value: &Value, wanted: &str) -> bool {
    match wanted {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        _ => true,
    }
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn bound(schema: &Value, key: &str) -> Option<f64> {
    schema.get(key).and_then(Value::as_f64)
}

/// Checks `value` against one structural schema node, recursively.
fn check_structure(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() && flag(schema, "nullable") {
        return;
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        match value {
            Value::String(text) => check_string(schema, text, path, errors),
            _ if value.is_i64() || value.is_u64() => {}
            _ => {
                let got = json_type_name(value);
                errors.push(format!(
                    "{path}: Invalid value: \"{got}\": {path} in body must be of type integer,string: \"{got}\""
                ))
            }
        }
        return;
    }
    let Some(wanted) = schema.get("type").and_then(Value::as_str) else {
        return;
    };
    if !has_type(value, wanted) {
        let got = json_type_name(value);
        errors.push(format!("{path}: Invalid value: \"{got}\": {path} in body must be of type {wanted}: \"{got}\""));
        return;
    }
    check_enum(schema, value, path, errors);
    match value {
        Value::Object(fields) => check_object(schema, fields, path, errors),
        Value::Array(items) => check_array(schema, items, path, errors),
        Value::String(text) => check_string(schema, text, path, errors),
        Value::Number(number) => check_number(schema, number, path, errors),
        _ => {}
    }
}

fn check_enum(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(allowed) = schema.get("enum").and_then(Value::as_array) else {
        return;
    };
    if !allowed.contains(value) {
        let supported: Vec<String> = allowed.iter().map(Value::to_string).collect();
        errors.push(format!("{path}: Unsupported value: {value}: supported values: {}", supported.join(", ")));
    }
}

fn check_object(schema: &Value, fields: &serde_json::Map<String, Value>, path: &str, errors: &mut Vec<String>) {
    let properties = schema.get("properties").and_then(Value::as_object);
    for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
        if let Some(name) = required.as_str() {
            if !fields.contains_key(name) {
                errors.push(format!("{}: Required value", child_path(path, name)));
            }
        }
    }
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64) {
        if fields.len() as u64 > max {
            errors.push(format!("{path}: Too many: {}: must have at most {max} items", fields.len()));
        }
    }
    let additional = schema.get("additionalProperties");
    let preserves_unknown = flag(schema, "x-kubernetes-preserve-unknown-fields");
    for (name, field) in fields {
        let field_path = child_path(path, name);
        match (properties.and_then(|p| p.get(name)), additional) {
            (Some(field_schema), _) => check_structure(field_schema, field, &field_path, errors),
            (None, Some(map_values)) if map_values.is_object() => {
                check_structure(map_values, field, &field_path, errors)
            }
            (None, Some(Value::Bool(true))) => {}
            (None, _) if preserves_unknown || is_root_metadata(path, name) => {}
            (None, _) => errors.push(format!("unknown field \"{field_path}\"")),
        }
    }
}

/// `metadata` is validated by the API server's own ObjectMeta rules, not the CRD schema;
/// `apiVersion` and `kind` are checked by [`check_identity`].
fn is_root_metadata(path: &str, name: &str) -> bool {
    path.is_empty() && matches!(name, "metadata" | "apiVersion" | "kind")
}

fn check_array(schema: &Value, items: &[Value], path: &str, errors: &mut Vec<String>) {
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
        if items.len() as u64 > max {
            errors.push(format!("{path}: Too many: {}: must have at most {max} items", items.len()));
        }
    }
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
        if (items.len() as u64) < min {
            errors.push(format!(
                "{path}: Invalid value: {}: {path} in body should have at least {min} items",
                items.len()
            ));
        }
    }
    if let Some(item_schema) = schema.get("items") {
        for (index, item) in items.iter().enumerate() {
            check_structure(item_schema, item, &format!("{path}[{index}]"), errors);
        }
    }
}

fn check_string(schema: &Value, text: &str, path: &str, errors: &mut Vec<String>) {
    let length = text.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
        if length > max {
            errors.push(format!("{path}: Too long: may not be more than {max} bytes"));
        }
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
        if length < min {
            errors
                .push(format!("{path}: Invalid value: \"{text}\": {path} in body should be at least {min} chars long"));
        }
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        match Regex::new(pattern) {
            Ok(regex) if regex.is_match(text) => {}
            Ok(_) => errors.push(format!("{path}: Invalid value: \"{text}\": {path} in body should match '{pattern}'")),
            Err(error) => errors.push(format!("{path}: the schema's pattern {pattern:?} does not compile: {error}")),
        }
    }
}

fn check_number(schema: &Value, number: &serde_json::Number, path: &str, errors: &mut Vec<String>) {
    let Some(value) = number.as_f64() else {
        return;
    };
    if let Some(min) = bound(schema, "minimum") {
        if value < min {
            errors.push(format!(
                "{path}: Invalid value: {number}: {path} in body should be greater than or equal to {min}"
            ));
        }
    }
    if let Some(max) = bound(schema, "maximum") {
        if value > max {
            errors
                .push(format!("{path}: Invalid value: {number}: {path} in body should be less than or equal to {max}"));
        }
    }
}

/// Problems the schema cannot express: a `matches` pattern that is not a valid regular
/// expression, durations too long to represent. Empty when the job can run.
pub fn runtime_problems(job: &StreamJob) -> Vec<String> {
    let mut problems = Vec::new();
    for (index, stage) in job.spec.pipeline.iter().enumerate() {
        if let Some(filter) = &stage.filter {
            if filter.op == crate::FilterOperator::Matches {
                let pattern = filter.value.as_ref().and_then(Value::as_str).unwrap_or_default();
                if let Err(error) = Regex::new(pattern) {
                    problems
                        .push(format!("spec.pipeline[{index}].filter.value: not a valid regular expression: {error}"));
                }
            }
        }
        if let Some(window) = &stage.window {
            let durations = [
                ("size", Some(&window.size)),
                ("slide", window.slide.as_ref()),
                ("allowedLateness", Some(&window.allowed_lateness)),
            ];
            for (field, text) in durations {
                if let Some(Err(error)) = text.map(|t| crate::duration::parse_duration(t)) {
                    problems.push(format!("spec.pipeline[{index}].window.{field}: {error}"));
                }
            }
        }
    }
    problems
}
