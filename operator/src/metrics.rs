//! The operator's Prometheus metrics.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub namespace: String,
    pub job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub namespace: String,
    pub job: String,
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub namespace: String,
    pub job: String,
    pub reason: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ReasonLabel, Counter>,
    pub reconcile_duration: Histogram,
    pub jobs_by_phase: Family<PhaseLabel, Gauge>,
    pub leader: Gauge,
    pub job_lag: Family<JobLabels, Gauge>,
    pub partition_lag: Family<PartitionLabels, Gauge>,
    pub desired_replicas: Family<JobLabels, Gauge>,
    pub ready_replicas: Family<JobLabels, Gauge>,
    pub scale_decisions: Family<DecisionLabels, Counter>,
    pub probe_errors: Family<JobLabels, Counter>,
    pub degraded_jobs: Family<JobLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("streamjob_operator");
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        let reconcile_errors = Family::<ReasonLabel, Counter>::default();
        registry.register("reconcile_errors", "Reconciles that failed, by reason", reconcile_errors.clone());
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register("reconcile_duration_seconds", "Time one reconcile takes", reconcile_duration.clone());
        let jobs_by_phase = Family::<PhaseLabel, Gauge>::default();
        registry.register("jobs", "StreamJobs by phase", jobs_by_phase.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica holds the leader lease", leader.clone());
        let job_lag = Family::<JobLabels, Gauge>::default();
        registry.register("job_lag_records", "Consumer-group lag of a job", job_lag.clone());
        let partition_lag = Family::<PartitionLabels, Gauge>::default();
        registry.register("partition_lag_records", "Consumer-group lag of one partition", partition_lag.clone());
        let desired_replicas = Family::<JobLabels, Gauge>::default();
        registry.register("desired_replicas", "Workers the operator wants", desired_replicas.clone());
        let ready_replicas = Family::<JobLabels, Gauge>::default();
        registry.register("ready_replicas", "Workers ready", ready_replicas.clone());
        let scale_decisions = Family::<DecisionLabels, Counter>::default();
        registry.register("scale_decisions", "Autoscaler decisions, by reason", scale_decisions.clone());
        let probe_errors = Family::<JobLabels, Counter>::default();
        registry.register("lag_probe_errors", "Failed lag measurements", probe_errors.clone());
        let degraded_jobs = Family::<JobLabels, Gauge>::default();
        registry.register("job_degraded", "1 while a job's Degraded condition is True", degraded_jobs.clone());
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            jobs_by_phase,
            leader,
            job_lag,
            partition_lag,
            desired_replicas,
            ready_replicas,
            scale_decisions,
            probe_errors,
            degraded_jobs,
        }
    }
}

impl Metrics {
    /// Records one finished reconcile.
    pub fn observe_reconcile(&self, took: Duration, error_reason: Option<&str>) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
        if let Some(reason) = error_reason {
            self.reconcile_errors.get_or_create(&ReasonLabel { reason: reason.to_owned() }).inc();
        }
    }
}

impl streamjob_worker::http::Exposition for Metrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}
