//! The `filter` stage: a record passes when its field compares to the value as the stage says.

use regex::Regex;
use serde_json::Value;
use streamjob_crds::{FilterOperator, FilterStage};

use super::StageError;
use crate::record::{key_text, FieldPath};

#[derive(Debug)]
pub struct Filter {
    pub(super) field: FieldPath,
    op: FilterOperator,
    value: Value,
    regex: Option<Regex>,
    stage: String,
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
        Ok(Self { field: FieldPath::parse(&spec.field), op: spec.op, value, regex, stage })
    }

    pub(super) fn matches(&self, fields: &Value) -> Result<bool, StageError> {
        let actual = self.field.get(fields).filter(|v| !v.is_null());
        let Some(actual) = actual else {
            return Ok(self.op == FilterOperator::Ne);
        };
        Ok(match self.op {
            FilterOperator::Exists => true,
            FilterOperator::Eq => json_equal(actual, &self.value),
            FilterOperator::Ne => !json_equal(actual, &self.value),
            FilterOperator::Lt => compare(actual, &self.value).is_lt(),
            FilterOperator::Le => compare(actual, &self.value).is_le(),
            FilterOperator::Gt => compare(actual, &self.value).is_gt(),
            FilterOperator::Ge => compare(actual, &self.value).is_ge(),
            FilterOperator::Contains => match actual {
                Value::String(text) => text.contains(&key_text(&self.value)),
                Value::Array(items) => items.iter().any(|item| json_equal(item, &self.value)),
                other => {
                    return Err(StageError::new(
                        &self.stage,
                        format!("contains needs a string or list in {}, found {other}", self.field.as_str()),
                    ))
                }
            },
            FilterOperator::Matches => match (actual, &self.regex) {
                (Value::String(text), Some(regex)) => regex.is_match(text),
                (other, _) => regex_input(other, &self.regex),
            },
        })
    }
}

fn regex_input(value: &Value, regex: &Option<Regex>) -> bool {
    regex.as_ref().is_some_and(|r| r.is_match(&value.to_string()))
}

fn json_equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Numbers compare as numbers; otherwise both sides compare as text.
fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        _ => key_text(a).cmp(&key_text(b)),
    }
}
