//! The `keyBy` stage: a field's value becomes the record's key.

use serde_json::Value;

use super::{Reason, StageError};
use crate::record::{key_text, FieldPath, Record};

#[derive(Debug)]
pub struct KeyBy {
    pub(super) field: FieldPath,
    /// No later stage reads the field: its value moves into the key instead of being copied.
    pub(super) take_value: bool,
    pub(super) stage: String,
}

impl KeyBy {
    pub(super) fn compile(field: &str, stage: String) -> Self {
        Self { field: FieldPath::parse(field), take_value: false, stage }
    }

    pub(super) fn apply(&self, record: &mut Record) -> Result<(), StageError> {
        let missing = || {
            StageError::new(
                &self.stage,
                Reason::MissingField,
                format!("keyBy field {} is missing", self.field.as_str()),
            )
        };
        let key = if self.take_value {
            match self.field.remove(&mut record.fields) {
                Some(Value::String(text)) => text,
                Some(Value::Null) | None => return Err(missing()),
                Some(other) => key_text(&other),
            }
        } else {
            key_text(self.field.get(&record.fields).filter(|v| !v.is_null()).ok_or_else(missing)?)
        };
        record.key = Some(key.into_bytes());
        Ok(())
    }
}
