//! The worker's Prometheus metrics (prefix `streamjob_worker`).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use streamjob_runtime::metrics::registered;

pub use streamjob_runtime::metrics::PartitionLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// A record skipped for good: where it came from, which stage, and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    pub topic: String,
    pub partition: String,
    pub stage: String,
    pub reason: String,
}

impl SkipLabels {
    pub fn new(partition: &PartitionLabels, stage: &str, reason: &str) -> Self {
        Self {
            topic: partition.topic.clone(),
            partition: partition.partition.clone(),
            stage: stage.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

pub struct WorkerMetrics {
    registry: Registry,
    /// Why the worker cannot do its work now, whatever its group membership says: `/readyz`
    /// fails with it (a sink the broker refuses).
    pub not_ready_because: std::sync::Mutex<Option<String>>,
    pub held_partitions: Gauge,
    pub partition_start_retries: Counter,
    pub sink_refused: Family<ReasonLabel, Gauge>,
    pub records_in: Family<PartitionLabels, Counter>,
    pub records_out: Family<PartitionLabels, Counter>,
    pub records_dead_lettered: Family<PartitionLabels, Counter>,
    pub records_skipped: Family<SkipLabels, Counter>,
    pub records_late: Family<PartitionLabels, Counter>,
    pub replayed_partials_discarded: Family<PartitionLabels, Counter>,
    pub other_pipeline_partials_discarded: Family<PartitionLabels, Counter>,
    pub other_pipeline_records_discarded: Family<PartitionLabels, Counter>,
    pub processing_latency: Histogram,
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    pub commits: Family<ResultLabel, Counter>,
    pub rebalances: Family<KindLabel, Counter>,
    pub delivery_errors: Counter,
    pub rewinds: Counter,
    pub offset_resets: Family<PartitionLabels, Counter>,
    pub records_passed_over_by_reset: Family<PartitionLabels, Counter>,
    pub records_undeliverable: Family<PartitionLabels, Counter>,
    pub open_windows: Gauge,
    pub open_keys: Gauge,
    pub assigned_partitions: Gauge,
    pub busy_seconds: Counter<f64, AtomicU64>,
    pub records_per_busy_second: Gauge<f64, AtomicU64>,
    pub busy_share: Gauge<f64, AtomicU64>,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("streamjob_worker");
        Self {
            not_ready_because: std::sync::Mutex::new(None),
            held_partitions: registered(
                &mut registry,
                "held_partitions",
                "Partitions assigned but not read: their committed offset cannot be read yet (a dead worker's open transaction, a timeout), retried with back-off",
                Gauge::default(),
            ),
            partition_start_retries: registered(
                &mut registry,
                "partition_start_retries",
                "Failed reads of a held partition's committed offset, each retried after a back-off",
                Counter::default(),
            ),
            sink_refused: registered(
                &mut registry,
                "sink_refused",
                "1 while the broker refuses the sink topic (deleted, not authorized), with its reason: the worker backs off and retries",
                Family::default(),
            ),
            records_in: registered(
                &mut registry,
                "records_in",
                "Records read, by input topic and partition",
                Family::default(),
            ),
            records_out: registered(
                &mut registry,
                "records_out",
                "Results acknowledged by the sink, by the input topic and partition they came from",
                Family::default(),
            ),
            records_dead_lettered: registered(
                &mut registry,
                "records_dead_lettered",
                "Records sent to the dead-letter topic (failed, late or undeliverable), by the records they stand for",
                Family::default(),
            ),
            records_skipped: registered(
                &mut registry,
                "records_skipped",
                "Records dropped for good with no dead-letter topic to take them, by input partition, stage and reason (decode, type-mismatch, missing-field, non-finite, late, too-large, undeliverable, internal)",
                Family::default(),
            ),
            records_late: registered(
                &mut registry,
                "records_late",
                "Records that came after their window was closed (past the allowed lateness); a replay of counted records is not late",
                Family::default(),
            ),
            replayed_partials_discarded: registered(
                &mut registry,
                "replayed_partials_discarded",
                "Partial aggregates a replay brought again for windows already emitted: already counted, so dropped and counted nowhere else",
                Family::default(),
            ),
            other_pipeline_partials_discarded: registered(
                &mut registry,
                "other_pipeline_partials_discarded",
                "Partial aggregates on the repartition topic from a worker of another pipeline (another fingerprint: the window, aggregate or a stage feeding them changed), by repartition partition: never merged",
                Family::default(),
            ),
            other_pipeline_records_discarded: registered(
                &mut registry,
                "other_pipeline_records_discarded",
                "Contributions (records after the stages before the window: words for a word count) in the discarded partials of another pipeline (see other_pipeline_partials_discarded)",
                Family::default(),
            ),
            processing_latency: registered(
                &mut registry,
                "processing_latency_seconds",
                "From a record's input timestamp to its result acknowledged by the sink",
                Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            ),
            consumer_lag: registered(
                &mut registry,
                "consumer_lag_records",
                "Lag of an assigned partition as this worker sees it",
                Family::default(),
            ),
            commits: registered(&mut registry, "commits", "Offset commits, by result", Family::default()),
            rebalances: registered(
                &mut registry,
                "rebalances",
                "Partitions assigned or revoked, by kind",
                Family::default(),
            ),
            delivery_errors: registered(
                &mut registry,
                "delivery_errors",
                "Produce requests that failed for good",
                Counter::default(),
            ),
            rewinds: registered(
                &mut registry,
                "rewinds",
                "Times the worker went back to its committed offsets after an error",
                Counter::default(),
            ),
            offset_resets: registered(
                &mut registry,
                "offset_resets",
                "Committed offsets the broker no longer had (deleted by retention, say): reading went on where startFrom says",
                Family::default(),
            ),
            records_passed_over_by_reset: registered(
                &mut registry,
                "records_passed_over_by_offset_reset",
                "Records an offset reset jumped over unread: deleted by retention before the job read them, or skipped to the end (startFrom: latest)",
                Family::default(),
            ),
            records_undeliverable: registered(
                &mut registry,
                "records_undeliverable",
                "Outputs no retry can deliver (too large for the topic, a dead-letter topic that cannot exist): their input is dead-lettered or skipped",
                Family::default(),
            ),
            open_windows: registered(&mut registry, "open_windows", "Windows not yet emitted", Gauge::default()),
            open_keys: registered(&mut registry, "open_keys", "Keys held in open windows", Gauge::default()),
            assigned_partitions: registered(
                &mut registry,
                "assigned_partitions",
                "Partitions assigned to this worker",
                Gauge::default(),
            ),
            busy_seconds: registered(
                &mut registry,
                "busy_seconds",
                "Time spent processing records, windows and outputs; waiting for input, the producer's queue or a commit is not counted",
                Counter::default(),
            ),
            records_per_busy_second: registered(
                &mut registry,
                "records_per_busy_second",
                "Source records processed per second of busy time over the last 10 s: what this worker can do, reported to the autoscaler",
                Gauge::default(),
            ),
            busy_share: registered(
                &mut registry,
                "busy_ratio",
                "Busy time over wall time in the last 10 s",
                Gauge::default(),
            ),
            registry,
        }
    }
}

impl streamjob_runtime::http::Exposition for WorkerMetrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn not_ready_reason(&self) -> Option<String> {
        streamjob_runtime::sync::lock(&self.not_ready_because).clone()
    }
}
