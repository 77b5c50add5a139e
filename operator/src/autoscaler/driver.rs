//! Runs the policy on live jobs: every `pollIntervalSeconds`, probe the lag, decide, set the
//! StatefulSet's replicas, and report in the status, events and metrics. `spec.replicas` is
//! never written: GitOps tools own the spec.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use rdkafka::ClientConfig;
use serde_json::json;
use streamjob_crds::{AutoscalingSpec, LagStatus, PartitionLag, ScaleEvent, StreamJob};
use streamjob_runtime::metrics::PartitionLabels;
use streamjob_runtime::sync::lock;

use super::blocked::{scale_blockers, summary, Blocker};
use super::policy::{poll, rates, start_rebalance, Decision, History, PartitionSample, Settings, Workers};
use super::probe::{LagProbe, ProbeError, ProbeTarget};
use super::sink_check::{output_problem, OutputAnswer, OUTPUT_CHECK_SECONDS, SINK_REFUSED};
use super::view::ClusterView;
use crate::build::{selector_string, FIELD_MANAGER};
use crate::controller::events::{publish, JobEvent};
use crate::controller::{apply_status, job_key, reconciliation_paused, Context};
use crate::kafka::{sink_client_config, source_client_config, ClientConfigError};
use crate::metrics::{DecisionLabels, JobLabels};
use crate::status::{autoscaler_part, is_autoscaler_condition, set_condition, AUTOSCALER_DEGRADED, SCALE_BLOCKED};

/// The field manager of the status fields the autoscaler writes.
pub const AUTOSCALER_FIELD_MANAGER: &str = "streamjob-autoscaler";

/// Most partitions listed in `status.lag.perPartition`.
const MAX_PARTITIONS_IN_STATUS: usize = 64;

/// Seconds between refreshes of the lag readings (`status.lag`, `status.throughput`) when
/// nothing else a user reads changes: the live figures are the `*_lag_records` metrics, which
/// every poll sets. A scale decision, a partition count or condition change, and lag reaching
/// or leaving 0 are written at once, with fresh readings.
pub const LAG_STATUS_REFRESH_SECONDS: f64 = 60.0;

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
    /// When the lag readings were last written to the status (seconds, the polls' clock).
    lag_written_at: Option<f64>,
    /// The reason of the last `ScaleBlocked` event: one event per blocked streak and reason.
    blocked: Option<&'static str>,
    /// Polls in a row that could not measure lag, for `fallback.failureThreshold`.
    failed_polls: u32,
    /// When the output topics were last checked (`sink_check.rs`), and the sink cluster's
    /// connection that check used (its client is kept while the job is).
    outputs_checked_at: Option<f64>,
    sink_connection: Option<ClientConfig>,
    /// The autoscaler's part of the status as it last applied it. It is that part's only
    /// writer, so this is newer than the watch's copy, which may not show its last write yet:
    /// an apply built from that copy would drop what the last one set (server-side apply
    /// removes a manager's fields it no longer sends).
    applied: Option<serde_json::Value>,
}

/// What one poll reports in the status.
struct PollReport {
    partitions: i32,
    lag: LagStatus,
    throughput: Option<f64>,
    last_scale: Option<ScaleEvent>,
    /// The `ScaleBlocked` condition's reason and message, when workers cannot run.
    blocked: Option<(&'static str, String)>,
}

/// The autoscaler of every job in one operator.
pub struct Autoscaler {
    context: Arc<Context>,
    probe: LagProbe,
    jobs: Mutex<HashMap<(String, String), JobScaling>>,
    /// The jobs whose poll is running (`run`).
    in_flight: Mutex<HashSet<(String, String)>>,
    /// The StatefulSets, pods and events from watches; without it (tests) each poll reads them.
    view: Option<ClusterView>,
}

/// Whether the autoscaler acts on this job now.
fn autoscaled(job: &StreamJob) -> bool {
    job.autoscaling_enabled() && measured(job)
}

/// Whether the job's lag is measured now: every job whose workers run (not suspended, paused
/// or being deleted), autoscaled or not, so that a fixed-size job has lag series and alerts too.
fn measured(job: &StreamJob) -> bool {
    !job.spec.suspend && !reconciliation_paused(job) && job.metadata.deletion_timestamp.is_none()
}

/// How often a job without autoscaling has its lag measured (metrics only: no decision, no
/// status write).
const FIXED_JOB_POLL_SECONDS: f64 = 30.0;

/// The workers as the StatefulSet reports them: settled when every replica exists, is ready and
/// runs the current template, and the controller has seen the latest spec.
pub fn workers_of(stateful_set: &StatefulSet) -> Workers {
    let current = stateful_set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(status) = stateful_set.status.as_ref() else { return Workers { current, ready: 0, settled: false } };
    let ready = status.ready_replicas.unwrap_or(0);
    let observed = status.observed_generation.unwrap_or(0) >= stateful_set.metadata.generation.unwrap_or(0);
    let same_revision = status.current_revision == status.update_revision;
    let settled = observed
        && status.replicas == current
        && status.ready_replicas.unwrap_or(0) == current
        && (current == 0 || (status.updated_replicas.unwrap_or(0) == current && same_revision));
    Workers { current, ready, settled }
}

impl Autoscaler {
    pub fn new(context: Arc<Context>) -> Self {
        Self { context, probe: LagProbe::default(), jobs: Mutex::default(), in_flight: Mutex::default(), view: None }
    }

    /// An autoscaler that reads the StatefulSets, pods and events from `view`'s watches.
    pub fn with_view(context: Arc<Context>, view: ClusterView) -> Self {
        Self { view: Some(view), ..Self::new(context) }
    }

    /// Polls the jobs of every watched scope (one store per watched namespace, or one for all)
    /// as they fall due, until the task is dropped. One loop sees every job, so forgetting the
    /// jobs that are gone never forgets another namespace's. Each poll runs as its own task: a
    /// job whose cluster is slow or unreachable (up to the probe's deadline) never delays
    /// another job's poll, and a job is not polled again while its last poll still runs.
    pub async fn run(self: Arc<Self>, stores: Vec<Store<StreamJob>>) {
        if let Some(view) = &self.view {
            view.ready().await;
        }
        let started = Instant::now();
        let mut polls = tokio::task::JoinSet::new();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            while polls.try_join_next().is_some() {}
            let jobs: Vec<Arc<StreamJob>> = stores.iter().flat_map(Store::state).collect();
            let now = started.elapsed().as_secs_f64();
            for job in self.due(&jobs, now) {
                let key = job_key(&job);
                if !lock(&self.in_flight).insert(key.clone()) {
                    continue;
                }
                let autoscaler = self.clone();
                polls.spawn(async move {
                    autoscaler.poll_logged(&job, now).await;
                    lock(&autoscaler.in_flight).remove(&key);
                });
            }
        }
    }

    /// Polls every autoscaled job whose poll interval has passed, concurrently, and returns once
    /// every poll has ended.
    pub async fn poll_due(&self, jobs: &[Arc<StreamJob>], now: f64) {
        let due = self.due(jobs, now);
        futures::future::join_all(due.iter().map(|job| self.poll_logged(job, now))).await;
    }

    /// The autoscaled jobs whose poll interval has passed; forgets jobs that are gone or no
    /// longer autoscaled, and the probe clients no job uses any more.
    fn due(&self, jobs: &[Arc<StreamJob>], now: f64) -> Vec<Arc<StreamJob>> {
        let mut states = self.states();
        states.retain(|key, _| {
            let kept = jobs.iter().any(|job| job_key(job) == *key && measured(job));
            if !kept {
                let (namespace, job) = key.clone();
                self.context.output_problems.forget(&namespace, &job);
                self.context.metrics.forget_lag(&JobLabels { namespace, job });
            }
            kept
        });
        let connections: Vec<&ClientConfig> = states
            .values()
            .flat_map(|s| [s.probe_target.as_ref().map(|t| &t.connection), s.sink_connection.as_ref()])
            .flatten()
            .collect();
        self.probe.retain(&connections);
        jobs.iter()
            .filter(|job| measured(job))
            .filter(|job| states.get(&job_key(job)).is_none_or(|state| state.next_poll_at <= now))
            .cloned()
            .collect()
    }

    async fn poll_logged(&self, job: &StreamJob, now: f64) {
        if !autoscaled(job) {
            self.measure_fixed(job, now).await;
        } else if let Err(error) = self.poll_job(job, now).await {
            tracing::warn!(job = %job.name_any(), namespace = ?job.namespace(), step = error.category(), %error, "autoscaler poll failed");
        }
        self.check_outputs(job, now).await;
    }

    /// Checks the job's sink and dead-letter topics every [`OUTPUT_CHECK_SECONDS`]
    /// (`sink_check.rs`). A new finding is an event and a reconcile, which puts it in the
    /// status; a check that gets no answer (the cluster is down: the lag probe reports that)
    /// keeps the last finding.
    pub async fn check_outputs(&self, job: &StreamJob, now: f64) {
        let key = job_key(job);
        {
            let mut states = self.states();
            let state = states.entry(key.clone()).or_default();
            if state.outputs_checked_at.is_some_and(|at| now - at < OUTPUT_CHECK_SECONDS) {
                return;
            }
            state.outputs_checked_at = Some(now);
        }
        let problem = match self.output_problem(job).await {
            Ok(problem) => problem,
            Err(error) => {
                tracing::debug!(job = %job.name_any(), namespace = ?job.namespace(), %error, "checking the output topics failed");
                return;
            }
        };
        let (namespace, name) = key;
        if !self.context.output_problems.set(&namespace, &name, problem.clone()) {
            return;
        }
        let event = match problem {
            Some(problem) => {
                tracing::warn!(job = %name, %namespace, %problem, "the job's output is refused");
                JobEvent::warning(SINK_REFUSED, "CheckOutputs", problem)
            }
            None => {
                tracing::info!(job = %name, %namespace, "the job's output topics are usable again");
                JobEvent::normal(
                    "SinkWritable",
                    "CheckOutputs",
                    "the sink and dead-letter topics exist and the job's credentials see them".to_owned(),
                )
            }
        };
        publish(&self.context, job, event).await;
        self.context.request_reconcile(job);
    }

    async fn output_problem(&self, job: &StreamJob) -> Result<Option<String>, MeasureError> {
        let sink = &job.spec.sink;
        let source_connection = source_client_config(&self.context.client, job).await?;
        let sink_connection = if job.spec.sink_on_other_cluster() {
            sink_client_config(&self.context.client, job).await?
        } else {
            source_connection.clone()
        };
        self.states().entry(job_key(job)).or_default().sink_connection = Some(sink_connection.clone());
        let sink_answer = self.probe.describe(&sink_connection, std::slice::from_ref(&sink.topic)).await?;
        let sink_bootstrap = sink.bootstrap_servers.as_deref().unwrap_or(&job.spec.source.bootstrap_servers);
        let mut outputs =
            vec![OutputAnswer { role: "sink", topic: &sink.topic, bootstrap: sink_bootstrap, answer: &sink_answer }];
        let dead_letter_answer = match &sink.dead_letter_topic {
            Some(topic) => Some((topic, self.probe.describe(&source_connection, std::slice::from_ref(topic)).await?)),
            None => None,
        };
        if let Some((topic, answer)) = &dead_letter_answer {
            let bootstrap = &job.spec.source.bootstrap_servers;
            outputs.push(OutputAnswer { role: "dead-letter", topic, bootstrap, answer });
        }
        Ok(output_problem(&outputs))
    }

    /// The lag of a job without autoscaling, as metrics only (`job_lag_records`,
    /// `partition_lag_records`, `lag_probe_errors_total`), every [`FIXED_JOB_POLL_SECONDS`].
    async fn measure_fixed(&self, job: &StreamJob, now: f64) {
        self.states().entry(job_key(job)).or_default().next_poll_at = now + FIXED_JOB_POLL_SECONDS;
        let labels = JobLabels::of(job);
        let metrics = &self.context.metrics;
        match self.measure(job).await {
            Ok(samples) => {
                let start_from = job.spec.source.start_from;
                metrics.track_job(&labels);
                metrics.job_lag.get_or_create(&labels).set(samples.iter().map(|s| s.lag(start_from)).sum());
                let lags = samples
                    .iter()
                    .map(|sample| (PartitionLabels::new(&sample.topic, sample.partition), sample.lag(start_from)));
                metrics.set_partition_lags(&labels, lags);
            }
            Err(error) => {
                metrics.track_job(&labels);
                metrics.probe_errors.get_or_create(&labels).inc();
                tracing::debug!(job = %job.name_any(), namespace = ?job.namespace(), %error, "lag probe failed");
            }
        }
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
        let settings =
            Settings::from_spec(autoscaling, job.spec.source.start_from).with_open_windows(&job.spec.pipeline);
        let poll_interval = f64::from(autoscaling.poll_interval_seconds.max(1));
        self.states().entry(key.clone()).or_default().next_poll_at = now + poll_interval;

        let stateful_sets: Api<StatefulSet> = Api::namespaced(self.context.client.clone(), &namespace);
        let stateful_set = match &self.view {
            Some(view) => view.stateful_set(&namespace, &name),
            None => stateful_sets.get_opt(&name).await.map_err(AutoscalerError::ReadStatefulSet)?,
        };
        let Some(stateful_set) = stateful_set else {
            return Ok(Decision {
                replicas: 0,
                reason: "holding: the StatefulSet does not exist yet".to_owned(),
                kind: "hold",
            });
        };
        let workers = workers_of(&stateful_set);
        if crate::controller::draining(job) {
            // The reconciler has stopped the workers to change the pipeline: no scaling until
            // the new one starts.
            return Ok(Decision {
                replicas: workers.current,
                reason: "holding: the workers are drained for a pipeline change".to_owned(),
                kind: "hold",
            });
        }
        let blockers = if workers.ready < workers.current {
            self.blockers(&stateful_set, &namespace, &name, workers.current).await
        } else {
            Vec::new()
        };
        self.report_blockers(job, &blockers).await;
        let samples = match self.measure(job).await {
            Ok(samples) => samples,
            Err(error) => {
                let failures = {
                    let mut states = self.states();
                    let state = states.entry(key.clone()).or_default();
                    state.failed_polls = state.failed_polls.saturating_add(1);
                    state.failed_polls
                };
                let fallback = fallback_replicas(autoscaling, failures);
                if let Some(replicas) = fallback.filter(|r| *r != workers.current) {
                    self.apply_fallback(job, &stateful_sets, workers.current, replicas, failures).await?;
                }
                self.report_probe_failure(job, &error, failures, fallback).await?;
                return Err(AutoscalerError::Probe(error));
            }
        };
        self.states().entry(key.clone()).or_default().failed_polls = 0;
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
        let report = PollReport { partitions, lag, throughput, last_scale, blocked: summary(&blockers) };
        self.write_status(job, report, now).await?;
        Ok(decision)
    }

    /// Why some of the `wanted` workers do not run; empty when that cannot be read (logged).
    async fn blockers(&self, stateful_set: &StatefulSet, namespace: &str, name: &str, wanted: i32) -> Vec<Blocker> {
        let existing = stateful_set.status.as_ref().map_or(0, |s| s.replicas);
        if let Some(view) = &self.view {
            let (events, pods) = (view.create_failures(namespace, name), view.worker_pods(namespace, name));
            return scale_blockers(wanted, existing, &events, &pods);
        }
        let client = &self.context.client;
        let events: Api<Event> = Api::namespaced(client.clone(), namespace);
        let failures = ListParams::default()
            .fields(&format!("involvedObject.kind=StatefulSet,involvedObject.name={name},reason=FailedCreate"));
        let events = match events.list(&failures).await {
            Ok(list) => list.items,
            Err(error) => {
                tracing::warn!(job = name, namespace, %error, "cannot list the StatefulSet's events for ScaleBlocked");
                Vec::new()
            }
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let pods = match pods.list(&ListParams::default().labels(&selector_string(name))).await {
            Ok(list) => list.items,
            Err(error) => {
                tracing::warn!(job = name, namespace, %error, "cannot list the workers' pods for ScaleBlocked");
                Vec::new()
            }
        };
        scale_blockers(wanted, existing, &events, &pods)
    }

    /// A warning event when workers become blocked, or blocked for another reason.
    async fn report_blockers(&self, job: &StreamJob, blockers: &[Blocker]) {
        let now_blocked = summary(blockers);
        let previous = {
            let mut states = self.states();
            let state = states.entry(job_key(job)).or_default();
            std::mem::replace(&mut state.blocked, now_blocked.as_ref().map(|(reason, _)| *reason))
        };
        let Some((reason, message)) = now_blocked else { return };
        if previous != Some(reason) {
            tracing::warn!(job = %job.name_any(), namespace = ?job.namespace(), reason, %message, "workers cannot run");
            publish(&self.context, job, JobEvent::warning(SCALE_BLOCKED, "Scale", format!("{reason}: {message}")))
                .await;
        }
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

    /// Runs `fallback.replicas` workers (KEDA's `fallback`): the StatefulSet, the decision the
    /// reconciler keeps, an event and `status.lastScale`.
    async fn apply_fallback(
        &self,
        job: &StreamJob,
        stateful_sets: &Api<StatefulSet>,
        from: i32,
        replicas: i32,
        failures: u32,
    ) -> Result<(), AutoscalerError> {
        let (namespace, name) = job_key(job);
        self.scale(stateful_sets, &name, replicas).await.map_err(AutoscalerError::ScaleStatefulSet)?;
        self.context.decisions.set(&namespace, &name, replicas);
        if let Some(state) = self.states().get_mut(&job_key(job)) {
            start_rebalance(&mut state.history);
        }
        let reason = format!(
            "lag could not be measured {failures} times in a row (fallback.failureThreshold): running fallback.replicas: {from} → {replicas}"
        );
        tracing::warn!(job = %name, namespace = %namespace, from, to = replicas, "{reason}");
        publish(&self.context, job, JobEvent::warning("FallbackReplicas", "Scale", reason.clone())).await;
        let last_scale = ScaleEvent {
            time: Time(Timestamp::now()),
            from,
            to: replicas,
            reason,
            summary: Some(format!("{from} → {replicas}")),
        };
        self.patch_status(job, json!({ "lastScale": last_scale }), json!({}), false, |_, _, _| {}).await.map(|_| ())
    }

    /// Holds the replicas (or runs the fallback's) and says why, once per failure streak in an
    /// event and on every poll in the condition and metric.
    async fn report_probe_failure(
        &self,
        job: &StreamJob,
        error: &MeasureError,
        failures: u32,
        fallback: Option<i32>,
    ) -> Result<(), AutoscalerError> {
        let labels = JobLabels::of(job);
        self.context.metrics.probe_errors.get_or_create(&labels).inc();
        let first_failure = {
            let mut states = self.states();
            let state = states.entry(job_key(job)).or_default();
            !std::mem::replace(&mut state.degraded, true)
        };
        let (reason, message) = match fallback {
            Some(replicas) => (
                "FallbackReplicas",
                format!(
                    "cannot measure lag ({failures} polls in a row), running fallback.replicas {replicas}: {error}"
                ),
            ),
            None => ("LagProbeFailed", format!("cannot measure lag, holding the current replicas: {error}")),
        };
        if first_failure {
            tracing::warn!(job = %job.name_any(), namespace = ?job.namespace(), %error, "lag probe failed; holding replicas");
            publish(&self.context, job, JobEvent::warning(AUTOSCALER_DEGRADED, "Autoscale", message.clone())).await;
        }
        self.patch_conditions(job, |conditions, generation, now| {
            set_condition(conditions, AUTOSCALER_DEGRADED, true, reason, message, generation, now);
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
        metrics.track_job(&labels);
        metrics.job_lag.get_or_create(&labels).set(total_lag);
        metrics.desired_replicas.get_or_create(&labels).set(decision.replicas.into());
        let lags = samples
            .iter()
            .map(|sample| (PartitionLabels::new(&sample.topic, sample.partition), sample.lag(settings.start_from)));
        metrics.set_partition_lags(&labels, lags);
        let JobLabels { namespace, job: name } = labels;
        let decision_labels = DecisionLabels { namespace, job: name, reason: decision.kind.to_owned() };
        metrics.scale_decisions.get_or_create(&decision_labels).inc();
    }

    /// Writes the poll's outcome when a user would read something new (see
    /// [`LAG_STATUS_REFRESH_SECONDS`]); the lag readings alone are refreshed at most that often.
    async fn write_status(&self, job: &StreamJob, report: PollReport, now: f64) -> Result<(), AutoscalerError> {
        let PollReport { partitions, lag, throughput, last_scale, blocked } = report;
        let mut status = json!({ "partitions": partitions });
        if let Some(last_scale) = last_scale {
            status["lastScale"] = json!(last_scale);
        }
        let mut readings = json!({ "lag": lag });
        if let Some(throughput) = throughput {
            readings["throughput"] = json!((throughput * 10.0).round() / 10.0);
        }
        let (applied, written_at) = self
            .states()
            .get(&job_key(job))
            .map_or((None, None), |s| (s.applied.as_ref().map(|a| a["lag"]["total"].as_i64()), s.lag_written_at));
        let cached = || job.status.as_ref().and_then(|s| s.lag.as_ref()).map(|l| l.total);
        let written_lag = applied.unwrap_or_else(cached);
        let refresh = lag_readings_due(written_lag, lag.total, written_at, now);
        let written = self
            .patch_status(job, status, readings, refresh, |conditions, generation, now| {
                let message = "lag is measured every pollIntervalSeconds".to_owned();
                set_condition(conditions, AUTOSCALER_DEGRADED, false, "LagMeasured", message, generation, now);
                let (blocked, reason, message) = match blocked {
                    Some((reason, message)) => (true, reason, message),
                    None => (false, "NotBlocked", "every worker the autoscaler asked for can run".to_owned()),
                };
                set_condition(conditions, SCALE_BLOCKED, blocked, reason, message, generation, now);
            })
            .await?;
        if written {
            self.states().entry(job_key(job)).or_default().lag_written_at = Some(now);
        }
        Ok(())
    }

    async fn patch_conditions(
        &self,
        job: &StreamJob,
        update: impl FnOnce(&mut Vec<Condition>, Option<i64>, &Time),
    ) -> Result<(), AutoscalerError> {
        self.patch_status(job, json!({}), json!({}), false, update).await.map(|_| ())
    }

    /// Applies the autoscaler's part of the status (see [`autoscaler_part`]) as its own field
    /// manager: what it has now from `fields`, the rest of its part as the job carries it, and
    /// its condition as `update` leaves it. `readings` (the lag) go with any write, and alone
    /// only when `refresh_readings`. Nothing is written when nothing changes; the comparison is
    /// with the job as the operator's cache has it (no read per poll). Returns whether it wrote.
    async fn patch_status(
        &self,
        job: &StreamJob,
        fields: serde_json::Value,
        readings: serde_json::Value,
        refresh_readings: bool,
        update: impl FnOnce(&mut Vec<Condition>, Option<i64>, &Time),
    ) -> Result<bool, AutoscalerError> {
        let (namespace, name) = job_key(job);
        let applied = self.states().get(&job_key(job)).and_then(|s| s.applied.clone());
        let current = applied.unwrap_or_else(|| autoscaler_part(&job.status.clone().unwrap_or_default()));
        let mut conditions: Vec<Condition> =
            current.get("conditions").and_then(|c| serde_json::from_value(c.clone()).ok()).unwrap_or_default();
        update(&mut conditions, job.metadata.generation, &Time(Timestamp::now()));
        let mut wanted = current.clone();
        for (field, value) in fields.as_object().into_iter().flatten() {
            wanted[field] = value.clone();
        }
        conditions.retain(is_autoscaler_condition);
        wanted["conditions"] = json!(conditions);
        if wanted == current && !refresh_readings {
            return Ok(false);
        }
        for (field, value) in readings.as_object().into_iter().flatten() {
            wanted[field] = value.clone();
        }
        if wanted == current {
            return Ok(false);
        }
        let jobs: Api<StreamJob> = Api::namespaced(self.context.client.clone(), &namespace);
        match apply_status(&jobs, &name, AUTOSCALER_FIELD_MANAGER, wanted.clone()).await {
            Ok(()) => {
                self.states().entry(job_key(job)).or_default().applied = Some(wanted);
                Ok(true)
            }
            // Deleted since the cache saw it: nothing to report on.
            Err(kube::Error::Api(response)) if response.is_not_found() => Ok(false),
            Err(error) => Err(AutoscalerError::ApplyStatus(error)),
        }
    }
}

/// The workers KEDA's `fallback` asks for after `failures` failed polls in a row, within
/// minReplicas..maxReplicas; `None` without a fallback or below its `failureThreshold`.
pub fn fallback_replicas(spec: &AutoscalingSpec, failures: u32) -> Option<i32> {
    let fallback = spec.fallback.as_ref()?;
    let threshold = u32::try_from(fallback.failure_threshold.max(1)).unwrap_or(1);
    (failures >= threshold)
        .then(|| fallback.replicas.clamp(spec.min_replicas, spec.max_replicas.max(spec.min_replicas)))
}

/// Whether the lag readings are written now although nothing else in the status changed: none
/// written yet, lag reached or left 0 (the job caught up, or fell behind), or the last ones
/// are [`LAG_STATUS_REFRESH_SECONDS`] old.
pub fn lag_readings_due(written_total: Option<i64>, total: i64, written_at: Option<f64>, now: f64) -> bool {
    match (written_total, written_at) {
        (None, _) | (_, None) => true,
        (Some(written), Some(at)) => (written == 0) != (total == 0) || now - at >= LAG_STATUS_REFRESH_SECONDS,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_replicas_apply_from_the_failure_threshold_on_within_the_bounds() {
        let spec = |fallback: serde_json::Value| -> AutoscalingSpec {
            serde_json::from_value(json!({ "minReplicas": 1, "maxReplicas": 6, "fallback": fallback })).expect("spec")
        };
        let table = [
            ("no fallback", json!(null), 10, None),
            ("below the threshold", json!({"failureThreshold": 3, "replicas": 4}), 2, None),
            ("at the threshold", json!({"failureThreshold": 3, "replicas": 4}), 3, Some(4)),
            ("past it", json!({"failureThreshold": 3, "replicas": 4}), 30, Some(4)),
            ("above maxReplicas", json!({"failureThreshold": 1, "replicas": 9}), 1, Some(6)),
            ("below minReplicas", json!({"failureThreshold": 1, "replicas": 0}), 1, Some(1)),
        ];
        for (case, fallback, failures, expected) in table {
            assert_eq!(fallback_replicas(&spec(fallback), failures), expected, "{case}");
        }
    }

    #[test]
    fn lag_readings_are_written_when_a_user_would_read_something_new() {
        let refresh = LAG_STATUS_REFRESH_SECONDS;
        let table = [
            ("nothing written yet", None, 40, None, 0.0, true),
            ("readings of the same job, moments later", Some(37), 52, Some(100.0), 110.0, false),
            ("a big change in lag alone waits for the refresh", Some(10), 90_000, Some(100.0), 110.0, false),
            ("caught up", Some(37), 0, Some(100.0), 110.0, true),
            ("fell behind", Some(0), 5, Some(100.0), 110.0, true),
            ("still 0", Some(0), 0, Some(100.0), 110.0, false),
            ("the refresh is due", Some(37), 52, Some(100.0), 100.0 + refresh, true),
            ("written before this operator started", Some(37), 52, None, 5.0, true),
        ];
        for (case, written, total, at, now, due) in table {
            assert_eq!(lag_readings_due(written, total, at, now), due, "{case}");
        }
    }
}
