//! The worker's Prometheus metrics (prefix `streamjob_worker`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: String,
}

impl PartitionLabels {
    pub fn new(topic: &str, partition: i32) -> Self {
        Self { topic: topic.to_owned(), partition: partition.to_string() }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

pub struct WorkerMetrics {
    registry: Registry,
    pub records_in: Family<PartitionLabels, Counter>,
    pub records_out: Family<PartitionLabels, Counter>,
    pub records_dead_lettered: Family<PartitionLabels, Counter>,
    pub records_skipped: Family<PartitionLabels, Counter>,
    pub records_late: Family<PartitionLabels, Counter>,
    pub replayed_partials_discarded: Family<PartitionLabels, Counter>,
    pub processing_latency: Histogram,
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    pub commits: Family<ResultLabel, Counter>,
    pub rebalances: Family<KindLabel, Counter>,
    pub delivery_errors: Counter,
    pub rewinds: Counter,
    pub open_windows: Gauge,
    pub open_keys: Gauge,
    pub assigned_partitions: Gauge,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("streamjob_worker");
        let records_in = Family::<PartitionLabels, Counter>::default();
        registry.register("records_in", "Records read, by input topic and partition", records_in.clone());
        let records_out = Family::<PartitionLabels, Counter>::default();
        registry.register(
            "records_out",
            "Results acknowledged by the sink, by the input topic and partition they came from",
            records_out.clone(),
        );
        let records_dead_lettered = Family::<PartitionLabels, Counter>::default();
        registry.register(
            "records_dead_lettered",
            "Records sent to the dead-letter topic (failed or late)",
            records_dead_lettered.clone(),
        );
        let records_skipped = Family::<PartitionLabels, Counter>::default();
        registry.register(
            "records_skipped",
            "Records that failed or came late and were skipped: no dead-letter topic is set",
            records_skipped.clone(),
        );
        let records_late = Family::<PartitionLabels, Counter>::default();
        registry.register("records_late", "Records later than the window's allowed lateness", records_late.clone());
        let replayed_partials_discarded = Family::<PartitionLabels, Counter>::default();
        registry.register(
            "replayed_partials_discarded",
            "Partial aggregates replayed after a restart for windows already emitted",
            replayed_partials_discarded.clone(),
        );
        let processing_latency = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "processing_latency_seconds",
            "From a record's input timestamp to its result acknowledged by the sink",
            processing_latency.clone(),
        );
        let consumer_lag = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "consumer_lag_records",
            "Lag of an assigned partition as this worker sees it",
            consumer_lag.clone(),
        );
        let commits = Family::<ResultLabel, Counter>::default();
        registry.register("commits", "Offset commits, by result", commits.clone());
        let rebalances = Family::<KindLabel, Counter>::default();
        registry.register("rebalances", "Partitions assigned or revoked, by kind", rebalances.clone());
        let delivery_errors = Counter::default();
        registry.register("delivery_errors", "Produce requests that failed for good", delivery_errors.clone());
        let rewinds = Counter::default();
        registry.register(
            "rewinds",
            "Times the worker went back to its committed offsets after an error",
            rewinds.clone(),
        );
        let open_windows = Gauge::default();
        registry.register("open_windows", "Windows not yet emitted", open_windows.clone());
        let open_keys = Gauge::default();
        registry.register("open_keys", "Keys held in open windows", open_keys.clone());
        let assigned_partitions = Gauge::default();
        registry.register("assigned_partitions", "Partitions assigned to this worker", assigned_partitions.clone());
        Self {
            registry,
            records_in,
            records_out,
            records_dead_lettered,
            records_skipped,
            records_late,
            replayed_partials_discarded,
            processing_latency,
            consumer_lag,
            commits,
            rebalances,
            delivery_errors,
            rewinds,
            open_windows,
            open_keys,
            assigned_partitions,
        }
    }
}

impl crate::http::Exposition for WorkerMetrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}
