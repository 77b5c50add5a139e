//! The worker's processing core, without Kafka: records in, outputs and committable offsets out.
//!
//! The Kafka loop feeds it records, acknowledgements and clock ticks, sends the outputs it
//! queues, and commits the offsets it reports. Everything that decides what is safe to commit
//! lives here, so it is tested without a broker.
//!
//! Two shapes of job:
//! - without a window, each record runs through the stages and goes to the sink;
//! - with a window, the source stage sends partial aggregates through the repartition topic
//!   (see [`crate::repartition`]) and the aggregating stage, reading that topic, emits each
//!   window once its watermark passes the window's end.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use streamjob_crds::{SinkFormat, SourceFormat};

use prometheus_client::metrics::counter::Counter;

use crate::aggregate::{AggregateStage, ExpectedSources, OpenWindow, PartialOutcome};
use crate::liveness::Fields;
use crate::metrics::{PartitionLabels, WorkerMetrics};
use crate::offsets::PartitionProgress;
use crate::pipeline::{self, Accumulator, CompiledPipeline, Emit, StageError, WindowOperator};
use crate::record::Record;
use crate::repartition::{partition_for, source_id, RepartitionMessage};
use crate::undeliverable::{DeliveryFailure, Poison, PoisonedInputs};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Sink,
    Repartition { partition: i32 },
    DeadLetter,
}

/// What the acknowledgement of an output releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    slot: usize,
    epoch: u64,
    offset: i64,
    input_timestamp_ms: Option<i64>,
    destination: Destination,
    /// The input records a dead-lettered output stands for.
    records: u64,
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
}

pub struct Engine {
    settings: EngineSettings,
    pipeline: CompiledPipeline,
    metrics: Arc<WorkerMetrics>,
    totals: Arc<Totals>,
    slots: Vec<Slot>,
    slot_index: HashMap<String, HashMap<i32, usize>>,
    /// The slot found last: records come in runs from one partition.
    last_slot: Cell<usize>,
    outbox: Vec<Output>,
    failure: Option<String>,
    last_flush_ms: i64,
    /// Records leave as they came (see [`forwards_input_unchanged`]).
    forward_input: bool,
    /// What the filters read of a record that is forwarded.
    forward_fields: Fields,
    /// Reused from record to record by the source stage.
    staged: StagedContributions,
    /// The source partitions whose progress every window waits for.
    expected: ExpectedSources,
    /// Inputs whose outputs no retry can deliver, for when the rewind reads them again.
    poisoned: PoisonedInputs,
}

/// How often the owner of an idle source partition repeats that it still is: each marker
/// moves the partition's watermark on, and only a live owner sends them.
const IDLE_HEARTBEAT: Duration = Duration::from_secs(1);

struct Slot {
    topic: String,
    partition: i32,
    labels: PartitionLabels,
    records_in: Counter,
    records_out: Counter,
    epoch: u64,
    assigned: bool,
    progress: PartitionProgress,
    /// The offset last committed (or the first read, before any commit): where a rewind goes.
    rewind_to: Option<i64>,
    /// The commit metadata that went with `rewind_to`.
    rewind_metadata: Option<String>,
    role: Role,
}

enum Role {
    Direct,
    Source(SourceStage),
    Aggregate(AggregateStage),
}

#[derive(Default)]
struct SourceStage {
    id: String,
    /// Window start → key → partial aggregate. Keys are user data, so hashed with a seeded
    /// hasher: fast, and not open to collision floods.
    partials: BTreeMap<i64, foldhash::HashMap<String, Accumulator>>,
    /// The keys in `partials`, over all windows.
    partial_count: usize,
    range_start: Option<i64>,
    range_end: i64,
    max_event_ms: Option<i64>,
    reset_sent: bool,
    /// The last offset whose partials were sent.
    through: Option<i64>,
    /// Since when this worker has seen the partition read to its end, without a record since.
    at_end_since: Option<i64>,
    /// Where idleness moved the watermark: records behind it are late.
    idle_floor: Option<i64>,
    idle: bool,
    progress_unsent: bool,
    last_progress_ms: i64,
}

impl Engine {
    pub fn new(
        settings: EngineSettings,
        pipeline: CompiledPipeline,
        metrics: Arc<WorkerMetrics>,
        totals: Arc<Totals>,
    ) -> Self {
        Self {
            forward_input: forwards_input_unchanged(&pipeline, settings.source_format, settings.sink_format),
            forward_fields: pipeline::fields_read_by(&pipeline.before_window),
            settings,
            pipeline,
            metrics,
            totals,
            slots: Vec::new(),
            slot_index: HashMap::new(),
            last_slot: Cell::new(0),
            outbox: Vec::new(),
            failure: None,
            last_flush_ms: 0,
            staged: StagedContributions::default(),
            expected: ExpectedSources::default(),
            poisoned: PoisonedInputs::default(),
        }
    }

    /// The job's source partitions (as [`source_id`]s): every window waits until each has
    /// reported its progress.
    pub fn expect_sources(&mut self, ids: Vec<String>) {
        self.expected = ExpectedSources::new(ids);
    }

    /// Whether this worker has read a source partition to its end (as the consumer's position
    /// and the partition's high watermark show): the partition is idle once it stays there
    /// for the idle timeout.
    pub fn observe_end(&mut self, topic: &str, partition: i32, at_end: bool, now_ms: i64) {
        let Some(index) = self.slot_of(topic, partition).filter(|i| self.slots[*i].assigned) else {
            return;
        };
        if let Role::Source(source) = &mut self.slots[index].role {
            if at_end {
                source.at_end_since.get_or_insert(now_ms);
            } else {
                source.at_end_since = None;
                source.wake();
            }
        }
    }

    fn is_repartition_topic(&self, topic: &str) -> bool {
        self.settings.repartition.as_ref().is_some_and(|(name, _)| name == topic)
    }

    fn repartition_partitions(&self) -> Option<i32> {
        self.settings.repartition.as_ref().map(|(_, partitions)| *partitions)
    }

    fn slot_of(&self, topic: &str, partition: i32) -> Option<usize> {
        let last = self.last_slot.get();
        if self.slots.get(last).is_some_and(|slot| slot.partition == partition && slot.topic == topic) {
            return Some(last);
        }
        let index = self.slot_index.get(topic)?.get(&partition).copied()?;
        self.last_slot.set(index);
        Some(index)
    }

    /// A partition was assigned. `metadata` is its committed metadata, if any.
    pub fn assign(&mut self, topic: &str, partition: i32, metadata: Option<&str>) {
        let role = if self.is_repartition_topic(topic) {
            Role::Aggregate(AggregateStage::restore(metadata))
        } else if self.pipeline.window.is_some() {
            Role::Source(SourceStage { id: source_id(topic, partition), ..SourceStage::default() })
        } else {
            Role::Direct
        };
        match self.slot_of(topic, partition) {
            Some(index) => {
                let slot = &mut self.slots[index];
                slot.epoch += 1;
                slot.assigned = true;
                slot.progress = PartitionProgress::default();
                slot.rewind_to = None;
                slot.rewind_metadata = metadata.map(str::to_owned);
                slot.role = role;
            }
            None => {
                let labels = PartitionLabels::new(topic, partition);
                self.slots.push(Slot {
                    topic: topic.to_owned(),
                    partition,
                    records_in: self.metrics.records_in.get_or_create(&labels).clone(),
                    records_out: self.metrics.records_out.get_or_create(&labels).clone(),
                    labels,
                    epoch: 0,
                    assigned: true,
                    progress: PartitionProgress::default(),
                    rewind_to: None,
                    rewind_metadata: metadata.map(str::to_owned),
                    role,
                });
                let index = self.slots.len() - 1;
                self.slot_index.entry(topic.to_owned()).or_default().insert(partition, index);
            }
        }
        self.update_gauges();
    }

    /// Before a partition is revoked: send what its source stage still holds.
    pub fn prepare_revoke(&mut self, topic: &str, partition: i32) {
        if let Some(index) = self.slot_of(topic, partition) {
            self.flush_source(index);
        }
    }

    /// The partition is gone: its state is dropped and late acknowledgements are ignored.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        if let Some(index) = self.slot_of(topic, partition) {
            let slot = &mut self.slots[index];
            slot.assigned = false;
            slot.epoch += 1;
            slot.progress = PartitionProgress::default();
            slot.role = Role::Direct;
        }
        self.update_gauges();
    }

    pub fn assigned(&self) -> Vec<(String, i32)> {
        self.slots.iter().filter(|s| s.assigned).map(|s| (s.topic.clone(), s.partition)).collect()
    }

    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outbox)
    }

    /// Gives back an emptied output queue, so its allocation is reused.
    pub fn recycle_outputs(&mut self, mut emptied: Vec<Output>) {
        if self.outbox.is_empty() {
            emptied.clear();
            self.outbox = emptied;
        }
    }

    pub fn has_outputs(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// An error that needs a rewind to the committed offsets (a failed delivery).
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Processes one record.
    pub fn on_input(&mut self, input: &Input<'_>, _now_ms: i64) {
        let Some(index) = self.slot_of(input.topic, input.partition).filter(|i| self.slots[*i].assigned) else {
            tracing::debug!(topic = input.topic, partition = input.partition, "record of an unassigned partition");
            return;
        };
        self.slots[index].progress.read(input.offset);
        if self.slots[index].rewind_to.is_none() {
            self.slots[index].rewind_to = Some(input.offset);
        }
        self.slots[index].records_in.inc();
        if !matches!(self.slots[index].role, Role::Aggregate(_)) {
            self.totals.records_in.fetch_add(1, Ordering::Relaxed);
        }
        match self.slots[index].role {
            Role::Direct => match self.poisoned.get(input.topic, input.partition, input.offset).cloned() {
                Some(poison) => self.read_poisoned(index, input, poison),
                None => self.process_direct(index, input),
            },
            Role::Source(_) => self.process_source(index, input),
            Role::Aggregate(_) => self.process_partial(index, input),
        }
    }

    /// Decodes the record's value; of a JSON object, only the `fields` some stage reads.
    fn decode(&self, input: &Input<'_>, fields: &Fields) -> Result<Record, StageError> {
        let fields = pipeline::decode(self.settings.source_format, input.payload, fields)?;
        let key = input.key.map(<[u8]>::to_vec);
        Ok(Record { fields, key, timestamp_ms: input.timestamp_ms.unwrap_or_default() })
    }

    fn process_direct(&mut self, index: usize, input: &Input<'_>) {
        if self.forward_input {
            return self.forward_direct(index, input);
        }
        let results = self
            .decode(input, &self.pipeline.input_fields)
            .and_then(|r| pipeline::run_stateless(&self.pipeline.before_window, r));
        match results {
            Ok(records) => {
                let ticket = self.ticket(index, input.offset, input.timestamp_ms, Destination::Sink);
                self.slots[index].progress.hold(input.offset, records.len() as u32);
                for record in records {
                    self.send_result(record, ticket);
                }
            }
            Err(error) => self.reject(index, input, &error, 1, false),
        }
    }

    /// A record no stage changes goes to the sink as it came, key and value, once it is valid
    /// in the source format and passes the filters.
    fn forward_direct(&mut self, index: usize, input: &Input<'_>) {
        let passes = if self.pipeline.before_window.is_empty() {
            pipeline::validate(self.settings.source_format, input.payload).map(|()| true)
        } else {
            self.decode(input, &self.forward_fields)
                .and_then(|r| pipeline::run_stateless(&self.pipeline.before_window, r))
                .map(|records| !records.is_empty())
        };
        match passes {
            Ok(true) => {
                let ticket = self.ticket(index, input.offset, input.timestamp_ms, Destination::Sink);
                self.slots[index].progress.hold(input.offset, 1);
                self.outbox.push(Output {
                    destination: Destination::Sink,
                    key: input.key.map(<[u8]>::to_vec),
                    payload: input.payload.unwrap_or_default().to_vec(),
                    headers: Vec::new(),
                    ticket: Some(ticket),
                });
            }
            Ok(false) => {}
            Err(error) => self.reject(index, input, &error, 1, false),
        }
    }

    fn send_result(&mut self, record: Record, ticket: Ticket) {
        self.outbox.push(Output {
            destination: Destination::Sink,
            payload: pipeline::encode(self.settings.sink_format, &record),
            key: record.key,
            headers: Vec::new(),
            ticket: Some(ticket),
        });
    }

    fn ticket(&self, index: usize, offset: i64, input_timestamp_ms: Option<i64>, destination: Destination) -> Ticket {
        Ticket { slot: index, epoch: self.slots[index].epoch, offset, input_timestamp_ms, destination, records: 1 }
    }

    /// A record that failed (or came late) goes to the dead-letter topic, or is counted and
    /// skipped when there is none. It never stops its partition. `records` is how many input
    /// records it stands for: a partial aggregate stands for many.
    fn reject(&mut self, index: usize, input: &Input<'_>, error: &StageError, records: u64, late: bool) {
        let labels = self.slots[index].labels.clone();
        if late {
            self.metrics.records_late.get_or_create(&labels).inc_by(records);
            self.totals.late.fetch_add(records, Ordering::Relaxed);
        }
        if !self.settings.dead_letter {
            return self.skip(index, input, error, records);
        }
        // A source partition is committed only at the start of a range it sent partials for:
        // a reset replays whole ranges, so a record dead-lettered inside one holds its start.
        let hold_at = match &mut self.slots[index].role {
            Role::Source(source) => {
                source.range_end = input.offset;
                *source.range_start.get_or_insert(input.offset)
            }
            _ => input.offset,
        };
        let mut ticket = self.ticket(index, hold_at, input.timestamp_ms, Destination::DeadLetter);
        ticket.records = records;
        self.slots[index].progress.hold(hold_at, 1);
        self.outbox.push(Output {
            destination: Destination::DeadLetter,
            key: input.key.map(<[u8]>::to_vec),
            payload: input.payload.unwrap_or_default().to_vec(),
            headers: dead_letter_headers(&error.message, &error.stage, input.topic, input.partition, input.offset),
            ticket: Some(ticket),
        });
    }

    fn skip(&mut self, index: usize, input: &Input<'_>, error: &StageError, records: u64) {
        self.metrics.records_skipped.get_or_create(&self.slots[index].labels).inc_by(records);
        self.totals.skipped.fetch_add(records, Ordering::Relaxed);
        tracing::warn!(topic = input.topic, partition = input.partition, offset = input.offset, stage = %error.stage,
            error = %error.message, records, "record skipped: no dead-letter topic is set or can take it");
    }

    /// An input read again after its output could not be delivered for good.
    fn read_poisoned(&mut self, index: usize, input: &Input<'_>, poison: Poison) {
        match poison {
            Poison::DeadLetter(error) => {
                let error = StageError { stage: "sink".into(), message: format!("the sink cannot take it: {error}") };
                self.reject(index, input, &error, 1, false);
            }
            Poison::Skip(error) => {
                let error = StageError { stage: "sink".into(), message: format!("undeliverable: {error}") };
                self.skip(index, input, &error, 1);
            }
        }
    }

    fn process_source(&mut self, index: usize, input: &Input<'_>) {
        let Some(window) = self.pipeline.window.clone() else {
            return;
        };
        self.send_reset_once(index, input.offset);
        if let Role::Source(source) = &mut self.slots[index].role {
            source.at_end_since = None;
            source.wake();
        }
        let mut staged = std::mem::take(&mut self.staged);
        staged.clear();
        let result = self.decode(input, &self.pipeline.input_fields).and_then(|record| {
            let mut stager = Stager { window: &window, staged: &mut staged };
            pipeline::run_stateless_into(&self.pipeline.before_window, record, &mut stager)
        });
        let late = match (result, &mut self.slots[index].role) {
            (Err(error), _) => {
                self.staged = staged;
                return self.reject(index, input, &error, 1, false);
            }
            (Ok(()), Role::Source(source)) => {
                let late = source.add_partials(&window, &staged);
                source.range_start.get_or_insert(input.offset);
                source.range_end = input.offset;
                late
            }
            (Ok(()), _) => None,
        };
        self.staged = staged;
        if let Some((event_ms, watermark)) = late {
            let error = StageError {
                stage: window.stage.clone(),
                message: format!(
                    "late: event time {} is behind the partition's watermark {} by more than the allowed lateness",
                    pipeline::rfc3339(event_ms),
                    pipeline::rfc3339(watermark)
                ),
            };
            self.reject(index, input, &error, 1, true);
        }
        if matches!(&self.slots[index].role, Role::Source(source) if source.partial_count >= self.settings.max_partials)
        {
            self.flush_source(index);
        }
    }

    /// The first record of a source partition after its assignment: its offset is where the
    /// replay starts, so every aggregating partition forgets what this source sent from there.
    fn send_reset_once(&mut self, index: usize, offset: i64) {
        let Some(partitions) = self.repartition_partitions() else {
            return;
        };
        let Role::Source(source) = &mut self.slots[index].role else {
            return;
        };
        if source.reset_sent {
            return;
        }
        source.reset_sent = true;
        let message = RepartitionMessage::Reset { src: source.id.clone(), from: offset };
        let ticket = self.ticket(index, offset, None, Destination::Repartition { partition: 0 });
        self.slots[index].progress.hold(offset, partitions as u32);
        self.broadcast(&message, Some(ticket), partitions);
    }

    fn broadcast(&mut self, message: &RepartitionMessage, ticket: Option<Ticket>, partitions: i32) {
        let payload = message.encode();
        for partition in 0..partitions {
            self.outbox.push(Output {
                destination: Destination::Repartition { partition },
                key: None,
                payload: payload.clone(),
                headers: Vec::new(),
                ticket,
            });
        }
    }

    /// Sends a source partition's partial aggregates on, as one range of its offsets.
    fn flush_source(&mut self, index: usize) {
        let Some(partitions) = self.repartition_partitions() else {
            return;
        };
        let epoch = self.slots[index].epoch;
        let Role::Source(source) = &mut self.slots[index].role else {
            return;
        };
        let Some(from) = source.range_start.take() else {
            return;
        };
        let to = source.range_end;
        source.through = Some(to);
        let partials = std::mem::take(&mut source.partials);
        let partial_count = std::mem::take(&mut source.partial_count);
        let src = source.id.clone();
        let ticket = Ticket {
            slot: index,
            epoch,
            offset: from,
            input_timestamp_ms: None,
            destination: Destination::Repartition { partition: 0 },
            records: 1,
        };
        self.slots[index].progress.hold(from, partial_count as u32);
        for (window, key, accumulator) in
            partials.into_iter().flat_map(|(window, keys)| keys.into_iter().map(move |(key, a)| (window, key, a)))
        {
            let payload = RepartitionMessage::Partial { src: src.clone(), from, to, window, accumulator }.encode();
            self.outbox.push(Output {
                destination: Destination::Repartition { partition: partition_for(&key, partitions) },
                key: Some(key.into_bytes()),
                payload,
                headers: Vec::new(),
                ticket: Some(ticket),
            });
        }
    }

    fn process_partial(&mut self, index: usize, input: &Input<'_>) {
        let Some(window) = self.pipeline.window.clone() else {
            return;
        };
        let message: RepartitionMessage = match serde_json::from_slice(input.payload.unwrap_or_default()) {
            Ok(message) => message,
            Err(error) => {
                let error =
                    StageError { stage: "repartition".into(), message: format!("not a repartition message: {error}") };
                return self.reject(index, input, &error, 1, false);
            }
        };
        let Role::Aggregate(stage) = &mut self.slots[index].role else {
            return;
        };
        match message {
            RepartitionMessage::Reset { src, from } => stage.reset(&src, from, input.offset),
            RepartitionMessage::Progress { src, watermark, through, .. } => {
                stage.progress(src, watermark, through, input.offset)
            }
            RepartitionMessage::Partial { src, from, to, window: start, accumulator } => {
                let key = input.key.map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
                let records = accumulator.count;
                let outcome = stage.partial(src, from, to, start, window.size_ms, key, accumulator, input.offset);
                match outcome {
                    PartialOutcome::Applied => {}
                    PartialOutcome::Replayed => {
                        let labels = &self.slots[index].labels;
                        self.metrics.replayed_partials_discarded.get_or_create(labels).inc();
                    }
                    PartialOutcome::Late => {
                        let key = input.key.map(String::from_utf8_lossy).unwrap_or_default();
                        let error = StageError {
                            stage: window.stage.clone(),
                            message: format!(
                                "late: {records} records of key {key} for the window starting {} arrived after it was emitted",
                                pipeline::rfc3339(start)
                            ),
                        };
                        self.reject(index, input, &error, records, true);
                    }
                }
            }
        }
    }

    /// Time passes: partial aggregates are sent on, idle sources marked, windows emitted.
    pub fn on_tick(&mut self, now_ms: i64) {
        if now_ms - self.last_flush_ms >= self.settings.flush_interval_ms {
            self.last_flush_ms = now_ms;
            for index in 0..self.slots.len() {
                if self.slots[index].assigned && matches!(self.slots[index].role, Role::Source(_)) {
                    self.flush_source(index);
                    self.send_progress(index, now_ms);
                }
            }
        }
        for index in 0..self.slots.len() {
            if self.slots[index].assigned && matches!(self.slots[index].role, Role::Aggregate(_)) {
                self.emit_closed_windows(index);
            }
        }
        self.update_gauges();
    }

    /// Sends everything held, as before a revocation or a shutdown.
    pub fn flush_all(&mut self) {
        for index in 0..self.slots.len() {
            if self.slots[index].assigned {
                self.flush_source(index);
            }
        }
    }

    /// Tells the aggregators how far this source partition has got. Only while it stays read
    /// to its end does the watermark follow the wall clock, less the idle timeout and the
    /// allowed lateness, so records delayed less than that (by a rebalance, say) are not late.
    fn send_progress(&mut self, index: usize, now_ms: i64) {
        let (Some(window), Some(partitions)) = (&self.pipeline.window, self.repartition_partitions()) else {
            return;
        };
        let lateness = window.allowed_lateness_ms;
        let idle_timeout = self.settings.idle_timeout_ms;
        let Role::Source(source) = &mut self.slots[index].role else {
            return;
        };
        let quiet_at_end = source.at_end_since.is_some_and(|since| now_ms - since >= idle_timeout);
        let heartbeat_due = now_ms - source.last_progress_ms >= IDLE_HEARTBEAT.as_millis() as i64;
        if quiet_at_end && (!source.idle || heartbeat_due) {
            source.idle = true;
            let floor = now_ms - idle_timeout - lateness;
            source.idle_floor = Some(source.idle_floor.map_or(floor, |f| f.max(floor)));
            source.progress_unsent = true;
        }
        if !source.progress_unsent {
            return;
        }
        source.progress_unsent = false;
        source.last_progress_ms = now_ms;
        let message = RepartitionMessage::Progress {
            src: source.id.clone(),
            watermark: source.watermark(lateness).unwrap_or(i64::MIN),
            idle: source.idle,
            through: source.through.unwrap_or(-1),
        };
        self.broadcast(&message, None, partitions);
    }

    fn emit_closed_windows(&mut self, index: usize) {
        let Some(window) = self.pipeline.window.clone() else {
            return;
        };
        let next_offset = self.slots[index].progress.next_offset().unwrap_or(i64::MIN);
        let slot = &mut self.slots[index];
        let Role::Aggregate(stage) = &mut slot.role else {
            return;
        };
        stage.emitted.retain(|(_, hold)| slot.progress.is_held(*hold));
        if next_offset < stage.replay_until_offset {
            // Until the replay rebuilds the checkpointed state, the checkpoint's watermark holds.
            return;
        }
        stage.advance_watermark(&self.expected);
        let Some(watermark) = stage.watermark else {
            return;
        };
        let closed: Vec<i64> =
            stage.windows.range(..=watermark.saturating_sub(window.size_ms)).map(|(start, _)| *start).collect();
        let mut emitted = Vec::new();
        for start in closed {
            if let Some(open) = stage.windows.remove(&start) {
                emitted.push((start, open));
            }
        }
        for (start, open) in emitted {
            self.emit_window(index, &window, start, open);
        }
    }

    fn emit_window(&mut self, index: usize, window: &WindowOperator, start: i64, open: OpenWindow) {
        let Some(hold) = open.segments.values().map(|s| s.first_input_offset).min() else {
            return;
        };
        let mut per_key: foldhash::HashMap<String, Accumulator> = foldhash::HashMap::default();
        for segment in open.segments.into_values() {
            for (key, accumulator) in segment.keys {
                per_key.entry(key).and_modify(|a| a.merge(&accumulator)).or_insert(accumulator);
            }
        }
        let mut results = Vec::new();
        for (key, accumulator) in per_key {
            match pipeline::run_stateless(
                &self.pipeline.after_window,
                pipeline::window_result(window, &key, start, &accumulator),
            ) {
                Ok(records) => results.extend(records),
                Err(error) => {
                    self.metrics.records_skipped.get_or_create(&self.slots[index].labels).inc();
                    self.totals.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(stage = %error.stage, error = %error.message, key, "window result dropped by a later stage's error")
                }
            }
        }
        let ticket = self.ticket(index, hold, Some(start + window.size_ms), Destination::Sink);
        self.slots[index].progress.hold(hold, results.len() as u32);
        if let Role::Aggregate(stage) = &mut self.slots[index].role {
            stage.emitted.push((start + window.size_ms, hold));
        }
        for record in results {
            self.send_result(record, ticket);
        }
    }

    /// An output was acknowledged (`Ok`) or failed for good (`Err`).
    pub fn on_delivery(&mut self, ticket: Ticket, result: Result<(), DeliveryFailure>, now_ms: i64) {
        let Some(slot) = self.slots.get_mut(ticket.slot) else {
            return;
        };
        if slot.epoch != ticket.epoch {
            return;
        }
        match result {
            Ok(()) => {
                slot.progress.release(ticket.offset);
                match ticket.destination {
                    Destination::Sink => {
                        slot.records_out.inc();
                        self.totals.records_out.fetch_add(1, Ordering::Relaxed);
                        if let Some(input_ms) = ticket.input_timestamp_ms {
                            self.metrics.processing_latency.observe(((now_ms - input_ms).max(0) as f64) / 1000.0);
                        }
                    }
                    Destination::DeadLetter => {
                        self.metrics.records_dead_lettered.get_or_create(&slot.labels).inc_by(ticket.records);
                        self.totals.dead_lettered.fetch_add(ticket.records, Ordering::Relaxed);
                    }
                    Destination::Repartition { .. } => {}
                }
            }
            Err(failure) => {
                self.metrics.delivery_errors.inc();
                if failure.is_permanent_for(ticket.destination) {
                    return self.undeliverable(ticket, failure);
                }
                if self.failure.is_none() {
                    self.failure = Some(failure.error);
                }
            }
        }
    }

    /// No retry can deliver the output of `ticket`. The input of a record-by-record job is
    /// read again (see [`crate::undeliverable`]); a window result or a partial aggregate has
    /// no input to dead-letter, so it is counted as skipped and its partition moves on.
    fn undeliverable(&mut self, ticket: Ticket, failure: DeliveryFailure) {
        let slot = &mut self.slots[ticket.slot];
        self.metrics.records_undeliverable.get_or_create(&slot.labels).inc();
        tracing::error!(topic = %slot.topic, partition = slot.partition, offset = ticket.offset,
            destination = ?ticket.destination, error = %failure.error, "a record no retry can deliver");
        if !matches!(slot.role, Role::Direct) {
            slot.progress.release(ticket.offset);
            self.metrics.records_skipped.get_or_create(&slot.labels).inc_by(ticket.records);
            self.totals.skipped.fetch_add(ticket.records, Ordering::Relaxed);
            return;
        }
        let poison = if ticket.destination == Destination::Sink && self.settings.dead_letter {
            Poison::DeadLetter(failure.error.clone())
        } else {
            Poison::Skip(failure.error.clone())
        };
        self.poisoned.mark(&slot.topic, slot.partition, ticket.offset, poison);
        if self.failure.is_none() {
            self.failure = Some(format!("{} (the record is read again to be dead-lettered or skipped)", failure.error));
        }
    }

    /// The offsets safe to commit now. In a transaction (`include_unacknowledged = false`)
    /// every queued output is part of the commit, so only open windows hold offsets back.
    pub fn commits(&self, include_unacknowledged: bool) -> Vec<Commit> {
        self.slots
            .iter()
            .filter(|slot| slot.assigned)
            .filter_map(|slot| {
                let (window_hold, metadata) = match &slot.role {
                    Role::Aggregate(stage) => (
                        stage.oldest_needed_offset(&self.expected),
                        Some(stage.checkpoint(&slot.progress, include_unacknowledged)),
                    ),
                    Role::Source(source) => (source.range_start, None),
                    Role::Direct => (None, None),
                };
                let offset = slot.progress.committable(window_hold, include_unacknowledged)?;
                Some(Commit { topic: slot.topic.clone(), partition: slot.partition, offset, metadata })
            })
            .collect()
    }

    pub fn committed(&mut self, commits: &[Commit]) {
        for commit in commits {
            if let Some(index) = self.slot_of(&commit.topic, commit.partition) {
                self.slots[index].rewind_to = Some(commit.offset);
                self.slots[index].rewind_metadata = commit.metadata.clone();
            }
            if !self.poisoned.is_empty() {
                self.poisoned.forget_before(&commit.topic, commit.partition, commit.offset);
            }
        }
    }

    /// Drops all state and returns where each assigned partition must be read again from: its
    /// last committed offset. Used after a failed delivery or an aborted transaction.
    pub fn rewind(&mut self) -> Vec<(String, i32, i64)> {
        self.metrics.rewinds.inc();
        self.failure = None;
        self.outbox.clear();
        let mut targets = Vec::new();
        let assigned: Vec<(String, i32, Option<i64>, Option<String>)> = self
            .slots
            .iter()
            .filter(|s| s.assigned)
            .map(|s| (s.topic.clone(), s.partition, s.rewind_to, s.rewind_metadata.clone()))
            .collect();
        for (topic, partition, rewind_to, metadata) in assigned {
            self.assign(&topic, partition, metadata.as_deref());
            if let Some(offset) = rewind_to {
                if let Some(index) = self.slot_of(&topic, partition) {
                    self.slots[index].rewind_to = Some(offset);
                }
                targets.push((topic, partition, offset));
            }
        }
        targets
    }

    fn update_gauges(&self) {
        let mut windows = 0;
        let mut keys = 0;
        for slot in self.slots.iter().filter(|s| s.assigned) {
            if let Role::Aggregate(stage) = &slot.role {
                windows += stage.windows.len();
                keys += stage.windows.values().flat_map(|w| w.segments.values()).map(|s| s.keys.len()).sum::<usize>();
            }
        }
        self.metrics.open_windows.set(windows as i64);
        self.metrics.open_keys.set(keys as i64);
        self.metrics.assigned_partitions.set(self.slots.iter().filter(|s| s.assigned).count() as i64);
    }
}

/// The headers that say why a record went to the dead-letter topic, and where it came from.
fn dead_letter_headers(
    error: &str,
    stage: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Vec<(&'static str, String)> {
    vec![
        ("streamjob.error", error.to_owned()),
        ("streamjob.stage", stage.to_owned()),
        ("streamjob.source.topic", topic.to_owned()),
        ("streamjob.source.partition", partition.to_string()),
        ("streamjob.source.offset", offset.to_string()),
    ]
}

/// Whether every record leaves exactly as it came: no window, only filters, and a sink that
/// writes the source's format (JSON to JSON, text to text).
fn forwards_input_unchanged(pipeline: &CompiledPipeline, source: SourceFormat, sink: SinkFormat) -> bool {
    let same_format =
        matches!((source, sink), (SourceFormat::Json, SinkFormat::Json) | (SourceFormat::Text, SinkFormat::Text));
    same_format
        && pipeline.window.is_none()
        && pipeline.before_window.iter().all(|operator| matches!(operator, pipeline::Operator::Filter(_)))
}

/// One input record's keyed contributions, held back until every piece of it has gone through
/// the stages, so a record that fails part way adds nothing. The keys share one string.
#[derive(Default)]
struct StagedContributions {
    keys: String,
    entries: Vec<StagedContribution>,
}

struct StagedContribution {
    /// Where the key ends in `keys`; it starts where the one before ends.
    key_end: usize,
    event_ms: i64,
    accumulator: Accumulator,
}

impl StagedContributions {
    fn clear(&mut self) {
        self.keys.clear();
        self.entries.clear();
    }

    fn push(&mut self, key: &str, event_ms: i64, accumulator: Accumulator) {
        self.keys.push_str(key);
        self.entries.push(StagedContribution { key_end: self.keys.len(), event_ms, accumulator });
    }

    fn key(&self, index: usize) -> &str {
        let start = index.checked_sub(1).map_or(0, |before| self.entries[before].key_end);
        &self.keys[start..self.entries[index].key_end]
    }

    /// The end of the run of entries from `start` on that share its event time.
    fn same_time_run_end(&self, start: usize) -> usize {
        let event_ms = self.entries[start].event_ms;
        start + self.entries[start..].iter().take_while(|entry| entry.event_ms == event_ms).count()
    }
}

/// Receives what the stateless stages make of a source record, for the window.
struct Stager<'a> {
    window: &'a WindowOperator,
    staged: &'a mut StagedContributions,
}

impl Emit for Stager<'_> {
    fn record(&mut self, record: Record) -> Result<(), StageError> {
        let (event_ms, accumulator) = self.window.contribution(&record)?;
        let key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default());
        self.staged.push(&key, event_ms, accumulator);
        Ok(())
    }

    fn key_only(&mut self, key: &str, timestamp_ms: i64) -> Result<(), StageError> {
        let (event_ms, accumulator) = self.window.key_only_contribution(timestamp_ms)?;
        self.staged.push(key, event_ms, accumulator);
        Ok(())
    }
}

impl SourceStage {
    /// Something new arrived: the partition is no longer idle.
    fn wake(&mut self) {
        if self.idle {
            self.idle = false;
            self.progress_unsent = true;
        }
    }

    /// Records behind this are late: the latest event time less the allowed lateness, or
    /// where idleness moved it.
    fn watermark(&self, lateness: i64) -> Option<i64> {
        let from_events = self.max_event_ms.map(|m| m - lateness);
        match (from_events, self.idle_floor) {
            (Some(events), Some(floor)) => Some(events.max(floor)),
            (events, floor) => events.or(floor),
        }
    }

    /// Adds a record's contributions to the open windows; returns the event time and the
    /// watermark when some contribution came too late for every window it falls in.
    fn add_partials(&mut self, window: &WindowOperator, staged: &StagedContributions) -> Option<(i64, i64)> {
        let watermark = self.watermark(window.allowed_lateness_ms);
        let mut late = None;
        let mut run_start = 0;
        // The pieces of one record mostly share its event time: their windows are found once.
        while run_start < staged.entries.len() {
            let run_end = staged.same_time_run_end(run_start);
            let event_ms = staged.entries[run_start].event_ms;
            let mut open = window
                .window_starts(event_ms)
                .filter(|start| watermark.is_none_or(|w| start + window.size_ms > w))
                .peekable();
            if open.peek().is_none() {
                late = Some((event_ms, watermark.unwrap_or_default()));
            } else {
                for start in open {
                    let keys = self.partials.entry(start).or_default();
                    for index in run_start..run_end {
                        let accumulator = &staged.entries[index].accumulator;
                        match keys.get_mut(staged.key(index)) {
                            Some(partial) => partial.merge(accumulator),
                            None => {
                                keys.insert(staged.key(index).to_owned(), *accumulator);
                                self.partial_count += 1;
                            }
                        }
                    }
                }
                self.max_event_ms = Some(self.max_event_ms.map_or(event_ms, |m| m.max(event_ms)));
                self.progress_unsent = true;
            }
            run_start = run_end;
        }
        late
    }
}

#[cfg(test)]
#[path = "engine_failover_tests.rs"]
mod failover_tests;

#[cfg(test)]
#[path = "engine_undeliverable_tests.rs"]
mod undeliverable_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1000;
    const REPARTITION: &str = "job-repartition";

    fn engine(pipeline: &str, source_format: SourceFormat, repartition: Option<i32>, dead_letter: bool) -> Engine {
        let stages: Vec<streamjob_crds::PipelineStage> = serde_yaml::from_str(pipeline).expect("pipeline");
        let settings = EngineSettings {
            source_format,
            sink_format: SinkFormat::Json,
            dead_letter,
            repartition: repartition.map(|partitions| (REPARTITION.to_owned(), partitions)),
            flush_interval_ms: 200,
            idle_timeout_ms: 10 * SECOND,
            max_partials: 1000,
        };
        Engine::new(settings, CompiledPipeline::compile(&stages).expect("compiles"), Arc::default(), Arc::default())
    }

    fn wordcount_engine() -> Engine {
        let wordcount =
            "[{split: {field: value}}, {keyBy: {field: value}}, {window: {size: 10s, aggregate: {function: count}}}]";
        engine(wordcount, SourceFormat::Text, Some(1), false)
    }

    fn direct_engine(pipeline: &str) -> Engine {
        engine(pipeline, SourceFormat::Json, None, true)
    }

    /// Without stages that change records, each valid record leaves byte for byte as it came;
    /// an invalid one still goes to the dead-letter topic.
    #[test]
    fn records_no_stage_changes_are_forwarded_unchanged() {
        for pipeline in ["[]", "[{filter: {field: type, op: eq, value: click}}]"] {
            let mut engine = direct_engine(pipeline);
            engine.assign("events", 0, None);
            read(&mut engine, "events", 0, Some("k0"), br#"{ "type": "click",  "amount": 1.50 }"#, 0);
            read(&mut engine, "events", 1, Some("k1"), br#"{"type": "click""#, 0);
            let outputs = engine.take_outputs();
            let sent: Vec<String> = outputs
                .iter()
                .map(|o| {
                    let key = String::from_utf8_lossy(o.key.as_deref().unwrap_or_default());
                    format!("{:?} {key} {}", o.destination, String::from_utf8_lossy(&o.payload))
                })
                .collect();
            assert_eq!(
                sent,
                [r#"Sink k0 { "type": "click",  "amount": 1.50 }"#, r#"DeadLetter k1 {"type": "click""#],
                "pipeline {pipeline}"
            );
        }
        let mut filtering = direct_engine("[{filter: {field: type, op: eq, value: click}}]");
        filtering.assign("events", 0, None);
        read(&mut filtering, "events", 0, Some("k0"), br#"{"type": "view"}"#, 0);
        assert!(filtering.take_outputs().is_empty(), "a filtered-out record is not sent");
        assert_eq!(filtering.commits(true).first().map(|c| c.offset), Some(1), "and its offset is committable");
    }

    /// A window result that a later stage rejects is counted as skipped, not lost unseen.
    #[test]
    fn a_window_result_a_later_stage_rejects_is_counted() {
        let pipeline = "[{split: {field: value}}, {keyBy: {field: value}}, \
                        {window: {size: 10s, aggregate: {function: count}}}, {keyBy: {field: absent}}]";
        let mut engine = engine(pipeline, SourceFormat::Text, Some(1), false);
        engine.assign(REPARTITION, 0, None);
        let window = 1_000 * SECOND;
        let now = window + 60 * SECOND;
        read(&mut engine, REPARTITION, 0, Some("fox"), &partial("lines/0", 0, 9, window, 2), now);
        read(&mut engine, REPARTITION, 1, None, &progress("lines/0", window + 20 * SECOND, true), now);
        engine.on_tick(now);
        assert!(sink_counts(&engine.take_outputs()).is_empty());
        assert_eq!(engine.totals.skipped.load(Ordering::Relaxed), 1);
    }

    /// A key that is not text (a serialized number, say) keeps its bytes through stages that
    /// change the value, so the sink partitions it as the source did.
    #[test]
    fn an_input_key_leaves_byte_for_byte() {
        let mut engine = direct_engine("[{map: {set: {seen: true}}}]");
        engine.assign("events", 0, None);
        let key = [0xff, 0x00, 0x80, b'k'];
        let input = Input {
            topic: "events",
            partition: 0,
            offset: 0,
            key: Some(&key),
            payload: Some(b"{}"),
            timestamp_ms: None,
        };
        engine.on_input(&input, 0);
        let outputs = engine.take_outputs();
        assert_eq!(outputs.len(), 1);
        assert_eq!(outputs[0].key.as_deref(), Some(&key[..]));
        assert_eq!(outputs[0].payload, br#"{"seen":true}"#);
    }

    /// A source partition commits only where a range of partials starts: a reset drops the
    /// ranges from its offset on, so a commit inside one would have the replay count its first
    /// records twice. A dead-lettered record inside a range holds the range's start.
    #[test]
    fn a_dead_lettered_record_holds_its_ranges_start_not_its_own_offset() {
        let summed = "[{split: {field: value}}, {keyBy: {field: value}}, \
                      {window: {size: 10s, aggregate: {function: sum, field: value}}}]";
        let mut engine = engine(summed, SourceFormat::Text, Some(1), true);
        engine.assign("lines", 0, None);
        read(&mut engine, "lines", 0, None, b"1", 0);
        read(&mut engine, "lines", 1, None, b"x", 0);
        read(&mut engine, "lines", 2, None, b"2", 0);
        engine.flush_all();
        for output in engine.take_outputs() {
            if let (Some(ticket), false) = (output.ticket, output.destination == Destination::DeadLetter) {
                engine.on_delivery(ticket, Ok(()), 0);
            }
        }
        assert_eq!(engine.commits(true).first().map(|c| c.offset), Some(0), "the dead letter is not acknowledged");
    }

    /// A record is processed whole or not at all: when one of its pieces fails, none of the
    /// others reach the window, and the record goes to the dead-letter topic.
    #[test]
    fn a_record_with_a_failing_piece_adds_nothing_to_its_window() {
        let summed = "[{split: {field: value}}, {keyBy: {field: value}}, \
                      {window: {size: 10s, aggregate: {function: sum, field: value}}}]";
        let mut engine = engine(summed, SourceFormat::Text, Some(1), true);
        engine.assign("lines", 0, None);
        read(&mut engine, "lines", 0, None, b"1 2 x", 0);
        read(&mut engine, "lines", 1, None, b"2 3", 0);
        engine.flush_all();
        let outputs = engine.take_outputs();
        let dead: Vec<_> = outputs.iter().filter(|o| o.destination == Destination::DeadLetter).collect();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].payload, b"1 2 x");
        let mut partials: Vec<(String, u64, f64)> = outputs
            .iter()
            .filter_map(|o| match serde_json::from_slice(&o.payload) {
                Ok(RepartitionMessage::Partial { accumulator, .. }) => Some((
                    String::from_utf8_lossy(o.key.as_deref().unwrap_or_default()).into_owned(),
                    accumulator.count,
                    accumulator.sum,
                )),
                _ => None,
            })
            .collect();
        partials.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(partials, [("2".to_owned(), 1, 2.0), ("3".to_owned(), 1, 3.0)]);
    }

    fn partial(src: &str, from: i64, to: i64, window: i64, count: u64) -> Vec<u8> {
        let accumulator = Accumulator { count, sum: count as f64, min: 1.0, max: 1.0 };
        RepartitionMessage::Partial { src: src.into(), from, to, window, accumulator }.encode()
    }

    fn progress(src: &str, watermark: i64, idle: bool) -> Vec<u8> {
        RepartitionMessage::Progress { src: src.into(), watermark, idle, through: -1 }.encode()
    }

    fn read(engine: &mut Engine, topic: &str, offset: i64, key: Option<&str>, payload: &[u8], now_ms: i64) {
        let input = Input {
            topic,
            partition: 0,
            offset,
            key: key.map(str::as_bytes),
            payload: Some(payload),
            timestamp_ms: Some(now_ms),
        };
        engine.on_input(&input, now_ms);
    }

    fn sink_counts(outputs: &[Output]) -> Vec<(String, i64)> {
        let mut counts: Vec<(String, i64)> = outputs
            .iter()
            .filter(|o| o.destination == Destination::Sink)
            .map(|o| {
                let value: serde_json::Value = serde_json::from_slice(&o.payload).expect("json result");
                (
                    format!("{}@{}", value["key"].as_str().unwrap_or_default(), value["windowStart"]),
                    value["count"].as_i64().unwrap_or(-1),
                )
            })
            .collect();
        counts.sort();
        counts
    }

    fn reset(src: &str, from: i64) -> Vec<u8> {
        RepartitionMessage::Reset { src: src.into(), from }.encode()
    }

    /// A source partition moves to a new owner that replays it from its last commit. Windows
    /// the replay refills wait for the new owner's progress, even when the old owner had
    /// reported it past their end: emitted early, they would miss the replayed records.
    #[test]
    fn a_reset_source_holds_its_windows_until_its_new_owner_reports_progress() {
        let window = 1_000 * SECOND;
        let mut engine = wordcount_engine();
        engine.assign(REPARTITION, 0, None);
        let now = window + 60 * SECOND;
        read(&mut engine, REPARTITION, 0, Some("fox"), &partial("lines/0", 100, 149, window, 2), now);
        read(&mut engine, REPARTITION, 1, Some("fox"), &partial("lines/0", 150, 199, window, 3), now);
        read(&mut engine, REPARTITION, 2, None, &progress("lines/0", window + 12 * SECOND, true), now);
        read(&mut engine, REPARTITION, 3, None, &reset("lines/0", 150), now);
        engine.on_tick(now);
        let early = sink_counts(&engine.take_outputs());
        assert!(early.is_empty(), "the window waits for the replay: {early:?}");

        read(&mut engine, REPARTITION, 4, Some("fox"), &partial("lines/0", 150, 199, window, 3), now);
        read(&mut engine, REPARTITION, 5, None, &progress("lines/0", window + 2 * SECOND, false), now);
        engine.on_tick(now);
        assert!(sink_counts(&engine.take_outputs()).is_empty(), "the source is not past the window's end");
        read(&mut engine, REPARTITION, 6, None, &progress("lines/0", window + 12 * SECOND, true), now);
        engine.on_tick(now);
        let start = format!("\"{}\"", pipeline::rfc3339(window));
        assert_eq!(sink_counts(&engine.take_outputs()), vec![(format!("fox@{start}"), 5)]);
        assert_eq!(engine.totals.late.load(Ordering::Relaxed), 0);
    }

    /// A new owner of a repartition partition replays from its commit. What it replays is
    /// older than its checkpoint: until the replay is through, no window is emitted, so a
    /// stale marker cannot close the open window early and the window comes out whole.
    #[test]
    fn a_replay_keeps_the_checkpointed_watermark_and_emits_the_open_window_whole() {
        let window = 1_000 * SECOND;
        let checkpoint = format!(r#"{{"wm":{},"to":4}}"#, window - SECOND);
        let mut engine = wordcount_engine();
        engine.assign(REPARTITION, 0, Some(&checkpoint));

        // Long after the window (a slow rebalance): the wall clock is far ahead of the data.
        let now = window + 60 * SECOND;
        read(&mut engine, REPARTITION, 0, Some("fox"), &partial("lines/0", 100, 199, window, 3), now);
        read(&mut engine, REPARTITION, 1, None, &progress("lines/0", window + 12 * SECOND, true), now);
        engine.on_tick(now);
        read(&mut engine, REPARTITION, 2, Some("fox"), &reset("lines/0", 200), now);
        read(&mut engine, REPARTITION, 3, Some("fox"), &partial("lines/0", 200, 300, window, 4), now);
        engine.on_tick(now);
        let early = sink_counts(&engine.take_outputs());
        assert!(early.is_empty(), "the window stays open until its source passes its end again: {early:?}");

        read(&mut engine, REPARTITION, 4, Some("fox"), &partial("lines/0", 301, 310, window, 1), now);
        read(&mut engine, REPARTITION, 5, None, &progress("lines/0", window + 11 * SECOND, false), now);
        engine.on_tick(now);
        let start = format!("\"{}\"", pipeline::rfc3339(window));
        assert_eq!(sink_counts(&engine.take_outputs()), vec![(format!("fox@{start}"), 8)]);
    }

    /// A partial for a window already emitted is late only when it is no replay: its records
    /// are counted (all of them, not one per partial), and a replay is counted nowhere.
    #[test]
    fn late_partials_count_their_records_and_replays_count_nowhere() {
        let window = 1_000 * SECOND;
        let mut engine = wordcount_engine();
        engine.assign(REPARTITION, 0, None);
        let now = window + 60 * SECOND;
        read(&mut engine, REPARTITION, 0, Some("fox"), &partial("lines/0", 0, 9, window, 2), now);
        read(&mut engine, REPARTITION, 1, None, &progress("lines/0", window + 20 * SECOND, false), now);
        engine.on_tick(now);
        assert_eq!(sink_counts(&engine.take_outputs()).len(), 1);
        read(&mut engine, REPARTITION, 2, None, &reset("lines/0", 0), now);
        read(&mut engine, REPARTITION, 3, Some("fox"), &partial("lines/0", 0, 9, window, 2), now);
        assert_eq!(engine.totals.late.load(Ordering::Relaxed), 0, "a replay is absorbed");
        read(&mut engine, REPARTITION, 4, Some("fox"), &partial("lines/0", 10, 19, window, 5), now);
        assert_eq!(engine.totals.late.load(Ordering::Relaxed), 5);
        assert_eq!(engine.totals.skipped.load(Ordering::Relaxed), 5);
    }
}
