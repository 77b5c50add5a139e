//! The worker's processing core, without Kafka: records in, outputs and committable offsets out.
//!
//! The Kafka loop feeds it records, acknowledgements and clock ticks, sends the outputs it
//! queues, and commits the offsets it reports. Everything that decides what is safe to commit
//! lives here, so it is tested without a broker.
//!
//! Two shapes of job:
//! - without a window, each record runs through the stages and goes to the sink
//!   ([`direct`]);
//! - with a window, the source stage sends partial aggregates through the repartition topic
//!   (see [`crate::repartition`], [`source`]) and the aggregating stage, reading that topic,
//!   emits each window once its watermark passes the window's end ([`aggregate`]).
//!
//! Each assigned partition has one [`Stage`], chosen by its role; as in Arroyo's operators,
//! the stage takes the partition's records and ticks and writes into an [`Outbox`]. This file
//! is the facade that routes to them; [`commit`] holds acknowledgements, commits and rewinds.

mod aggregate;
mod commit;
mod dead_letter;
mod direct;
mod outbox;
mod slots;
mod source;
mod types;

pub use types::{record_size, Commit, Destination, EngineSettings, Input, Output, RecordLimits, Ticket, Totals};

use std::sync::Arc;

use aggregate::{AggregateStage, ExpectedSources};
use direct::DirectStage;
use outbox::Outbox;
use slots::Slots;
use source::SourceStage;

use crate::liveness::Fields;
use crate::metrics::WorkerMetrics;
use crate::offsets::PartitionProgress;
use crate::pipeline::{self, CompiledPipeline};
use crate::repartition::source_id;
use crate::undeliverable::PoisonedInputs;

pub struct Engine {
    job: Job,
    metrics: Arc<WorkerMetrics>,
    totals: Arc<Totals>,
    slots: Slots,
    outbox: Vec<Output>,
    failure: Option<String>,
    /// The broker's reason when the failure is the sink refusing records (see
    /// [`crate::sink_refusal`]).
    refused: Option<String>,
    last_flush_ms: i64,
    /// Inputs whose outputs no retry can deliver, for when the rewind reads them again.
    poisoned: PoisonedInputs,
}

/// What every stage reads of the job.
struct Job {
    settings: EngineSettings,
    pipeline: CompiledPipeline,
    /// Records leave as they came (see [`direct::forwards_input_unchanged`]).
    forward_input: bool,
    /// What the filters read of a record that is forwarded.
    forward_fields: Fields,
    /// The source partitions whose progress every window waits for.
    expected: ExpectedSources,
    /// The largest records the sink and dead-letter topics take.
    limits: RecordLimits,
    /// The pipeline fingerprint (`streamjob_crds::fingerprint`), in every repartition message
    /// and aggregate checkpoint; 0 when not set (engine tests).
    pipeline_fingerprint: u64,
}

impl Job {
    fn is_repartition_topic(&self, topic: &str) -> bool {
        self.settings.repartition.as_ref().is_some_and(|(name, _)| name == topic)
    }

    fn repartition_partitions(&self) -> Option<i32> {
        self.settings.repartition.as_ref().map(|(_, partitions)| *partitions)
    }
}

/// What a partition does in the job.
enum Role {
    Direct(DirectStage),
    Source(SourceStage),
    Aggregate(AggregateStage),
}

impl Role {
    fn stage(&self) -> &dyn Stage {
        match self {
            Self::Direct(stage) => stage,
            Self::Source(stage) => stage,
            Self::Aggregate(stage) => stage,
        }
    }

    fn stage_mut(&mut self) -> &mut dyn Stage {
        match self {
            Self::Direct(stage) => stage,
            Self::Source(stage) => stage,
            Self::Aggregate(stage) => stage,
        }
    }
}

/// One role's processing of a partition.
trait Stage {
    fn on_record(&mut self, input: &Input<'_>, out: &mut Outbox<'_>);

    /// Time passes; `flush_due` when what is held back is due to be sent on.
    fn on_tick(&mut self, _now_ms: i64, _flush_due: bool, _out: &mut Outbox<'_>) {}

    /// Sends what the stage holds back, as before a revocation or a shutdown.
    fn flush(&mut self, _out: &mut Outbox<'_>) {}

    /// Whether this worker has read the partition to its end.
    fn observe_end(&mut self, _at_end: bool, _now_ms: i64) {}

    /// What a commit of the partition keeps of the stage.
    fn checkpoint(&self, progress: &PartitionProgress, include_unacknowledged: bool, job: &Job) -> Checkpoint;

    /// The open windows and their keys, for the gauges.
    fn open_windows_and_keys(&self) -> (usize, usize) {
        (0, 0)
    }
}

#[derive(Default)]
struct Checkpoint {
    /// The oldest offset the stage still needs: a commit stays at or before it.
    hold: Option<i64>,
    metadata: Option<String>,
}

impl Engine {
    pub fn new(
        settings: EngineSettings,
        pipeline: CompiledPipeline,
        metrics: Arc<WorkerMetrics>,
        totals: Arc<Totals>,
    ) -> Self {
        let job = Job {
            forward_input: direct::forwards_input_unchanged(&pipeline, settings.source_format, settings.sink_format),
            forward_fields: pipeline::fields_read_by(&pipeline.before_window),
            settings,
            pipeline,
            expected: ExpectedSources::default(),
            limits: RecordLimits::default(),
            pipeline_fingerprint: 0,
        };
        Self {
            job,
            metrics,
            totals,
            slots: Slots::default(),
            outbox: Vec::new(),
            failure: None,
            refused: None,
            last_flush_ms: 0,
            poisoned: PoisonedInputs::default(),
        }
    }

    /// The job's source partitions (as [`source_id`]s): every window waits until each has
    /// reported its progress.
    pub fn expect_sources(&mut self, ids: Vec<String>) {
        self.job.expected = ExpectedSources::new(ids);
    }

    /// The largest records the sink and dead-letter topics take: a result larger than the sink
    /// takes is dead-lettered (its input, with the reason) instead of being sent to fail.
    pub fn limit_record_sizes(&mut self, limits: RecordLimits) {
        self.job.limits = limits;
    }

    /// The pipeline fingerprint this worker sends, and the only one whose partials it merges.
    pub fn set_pipeline_fingerprint(&mut self, fingerprint: u64) {
        self.job.pipeline_fingerprint = fingerprint;
    }

    /// Whether this worker has read a source partition to its end (as the consumer's position
    /// and the partition's high watermark show): the partition is idle once it stays there
    /// for the idle timeout.
    pub fn observe_end(&mut self, topic: &str, partition: i32, at_end: bool, now_ms: i64) {
        if let Some(index) = self.slots.find_assigned(topic, partition) {
            self.slots[index].role.stage_mut().observe_end(at_end, now_ms);
        }
    }

    /// A partition was assigned. `metadata` is its committed metadata, if any.
    pub fn assign(&mut self, topic: &str, partition: i32, metadata: Option<&str>) {
        let role = if self.job.is_repartition_topic(topic) {
            Role::Aggregate(AggregateStage::restore(metadata, self.job.pipeline_fingerprint))
        } else if self.job.pipeline.window.is_some() {
            Role::Source(SourceStage::new(source_id(topic, partition)))
        } else {
            Role::Direct(DirectStage)
        };
        self.slots.assign(topic, partition, metadata, role, &self.metrics);
        self.update_gauges();
    }

    /// Before a partition is revoked: send what its source stage still holds.
    pub fn prepare_revoke(&mut self, topic: &str, partition: i32) {
        if let Some(index) = self.slots.find(topic, partition) {
            self.with_stage(index, |stage, out| stage.flush(out));
        }
    }

    /// The partition is gone: its state is dropped and late acknowledgements are ignored.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        if let Some(index) = self.slots.find(topic, partition) {
            self.slots.revoke(index, Role::Direct(DirectStage));
        }
        self.update_gauges();
    }

    pub fn assigned(&self) -> Vec<(String, i32)> {
        self.slots.assigned().map(|s| (s.topic.clone(), s.partition)).collect()
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
        let Some(index) = self.slots.find_assigned(input.topic, input.partition) else {
            tracing::debug!(topic = input.topic, partition = input.partition, "record of an unassigned partition");
            return;
        };
        let slot = &mut self.slots[index];
        slot.progress.read(input.offset);
        if slot.rewind_to.is_none() {
            slot.rewind_to = Some(input.offset);
        }
        slot.records_in.inc();
        self.with_stage(index, |stage, out| stage.on_record(input, out));
    }

    /// Time passes: partial aggregates are sent on, idle sources marked, windows emitted.
    pub fn on_tick(&mut self, now_ms: i64) {
        let flush_due = now_ms - self.last_flush_ms >= self.job.settings.flush_interval_ms;
        if flush_due {
            self.last_flush_ms = now_ms;
        }
        for index in 0..self.slots.len() {
            if self.slots[index].assigned {
                self.with_stage(index, |stage, out| stage.on_tick(now_ms, flush_due, out));
            }
        }
        self.update_gauges();
    }

    /// Sends everything held, as before a revocation or a shutdown.
    pub fn flush_all(&mut self) {
        for index in 0..self.slots.len() {
            if self.slots[index].assigned {
                self.with_stage(index, |stage, out| stage.flush(out));
            }
        }
    }

    /// Lends the stage of the partition in slot `index` its outbox.
    fn with_stage<R>(&mut self, index: usize, call: impl FnOnce(&mut dyn Stage, &mut Outbox<'_>) -> R) -> R {
        let slot = &mut self.slots[index];
        let mut out = Outbox {
            job: &self.job,
            metrics: &self.metrics,
            totals: &self.totals,
            poisoned: &self.poisoned,
            outputs: &mut self.outbox,
            slot: index,
            epoch: slot.epoch,
            labels: &slot.labels,
            progress: &mut slot.progress,
        };
        call(slot.role.stage_mut(), &mut out)
    }

    fn update_gauges(&self) {
        let (mut windows, mut keys) = (0, 0);
        for slot in self.slots.assigned() {
            let (slot_windows, slot_keys) = slot.role.stage().open_windows_and_keys();
            windows += slot_windows;
            keys += slot_keys;
        }
        self.metrics.open_windows.set(windows as i64);
        self.metrics.open_keys.set(keys as i64);
        self.metrics.assigned_partitions.set(self.slots.assigned().count() as i64);
    }
}

#[cfg(test)]
mod dead_letter_tests;

#[cfg(test)]
mod failover_tests;

#[cfg(test)]
mod undeliverable_tests;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod pipeline_change_tests;
