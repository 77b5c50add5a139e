//! Synthetic input for `dev`: a rate plan (`--load 2000/s,20000/s@30s-50s`) and records that
//! match the job's source format and the fields its pipeline reads.

use std::time::Duration;

use serde_json::{Map, Value};
use streamjob_crds::duration::parse_duration;
use streamjob_crds::{FilterOperator, SourceFormat, StageOperation, StreamJob};

/// One segment of a load plan: `rate` records/s from `start` until `end` (or the end of the run).
#[derive(Clone, Debug, PartialEq)]
pub struct LoadSegment {
    pub rate: f64,
    pub start: Duration,
    pub end: Option<Duration>,
}

/// Records per second over time: a base rate, overridden by timed segments.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadPlan {
    pub segments: Vec<LoadSegment>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoadPlanError {
    #[error("--load {0:?}: expected RATE[/s][@START[-END]] separated by commas, for example 2000/s,20000/s@30s-50s")]
    Syntax(String),
    #[error("--load {0:?}: {1}")]
    Invalid(String, String),
}

impl LoadPlan {
    /// Parses `RATE[/s][@START[-END]],...`: the first segment without `@` is the base rate;
    /// later segments apply from START (until END) and the latest one that applies wins.
    pub fn parse(text: &str) -> Result<Self, LoadPlanError> {
        let mut segments = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (rate, window) = match part.split_once('@') {
                Some((rate, window)) => (rate, Some(window)),
                None => (part, None),
            };
            let rate = rate.trim().trim_end_matches("/s");
            let rate: f64 = rate.parse().map_err(|_| LoadPlanError::Syntax(text.to_owned()))?;
            if !(rate.is_finite() && rate >= 0.0) {
                return Err(LoadPlanError::Invalid(text.to_owned(), format!("rate {rate} must be 0 or more")));
            }
            let duration =
                |d: &str| parse_duration(d.trim()).map_err(|e| LoadPlanError::Invalid(text.to_owned(), e.to_string()));
            let (start, end) = match window {
                None => (Duration::ZERO, None),
                Some(window) => match window.split_once('-') {
                    Some((start, end)) => (duration(start)?, Some(duration(end)?)),
                    None => (duration(window)?, None),
                },
            };
            if end.is_some_and(|end| end <= start) {
                return Err(LoadPlanError::Invalid(text.to_owned(), "a segment must end after it starts".to_owned()));
            }
            segments.push(LoadSegment { rate, start, end });
        }
        Ok(Self { segments })
    }

    /// Records per second at `elapsed`.
    pub fn rate_at(&self, elapsed: Duration) -> f64 {
        self.segments
            .iter()
            .rfind(|s| s.start <= elapsed && s.end.is_none_or(|end| elapsed < end))
            .map_or(0.0, |s| s.rate)
    }
}

const WORDS: [&str; 16] = [
    "stream",
    "kafka",
    "window",
    "partition",
    "offset",
    "lag",
    "worker",
    "operator",
    "record",
    "topic",
    "count",
    "event",
    "replica",
    "scale",
    "commit",
    "group",
];

/// A small deterministic generator (PCG-style LCG), so runs and tests repeat.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }

    fn below(&mut self, n: u32) -> u32 {
        self.next_u32() % n.max(1)
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < percent
    }
}

/// What a generated record's fields look like.
#[derive(Clone, Debug, PartialEq)]
enum FieldKind {
    /// A line of words (split input, text payloads).
    Words,
    /// One of a few dozen keys.
    Key,
    /// A number for aggregates.
    Number,
    /// The event time, RFC 3339.
    Time,
    /// Values that make a filter pass about half the time.
    Filter(FilterOperator, Option<Value>),
    /// Any short string.
    Text,
}

/// Makes records for a job: text lines for text sources, JSON objects with every field the
/// pipeline reads for JSON sources, bytes as text for bytes sources.
#[derive(Clone, Debug)]
pub struct RecordGenerator {
    format: SourceFormat,
    fields: Vec<(String, FieldKind)>,
    rng: Rng,
}

impl RecordGenerator {
    pub fn for_job(job: &StreamJob, seed: u64) -> Self {
        let mut fields: Vec<(String, FieldKind)> = Vec::new();
        let mut add = |path: &str, kind: FieldKind| {
            if path != "value" && !fields.iter().any(|(p, _)| p == path) {
                fields.push((path.to_owned(), kind));
            }
        };
        for stage in &job.spec.pipeline {
            match stage.operation() {
                Some(StageOperation::Filter(filter)) => {
                    add(&filter.field, FieldKind::Filter(filter.op, filter.value.clone()))
                }
                Some(StageOperation::Map(map)) => {
                    for path in map.select.iter().flatten().chain(map.rename.iter().flat_map(|r| r.keys())) {
                        add(path, FieldKind::Text);
                    }
                }
                Some(StageOperation::Split(split)) => add(&split.field, FieldKind::Words),
                Some(StageOperation::KeyBy(key_by)) => add(&key_by.field, FieldKind::Key),
                Some(StageOperation::Window(window)) => {
                    if let Some(time_field) = &window.time_field {
                        add(time_field, FieldKind::Time);
                    }
                    if let Some(field) = &window.aggregate.field {
                        add(field, FieldKind::Number);
                    }
                }
                None => {}
            }
        }
        Self { format: job.spec.source.format, fields, rng: Rng::new(seed) }
    }

    /// The next record's (key, payload) at `now_ms`.
    pub fn next(&mut self, now_ms: i64) -> (String, Vec<u8>) {
        let key = format!("k{}", self.rng.below(1000));
        let payload = match self.format {
            SourceFormat::Json => {
                let mut object = Map::new();
                for index in 0..self.fields.len() {
                    let (path, kind) = self.fields[index].clone();
                    if let Some(value) = self.value(&kind, now_ms) {
                        set_path(&mut object, &path, value);
                    }
                }
                Value::Object(object).to_string().into_bytes()
            }
            SourceFormat::Text | SourceFormat::Bytes => self.words().into_bytes(),
        };
        (key, payload)
    }

    fn words(&mut self) -> String {
        let count = 3 + self.rng.below(5);
        (0..count).map(|_| WORDS[self.rng.below(WORDS.len() as u32) as usize]).collect::<Vec<_>>().join(" ")
    }

    fn value(&mut self, kind: &FieldKind, now_ms: i64) -> Option<Value> {
        Some(match kind {
            FieldKind::Words => Value::from(self.words()),
            FieldKind::Key => Value::from(format!("user-{}", self.rng.below(50))),
            FieldKind::Number => Value::from(self.rng.below(100)),
            FieldKind::Time => Value::from(streamjob_worker::pipeline::rfc3339(now_ms)),
            FieldKind::Text => Value::from(WORDS[self.rng.below(WORDS.len() as u32) as usize]),
            FieldKind::Filter(op, value) => return self.filter_value(op, value.as_ref()),
        })
    }

    /// A value for a filtered field that passes the filter about half the time.
    fn filter_value(&mut self, op: &FilterOperator, wanted: Option<&Value>) -> Option<Value> {
        let pass = self.rng.chance(50);
        match (op, wanted) {
            (FilterOperator::Exists, _) => pass.then(|| Value::from(self.rng.below(100))),
            (FilterOperator::Eq | FilterOperator::Ne, Some(value)) => {
                Some(if pass { value.clone() } else { Value::from(format!("not-{value}")) })
            }
            (_, Some(Value::Number(number))) => {
                let bound = number.as_f64().unwrap_or(0.0).abs().max(1.0);
                Some(Value::from((f64::from(self.rng.below(2000)) / 1000.0 * bound).round()))
            }
            (FilterOperator::Contains, Some(Value::String(text))) => {
                Some(Value::from(if pass { format!("x-{text}-y") } else { "other".to_owned() }))
            }
            (_, Some(value)) => Some(value.clone()),
            (_, None) => Some(Value::from(self.rng.below(100))),
        }
    }
}

/// Sets `a.b.c` in `object`, creating the objects on the way.
fn set_path(object: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            object.insert(path.to_owned(), value);
        }
        Some((head, rest)) => {
            let child = object.entry(head.to_owned()).or_insert_with(|| Value::Object(Map::new()));
            if !child.is_object() {
                *child = Value::Object(Map::new());
            }
            if let Value::Object(child) = child {
                set_path(child, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_plans_parse_base_rate_and_timed_segments() {
        let plan = LoadPlan::parse("2000/s,20000/s@30s-50s").expect("valid");
        assert_eq!(plan.rate_at(Duration::from_secs(0)), 2000.0);
        assert_eq!(plan.rate_at(Duration::from_secs(30)), 20000.0);
        assert_eq!(plan.rate_at(Duration::from_secs(49)), 20000.0);
        assert_eq!(plan.rate_at(Duration::from_secs(50)), 2000.0);
        let open_ended = LoadPlan::parse("500,5000/s@1m").expect("valid");
        assert_eq!(open_ended.rate_at(Duration::from_secs(59)), 500.0);
        assert_eq!(open_ended.rate_at(Duration::from_secs(3600)), 5000.0);
    }

    #[test]
    fn bad_load_plans_say_what_is_expected() {
        assert!(matches!(LoadPlan::parse("fast"), Err(LoadPlanError::Syntax(_))));
        assert!(matches!(LoadPlan::parse("100/s@soon"), Err(LoadPlanError::Invalid(..))));
        assert!(matches!(LoadPlan::parse("100/s@20s-10s"), Err(LoadPlanError::Invalid(..))));
        assert!(matches!(LoadPlan::parse("-5/s"), Err(LoadPlanError::Invalid(..))));
    }

    fn job(yaml: &str) -> StreamJob {
        streamjob_crds::parse_manifest(yaml).expect("valid manifest")
    }

    #[test]
    fn json_records_carry_the_fields_the_pipeline_reads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/clicks-per-user.yaml");
        let job = job(&std::fs::read_to_string(path).expect("example"));
        let mut generator = RecordGenerator::for_job(&job, 7);
        let mut clicks = 0;
        for _ in 0..200 {
            let (_, payload) = generator.next(1_700_000_000_000);
            let value: Value = serde_json::from_slice(&payload).expect("JSON");
            assert!(value["user"].as_str().is_some_and(|u| u.starts_with("user-")), "{value}");
            assert_eq!(value["ts"], "2023-11-14T22:13:20.000Z");
            clicks += usize::from(value["type"] == "click");
        }
        assert!((60..140).contains(&clicks), "about half pass the filter: {clicks}");
    }

    #[test]
    fn text_records_are_lines_of_words() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/wordcount.yaml");
        let job = job(&std::fs::read_to_string(path).expect("example"));
        let (_, payload) = RecordGenerator::for_job(&job, 1).next(0);
        let line = String::from_utf8(payload).expect("UTF-8");
        let words: Vec<&str> = line.split(' ').collect();
        assert!((3..8).contains(&words.len()) && words.iter().all(|w| WORDS.contains(w)), "{line}");
    }
}
