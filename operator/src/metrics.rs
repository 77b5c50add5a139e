//! The operator's Prometheus metrics.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
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
use streamjob_runtime::sync::lock;

use crate::controller::job_key;

/// The `kind`s of [`crate::autoscaler::policy::Decision`], the `reason` label of
/// `scale_decisions`: every series a job may have there.
pub const DECISION_KINDS: &[&str] = &["hold", "scale-up", "scale-down", "steady", "stabilizing", "wake", "to-zero"];

/// Every phase the `jobs` gauge reports.
pub const PHASES: &[&str] = &["Pending", "Running", "Scaling", "Suspended", "Degraded", "Failed", "Unknown"];

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
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
    /// The jobs that have per-job series, with the partitions of their `partition_lag` series:
    /// what [`Metrics::forget_jobs_except`] removes when a job is gone.
    series: Mutex<HashMap<JobLabels, BTreeSet<(String, String)>>>,
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
            series: Mutex::default(),
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

    /// Counts jobs by phase for the `jobs` gauge: every watched namespace's jobs in one call.
    pub fn record_phases<'a>(&self, jobs: impl Iterator<Item = &'a StreamJob>) {
        let mut counts: HashMap<String, i64> = HashMap::new();
        for job in jobs {
            let phase = job.status.as_ref().and_then(|s| s.phase).map_or("Unknown".to_owned(), |p| format!("{p:?}"));
            *counts.entry(phase).or_default() += 1;
        }
        for phase in PHASES {
            let count = counts.get(*phase).copied().unwrap_or(0);
            self.jobs_by_phase.get_or_create(&PhaseLabel { phase: (*phase).to_owned() }).set(count);
        }
    }

    /// Notes that `job` has per-job series, so that they go with it.
    pub fn track_job(&self, job: &JobLabels) {
        lock(&self.series).entry(job.clone()).or_default();
    }

    /// Sets the lag of each of the job's partitions, and removes the series of partitions the
    /// job no longer reads (its topics changed).
    pub fn set_partition_lags(&self, job: &JobLabels, lags: impl IntoIterator<Item = (PartitionLabels, i64)>) {
        let mut series = lock(&self.series);
        let known = series.entry(job.clone()).or_default();
        let mut now = BTreeSet::new();
        for (partition, lag) in lags {
            let labels = JobPartitionLabels { job: job.clone(), partition };
            self.partition_lag.get_or_create(&labels).set(lag);
            now.insert((labels.partition.topic, labels.partition.partition));
        }
        for (topic, partition) in known.difference(&now) {
            let partition = PartitionLabels { topic: topic.clone(), partition: partition.clone() };
            self.partition_lag.remove(&JobPartitionLabels { job: job.clone(), partition });
        }
        *known = now;
    }

    /// Removes the lag series of a job the autoscaler no longer measures (autoscaling turned
    /// off, suspended, paused); its other series stay while it exists.
    pub fn forget_lag(&self, job: &JobLabels) {
        self.set_partition_lags(job, std::iter::empty());
        self.job_lag.remove(job);
    }

    /// Removes every per-job series of the jobs not in `present`: a deleted job's lag, replicas
    /// and `job_degraded` go with it (an alert on them stops firing), in every namespace.
    pub fn forget_jobs_except(&self, present: &HashSet<JobLabels>) {
        let mut series = lock(&self.series);
        let gone: Vec<JobLabels> = series.keys().filter(|job| !present.contains(*job)).cloned().collect();
        for job in gone {
            for (topic, partition) in series.remove(&job).unwrap_or_default() {
                let partition = PartitionLabels { topic, partition };
                self.partition_lag.remove(&JobPartitionLabels { job: job.clone(), partition });
            }
            for family in [&self.job_lag, &self.desired_replicas, &self.ready_replicas, &self.degraded_jobs] {
                family.remove(&job);
            }
            self.probe_errors.remove(&job);
            for kind in DECISION_KINDS {
                let JobLabels { namespace, job } = job.clone();
                self.scale_decisions.remove(&DecisionLabels { namespace, job, reason: (*kind).to_owned() });
            }
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

    fn labels(namespace: &str, job: &str) -> JobLabels {
        JobLabels { namespace: namespace.into(), job: job.into() }
    }

    /// Every series line of `text` naming `job="<job>"`.
    fn series_of(text: &str, job: &str) -> Vec<String> {
        let needle = format!("job=\"{job}\"");
        text.lines().filter(|l| !l.starts_with('#') && l.contains(&needle)).map(str::to_owned).collect()
    }

    #[test]
    fn a_gone_jobs_series_are_removed_and_the_others_stay() {
        let metrics = Metrics::default();
        for name in ["gone", "kept"] {
            let job = labels("team", name);
            metrics.track_job(&job);
            metrics.job_lag.get_or_create(&job).set(7);
            metrics.desired_replicas.get_or_create(&job).set(2);
            metrics.ready_replicas.get_or_create(&job).set(2);
            metrics.degraded_jobs.get_or_create(&job).set(1);
            metrics.probe_errors.get_or_create(&job).inc();
            let decision = DecisionLabels { namespace: "team".into(), job: name.into(), reason: "scale-up".into() };
            metrics.scale_decisions.get_or_create(&decision).inc();
            metrics.set_partition_lags(&job, [(PartitionLabels::new("in", 0), 3), (PartitionLabels::new("in", 1), 4)]);
        }
        let before = metrics.encode();
        assert_eq!(series_of(&before, "gone").len(), 8, "{before}");
        metrics.forget_jobs_except(&HashSet::from([labels("team", "kept")]));
        let after = metrics.encode();
        assert_eq!(series_of(&after, "gone"), Vec::<String>::new());
        assert_eq!(series_of(&after, "kept").len(), 8, "{after}");
    }

    #[test]
    fn partitions_no_longer_read_lose_their_series() {
        let metrics = Metrics::default();
        let job = labels("team", "j");
        metrics.set_partition_lags(&job, [(PartitionLabels::new("old", 0), 3), (PartitionLabels::new("new", 0), 1)]);
        metrics.set_partition_lags(&job, [(PartitionLabels::new("new", 0), 2)]);
        let text = metrics.encode();
        assert!(!text.contains("topic=\"old\""), "{text}");
        assert!(text.contains("topic=\"new\""), "{text}");
        metrics.forget_lag(&job);
        assert_eq!(series_of(&metrics.encode(), "j"), Vec::<String>::new());
    }

    #[test]
    fn phases_count_the_jobs_of_every_namespace_together() {
        let metrics = Metrics::default();
        let job = |namespace: &str, phase: Option<streamjob_crds::Phase>| {
            let mut job = StreamJob::new(
                "j",
                serde_json::from_value(serde_json::json!({
                    "source": {"bootstrapServers": "k:9092", "topics": ["in"]},
                    "sink": {"topic": "out"}
                }))
                .expect("spec"),
            );
            job.metadata.namespace = Some(namespace.into());
            job.status = Some(streamjob_crds::StreamJobStatus { phase, ..Default::default() });
            job
        };
        let jobs = [
            job("a", Some(streamjob_crds::Phase::Running)),
            job("b", Some(streamjob_crds::Phase::Running)),
            job("b", None),
        ];
        metrics.record_phases(jobs.iter());
        let text = metrics.encode();
        assert!(text.contains(r#"streamjob_operator_jobs{phase="Running"} 2"#), "{text}");
        assert!(text.contains(r#"streamjob_operator_jobs{phase="Unknown"} 1"#), "{text}");
    }
}
