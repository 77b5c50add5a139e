//! The operator's Prometheus metrics.

use std::collections::HashMap;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use streamjob_crds::StreamJob;
use streamjob_runtime::metrics::registered;
use streamjob_runtime::metrics::PartitionLabels;

use crate::controller::job_key;

/// Why a reconcile failed: the API server's answer (see `controller::Error::reason`) and the
/// step (`controller::Error::category`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: String,
    pub step: String,
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

impl JobLabels {
    pub fn of(job: &StreamJob) -> Self {
        let (namespace, job) = job_key(job);
        Self { namespace, job }
    }
}

/// One partition of a job's source topics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobPartitionLabels {
    #[prometheus(flatten)]
    pub job: JobLabels,
    #[prometheus(flatten)]
    pub partition: PartitionLabels,
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
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub jobs_by_phase: Family<PhaseLabel, Gauge>,
    pub leader: Gauge,
    pub job_lag: Family<JobLabels, Gauge>,
    pub partition_lag: Family<JobPartitionLabels, Gauge>,
    pub desired_replicas: Family<JobLabels, Gauge>,
    pub ready_replicas: Family<JobLabels, Gauge>,
    pub scale_decisions: Family<DecisionLabels, Counter>,
    pub probe_errors: Family<JobLabels, Counter>,
    pub degraded_jobs: Family<JobLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("streamjob_operator");
        Self {
            reconciles: registered(&mut registry, "reconciles", "Reconciles run", Counter::default()),
            reconcile_errors: registered(
                &mut registry,
                "reconcile_errors",
                "Reconciles that failed, by the API server's answer and the step that failed",
                Family::default(),
            ),
            reconcile_duration: registered(
                &mut registry,
                "reconcile_duration_seconds",
                "Time one reconcile takes",
                Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            ),
            jobs_by_phase: registered(&mut registry, "jobs", "StreamJobs by phase", Family::default()),
            leader: registered(
                &mut registry,
                "leader",
                "1 while this replica holds the leader lease",
                Gauge::default(),
            ),
            job_lag: registered(&mut registry, "job_lag_records", "Consumer-group lag of a job", Family::default()),
            partition_lag: registered(
                &mut registry,
                "partition_lag_records",
                "Consumer-group lag of one partition",
                Family::default(),
            ),
            desired_replicas: registered(
                &mut registry,
                "desired_replicas",
                "Workers the operator wants",
                Family::default(),
            ),
            ready_replicas: registered(&mut registry, "ready_replicas", "Workers ready", Family::default()),
            scale_decisions: registered(
                &mut registry,
                "scale_decisions",
                "Autoscaler decisions, by reason",
                Family::default(),
            ),
            probe_errors: registered(&mut registry, "lag_probe_errors", "Failed lag measurements", Family::default()),
            degraded_jobs: registered(
                &mut registry,
                "job_degraded",
                "1 while a job's Degraded condition is True",
                Family::default(),
            ),
            registry,
        }
    }
}

impl Metrics {
    /// Records one finished reconcile.
    pub fn observe_reconcile(&self, took: Duration, failure: Option<&ErrorLabels>) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
        if let Some(labels) = failure {
            self.reconcile_errors.get_or_create(labels).inc();
        }
    }

    /// Counts jobs by phase for the `jobs` gauge.
    pub fn record_phases<'a>(&self, jobs: impl Iterator<Item = &'a StreamJob>) {
        let mut counts: HashMap<String, i64> = HashMap::new();
        for job in jobs {
            let phase = job.status.as_ref().and_then(|s| s.phase).map_or("Unknown".to_owned(), |p| format!("{p:?}"));
            *counts.entry(phase).or_default() += 1;
        }
        for phase in ["Pending", "Running", "Scaling", "Suspended", "Degraded", "Failed", "Unknown"] {
            let count = counts.get(phase).copied().unwrap_or(0);
            self.jobs_by_phase.get_or_create(&PhaseLabel { phase: phase.to_owned() }).set(count);
        }
    }
}

impl streamjob_runtime::http::Exposition for Metrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamjob_runtime::http::Exposition;

    #[test]
    fn partition_lag_is_labelled_by_job_then_partition() {
        let metrics = Metrics::default();
        let job = JobLabels { namespace: "team".into(), job: "j".into() };
        let labels = JobPartitionLabels { job, partition: PartitionLabels::new("in", 0) };
        metrics.partition_lag.get_or_create(&labels).set(5);
        let text = metrics.encode();
        let line = r#"streamjob_operator_partition_lag_records{namespace="team",job="j",topic="in",partition="0"} 5"#;
        assert!(text.contains(line), "{text}");
    }
}
