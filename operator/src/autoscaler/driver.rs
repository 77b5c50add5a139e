//! Runs the policy on live jobs: every `pollIntervalSeconds`, probe the lag, decide, set the
//! StatefulSet's replicas, and report in the status, events and metrics. `spec.replicas` is
//! never written: GitOps tools own the spec.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::json;
use streamjob_crds::{LagStatus, PartitionLag, ScaleEvent, StreamJob, StreamJobStatus};
use streamjob_runtime::metrics::PartitionLabels;
use streamjob_runtime::sync::lock;

use super::policy::{poll, rates, Decision, History, PartitionSample, Settings, Workers};
use super::probe::{LagProbe, ProbeError, ProbeTarget};
use crate::build::FIELD_MANAGER;
use crate::controller::events::{publish, JobEvent};
use crate::controller::{apply_status, job_key, reconciliation_paused, Context};
use crate::kafka::{source_client_config, ClientConfigError};
use crate::metrics::{DecisionLabels, JobLabels, JobPartitionLabels};
use crate::status::{autoscaler_part, set_condition, AUTOSCALER_DEGRADED};

/// The field manager of the status fields the autoscaler writes.
pub const AUTOSCALER_FIELD_MANAGER: &str = "streamjob-autoscaler";

/// Most partitions listed in `status.lag.perPartition`.
const MAX_PARTITIONS_IN_STATUS: usize = 64;

/// Why a job's lag could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error(transparent)]
    ClientConfig(#[from] ClientConfigError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
}

#[derive(Debug, thiserror::Error)]
pub enum AutoscalerError {
    #[error("lag probe failed: the job has no autoscaling section")]
    NotAutoscaled,
    #[error("lag probe failed: {0}")]
    Probe(#[source] MeasureError),
    #[error("reading the StatefulSet failed: {0}")]
    ReadStatefulSet(#[source] kube::Error),
    #[error("setting the StatefulSet's replicas failed: {0}")]
    ScaleStatefulSet(#[source] kube::Error),
    #[error("reading the StreamJob for its status failed: {0}")]
    ReadJob(#[source] kube::Error),
    #[error("applying the autoscaler's status failed: {0}")]
    ApplyStatus(#[source] kube::Error),
}

impl AutoscalerError {
    /// The step that failed, for the log line.
    pub fn category(&self) -> &'static str {
        match self {
            AutoscalerError::NotAutoscaled => "NotAutoscaled",
            AutoscalerError::Probe(_) => "Probe",
            AutoscalerError::ReadStatefulSet(_) => "ReadStatefulSet",
            AutoscalerError::ScaleStatefulSet(_) => "ScaleStatefulSet",
            AutoscalerError::ReadJob(_) => "ReadJob",
            AutoscalerError::ApplyStatus(_) => "ApplyStatus",
        }
    }
}

/// What the autoscaler remembers of one job.
#[derive(Default)]
struct JobScaling {
    history: History,
    next_poll_at: f64,
    degraded: bool,
    /// The cluster, credentials and group the job was last measured with: its probe client.
    probe_target: Option<ProbeTarget>,
}

/// The autoscaler of every job in one operator.
pub struct Autoscaler {
    context: Arc<Context>,
    probe: LagProbe,
    jobs: Mutex<HashMap<(String, String), JobScaling>>,
}

/// Whether the autoscaler acts on this job now.
fn autoscaled(job: &StreamJob) -> bool {
    job.autoscaling_enabled()
        && !job.spec.suspend
        && !reconciliation_paused(job)
        && job.metadata.deletion_timestamp.is_none()
}

/// The workers as the StatefulSet reports them: settled when every replica exists, is ready and
/// runs the current template, and the controller has seen the latest spec.
pub fn workers_of(stateful_set: &StatefulSet) -> Workers {
    let current = stateful_set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(status) = stateful_set.status.as_ref() else { return Workers { current, settled: false } };
    let observed = status.observed_generation.unwrap_or(0) >= stateful_set.metadata.generation.unwrap_or(0);
    let same_revision = status.current_revision == status.update_revision;
    let settled = observed
        && status.replicas == current
        && status.ready_replicas.unwrap_or(0) == current
        && (current == 0 || (status.updated_replicas.unwrap_or(0) == current && same_revision));
    Workers { current, settled }
}

impl Autoscaler {
    pub fn new(context: Arc<Context>) -> Self {
        Self { context, probe: LagProbe::default(), jobs: Mutex::default() }
    }

    /// Polls the jobs of every watched scope (one store per watched namespace, or one for all)
    /// as they fall due, until the task is dropped. One loop sees every job, so forgetting the
    /// jobs that are gone never forgets another namespace's.
    pub async fn run(self: Arc<Self>, stores: Vec<Store<StreamJob>>) {
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let jobs: Vec<Arc<StreamJob>> = stores.iter().flat_map(Store::state).collect();
            self.poll_due(&jobs, started.elapsed().as_secs_f64()).await;
        }
    }

    /// Polls every autoscaled job whose poll interval has passed, concurrently; forgets jobs
    /// that are gone or no longer autoscaled, and the probe clients no job uses any more.
    pub async fn poll_due(&self, jobs: &[Arc<StreamJob>], now: f64) {
        let due: Vec<&StreamJob> = {
            let mut states = self.states();
            states.retain(|key, _| jobs.iter().any(|job| job_key(job) == *key && autoscaled(job)));
            let targets: Vec<ProbeTarget> = states.values().filter_map(|s| s.probe_target.clone()).collect();
            self.probe.retain(&targets);
            jobs.iter()
                .map(Arc::as_ref)
                .filter(|job| autoscaled(job))
                .filter(|job| states.get(&job_key(job)).is_none_or(|state| state.next_poll_at <= now))
                .collect()
        };
        let polls = due.into_iter().map(|job| async move {
            if let Err(error) = self.poll_job(job, now).await {
                tracing::warn!(job = %job.name_any(), namespace = ?job.namespace(), step = error.category(), %error, "autoscaler poll failed");
            }
        });
        futures::future::join_all(polls).await;
    }

    fn states(&self) -> MutexGuard<'_, HashMap<(String, String), JobScaling>> {
        lock(&self.jobs)
    }

    /// One poll of one job at `now` (seconds on a monotonic clock): measure, decide, apply,
    /// report. A failed measurement holds the replicas and sets `AutoscalerDegraded`.
    pub async fn poll_job(&self, job: &StreamJob, now: f64) -> Result<Decision, AutoscalerError> {
        let Some(autoscaling) = job.spec.autoscaling.as_ref() else {
            return Err(AutoscalerError::NotAutoscaled);
        };
        let key = job_key(job);
        let (namespace, name) = key.clone();
        let settings = Settings::from_spec(autoscaling, job.spec.source.start_from);
        let poll_interval = f64::from(autoscaling.poll_interval_seconds.max(1));
        self.states().entry(key.clone()).or_default().next_poll_at = now + poll_interval;

        let stateful_sets: Api<StatefulSet> = Api::namespaced(self.context.client.clone(), &namespace);
        let Some(stateful_set) = stateful_sets.get_opt(&name).await.map_err(AutoscalerError::ReadStatefulSet)? else {
            return Ok(Decision {
                replicas: 0,
                reason: "holding: the StatefulSet does not exist yet".to_owned(),
                kind: "hold",
            });
        };
        let workers = workers_of(&stateful_set);
        let samples = match self.measure(job).await {
            Ok(samples) => samples,
            Err(error) => {
                self.report_probe_failure(job, &error).await?;
                return Err(AutoscalerError::Probe(error));
            }
        };
        let partitions = i32::try_from(samples.len()).unwrap_or(i32::MAX);
        let (decision, throughput, recovered) = {
            let mut states = self.states();
            let state = states.entry(key.clone()).or_default();
            let decision = poll(&mut state.history, samples.clone(), workers, &settings, now);
            let throughput = rates(&state.history.samples).map(|r| r.consume);
            let recovered = std::mem::replace(&mut state.degraded, false);
            (decision, throughput, recovered)
        };
        let lag = lag_status(&samples, &settings);
        self.record_metrics(job, &samples, &settings, lag.total, &decision);
        self.context.decisions.set(&namespace, &name, decision.replicas);

        let mut last_scale = None;
        if decision.replicas != workers.current {
            self.scale(&stateful_sets, &name, decision.replicas).await.map_err(AutoscalerError::ScaleStatefulSet)?;
            last_scale = Some(self.report_scale(job, workers.current, &decision).await);
        }
        if recovered {
            let note = format!("lag measured again on {partitions} partitions; autoscaling resumed");
            publish(&self.context, job, JobEvent::normal("AutoscalerRecovered", "Autoscale", note)).await;
        }
        self.write_status(job, partitions, lag, throughput, last_scale).await?;
        Ok(decision)
    }

    async fn measure(&self, job: &StreamJob) -> Result<Vec<PartitionSample>, MeasureError> {
        let connection = source_client_config(&self.context.client, job).await?;
        let target = ProbeTarget { connection, group: job.consumer_group(), topics: job.spec.source.topics.clone() };
        self.states().entry(job_key(job)).or_default().probe_target = Some(target.clone());
        Ok(self.probe.measure(&target).await?)
    }

    /// Sets the StatefulSet's replicas; the reconciler keeps them from the recorded decision.
    async fn scale(&self, stateful_sets: &Api<StatefulSet>, name: &str, replicas: i32) -> Result<(), kube::Error> {
        let patch = json!({ "spec": { "replicas": replicas } });
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
        stateful_sets.patch(name, &params, &Patch::Merge(&patch)).await?;
        Ok(())
    }

    async fn report_scale(&self, job: &StreamJob, from: i32, decision: &Decision) -> ScaleEvent {
        let (reason, action) =
            if decision.replicas > from { ("ScaledUp", "ScaleUp") } else { ("ScaledDown", "ScaleDown") };
        tracing::info!(job = %job.name_any(), namespace = ?job.namespace(), from, to = decision.replicas, reason = %decision.reason, "{reason}");
        publish(&self.context, job, JobEvent::normal(reason, action, decision.reason.clone())).await;
        ScaleEvent {
            time: Time(Timestamp::now()),
            from,
            to: decision.replicas,
            reason: decision.reason.clone(),
            summary: Some(format!("{from} → {}", decision.replicas)),
        }
    }

    /// Holds the replicas and says why, once per failure streak in an event and on every poll
    /// in the condition and metric.
    async fn report_probe_failure(&self, job: &StreamJob, error: &MeasureError) -> Result<(), AutoscalerError> {
        let labels = JobLabels::of(job);
        self.context.metrics.probe_errors.get_or_create(&labels).inc();
        let first_failure = {
            let mut states = self.states();
            let state = states.entry(job_key(job)).or_default();
            !std::mem::replace(&mut state.degraded, true)
        };
        let message = format!("cannot measure lag, holding the current replicas: {error}");
        if first_failure {
            tracing::warn!(job = %job.name_any(), namespace = ?job.namespace(), %error, "lag probe failed; holding replicas");
            publish(&self.context, job, JobEvent::warning(AUTOSCALER_DEGRADED, "Autoscale", message.clone())).await;
        }
        self.patch_conditions(job, |conditions, generation, now| {
            set_condition(conditions, AUTOSCALER_DEGRADED, true, "LagProbeFailed", message, generation, now);
        })
        .await
    }

    fn record_metrics(
        &self,
        job: &StreamJob,
        samples: &[PartitionSample],
        settings: &Settings,
        total_lag: i64,
        decision: &Decision,
    ) {
        let metrics = &self.context.metrics;
        let labels = JobLabels::of(job);
        metrics.job_lag.get_or_create(&labels).set(total_lag);
        metrics.desired_replicas.get_or_create(&labels).set(decision.replicas.into());
        for sample in samples {
            let partition_labels = JobPartitionLabels {
                job: labels.clone(),
                partition: PartitionLabels::new(&sample.topic, sample.partition),
            };
            metrics.partition_lag.get_or_create(&partition_labels).set(sample.lag(settings.start_from));
        }
        let JobLabels { namespace, job: name } = labels;
        let decision_labels = DecisionLabels { namespace, job: name, reason: decision.kind.to_owned() };
        metrics.scale_decisions.get_or_create(&decision_labels).inc();
    }

    async fn write_status(
        &self,
        job: &StreamJob,
        partitions: i32,
        lag: LagStatus,
        throughput: Option<f64>,
        last_scale: Option<ScaleEvent>,
    ) -> Result<(), AutoscalerError> {
        let mut status = json!({ "partitions": partitions, "lag": lag });
        if let Some(throughput) = throughput {
            status["throughput"] = json!((throughput * 10.0).round() / 10.0);
        }
        if let Some(last_scale) = last_scale {
            status["lastScale"] = json!(last_scale);
        }
        self.patch_status(job, status, |conditions, generation, now| {
            let message = "lag is measured every pollIntervalSeconds".to_owned();
            set_condition(conditions, AUTOSCALER_DEGRADED, false, "LagMeasured", message, generation, now);
        })
        .await
    }

    async fn patch_conditions(
        &self,
        job: &StreamJob,
        update: impl FnOnce(&mut Vec<Condition>, Option<i64>, &Time),
    ) -> Result<(), AutoscalerError> {
        self.patch_status(job, json!({}), update).await
    }

    /// Applies the autoscaler's part of the status (see [`autoscaler_part`]) as its own field
    /// manager: what it has now from `fields`, the rest of its part as the job carries it, and
    /// its condition as `update` leaves it. Nothing is written when nothing changes.
    async fn patch_status(
        &self,
        job: &StreamJob,
        fields: serde_json::Value,
        update: impl FnOnce(&mut Vec<Condition>, Option<i64>, &Time),
    ) -> Result<(), AutoscalerError> {
        let (namespace, name) = job_key(job);
        let jobs: Api<StreamJob> = Api::namespaced(self.context.client.clone(), &namespace);
        let Some(fresh) = jobs.get_opt(&name).await.map_err(AutoscalerError::ReadJob)? else { return Ok(()) };
        let status: StreamJobStatus = fresh.status.clone().unwrap_or_default();
        let current = autoscaler_part(&status);
        let mut conditions = status.conditions.clone();
        update(&mut conditions, fresh.metadata.generation, &Time(Timestamp::now()));
        let mut wanted = current.clone();
        for (field, value) in fields.as_object().into_iter().flatten() {
            wanted[field] = value.clone();
        }
        conditions.retain(|c| c.type_ == AUTOSCALER_DEGRADED);
        wanted["conditions"] = json!(conditions);
        if wanted == current {
            return Ok(());
        }
        apply_status(&jobs, &name, AUTOSCALER_FIELD_MANAGER, wanted).await.map_err(AutoscalerError::ApplyStatus)?;
        Ok(())
    }
}

/// `status.lag`: the total and the largest partitions.
fn lag_status(samples: &[PartitionSample], settings: &Settings) -> LagStatus {
    let mut per_partition: Vec<PartitionLag> = samples
        .iter()
        .map(|s| PartitionLag { topic: s.topic.clone(), partition: s.partition, lag: s.lag(settings.start_from) })
        .collect();
    per_partition.sort_by(|a, b| b.lag.cmp(&a.lag).then_with(|| (&a.topic, a.partition).cmp(&(&b.topic, b.partition))));
    per_partition.truncate(MAX_PARTITIONS_IN_STATUS);
    LagStatus {
        total: samples.iter().map(|s| s.lag(settings.start_from)).sum(),
        per_partition,
        measured_at: Some(Time(Timestamp::now())),
    }
}
