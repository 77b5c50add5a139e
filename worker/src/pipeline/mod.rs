//! The declared pipeline, compiled once into typed operators.
//!
//! A pipeline is the stateless stages before its window, the window (if any), and the stateless
//! stages after it, which see the window's results. Nothing here touches Kafka. [`plan`]
//! compiles it; each operator has its file; [`codec`] reads and writes the records' values.

mod codec;
mod filter;
mod key_by;
mod map;
mod number;
mod plan;
mod split;
mod window;

pub use codec::{decode, encode, validate};
pub use filter::Filter;
pub use key_by::KeyBy;
pub use map::MapOperator;
pub use number::number_of;
pub use plan::{fields_read_by, CompileError, CompiledPipeline};
pub use split::Split;
pub use window::{function_name, rfc3339, window_result, Accumulator, WindowOperator};

use crate::liveness::Liveness;
use crate::record::Record;

/// A record that could not be decoded or processed: it goes to the dead-letter topic with the
/// message in its `streamjob.error` header, or, without one, is counted as skipped by reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{stage}: {message}")]
pub struct StageError {
    /// Which stage failed, for example `pipeline[1] (map)` or `decode`.
    pub stage: String,
    pub message: String,
    /// Why, as a short label (the `reason` of `streamjob_worker_records_skipped_total`).
    pub reason: Reason,
}

/// Why a record was not delivered: the label values of the skipped-records metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The value is not valid in the source format (JSON, UTF-8 text).
    Decode,
    /// A field a stage reads has a type the stage cannot use (`"abc"` or `true` under `gt 50`).
    TypeMismatch,
    /// A field a stage needs is missing or null.
    MissingField,
    /// A number that is not finite (`"NaN"`, `"Infinity"`, `1e999`) where a stage computes with it.
    NonFinite,
    /// The record came after its window was emitted.
    Late,
    /// The result (or the record, for the dead-letter topic) is larger than the topic takes.
    TooLarge,
    /// The broker refused the output for good.
    Undeliverable,
    /// An internal repartition message that does not parse.
    Internal,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::TypeMismatch => "type-mismatch",
            Self::MissingField => "missing-field",
            Self::NonFinite => "non-finite",
            Self::Late => "late",
            Self::TooLarge => "too-large",
            Self::Undeliverable => "undeliverable",
            Self::Internal => "internal",
        }
    }
}

impl StageError {
    pub(crate) fn new(stage: &str, reason: Reason, message: impl Into<String>) -> Self {
        Self { stage: stage.to_owned(), message: message.into(), reason }
    }
}

#[derive(Debug)]
pub enum Operator {
    Filter(Filter),
    Map(MapOperator),
    Split(Split),
    KeyBy(KeyBy),
}

impl Operator {
    /// What this operator and the ones after it (which read `after`) need of its input.
    fn needs(&self, after: Liveness) -> Liveness {
        match self {
            Self::Filter(filter) => Liveness { fields: after.fields.with(&filter.field), ..after },
            Self::Map(map) => Liveness { fields: map.needs(after.fields), ..after },
            Self::Split(split) => Liveness { fields: after.fields.with(&split.field), ..after },
            Self::KeyBy(key_by) => Liveness { fields: after.fields.with(&key_by.field), key: false },
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
            Self::KeyBy(key_by) => {
                key_by.apply(&mut record)?;
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

#[cfg(test)]
mod tests;
