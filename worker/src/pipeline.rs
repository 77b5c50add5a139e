//! The declared pipeline, compiled once into typed operators.
//!
//! A pipeline is the stateless stages before its window, the window (if any), and the stateless
//! stages after it, which see the window's results. Nothing here touches Kafka.

use base64::Engine as _;
use regex::Regex;
use serde_json::{Map, Value};
use streamjob_crds::duration::parse_duration;
use streamjob_crds::{
    AggregateFunction, FilterOperator, FilterStage, MapStage, PipelineStage, SinkFormat, SourceFormat, SplitStage,
    StageOperation, WindowKind, WindowStage,
};

use crate::liveness::{self, Fields, Liveness};
use crate::record::{key_text, FieldPath, Record};

/// A record that could not be decoded or processed: it goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{stage}: {message}")]
pub struct StageError {
    /// Which stage failed, for example `pipeline[1] (map)` or `decode`.
    pub stage: String,
    pub message: String,
}

impl StageError {
    fn new(stage: &str, message: impl Into<String>) -> Self {
        Self { stage: stage.to_owned(), message: message.into() }
    }
}

/// A pipeline definition the worker cannot run.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("spec.pipeline[{index}]: {message}")]
    Stage { index: usize, message: String },
}

#[derive(Debug)]
pub struct CompiledPipeline {
    pub before_window: Vec<Operator>,
    /// Shared, so processing a record takes it without copying it.
    pub window: Option<std::sync::Arc<WindowOperator>>,
    pub after_window: Vec<Operator>,
    /// The input's fields some stage reads: the rest need not be decoded.
    pub input_fields: Fields,
}

impl CompiledPipeline {
    pub fn compile(stages: &[PipelineStage]) -> Result<Self, CompileError> {
        let mut pipeline =
            Self { before_window: Vec::new(), window: None, after_window: Vec::new(), input_fields: Fields::All };
        for (index, stage) in stages.iter().enumerate() {
            let error = |message: String| CompileError::Stage { index, message };
            let operation = stage
                .operation()
                .ok_or_else(|| error("set exactly one of filter, map, split, keyBy, window".into()))?;
            let name = format!("pipeline[{index}] ({})", operation_name(&operation));
            let operator = match operation {
                StageOperation::Filter(filter) => Operator::Filter(Filter::compile(filter, name).map_err(error)?),
                StageOperation::Map(map) => Operator::Map(MapOperator::compile(map, name)),
                StageOperation::Split(split) => Operator::Split(Split::compile(split, name)),
                StageOperation::KeyBy(key_by) => {
                    Operator::KeyBy { field: FieldPath::parse(&key_by.field), take_value: false, stage: name }
                }
                StageOperation::Window(window) => {
                    if pipeline.window.is_some() {
                        return Err(error("a pipeline may contain at most one window stage".into()));
                    }
                    if !pipeline.before_window.iter().any(|op| matches!(op, Operator::KeyBy { .. })) {
                        return Err(error("a window stage needs a keyBy stage before it".into()));
                    }
                    pipeline.window = Some(std::sync::Arc::new(WindowOperator::compile(window, name).map_err(error)?));
                    continue;
                }
            };
            match pipeline.window {
                Some(_) => pipeline.after_window.push(operator),
                None => pipeline.before_window.push(operator),
            }
        }
        let window_reads = match &pipeline.window {
            Some(window) => Liveness { fields: window.reads(), key: true },
            None => Liveness::sink(),
        };
        pipeline.input_fields = mark_liveness(&mut pipeline.before_window, window_reads).fields;
        mark_liveness(&mut pipeline.after_window, Liveness::sink());
        fuse_splits_into_keys(&mut pipeline.before_window);
        fuse_splits_into_keys(&mut pipeline.after_window);
        Ok(pipeline)
    }
}

/// A split whose pieces only feed a `keyBy` on the same field, which nothing after reads,
/// makes each piece the key of an otherwise empty record itself: the same records, without
/// building a field only to move it out again.
fn fuse_splits_into_keys(operators: &mut Vec<Operator>) {
    let mut index = 0;
    while index + 1 < operators.len() {
        let fusable = match (&operators[index], &operators[index + 1]) {
            (Operator::Split(split), Operator::KeyBy { field, take_value: true, .. }) => {
                !split.copy_rest && split.field == *field
            }
            _ => false,
        };
        if fusable {
            operators.remove(index + 1);
            if let Operator::Split(split) = &mut operators[index] {
                split.pieces_become_keys = true;
            }
        }
        index += 1;
    }
}

/// Tells each operator, from the last back, what the ones after it read; returns what the
/// first one needs of its input.
fn mark_liveness(operators: &mut [Operator], at_end: Liveness) -> Liveness {
    operators.iter_mut().rev().fold(at_end, |after, operator| {
        match operator {
            Operator::KeyBy { field, take_value, .. } => *take_value = !after.fields.reads(field),
            Operator::Split(split) => {
                split.copy_rest = !after.fields.at_most(&split.field);
                split.copy_key = after.key;
            }
            Operator::Filter(_) | Operator::Map(_) => {}
        }
        operator.needs(after)
    })
}

/// The fields `operators` read, when nothing after them reads the record.
pub fn fields_read_by(operators: &[Operator]) -> Fields {
    let nothing = Liveness { fields: Fields::none(), key: false };
    operators.iter().rev().fold(nothing, |after, operator| operator.needs(after)).fields
}

fn operation_name(operation: &StageOperation<'_>) -> &'static str {
    match operation {
        StageOperation::Filter(_) => "filter",
        StageOperation::Map(_) => "map",
        StageOperation::Split(_) => "split",
        StageOperation::KeyBy(_) => "keyBy",
        StageOperation::Window(_) => "window",
    }
}

#[derive(Debug)]
pub enum Operator {
    Filter(Filter),
    Map(MapOperator),
    Split(Split),
    KeyBy {
        field: FieldPath,
        /// No later stage reads the field: its value moves into the key instead of being copied.
        take_value: bool,
        stage: String,
    },
}

impl Operator {
    /// What this operator and the ones after it (which read `after`) need of its input.
    fn needs(&self, after: Liveness) -> Liveness {
        match self {
            Self::Filter(filter) => Liveness { fields: after.fields.with(&filter.field), ..after },
            Self::Map(map) => Liveness { fields: map.needs(after.fields), ..after },
            Self::Split(split) => Liveness { fields: after.fields.with(&split.field), ..after },
            Self::KeyBy { field, .. } => Liveness { fields: after.fields.with(field), key: false },
        }
    }

    /// Applies this operator to `record` and passes what it makes through `rest` into `emit`.
    fn apply(&self, mut record: Record, rest: &[Operator], emit: &mut impl Emit) -> Result<(), StageError> {
        match self {
            Self::Filter(filter) => {
                if filter.matches(&record.fields)? {
                    run_stateless_into(rest, record, emit)?;
                }
                Ok(())
            }
            Self::Map(map) => {
                map.apply(&mut record.fields);
                run_stateless_into(rest, record, emit)
            }
            Self::Split(split) => split.apply(record, rest, emit),
            Self::KeyBy { field, take_value, stage } => {
                let missing = || StageError::new(stage, format!("keyBy field {} is missing", field.as_str()));
                let key = if *take_value {
                    match field.remove(&mut record.fields) {
                        Some(Value::String(text)) => text,
                        Some(Value::Null) | None => return Err(missing()),
                        Some(other) => key_text(&other),
                    }
                } else {
                    key_text(field.get(&record.fields).filter(|v| !v.is_null()).ok_or_else(missing)?)
                };
                record.key = Some(key.into_bytes());
                run_stateless_into(rest, record, emit)
            }
        }
    }
}

/// Where the records that come out of a chain of stateless operators go.
pub trait Emit {
    fn record(&mut self, record: Record) -> Result<(), StageError>;

    /// A record that is nothing but its key and timestamp (a split piece that became the key).
    /// The key is lent, so a receiver that already holds it need not copy it.
    fn key_only(&mut self, key: &str, timestamp_ms: i64) -> Result<(), StageError> {
        self.record(Record::key_only(Some(key), timestamp_ms))
    }
}

impl Emit for Vec<Record> {
    fn record(&mut self, record: Record) -> Result<(), StageError> {
        self.push(record);
        Ok(())
    }
}

/// Runs `operators` over one record; a record may become none, one or many. On an error, some
/// records may already have been emitted: a receiver that must not keep them stages them.
pub fn run_stateless_into(operators: &[Operator], record: Record, emit: &mut impl Emit) -> Result<(), StageError> {
    match operators.split_first() {
        Some((operator, rest)) => operator.apply(record, rest, emit),
        None => emit.record(record),
    }
}

/// [`run_stateless_into`], collected: all the records, or the error.
pub fn run_stateless(operators: &[Operator], record: Record) -> Result<Vec<Record>, StageError> {
    let mut records = Vec::new();
    run_stateless_into(operators, record, &mut records)?;
    Ok(records)
}

#[derive(Debug)]
pub struct Filter {
    field: FieldPath,
    op: FilterOperator,
    value: Value,
    regex: Option<Regex>,
    stage: String,
}

impl Filter {
    fn compile(spec: &FilterStage, stage: String) -> Result<Self, String> {
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

    fn matches(&self, fields: &Value) -> Result<bool, StageError> {
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

#[derive(Debug)]
pub struct MapOperator {
    select: Option<Vec<FieldPath>>,
    /// No selected path lies in another: each value can move out instead of being copied.
    select_moves: bool,
    rename: Vec<(FieldPath, FieldPath)>,
    set: Vec<(FieldPath, Value)>,
}

impl MapOperator {
    fn compile(spec: &MapStage, _stage: String) -> Self {
        let select: Option<Vec<FieldPath>> =
            spec.select.as_ref().map(|paths| paths.iter().map(|p| FieldPath::parse(p)).collect());
        let select_moves = select
            .as_ref()
            .is_some_and(|paths| paths.iter().enumerate().all(|(i, a)| paths[i + 1..].iter().all(|b| !a.overlaps(b))));
        Self {
            select,
            select_moves,
            rename: spec
                .rename
                .iter()
                .flatten()
                .map(|(from, to)| (FieldPath::parse(from), FieldPath::parse(to)))
                .collect(),
            set: spec.set.iter().flatten().map(|(path, value)| (FieldPath::parse(path), value.clone())).collect(),
        }
    }

    /// What the map and the stages after it (which read `after`) need of its input.
    fn needs(&self, after: Fields) -> Fields {
        match &self.select {
            Some(select) => select.iter().fold(Fields::none(), Fields::with),
            None => self.rename.iter().fold(after, |fields, (from, _)| fields.with(from)),
        }
    }

    fn apply(&self, fields: &mut Value) {
        if let Some(select) = &self.select {
            let mut selected = Value::Object(Map::new());
            for path in select {
                let value = if self.select_moves { path.remove(fields) } else { path.get(fields).cloned() };
                if let Some(value) = value {
                    path.set(&mut selected, value);
                }
            }
            *fields = selected;
        }
        for (from, to) in &self.rename {
            if let Some(value) = from.remove(fields) {
                to.set(fields, value);
            }
        }
        for (path, value) in &self.set {
            path.set(fields, value.clone());
        }
    }
}

#[derive(Debug)]
pub struct Split {
    field: FieldPath,
    separator: Option<String>,
    lowercase: bool,
    /// Some later stage reads fields other than the split one: each piece gets a copy of them.
    copy_rest: bool,
    /// Some later stage reads the key.
    copy_key: bool,
    /// Each piece is the key of an empty record (see [`fuse_splits_into_keys`]).
    pieces_become_keys: bool,
    stage: String,
}

impl Split {
    fn compile(spec: &SplitStage, stage: String) -> Self {
        Self {
            field: FieldPath::parse(&spec.field),
            separator: spec.separator.clone(),
            lowercase: spec.lowercase,
            copy_rest: true,
            copy_key: true,
            pieces_become_keys: false,
            stage,
        }
    }

    /// The non-empty pieces of `text`: split at the separator, else at whitespace.
    fn pieces<'a>(&'a self, text: &'a str) -> PiecesAt<'a> {
        match &self.separator {
            Some(separator) => PiecesAt::Separator(text.split(separator.as_str())),
            // The same pieces for ASCII text, found without decoding characters.
            None if text.is_ascii() => PiecesAt::AsciiWhitespace(text.split_ascii_whitespace()),
            None => PiecesAt::Whitespace(text.split_whitespace()),
        }
    }

    fn apply(&self, mut record: Record, rest: &[Operator], emit: &mut impl Emit) -> Result<(), StageError> {
        let text = match self.field.remove(&mut record.fields) {
            Some(Value::String(text)) => text,
            Some(other) => {
                return Err(StageError::new(
                    &self.stage,
                    format!("split needs text in {}, found {other}", self.field.as_str()),
                ))
            }
            None => {
                return Err(StageError::new(&self.stage, format!("split field {} is missing", self.field.as_str())))
            }
        };
        if !self.copy_rest {
            record.fields = Value::Object(Map::new());
        }
        if !self.copy_key {
            record.key = None;
        }
        let mut lowered = String::new();
        // Each piece is the record with the field replaced; the record without the field is
        // what gets copied (for text sources, an empty object).
        let mut pieces = self.pieces(&text).peekable();
        while let Some(piece) = pieces.next() {
            let piece = if self.lowercase { lowercase_into(piece, &mut lowered) } else { piece };
            if self.pieces_become_keys {
                match rest {
                    [] => emit.key_only(piece, record.timestamp_ms)?,
                    _ => run_stateless_into(rest, Record::key_only(Some(piece), record.timestamp_ms), emit)?,
                }
                continue;
            }
            let mut copy = if pieces.peek().is_some() { record.clone() } else { std::mem::take(&mut record) };
            self.field.set(&mut copy.fields, Value::String(piece.to_owned()));
            run_stateless_into(rest, copy, emit)?;
        }
        Ok(())
    }
}

/// The pieces of a text, split at what a split stage names.
enum PiecesAt<'a> {
    Separator(std::str::Split<'a, &'a str>),
    AsciiWhitespace(std::str::SplitAsciiWhitespace<'a>),
    Whitespace(std::str::SplitWhitespace<'a>),
}

impl<'a> Iterator for PiecesAt<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        match self {
            Self::Separator(pieces) => pieces.find(|piece| !piece.is_empty()),
            Self::AsciiWhitespace(pieces) => pieces.next(),
            Self::Whitespace(pieces) => pieces.next(),
        }
    }
}

/// `text` in lower case: itself when it has no upper case, else written into `buffer`
/// (reused from piece to piece).
fn lowercase_into<'a>(text: &'a str, buffer: &'a mut String) -> &'a str {
    if text.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        return text;
    }
    buffer.clear();
    if text.is_ascii() {
        buffer.push_str(text);
        buffer.make_ascii_lowercase();
    } else {
        buffer.push_str(&text.to_lowercase());
    }
    buffer
}

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
    fn compile(spec: &WindowStage, stage: String) -> Result<Self, String> {
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
    fn reads(&self) -> Fields {
        [&self.time_field, &self.field].into_iter().flatten().fold(Fields::none(), Fields::with)
    }

    /// The record's event time: `timeField` (RFC 3339 or epoch milliseconds), else its timestamp.
    pub fn event_time(&self, record: &Record) -> Result<i64, StageError> {
        let Some(path) = &self.time_field else {
            return Ok(record.timestamp_ms);
        };
        match path.get(&record.fields) {
            Some(Value::Number(n)) => n
                .as_i64()
                .ok_or_else(|| StageError::new(&self.stage, format!("{} is not whole milliseconds", path.as_str()))),
            Some(Value::String(text)) => chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| t.timestamp_millis())
                .map_err(|e| StageError::new(&self.stage, format!("{} is not an RFC 3339 time: {e}", path.as_str()))),
            Some(other) => Err(StageError::new(&self.stage, format!("{} is not a time: {other}", path.as_str()))),
            None => Err(StageError::new(&self.stage, format!("time field {} is missing", path.as_str()))),
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

    /// The aggregate's contribution of one record.
    pub fn accumulate(&self, record: &Record) -> Result<Accumulator, StageError> {
        let Some(field) = &self.field else {
            return Ok(Accumulator::one(0.0));
        };
        match field.get(&record.fields).and_then(number_of) {
            Some(number) => Ok(Accumulator::one(number)),
            None => Err(StageError::new(&self.stage, format!("aggregate field {} is not a number", field.as_str()))),
        }
    }
}

fn number_of(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(text) => text.parse().ok(),
        _ => None,
    }
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

fn invalid_json(error: serde_json::Error) -> StageError {
    StageError::new("decode", format!("invalid JSON: {error}"))
}

fn invalid_text(error: std::str::Utf8Error) -> StageError {
    StageError::new("decode", format!("invalid UTF-8 text: {error}"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(pipeline: &str) -> CompiledPipeline {
        let stages: Vec<PipelineStage> = serde_yaml::from_str(pipeline).expect("pipeline");
        CompiledPipeline::compile(&stages).expect("compiles")
    }

    fn only(fields: &[&str]) -> Fields {
        Fields::Only(fields.iter().map(|f| f.to_string()).collect())
    }

    fn run(pipeline: &CompiledPipeline, fields: Value) -> Vec<Record> {
        let record = Record { fields, key: Some(b"input-key".to_vec()), timestamp_ms: 0 };
        run_stateless(&pipeline.before_window, record).expect("runs")
    }

    fn key_of(record: &Record) -> Option<&str> {
        record.key.as_deref().map(|key| std::str::from_utf8(key).expect("text key"))
    }

    #[test]
    fn only_the_input_fields_some_stage_reads_are_decoded() {
        let filter_then_select = compile(
            "[{filter: {field: type, op: eq, value: click}}, {map: {select: [user, amount.value], set: {x: 1}}}]",
        );
        assert_eq!(filter_then_select.input_fields, only(&["amount", "type", "user"]));
        let window = compile(
            "[{keyBy: {field: user.id}}, {window: {size: 10s, timeField: ts, aggregate: {function: sum, field: n}}}]",
        );
        assert_eq!(window.input_fields, only(&["n", "ts", "user"]));
        assert_eq!(compile("[{filter: {field: type, op: exists}}]").input_fields, Fields::All, "the sink writes all");
        assert_eq!(compile("[{map: {rename: {a: b}}}]").input_fields, Fields::All);
    }

    #[test]
    fn key_by_moves_a_value_into_the_key_only_when_no_later_stage_reads_it() {
        let read_later = compile("[{keyBy: {field: user}}, {filter: {field: user, op: eq, value: a}}]");
        let records = run(&read_later, json!({"user": "a", "n": 1}));
        assert_eq!((key_of(&records[0]), &records[0].fields), (Some("a"), &json!({"user": "a", "n": 1})));

        let counted = compile("[{keyBy: {field: user}}, {window: {size: 10s, aggregate: {function: count}}}]");
        let records = run(&counted, json!({"user": 7, "n": 1}));
        assert_eq!((key_of(&records[0]), &records[0].fields), (Some("7"), &json!({"n": 1})));
        let missing =
            run_stateless(&counted.before_window, Record { fields: json!({"user": null}), ..Record::default() });
        assert!(missing.is_err_and(|e| e.message == "keyBy field user is missing"));
    }

    #[test]
    fn select_keeps_exactly_the_selected_paths_whether_or_not_they_overlap() {
        let input = json!({"user": {"id": 1, "name": "x", "age": 3}, "amount": 2, "z": 0});
        let disjoint = compile("[{map: {select: [user.id, user.name, amount, missing], set: {source: web}}}]");
        assert_eq!(
            run(&disjoint, input.clone())[0].fields,
            json!({"user": {"id": 1, "name": "x"}, "amount": 2, "source": "web"})
        );
        let overlapping = compile("[{map: {select: [user.id, user]}}]");
        assert_eq!(run(&overlapping, input)[0].fields, json!({"user": {"id": 1, "name": "x", "age": 3}}));
    }

    #[test]
    fn split_drops_empty_pieces_and_lowercases_any_script() {
        let at_commas = compile("[{split: {field: text, separator: ',', lowercase: true}}]");
        let pieces: Vec<_> = run(&at_commas, json!({"text": "ÉTÉ,,Wind, x"})).into_iter().map(|r| r.fields).collect();
        assert_eq!(pieces, [json!({"text": "été"}), json!({"text": "wind"}), json!({"text": " x"})]);
        let at_whitespace = compile("[{split: {field: text}}]");
        let pieces: Vec<_> = run(&at_whitespace, json!({"text": " A \t b\n"})).into_iter().map(|r| r.fields).collect();
        assert_eq!(pieces, [json!({"text": "A"}), json!({"text": "b"})]);
        let lowered = compile("[{split: {field: text, lowercase: true}}]");
        let pieces: Vec<_> =
            run(&lowered, json!({"text": "Été\u{3000}WIND already"})).into_iter().map(|r| r.fields).collect();
        assert_eq!(pieces, [json!({"text": "été"}), json!({"text": "wind"}), json!({"text": "already"})]);
    }

    #[test]
    fn split_copies_the_other_fields_and_the_key_only_when_a_later_stage_reads_them() {
        let summed = compile(
            "[{split: {field: text}}, {keyBy: {field: text}}, {window: {size: 10s, aggregate: {function: sum, field: n}}}]",
        );
        let records = run(&summed, json!({"text": "a b", "n": 2, "other": true}));
        let pieces: Vec<_> = records.iter().map(|r| (key_of(r), &r.fields)).collect();
        assert_eq!(
            pieces,
            [(Some("a"), &json!({"n": 2, "other": true})), (Some("b"), &json!({"n": 2, "other": true}))]
        );

        let counted = compile(
            "[{split: {field: text}}, {keyBy: {field: text}}, {window: {size: 10s, aggregate: {function: count}}}]",
        );
        assert_eq!(counted.before_window.len(), 1, "the split makes its pieces the keys itself");
        let records = run(&counted, json!({"text": "a b", "n": 2}));
        let pieces: Vec<_> = records.iter().map(|r| (key_of(r), &r.fields)).collect();
        assert_eq!(pieces, [(Some("a"), &json!({})), (Some("b"), &json!({}))]);

        let to_sink = compile("[{split: {field: text}}]");
        let records = run(&to_sink, json!({"text": "a", "n": 2}));
        assert_eq!((key_of(&records[0]), &records[0].fields), (Some("input-key"), &json!({"text": "a", "n": 2})));
    }
}
