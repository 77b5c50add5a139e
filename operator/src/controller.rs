//! The reconciler: StreamJob → children (server-side apply), status and events.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use streamjob_crds::{runtime_problems, validate_value, DeletionPolicy, Phase, StreamJob, StreamJobStatus};

use crate::builders::{
    build_children, desired_replicas, selector_string, BuildContext, CONFIG_CHECKSUM_ANNOTATION, FIELD_MANAGER,
};
use crate::metrics::{JobLabels, Metrics, PhaseLabel};
use crate::status::{compute_status, condition_is_true, paused_status, reconciler_part, Observation, DEGRADED};
use crate::PAUSE_ANNOTATION;

/// Finalizer added only while `deletionPolicy: DeleteConsumerGroup` has work to do at deletion.
pub const CONSUMER_GROUP_FINALIZER: &str = "streamjob.io/delete-consumer-group";
/// Attempts to delete a consumer group before giving up and letting the job go.
pub const MAX_GROUP_DELETION_ATTEMPTS: u32 = 5;
/// Longest wait between retries of a failing reconcile.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("StreamJob {0} has no namespace")]
    MissingNamespace(String),
}

impl Error {
    /// A short label for metrics and event reasons.
    pub fn reason(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(status)) => format!("Api{}", status.code),
            Error::Kube(_) => "ApiUnavailable".to_owned(),
            Error::MissingNamespace(_) => "MissingNamespace".to_owned(),
        }
    }
}

/// Deletes a job's Kafka consumer group (for `deletionPolicy: DeleteConsumerGroup`).
pub trait ConsumerGroupDeleter: Send + Sync {
    fn delete_group<'a>(&'a self, job: &'a StreamJob) -> BoxFuture<'a, Result<(), String>>;
}

/// The workers each autoscaled job should run, as last decided by the autoscaler.
#[derive(Default)]
pub struct ScaleDecisions(Mutex<HashMap<(String, String), i32>>);

impl ScaleDecisions {
    pub fn get(&self, namespace: &str, name: &str) -> Option<i32> {
        self.0.lock().ok()?.get(&(namespace.to_owned(), name.to_owned())).copied()
    }

    pub fn set(&self, namespace: &str, name: &str, replicas: i32) {
        if let Ok(mut decisions) = self.0.lock() {
            decisions.insert((namespace.to_owned(), name.to_owned()), replicas);
        }
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        if let Ok(mut decisions) = self.0.lock() {
            decisions.remove(&(namespace.to_owned(), name.to_owned()));
        }
    }
}

/// Consecutive failures per key. The counts stay usable even if a holder panicked.
struct Attempts<K>(Mutex<HashMap<K, u32>>);

impl<K: Eq + std::hash::Hash> Attempts<K> {
    fn new() -> Self {
        Self(Mutex::default())
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<K, u32>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one more failure; returns the failures so far.
    fn record(&self, key: K) -> u32 {
        let mut counts = self.counts();
        let count = counts.entry(key).or_insert(0);
        *count += 1;
        *count
    }

    fn reset(&self, key: &K) {
        self.counts().remove(key);
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub worker_image: String,
    pub metrics: Arc<Metrics>,
    pub decisions: Arc<ScaleDecisions>,
    pub group_deleter: Arc<dyn ConsumerGroupDeleter>,
    /// Consecutive failures per job (namespace, name): the backoff exponent.
    failures: Attempts<(String, String)>,
    /// Failed consumer-group deletions per job UID.
    deletion_attempts: Attempts<String>,
}

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        worker_image: String,
        metrics: Arc<Metrics>,
        decisions: Arc<ScaleDecisions>,
        group_deleter: Arc<dyn ConsumerGroupDeleter>,
    ) -> Self {
        Self {
            client,
            recorder,
            worker_image,
            metrics,
            decisions,
            group_deleter,
            failures: Attempts::new(),
            deletion_attempts: Attempts::new(),
        }
    }
}

fn job_key(job: &StreamJob) -> (String, String) {
    (job.namespace().unwrap_or_default(), job.name_any())
}

/// Delay before retry `attempt` (1-based): 1 s doubling, capped at [`MAX_BACKOFF`].
pub fn backoff(attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(MAX_BACKOFF)
}

/// kube-runtime's error policy: per-job exponential backoff.
pub fn error_policy(job: Arc<StreamJob>, error: &Error, context: Arc<Context>) -> Action {
    let attempt = context.failures.record(job_key(&job));
    let delay = backoff(attempt);
    tracing::warn!(job = %job.name_any(), namespace = ?job.namespace(), %error, attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// kube-runtime's reconcile function.
pub async fn reconcile(job: Arc<StreamJob>, context: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_job(&job, &context).await;
    let error_reason = result.as_ref().err().map(Error::reason);
    context.metrics.observe_reconcile(started.elapsed(), error_reason.as_deref());
    match &result {
        Ok(_) => context.failures.reset(&job_key(&job)),
        Err(error) => {
            let note = format!("reconcile failed, will retry with backoff: {error}");
            publish(&context, &job, EventType::Warning, "ReconcileError", "Reconcile", note).await;
        }
    }
    result
}

/// Publishes an event on the job. kube's recorder folds events with the same key into one
/// series and keeps the first note, so the note's digest goes into `action` (which
/// `kubectl describe` does not show): a repeated message counts up, a new one is a new event.
pub(crate) async fn publish(
    context: &Context,
    job: &StreamJob,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&note, &mut hasher);
    let action = format!("{action}-{:08x}", std::hash::Hasher::finish(&hasher) as u32);
    let event = Event { type_, reason: reason.to_owned(), note: Some(note), action, secondary: None };
    if let Err(error) = context.recorder.publish(&event, &job.object_ref(&())).await {
        tracing::warn!(job = %job.name_any(), %error, reason, "could not publish event");
    }
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// Whether the user asked the operator to keep its hands off this job.
pub fn reconciliation_paused(job: &StreamJob) -> bool {
    job.annotations().get(PAUSE_ANNOTATION).is_some_and(|v| v == "true")
}

/// Everything wrong with the spec that the schema may not have caught (an API server without
/// CEL, or rules only the worker can check).
pub fn config_problems(job: &StreamJob) -> Vec<String> {
    let mut value = match serde_json::to_value(job) {
        Ok(value) => value,
        Err(error) => return vec![format!("cannot encode the job: {error}")],
    };
    if let Some(object) = value.as_object_mut() {
        object.remove("status");
    }
    let mut problems = match validate_value(&value) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0,
    };
    problems.extend(runtime_problems(job));
    problems
}

async fn reconcile_job(job: &StreamJob, context: &Context) -> Result<Action, Error> {
    let namespace = job.namespace().ok_or_else(|| Error::MissingNamespace(job.name_any()))?;
    let jobs: Api<StreamJob> = Api::namespaced(context.client.clone(), &namespace);

    if job.metadata.deletion_timestamp.is_some() {
        return finalize(job, &jobs, context).await;
    }
    if reconciliation_paused(job) {
        write_status(&jobs, job, paused_status(job, &now())).await?;
        return Ok(Action::await_change());
    }
    ensure_finalizer(job, &jobs).await?;

    let problems = config_problems(job);
    if !problems.is_empty() {
        let already_reported = job
            .status
            .as_ref()
            .is_some_and(|s| s.phase == Some(Phase::Failed) && s.observed_generation == job.metadata.generation);
        let observation = Observation { config_problem: Some(problems.join("; ")), ..Observation::default() };
        write_status(&jobs, job, compute_status(job, &observation, &now())).await?;
        if !already_reported {
            let note = format!("invalid configuration ({} problems): {}", problems.len(), problems.join("; "));
            publish(context, job, EventType::Warning, "InvalidConfig", "Validate", note).await;
        }
        return Ok(Action::await_change());
    }

    let decision = context.decisions.get(&namespace, &job.name_any()).or_else(|| last_autoscaled_replicas(job));
    let desired = desired_replicas(job, decision);
    let children =
        build_children(job, &BuildContext { default_worker_image: context.worker_image.clone(), replicas: desired });
    let client = &context.client;
    apply_child(context, job, &Api::namespaced(client.clone(), &namespace), &children.config_map).await?;
    apply_child(context, job, &Api::namespaced(client.clone(), &namespace), &children.service).await?;
    let (previous_sts, stateful_set) =
        apply_child(context, job, &Api::namespaced(client.clone(), &namespace), &children.stateful_set).await?;
    apply_child(context, job, &Api::namespaced(client.clone(), &namespace), &children.pod_disruption_budget).await?;
    report_workload_changes(context, job, previous_sts.as_ref(), &stateful_set, desired, decision).await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pods = pods.list(&ListParams::default().labels(&selector_string(&job.name_any()))).await?.items;
    let observation =
        Observation { stateful_set: Some(&stateful_set), pods: &pods, config_problem: None, desired_replicas: desired };
    let status = compute_status(job, &observation, &now());
    record_job_metrics(context, job, &status);
    let settled = status.phase == Some(Phase::Running) || status.phase == Some(Phase::Suspended);
    write_status(&jobs, job, status).await?;
    Ok(if settled { Action::requeue(Duration::from_secs(300)) } else { Action::requeue(Duration::from_secs(15)) })
}

/// The workers the autoscaler last asked for, as the status recorded them: after an operator
/// restart, the jobs keep their size until the autoscaler decides again.
fn last_autoscaled_replicas(job: &StreamJob) -> Option<i32> {
    let status = job.status.as_ref()?;
    (job.autoscaling_enabled() && status.lag.is_some() && status.desired_replicas > 0)
        .then_some(status.desired_replicas)
}

fn record_job_metrics(context: &Context, job: &StreamJob, status: &StreamJobStatus) {
    let labels = JobLabels { namespace: job.namespace().unwrap_or_default(), job: job.name_any() };
    context.metrics.desired_replicas.get_or_create(&labels).set(status.desired_replicas.into());
    context.metrics.ready_replicas.get_or_create(&labels).set(status.ready_replicas.into());
    let degraded = condition_is_true(Some(status), DEGRADED);
    context.metrics.degraded_jobs.get_or_create(&labels).set(i64::from(degraded));
}

/// Writes the reconciler's part of the status, only when it differs from what the job carries,
/// so the operator's own writes do not cause further work.
async fn write_status(jobs: &Api<StreamJob>, job: &StreamJob, status: StreamJobStatus) -> Result<(), Error> {
    let wanted = reconciler_part(&status);
    if job.status.as_ref().map(reconciler_part).as_ref() == Some(&wanted) {
        return Ok(());
    }
    apply_status(jobs, &job.name_any(), FIELD_MANAGER, json!(wanted)).await?;
    Ok(())
}

/// Server-side applies `status` as `manager`: the fields it sends are that manager's, the
/// others' stay as they are (conditions are a list map keyed by `type`).
pub(crate) async fn apply_status(
    jobs: &Api<StreamJob>,
    name: &str,
    manager: &str,
    status: serde_json::Value,
) -> Result<(), kube::Error> {
    let patch = json!({ "apiVersion": "streamjob.io/v1alpha1", "kind": "StreamJob", "status": status });
    jobs.patch_status(name, &PatchParams::apply(manager).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

/// Server-side applies one child; returns what was there before and what is there now.
async fn apply_child<K>(context: &Context, job: &StreamJob, api: &Api<K>, child: &K) -> Result<(Option<K>, K), Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = child.name_any();
    let before = api.get_opt(&name).await?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let after = api.patch(&name, &params, &Patch::Apply(child)).await?;
    let kind = K::kind(&());
    match &before {
        None => {
            let note = format!("created {kind} {name}");
            publish(context, job, EventType::Normal, "Created", "Apply", note).await;
        }
        Some(previous) if previous.resource_version() != after.resource_version() => {
            let note = format!("updated {kind} {name} to match the StreamJob");
            publish(context, job, EventType::Normal, "Updated", "Apply", note).await;
        }
        Some(_) => {}
    }
    Ok((before, after))
}

fn template_checksum(stateful_set: &StatefulSet) -> Option<&String> {
    stateful_set.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()?.get(CONFIG_CHECKSUM_ANNOTATION)
}

fn stateful_set_replicas(stateful_set: &StatefulSet) -> i32 {
    stateful_set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

/// Events for rollouts, scaling, suspend and resume, with the numbers behind them.
async fn report_workload_changes(
    context: &Context,
    job: &StreamJob,
    before: Option<&StatefulSet>,
    after: &StatefulSet,
    desired: i32,
    decision: Option<i32>,
) {
    let Some(before) = before else { return };
    let (old_checksum, new_checksum) = (template_checksum(before), template_checksum(after));
    if old_checksum != new_checksum {
        let short = |c: Option<&String>| c.map(|c| c.chars().take(12).collect::<String>()).unwrap_or_default();
        let note = format!(
            "worker configuration changed (checksum {} → {}): rolling {desired} workers",
            short(old_checksum),
            short(new_checksum)
        );
        publish(context, job, EventType::Normal, "RollingOut", "Rollout", note).await;
    }
    let old_replicas = stateful_set_replicas(before);
    if old_replicas == desired {
        return;
    }
    let (reason, note) = if job.spec.suspend {
        ("Suspended", format!("spec.suspend is true: workers {old_replicas} → 0; consumer-group offsets are kept"))
    } else if old_replicas == 0 && job.status.as_ref().and_then(|s| s.phase) == Some(Phase::Suspended) {
        ("Resumed", format!("spec.suspend is false: workers 0 → {desired}"))
    } else if job.autoscaling_enabled() {
        let source = if decision.is_some() { "the autoscaler's decision" } else { "autoscaling.minReplicas" };
        ("Scaled", format!("workers {old_replicas} → {desired} ({source})"))
    } else {
        ("Scaled", format!("workers {old_replicas} → {desired} (spec.replicas)"))
    };
    publish(context, job, EventType::Normal, reason, "Scale", note).await;
}

fn wants_finalizer(job: &StreamJob) -> bool {
    job.spec.deletion_policy == DeletionPolicy::DeleteConsumerGroup
}

fn has_finalizer(job: &StreamJob) -> bool {
    job.finalizers().iter().any(|f| f == CONSUMER_GROUP_FINALIZER)
}

/// Adds the finalizer only when `DeleteConsumerGroup` needs it, and removes it when the policy
/// changes back to `Retain`.
async fn ensure_finalizer(job: &StreamJob, jobs: &Api<StreamJob>) -> Result<(), Error> {
    match (wants_finalizer(job), has_finalizer(job)) {
        (true, false) => {
            let mut finalizers = job.finalizers().to_vec();
            finalizers.push(CONSUMER_GROUP_FINALIZER.to_owned());
            set_finalizers(jobs, job, finalizers).await
        }
        (false, true) => remove_finalizer(jobs, job).await,
        _ => Ok(()),
    }
}

async fn set_finalizers(jobs: &Api<StreamJob>, job: &StreamJob, finalizers: Vec<String>) -> Result<(), Error> {
    // resourceVersion makes this a compare-and-swap: a concurrent change gets a 409 and a retry.
    let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": job.resource_version() } });
    jobs.patch(&job.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

async fn remove_finalizer(jobs: &Api<StreamJob>, job: &StreamJob) -> Result<(), Error> {
    let remaining: Vec<String> = job.finalizers().iter().filter(|f| *f != CONSUMER_GROUP_FINALIZER).cloned().collect();
    set_finalizers(jobs, job, remaining).await
}

/// Deletion: delete the consumer group if asked, with bounded attempts, then let the job go.
/// The children go with it through their owner references.
async fn finalize(job: &StreamJob, jobs: &Api<StreamJob>, context: &Context) -> Result<Action, Error> {
    context.decisions.forget(&job.namespace().unwrap_or_default(), &job.name_any());
    if !has_finalizer(job) {
        return Ok(Action::await_change());
    }
    let uid = job.uid().unwrap_or_default();
    let group = job.consumer_group();
    match context.group_deleter.delete_group(job).await {
        Ok(()) => {
            let note = format!("deleted consumer group {group} (deletionPolicy: DeleteConsumerGroup)");
            publish(context, job, EventType::Normal, "ConsumerGroupDeleted", "Delete", note).await;
        }
        Err(error) => {
            let attempts = context.deletion_attempts.record(uid.clone());
            if attempts < MAX_GROUP_DELETION_ATTEMPTS {
                let note = format!(
                    "could not delete consumer group {group} (attempt {attempts} of {MAX_GROUP_DELETION_ATTEMPTS}): {error}"
                );
                publish(context, job, EventType::Warning, "ConsumerGroupDeletionFailed", "Delete", note).await;
                return Ok(Action::requeue(backoff(attempts)));
            }
            let note = format!(
                "gave up deleting consumer group {group} after {attempts} attempts ({error}); delete it by hand"
            );
            publish(context, job, EventType::Warning, "ConsumerGroupNotDeleted", "Delete", note).await;
        }
    }
    context.deletion_attempts.reset(&uid);
    remove_finalizer(jobs, job).await?;
    Ok(Action::await_change())
}

/// Counts jobs by phase for the `jobs` gauge.
pub fn record_phases<'a>(metrics: &Metrics, jobs: impl Iterator<Item = &'a StreamJob>) {
    let mut counts: HashMap<String, i64> = HashMap::new();
    for job in jobs {
        let phase = job.status.as_ref().and_then(|s| s.phase).map_or("Unknown".to_owned(), |p| format!("{p:?}"));
        *counts.entry(phase).or_default() += 1;
    }
    for phase in ["Pending", "Running", "Scaling", "Suspended", "Degraded", "Failed", "Unknown"] {
        let count = counts.get(phase).copied().unwrap_or(0);
        metrics.jobs_by_phase.get_or_create(&PhaseLabel { phase: phase.to_owned() }).set(count);
    }
}
