//! The `window` stage: which windows a record falls in, the mergeable aggregate it feeds, and
//! the record a window's result becomes.

use serde_json::{Map, Value};
use streamjob_crds::duration::parse_duration;
use streamjob_crds::{AggregateFunction, WindowKind, WindowStage};

use super::number::{number_of, NotANumber};
use super::{Reason, StageError};
use crate::liveness::Fields;
use crate::record::{FieldPath, Record};

/// A window stage: which windows a record falls in, and the aggregate it feeds.
#[derive(Debug, Clone)]
pub struct WindowOperator {
    pub size_ms: i64,
    pub slide_ms: i64,
    pub allowed_lateness_ms: i64,
    pub time_field: Option<FieldPath>,
    pub function: AggregateFunction,
    pub field: Option<FieldPath>,
    pub stage: String,
}

impl WindowOperator {
    pub(super) fn compile(spec: &WindowStage, stage: String) -> Result<Self, String> {
        let millis = |text: &str, name: &str| -> Result<i64, String> {
            let duration = parse_duration(text).map_err(|e| format!("window.{name}: {e}"))?;
            i64::try_from(duration.as_millis()).map_err(|_| format!("window.{name} is too long"))
        };
        let size_ms = millis(&spec.size, "size")?;
        if size_ms <= 0 {
            return Err("window.size must be greater than 0".into());
        }
        let slide_ms = match (spec.kind, &spec.slide) {
            (WindowKind::Sliding, Some(slide)) => millis(slide, "slide")?,
            (WindowKind::Sliding, None) => return Err("window.slide is required for a sliding window".into()),
            (WindowKind::Tumbling, _) => size_ms,
        };
        if slide_ms <= 0 || slide_ms > size_ms {
            return Err("window.slide must be greater than 0 and at most window.size".into());
        }
        if spec.aggregate.function != AggregateFunction::Count && spec.aggregate.field.is_none() {
            return Err("aggregate.field is required for sum, min, max and avg".into());
        }
        Ok(Self {
            size_ms,
            slide_ms,
            allowed_lateness_ms: millis(&spec.allowed_lateness, "allowedLateness")?,
            time_field: spec.time_field.as_deref().map(FieldPath::parse),
            function: spec.aggregate.function,
            field: spec.aggregate.field.as_deref().map(FieldPath::parse),
            stage,
        })
    }

    /// The fields the window reads of a record.
    pub(super) fn reads(&self) -> Fields {
        [&self.time_field, &self.field].into_iter().flatten().fold(Fields::none(), Fields::with)
    }

    /// The record's event time: `timeField` (RFC 3339 or epoch milliseconds), else its timestamp.
    pub fn event_time(&self, record: &Record) -> Result<i64, StageError> {
        let Some(path) = &self.time_field else {
            return Ok(record.timestamp_ms);
        };
        let mismatch = |message: String| StageError::new(&self.stage, Reason::TypeMismatch, message);
        match path.get(&record.fields) {
            Some(Value::Number(n)) => {
                n.as_i64().ok_or_else(|| mismatch(format!("{} is not whole milliseconds", path.as_str())))
            }
            Some(Value::String(text)) => chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| t.timestamp_millis())
                .map_err(|e| mismatch(format!("{} is not an RFC 3339 time: {e}", path.as_str()))),
            None | Some(Value::Null) => Err(StageError::new(
                &self.stage,
                Reason::MissingField,
                format!("time field {} is missing", path.as_str()),
            )),
            Some(other) => Err(mismatch(format!("{} is not a time: {other}", path.as_str()))),
        }
    }

    /// The starts of the windows containing `event_time`, oldest first.
    pub fn window_starts(&self, event_time: i64) -> impl Iterator<Item = i64> + '_ {
        let last_start = event_time - event_time.rem_euclid(self.slide_ms);
        let first_start = last_start - (self.size_ms - self.slide_ms) / self.slide_ms * self.slide_ms;
        (0..)
            .map(move |i| first_start + i * self.slide_ms)
            .take_while(move |start| *start <= last_start)
            .filter(move |start| start + self.size_ms > event_time)
    }

    /// A keyed record's event time and its contribution to the aggregate.
    pub fn contribution(&self, record: &Record) -> Result<(i64, Accumulator), StageError> {
        Ok((self.event_time(record)?, self.accumulate(record)?))
    }

    /// [`Self::contribution`] of a record that is only a key and a timestamp, without building it
    /// when the window reads no field.
    pub fn key_only_contribution(&self, timestamp_ms: i64) -> Result<(i64, Accumulator), StageError> {
        if self.time_field.is_none() && self.field.is_none() {
            return Ok((timestamp_ms, Accumulator::one(0.0)));
        }
        self.contribution(&Record::key_only(None, timestamp_ms))
    }

    /// The aggregate's contribution of one record: only a finite number (or a string holding
    /// one) enters a partial aggregate, so a partial is always a finite, readable message.
    pub fn accumulate(&self, record: &Record) -> Result<Accumulator, StageError> {
        let Some(field) = &self.field else {
            return Ok(Accumulator::one(0.0));
        };
        let value = field.get(&record.fields);
        let (reason, what) = match number_of(value) {
            Ok(number) => return Ok(Accumulator::one(number)),
            Err(NotANumber::Missing) => (Reason::MissingField, "missing".to_owned()),
            Err(NotANumber::NonFinite) => (Reason::NonFinite, format!("{}, not a finite number", shown(value))),
            Err(NotANumber::Type) => (Reason::TypeMismatch, format!("{}, not a number", shown(value))),
        };
        Err(StageError::new(&self.stage, reason, format!("aggregate field {} is {what}", field.as_str())))
    }
}

fn shown(value: Option<&Value>) -> String {
    value.map_or_else(|| "missing".to_owned(), Value::to_string)
}

/// Count, sum, min and max of a group of records: enough for every aggregate function, and
/// mergeable, so partial aggregates from several workers combine exactly.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Accumulator {
    #[serde(rename = "c")]
    pub count: u64,
    #[serde(rename = "s")]
    pub sum: f64,
    #[serde(rename = "n")]
    pub min: f64,
    #[serde(rename = "x")]
    pub max: f64,
}

impl Accumulator {
    pub fn one(value: f64) -> Self {
        Self { count: 1, sum: value, min: value, max: value }
    }

    pub fn merge(&mut self, other: &Accumulator) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn result(&self, function: AggregateFunction) -> Value {
        let number = match function {
            AggregateFunction::Count => return Value::from(self.count),
            AggregateFunction::Sum => self.sum,
            AggregateFunction::Min => self.min,
            AggregateFunction::Max => self.max,
            AggregateFunction::Avg => self.sum / self.count.max(1) as f64,
        };
        if number.fract() == 0.0 && number.abs() < 9.0e15 {
            Value::from(number as i64)
        } else {
            Value::from(number)
        }
    }
}

pub fn function_name(function: AggregateFunction) -> &'static str {
    match function {
        AggregateFunction::Count => "count",
        AggregateFunction::Sum => "sum",
        AggregateFunction::Min => "min",
        AggregateFunction::Max => "max",
        AggregateFunction::Avg => "avg",
    }
}

/// A window's result for one key, as the record the later stages and the sink see.
pub fn window_result(window: &WindowOperator, key: &str, start_ms: i64, accumulator: &Accumulator) -> Record {
    let mut fields = Map::new();
    fields.insert("key".into(), Value::String(key.to_owned()));
    fields.insert("windowStart".into(), Value::String(rfc3339(start_ms)));
    fields.insert("windowEnd".into(), Value::String(rfc3339(start_ms + window.size_ms)));
    fields.insert(function_name(window.function).into(), accumulator.result(window.function));
    Record {
        fields: Value::Object(fields),
        key: Some(key.as_bytes().to_vec()),
        timestamp_ms: start_ms + window.size_ms - 1,
    }
}

pub fn rfc3339(epoch_ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(epoch_ms) {
        Some(time) => time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => epoch_ms.to_string(),
    }
}
