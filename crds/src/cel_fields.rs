//! Which fields a CEL rule can read on a real API server.
//!
//! The API server compiles each `x-kubernetes-validations` rule against a CEL type it derives
//! from the structural schema (k8s.io/apiserver `SchemaDeclType`). A property without a `type`
//! (only `x-kubernetes-preserve-unknown-fields`, or an empty schema) is left out of its object's
//! type, and a map or list whose values have no type has no type itself, so a rule reading such
//! a field is rejected when the CRD is installed ("undefined field"). kube's client-side CEL
//! evaluates rules dynamically and accepts them; [`undefined_field_references`] closes that gap.

use kube::core::cel::cel::common::ast::{operators, EntryExpr, Expr, IdedExpr};
use kube::core::cel::cel::Program;
use serde_json::Value;

/// The CEL type the API server gives a schema node, as far as field access needs it.
#[derive(Clone, Copy)]
enum CelType<'a> {
    /// An object: its typed properties are its fields.
    Object(&'a Value),
    /// A map; the schema of its values.
    Map(&'a Value),
    /// A list; the schema of its items.
    List(&'a Value),
    /// `x-kubernetes-int-or-string`: checked only when the rule runs.
    Dyn,
    Scalar,
}

/// The node's CEL type, or `None` when the API server gives it none.
fn cel_type(schema: &Value) -> Option<CelType<'_>> {
    if schema.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true) {
        return Some(CelType::Dyn);
    }
    match schema.get("type").and_then(Value::as_str)? {
        "object" => match schema.get("additionalProperties").filter(|a| a.is_object()) {
            Some(values) => cel_type(values).map(|_| CelType::Map(values)),
            None => Some(CelType::Object(schema)),
        },
        "array" => {
            let items = schema.get("items")?;
            cel_type(items).map(|_| CelType::List(items))
        }
        "string" | "integer" | "number" | "boolean" => Some(CelType::Scalar),
        _ => None,
    }
}

/// A property's name as CEL spells it (k8s.io/apiserver `cel.Escape`), `None` when it has none.
fn escaped(name: &str) -> Option<String> {
    const RESERVED: &str =
        "true false null in as break const continue else for function if import let loop package namespace return var void while";
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if RESERVED.split(' ').any(|word| word == name) {
        return Some(format!("__{name}__"));
    }
    let mut out = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '_' if chars.peek() == Some(&'_') => {
                chars.next();
                out.push_str("__underscores__");
            }
            '.' => out.push_str("__dot__"),
            '-' => out.push_str("__dash__"),
            '/' => out.push_str("__slash__"),
            c if c.is_ascii_alphanumeric() || c == '_' => out.push(c),
            _ => return None,
        }
    }
    Some(out)
}

/// The typed field `field` (CEL spelling) of an object schema.
fn object_field<'a>(object: &'a Value, field: &str) -> Option<CelType<'a>> {
    let properties = object.get("properties")?.as_object()?;
    let (_, schema) = properties.iter().find(|(name, _)| escaped(name).as_deref() == Some(field))?;
    cel_type(schema)
}

/// Walks one rule's expression, resolving `self.a.b`, `x[i]` and macro variables to schema
/// nodes, and records each field the API server's type for that node lacks.
struct RuleCheck<'a> {
    scopes: Vec<(String, Option<CelType<'a>>)>,
    undefined: Vec<String>,
}

impl<'a> RuleCheck<'a> {
    fn resolve(&mut self, expr: &IdedExpr) -> Option<CelType<'a>> {
        match &expr.expr {
            Expr::Ident(name) => self.scopes.iter().rev().find(|(bound, _)| bound == name).and_then(|(_, t)| *t),
            Expr::Select(select) => {
                let operand = self.resolve(&select.operand);
                self.select(operand, &select.field)
            }
            Expr::Call(call) => {
                let target = call.target.as_deref().map(|t| self.resolve(t));
                let args: Vec<Option<CelType<'a>>> = call.args.iter().map(|a| self.resolve(a)).collect();
                match (call.func_name.as_str(), target, args.first()) {
                    (operators::INDEX, None, Some(Some(CelType::List(items) | CelType::Map(items)))) => cel_type(items),
                    _ => None,
                }
            }
            Expr::Comprehension(comprehension) => {
                let element = match self.resolve(&comprehension.iter_range) {
                    Some(CelType::List(items)) => cel_type(items),
                    Some(CelType::Map(_)) => Some(CelType::Scalar),
                    _ => None,
                };
                self.resolve(&comprehension.accu_init);
                let scopes = self.scopes.len();
                self.scopes.push((comprehension.iter_var.clone(), element));
                self.scopes.push((comprehension.accu_var.clone(), None));
                for part in [&comprehension.loop_cond, &comprehension.loop_step, &comprehension.result] {
                    self.resolve(part);
                }
                self.scopes.truncate(scopes);
                None
            }
            Expr::List(list) => {
                for element in &list.elements {
                    self.resolve(element);
                }
                None
            }
            Expr::Map(map) => self.entries(map.entries.iter().map(|e| &e.expr)),
            Expr::Struct(object) => self.entries(object.entries.iter().map(|e| &e.expr)),
            Expr::Literal(_) | Expr::Unspecified => None,
        }
    }

    fn select(&mut self, operand: Option<CelType<'a>>, field: &str) -> Option<CelType<'a>> {
        match operand? {
            CelType::Object(object) => {
                let found = object_field(object, field);
                if found.is_none() {
                    self.undefined.push(field.to_owned());
                }
                found
            }
            CelType::Map(values) => cel_type(values),
            CelType::List(_) | CelType::Dyn | CelType::Scalar => None,
        }
    }

    fn entries<'e>(&mut self, entries: impl Iterator<Item = &'e EntryExpr>) -> Option<CelType<'a>> {
        for entry in entries {
            match entry {
                EntryExpr::StructField(field) => {
                    self.resolve(&field.value);
                }
                EntryExpr::MapEntry(entry) => {
                    self.resolve(&entry.key);
                    self.resolve(&entry.value);
                }
            }
        }
        None
    }
}

/// Every `x-kubernetes-validations` rule in `schema` that the API server would refuse to compile
/// because it reads a field its CEL type lacks, or sits on a node with no CEL type; one message
/// each, naming the node (`spec.pipeline[].filter`), the rule and the field. The fields the API
/// server adds at a resource's root (`apiVersion`, `kind`, `metadata.name`) are not modelled: no
/// rule sits there.
pub fn undefined_field_references(schema: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    visit(schema, "<root>", &mut problems);
    problems
}

fn visit(schema: &Value, path: &str, problems: &mut Vec<String>) {
    for rule in schema.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten() {
        let text = rule.get("rule").and_then(Value::as_str).unwrap_or_default();
        problems
            .extend(check_rule(schema, text).into_iter().map(|problem| format!("{path}: rule `{text}`: {problem}")));
    }
    for (name, child) in schema.get("properties").and_then(Value::as_object).into_iter().flatten() {
        let child_path = if path == "<root>" { name.clone() } else { format!("{path}.{name}") };
        visit(child, &child_path, problems);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = schema.get(key).filter(|c| c.is_object()) {
            visit(child, &format!("{path}[]"), problems);
        }
    }
}

fn check_rule(schema: &Value, rule: &str) -> Vec<String> {
    let Some(own_type) = cel_type(schema) else {
        return vec!["the node carrying it has no type, so the API server gives `self` none".to_owned()];
    };
    let program = match Program::compile(rule) {
        Ok(program) => program,
        Err(error) => return vec![format!("does not parse: {error}")],
    };
    let mut check = RuleCheck { scopes: vec![("self".to_owned(), Some(own_type))], undefined: Vec::new() };
    check.resolve(program.expression());
    check
        .undefined
        .into_iter()
        .map(|field| format!("undefined field '{field}' (missing, or its schema has no type)"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(properties: Value, rule: &str) -> Value {
        json!({"type": "object", "properties": properties, "x-kubernetes-validations": [{"rule": rule}]})
    }

    #[test]
    fn a_rule_reading_a_preserve_unknown_field_is_reported() {
        let filter = object(
            json!({"op": {"type": "string"}, "value": {"x-kubernetes-preserve-unknown-fields": true}}),
            "self.op == 'exists' || has(self.value)",
        );
        let problems = undefined_field_references(&json!({"type": "object", "properties": {"filter": filter}}));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("filter: rule `self.op == 'exists' || has(self.value)`"), "{problems:?}");
        assert!(problems[0].contains("undefined field 'value'"), "{problems:?}");
    }

    #[test]
    fn a_map_of_untyped_values_has_no_type() {
        let untyped_map =
            json!({"type": "object", "additionalProperties": {"x-kubernetes-preserve-unknown-fields": true}});
        let map = object(json!({"set": untyped_map}), "has(self.set)");
        assert_eq!(undefined_field_references(&map).len(), 1);
        let typed_map = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
        assert!(undefined_field_references(&object(json!({"set": typed_map}), "has(self.set)")).is_empty());
    }

    #[test]
    fn int_or_string_fields_and_escaped_names_are_typed() {
        let schema = object(
            json!({"value": {"x-kubernetes-int-or-string": true}, "function": {"type": "string"}}),
            "type(self.value) == string && self.value.size() > 0 && self.__function__ == 'count'",
        );
        assert!(undefined_field_references(&schema).is_empty());
    }

    #[test]
    fn macro_variables_and_indexes_resolve_to_the_items() {
        let stage = json!({"type": "object", "properties": {"window": {"type": "object"}}});
        let pipeline = json!({"type": "array", "items": stage});
        let good = object(
            json!({"pipeline": pipeline}),
            "self.pipeline.all(s, has(s.window)) && has(self.pipeline[0].window)",
        );
        assert!(undefined_field_references(&good).is_empty());
        let bad = object(
            json!({"pipeline": pipeline}),
            "self.pipeline.exists(s, has(s.keyBy)) || has(self.pipeline[1].split)",
        );
        let problems = undefined_field_references(&bad);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("'keyBy'") && problems[1].contains("'split'"), "{problems:?}");
    }

    #[test]
    fn a_rule_on_an_untyped_node_is_reported() {
        let schema = json!({"x-kubernetes-preserve-unknown-fields": true, "x-kubernetes-validations": [{"rule": "self != null"}]});
        assert_eq!(undefined_field_references(&schema).len(), 1);
    }
}
