//! What goes in and out of the engine: its settings, the records read, the outputs to produce,
//! the tickets their acknowledgements bring back, and the offsets to commit.

use std::sync::atomic::AtomicU64;

use streamjob_crds::{SinkFormat, SourceFormat};

use crate::liveness::Fields;
use crate::pipeline::{self, StageError};
use crate::record::Record;

/// How the engine is set up for one job.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub source_format: SourceFormat,
    pub sink_format: SinkFormat,
    pub dead_letter: bool,
    /// The repartition topic and its partition count, for windowed jobs.
    pub repartition: Option<(String, i32)>,
    /// How often partial aggregates are sent on.
    pub flush_interval_ms: i64,
    /// A source partition its owner has read to the end, with nothing new for this long, stops
    /// holding back windows.
    pub idle_timeout_ms: i64,
    /// Partial aggregates kept per source partition before they are sent early.
    pub max_partials: usize,
}

/// The largest record each topic the engine writes takes: its `max.message.bytes`, read at
/// start (see the runner's `limits.rs`). Unlimited until the runner says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimits {
    pub sink: usize,
    pub dead_letter: usize,
}

impl Default for RecordLimits {
    fn default() -> Self {
        Self { sink: usize::MAX, dead_letter: usize::MAX }
    }
}

/// The bytes a record takes in a record batch of its own, as the broker checks it against the
/// topic's `max.message.bytes`: the batch header (61 bytes), the record's framing (at most 32),
/// the key, the value and each header with its framing. An upper bound, so a record this says
/// fits is never refused for its size.
pub fn record_size(key: Option<&[u8]>, payload: &[u8], headers: &[(&str, String)]) -> usize {
    let headers: usize = headers.iter().map(|(name, value)| name.len() + value.len() + 10).sum();
    61 + 32 + key.map_or(0, <[u8]>::len) + payload.len() + headers
}

/// A record read from Kafka.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub timestamp_ms: Option<i64>,
}

impl Input<'_> {
    /// Decodes the record's value; of a JSON object, only the `fields` some stage reads.
    pub(super) fn decode(&self, format: SourceFormat, fields: &Fields) -> Result<Record, StageError> {
        let fields = pipeline::decode(format, self.payload, fields)?;
        let key = self.key.map(<[u8]>::to_vec);
        Ok(Record { fields, key, timestamp_ms: self.timestamp_ms.unwrap_or_default() })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Sink,
    Repartition { partition: i32 },
    DeadLetter,
}

/// What the acknowledgement of an output releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub(super) slot: usize,
    pub(super) epoch: u64,
    pub(super) offset: i64,
    pub(super) input_timestamp_ms: Option<i64>,
    pub(super) destination: Destination,
    /// The input records a dead-lettered output stands for.
    pub(super) records: u64,
}

/// A record to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub destination: Destination,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
    pub ticket: Option<Ticket>,
}

impl Output {
    /// A result for the sink, acknowledged under `ticket`.
    pub fn to_sink(key: Option<Vec<u8>>, payload: Vec<u8>, ticket: Ticket) -> Self {
        Self { destination: Destination::Sink, key, payload, headers: Vec::new(), ticket: Some(ticket) }
    }
}

/// An offset to commit, with the aggregating stage's progress as commit metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub metadata: Option<String>,
}

/// Totals since start, for summaries.
#[derive(Debug, Default)]
pub struct Totals {
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub skipped: AtomicU64,
    pub late: AtomicU64,
    /// Records that resets of out-of-range offsets jumped over unread (retention deleted them).
    pub passed_over_by_resets: AtomicU64,
}
