//! Reading source values and writing sink values, per the formats the job declares.

use base64::Engine as _;
use serde_json::{Map, Value};
use streamjob_crds::{SinkFormat, SourceFormat};

use super::{Reason, StageError};
use crate::liveness::{self, Fields};
use crate::record::{key_text, Record};

fn invalid_json(error: serde_json::Error) -> StageError {
    StageError::new("decode", Reason::Decode, format!("invalid JSON: {error}"))
}

fn invalid_text(error: std::str::Utf8Error) -> StageError {
    StageError::new("decode", Reason::Decode, format!("invalid UTF-8 text: {error}"))
}

/// Checks that a source record's value decodes per `spec.source.format`, without building it.
pub fn validate(format: SourceFormat, payload: Option<&[u8]>) -> Result<(), StageError> {
    let payload = payload.unwrap_or_default();
    match format {
        SourceFormat::Json => {
            serde_json::from_slice::<serde::de::IgnoredAny>(payload).map(|_| ()).map_err(invalid_json)
        }
        SourceFormat::Text => std::str::from_utf8(payload).map(|_| ()).map_err(invalid_text),
        SourceFormat::Bytes => Ok(()),
    }
}

/// Decodes a source record's value per `spec.source.format`; of a JSON object, only `fields`.
pub fn decode(format: SourceFormat, payload: Option<&[u8]>, fields: &Fields) -> Result<Value, StageError> {
    let payload = payload.unwrap_or_default();
    match format {
        SourceFormat::Json => liveness::decode_json(payload, fields).map_err(invalid_json),
        SourceFormat::Text => match std::str::from_utf8(payload) {
            Ok(text) => Ok(single_value(Value::String(text.to_owned()))),
            Err(e) => Err(invalid_text(e)),
        },
        SourceFormat::Bytes => {
            Ok(single_value(Value::String(base64::engine::general_purpose::STANDARD.encode(payload))))
        }
    }
}

fn single_value(value: Value) -> Value {
    let mut fields = Map::new();
    fields.insert("value".into(), value);
    Value::Object(fields)
}

/// Encodes a result per `spec.sink.format`. Text is the `value` field when there is one, else
/// the fields' values separated by spaces.
pub fn encode(format: SinkFormat, record: &Record) -> Vec<u8> {
    match format {
        SinkFormat::Json => serde_json::to_vec(&record.fields).unwrap_or_default(),
        SinkFormat::Text => match &record.fields {
            Value::Object(map) => match map.get("value") {
                Some(value) => key_text(value).into_bytes(),
                None => map.values().map(key_text).collect::<Vec<_>>().join(" ").into_bytes(),
            },
            other => key_text(other).into_bytes(),
        },
    }
}
