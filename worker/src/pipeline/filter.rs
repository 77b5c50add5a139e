//! The `filter` stage: a record passes when its field compares to the value as the stage says.
//!
//! `lt`, `le`, `gt` and `ge` with a number (or a string holding one, `value: "50"`) compare
//! numbers: the field must be a number or a string holding one (see [`super::number`]), so
//! `"100" gt 50` holds and `"7" gt 50` does not. With any other string they compare text, and
//! the field must be text. A record whose field is missing, of another type, or not finite
//! cannot be compared: it is an error of the stage (dead-lettered or counted, never dropped
//! as "no match"). `eq` and `ne` compare numbers by value (`"100" eq 100`) and anything else
//! as JSON; a missing field equals nothing. `contains` and `matches` find nothing in a missing
//! field; `exists` is the test for one.

use regex::Regex;
use serde_json::Value;
use streamjob_crds::{FilterOperator, FilterStage};

use super::number::{number_in_text, number_of, NotANumber};
use super::{Reason, StageError};
use crate::record::{key_text, FieldPath};

#[derive(Debug)]
pub struct Filter {
    pub(super) field: FieldPath,
    op: FilterOperator,
    value: Value,
    /// What `lt`, `le`, `gt` and `ge` compare with.
    bound: Option<Bound>,
    regex: Option<Regex>,
    stage: String,
}

#[derive(Debug)]
enum Bound {
    Number(f64),
    Text(String),
}

impl Filter {
    pub(super) fn compile(spec: &FilterStage, stage: String) -> Result<Self, String> {
        let value = spec.comparison_value().unwrap_or(Value::Null);
        let regex = match (spec.op, &value) {
            (FilterOperator::Matches, Value::String(pattern)) => {
                Some(Regex::new(pattern).map_err(|e| format!("filter.value is not a valid regular expression: {e}"))?)
            }
            (FilterOperator::Matches, _) => return Err("filter.value must be a regular expression string".into()),
            _ => None,
        };
        let bound = match (spec.op, &value) {
            (FilterOperator::Lt | FilterOperator::Le | FilterOperator::Gt | FilterOperator::Ge, value) => {
                Some(match value {
                    Value::Number(n) => Bound::Number(n.as_f64().ok_or("filter.value is not a finite number")?),
                    Value::String(text) => match number_in_text(text) {
                        Ok(number) => Bound::Number(number),
                        Err(_) => Bound::Text(text.clone()),
                    },
                    _ => return Err(format!("filter.op {} needs a number or a string value", op_name(spec.op))),
                })
            }
            _ => None,
        };
        Ok(Self { field: FieldPath::parse(&spec.field), op: spec.op, value, bound, regex, stage })
    }

    pub(super) fn matches(&self, fields: &Value) -> Result<bool, StageError> {
        let actual = self.field.get(fields).filter(|v| !v.is_null());
        if let Some(bound) = &self.bound {
            let ordering = self.order(actual, bound)?;
            return Ok(match self.op {
                FilterOperator::Lt => ordering.is_lt(),
                FilterOperator::Le => ordering.is_le(),
                FilterOperator::Gt => ordering.is_gt(),
                _ => ordering.is_ge(),
            });
        }
        let Some(actual) = actual else {
            return Ok(self.op == FilterOperator::Ne);
        };
        Ok(match self.op {
            FilterOperator::Exists => true,
            FilterOperator::Eq => equal(actual, &self.value),
            FilterOperator::Ne => !equal(actual, &self.value),
            FilterOperator::Contains => match actual {
                Value::String(text) => text.contains(&key_text(&self.value)),
                Value::Array(items) => items.iter().any(|item| equal(item, &self.value)),
                other => {
                    return Err(self.error(
                        Reason::TypeMismatch,
                        format!("contains needs a string or list in {}, found {other}", self.field.as_str()),
                    ))
                }
            },
            FilterOperator::Matches => match (actual, &self.regex) {
                (Value::String(text), Some(regex)) => regex.is_match(text),
                (other, regex) => regex.as_ref().is_some_and(|r| r.is_match(&other.to_string())),
            },
            // Handled above: every ordering operator has a bound.
            FilterOperator::Lt | FilterOperator::Le | FilterOperator::Gt | FilterOperator::Ge => false,
        })
    }

    /// How the field compares with the bound, or why it cannot.
    fn order(&self, actual: Option<&Value>, bound: &Bound) -> Result<std::cmp::Ordering, StageError> {
        let field = self.field.as_str();
        let condition = format!("{field} {} {}", op_name(self.op), key_text(&self.value));
        match bound {
            Bound::Number(bound) => match number_of(actual) {
                Ok(number) => Ok(number.total_cmp(bound)),
                Err(NotANumber::Missing) => {
                    Err(self.error(Reason::MissingField, format!("{field} is missing; {condition} needs a number")))
                }
                Err(NotANumber::NonFinite) => Err(self.error(
                    Reason::NonFinite,
                    format!("{field} is {}, not a finite number; {condition} cannot compare it", shown(actual)),
                )),
                Err(NotANumber::Type) => Err(self.error(
                    Reason::TypeMismatch,
                    format!("{field} is {}, not a number; {condition} cannot compare it", shown(actual)),
                )),
            },
            Bound::Text(bound) => match actual {
                Some(Value::String(text)) => Ok(text.as_str().cmp(bound.as_str())),
                None => Err(self.error(Reason::MissingField, format!("{field} is missing; {condition} needs text"))),
                Some(other) => Err(self
                    .error(Reason::TypeMismatch, format!("{field} is {other}, not text; {condition} compares text"))),
            },
        }
    }

    fn error(&self, reason: Reason, message: String) -> StageError {
        StageError::new(&self.stage, reason, message)
    }
}

fn shown(value: Option<&Value>) -> String {
    value.map_or_else(|| "missing".to_owned(), Value::to_string)
}

/// Numbers (and strings holding one, against a number) by value; anything else as JSON.
fn equal(actual: &Value, expected: &Value) -> bool {
    if actual.is_number() || expected.is_number() {
        if let (Ok(x), Ok(y)) = (number_of(Some(actual)), number_of(Some(expected))) {
            return x == y;
        }
    }
    actual == expected
}

fn op_name(op: FilterOperator) -> &'static str {
    match op {
        FilterOperator::Eq => "eq",
        FilterOperator::Ne => "ne",
        FilterOperator::Lt => "lt",
        FilterOperator::Le => "le",
        FilterOperator::Gt => "gt",
        FilterOperator::Ge => "ge",
        FilterOperator::Exists => "exists",
        FilterOperator::Contains => "contains",
        FilterOperator::Matches => "matches",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn filter(yaml: &str) -> Filter {
        let spec: FilterStage = serde_yaml::from_str(yaml).expect("filter");
        Filter::compile(&spec, "pipeline[0] (filter)".into()).expect("compiles")
    }

    /// The issue's values under `amount gt 50`: each passes, fails, or is an error with a reason.
    #[test]
    fn amount_gt_50_compares_numbers_and_rejects_what_is_no_number() {
        let gt_50 = filter("{field: amount, op: gt, value: 50}");
        let cases: &[(Value, Result<bool, Reason>)] = &[
            (json!({"amount": 100}), Ok(true)),
            (json!({"amount": 7}), Ok(false)),
            (json!({"amount": "100"}), Ok(true)),
            (json!({"amount": "1e3"}), Ok(true)),
            (json!({"amount": "7"}), Ok(false)),
            (json!({"amount": "9"}), Ok(false)),
            (json!({"amount": "50"}), Ok(false)),
            (json!({"amount": 50.5}), Ok(true)),
            (json!({"amount": "abc"}), Err(Reason::TypeMismatch)),
            (json!({"amount": true}), Err(Reason::TypeMismatch)),
            (json!({"amount": [100]}), Err(Reason::TypeMismatch)),
            (json!({"amount": "NaN"}), Err(Reason::NonFinite)),
            (json!({"amount": "Infinity"}), Err(Reason::NonFinite)),
            (json!({"amount": null}), Err(Reason::MissingField)),
            (json!({"other": 1}), Err(Reason::MissingField)),
        ];
        for (record, want) in cases {
            let got = gt_50.matches(record).map_err(|e| e.reason);
            assert_eq!(got, *want, "{record}");
        }
        let error = gt_50.matches(&json!({"amount": "abc"})).expect_err("abc");
        assert_eq!(error.message, r#"amount is "abc", not a number; amount gt 50 cannot compare it"#);
        assert_eq!(error.stage, "pipeline[0] (filter)");
    }

    #[test]
    fn a_quoted_number_bound_compares_numbers_and_text_bounds_compare_text() {
        let quoted = filter("{field: n, op: le, value: '10'}");
        assert_eq!(quoted.matches(&json!({"n": 9})), Ok(true));
        assert_eq!(quoted.matches(&json!({"n": "10"})), Ok(true));
        assert_eq!(quoted.matches(&json!({"n": "100"})), Ok(false));
        assert_eq!(quoted.matches(&json!({"n": "9"})), Ok(true), "as text \"9\" > \"10\"");
        let fractional = filter("{field: n, op: lt, numberValue: 0.5}");
        assert_eq!(fractional.matches(&json!({"n": "0.25"})), Ok(true));
        let text = filter("{field: name, op: lt, value: m}");
        assert_eq!(text.matches(&json!({"name": "apple"})), Ok(true));
        assert_eq!(text.matches(&json!({"name": "zebra"})), Ok(false));
        assert_eq!(text.matches(&json!({"name": 5})).map_err(|e| e.reason), Err(Reason::TypeMismatch));
        assert_eq!(text.matches(&json!({})).map_err(|e| e.reason), Err(Reason::MissingField));
        let spec: FilterStage = serde_yaml::from_str("{field: n, op: gt, boolValue: true}").expect("filter");
        assert!(Filter::compile(&spec, "s".into()).is_err_and(|e| e.contains("needs a number or a string")));
    }

    #[test]
    fn equality_compares_numbers_by_value_and_a_missing_field_equals_nothing() {
        let eq_100 = filter("{field: n, op: eq, value: 100}");
        let ne_100 = filter("{field: n, op: ne, value: 100}");
        let cases: &[(Value, bool)] = &[
            (json!({"n": 100}), true),
            (json!({"n": 100.0}), true),
            (json!({"n": "100"}), true),
            (json!({"n": "1e2"}), true),
            (json!({"n": "abc"}), false),
            (json!({"n": true}), false),
            (json!({"n": null}), false),
            (json!({}), false),
        ];
        for (record, equal) in cases {
            assert_eq!(eq_100.matches(record), Ok(*equal), "eq {record}");
            assert_eq!(ne_100.matches(record), Ok(!*equal), "ne {record}");
        }
        let eq_text = filter("{field: s, op: eq, value: '7'}");
        assert_eq!(eq_text.matches(&json!({"s": 7})), Ok(true), "a number against its digits");
        assert_eq!(eq_text.matches(&json!({"s": "07"})), Ok(false), "two strings compare as text");
    }

    #[test]
    fn exists_contains_and_matches_on_missing_fields_and_other_types() {
        let exists = filter("{field: a.b, op: exists}");
        assert_eq!(exists.matches(&json!({"a": {"b": 0}})), Ok(true));
        assert_eq!(exists.matches(&json!({"a": {"b": null}})), Ok(false));
        let contains = filter("{field: tags, op: contains, value: x}");
        assert_eq!(contains.matches(&json!({"tags": ["x", "y"]})), Ok(true));
        assert_eq!(contains.matches(&json!({"tags": "a x b"})), Ok(true));
        assert_eq!(contains.matches(&json!({})), Ok(false));
        assert_eq!(contains.matches(&json!({"tags": 5})).map_err(|e| e.reason), Err(Reason::TypeMismatch));
        let matches = filter(r"{field: code, op: matches, value: '^\d+$'}");
        assert_eq!(matches.matches(&json!({"code": "123"})), Ok(true));
        assert_eq!(matches.matches(&json!({"code": 123})), Ok(true));
        assert_eq!(matches.matches(&json!({})), Ok(false));
    }
}
