//! The reconciler: StreamJob → children (server-side apply), status and events.

mod apply;
mod consent;
mod drain;
mod drain_roll;
mod error;
pub mod events;
mod finalizer;
mod groups;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use streamjob_crds::{runtime_problems, validate_value, Phase, StreamJob, StreamJobStatus};
use streamjob_runtime::sync::lock;

use crate::autoscaler::sink_check::OutputProblems;
use crate::build::{build_children, selector_string, BuildContext};
use crate::metrics::{ErrorLabels, JobLabels, Metrics};
use crate::replicas::desired_replicas;
use crate::status::{compute_status, condition_is_true, paused_status, Observation, DEGRADED};
use crate::PAUSE_ANNOTATION;
use apply::{apply_child, apply_child_over, write_status};
use events::{child_applied, invalid_config, publish, reconcile_failed, workload_changes};
use finalizer::{ensure_finalizer, finalize};

pub use apply::apply_status;
pub use drain::draining;
pub use error::Error;
pub use finalizer::{
    ConsumerGroupDeleter, GroupCleanup, GroupDeletionError, CONSUMER_GROUP_FINALIZER, GROUP_EMPTY_TIMEOUT,
    MAX_GROUP_DELETION_ATTEMPTS,
};

/// Longest wait between retries of a failing reconcile.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How often a job held for sharing another's consumer group checks again.
const GROUP_CONFLICT_RECHECK: Duration = Duration::from_secs(30);

/// A job's key in every per-job map: (namespace, name).
pub fn job_key(job: &StreamJob) -> (String, String) {
    (job.namespace().unwrap_or_default(), job.name_any())
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

    /// Counts one more failure; returns the failures so far.
    fn record(&self, key: K) -> u32 {
        let mut counts = lock(&self.0);
        let count = counts.entry(key).or_insert(0);
        *count += 1;
        *count
    }

    fn reset(&self, key: &K) {
        lock(&self.0).remove(key);
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
    /// The consumer group each job uses, to hold a job that would share another's.
    group_claims: groups::GroupClaims,
    /// Consecutive failures per job (namespace, name): the backoff exponent.
    failures: Attempts<(String, String)>,
    /// Failed consumer-group deletions per job UID.
    deletion_attempts: Attempts<String>,
    /// Jobs whose sink or dead-letter topic the autoscaler's check found unusable.
    pub output_problems: Arc<OutputProblems>,
    /// Jobs to reconcile now for a finding outside the API server (the output check's).
    reconcile_requests: tokio::sync::broadcast::Sender<ObjectRef<StreamJob>>,
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
            group_claims: groups::GroupClaims::default(),
            failures: Attempts::new(),
            deletion_attempts: Attempts::new(),
            output_problems: Arc::default(),
            reconcile_requests: tokio::sync::broadcast::channel(RECONCILE_REQUESTS_BUFFERED).0,
        }
    }

    /// Asks every job controller to reconcile `job` now (the one that watches its namespace
    /// finds it in its cache; the others do not and skip it).
    pub fn request_reconcile(&self, job: &StreamJob) {
        // No receiver (no controller runs, as in the driver's own tests) is no error.
        let _ = self.reconcile_requests.send(ObjectRef::from_obj(job));
    }

    /// The reconcile requests of [`Context::request_reconcile`], for a controller's
    /// `reconcile_on`. A receiver that falls behind skips what it missed: the periodic
    /// reconcile catches up.
    pub fn reconcile_requests(&self) -> impl futures::Stream<Item = ObjectRef<StreamJob>> + Send + 'static {
        futures::stream::unfold(self.reconcile_requests.subscribe(), |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(job) => return Some((job, receiver)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}

/// Reconcile requests held for a controller that has not taken them yet.
const RECONCILE_REQUESTS_BUFFERED: usize = 1024;

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
    let failure = result.as_ref().err().map(|e| ErrorLabels { reason: e.reason(), step: e.category().to_owned() });
    context.metrics.observe_reconcile(started.elapsed(), failure.as_ref());
    match &result {
        Ok(_) => context.failures.reset(&job_key(&job)),
        Err(error) => publish(&context, &job, reconcile_failed(error)).await,
    }
    result
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
    problems.extend(streamjob_crds::names::name_problems(&job.namespace().unwrap_or_default(), &job.name_any()));
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

    let mut problems = config_problems(job);
    let group_conflict = context.group_claims.claim_checked(job, &context.client).await.map_err(Error::ReadJob)?;
    problems.extend(group_conflict.clone());
    if !problems.is_empty() {
        let already_reported = job
            .status
            .as_ref()
            .is_some_and(|s| s.phase == Some(Phase::Failed) && s.observed_generation == job.metadata.generation);
        let observation = Observation { config_problem: Some(problems.join("; ")), ..Observation::default() };
        write_status(&jobs, job, compute_status(job, &observation, &now())).await?;
        if !already_reported {
            publish(context, job, invalid_config(&problems)).await;
        }
        // A group conflict ends when the other job goes, which is no change to this one.
        return Ok(if group_conflict.is_some() {
            Action::requeue(GROUP_CONFLICT_RECHECK)
        } else {
            Action::await_change()
        });
    }

    let secrets = consent::check(context, job, &namespace).await?;
    if let Some(action) = consent::refuse_if_needed(context, &jobs, job, &secrets).await? {
        return Ok(action);
    }

    let decision = context.decisions.get(&namespace, &job.name_any()).or_else(|| last_autoscaled_replicas(job));
    let desired = desired_replicas(job, decision);
    let build = BuildContext {
        default_worker_image: context.worker_image.clone(),
        replicas: desired,
        credentials_checksum: secrets.checksum(),
    };
    let children = build_children(job, &build);
    let live_sts = match drain_roll::hold_for_drain(job, context, &children, desired).await? {
        drain_roll::DrainGate::Hold(action) => return Ok(action),
        drain_roll::DrainGate::Proceed(live) => live.map(|live| *live),
    };
    let client = &context.client;
    apply_reported(context, job, &Api::namespaced(client.clone(), &namespace), &children.config_map).await?;
    apply_reported(context, job, &Api::namespaced(client.clone(), &namespace), &children.service).await?;
    let sets = Api::namespaced(client.clone(), &namespace);
    let (previous_sts, stateful_set) = apply_child_over(&sets, &children.stateful_set, live_sts).await?;
    if let Some(event) = child_applied(previous_sts.as_ref(), &stateful_set) {
        publish(context, job, event).await;
    }
    apply_reported(context, job, &Api::namespaced(client.clone(), &namespace), &children.pod_disruption_budget).await?;
    for event in workload_changes(job, previous_sts.as_ref(), &stateful_set, desired, decision) {
        publish(context, job, event).await;
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let selector = ListParams::default().labels(&selector_string(&job.name_any()));
    let pods = pods.list(&selector).await.map_err(Error::ListPods)?.items;
    let (namespace, name) = job_key(job);
    let output_problem = context.output_problems.get(&namespace, &name);
    let observation = Observation {
        stateful_set: Some(&stateful_set),
        pods: &pods,
        output_problem,
        desired_replicas: desired,
        ..Observation::default()
    };
    let status = compute_status(job, &observation, &now());
    record_job_metrics(context, job, &status);
    let settled = status.phase == Some(Phase::Running) || status.phase == Some(Phase::Suspended);
    write_status(&jobs, job, status).await?;
    Ok(if settled { Action::requeue(Duration::from_secs(300)) } else { Action::requeue(Duration::from_secs(15)) })
}

/// Applies one child and says so in an event when it was created or changed.
async fn apply_reported<K>(context: &Context, job: &StreamJob, api: &Api<K>, child: &K) -> Result<(Option<K>, K), Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let (before, after) = apply_child(api, child).await?;
    if let Some(event) = child_applied(before.as_ref(), &after) {
        publish(context, job, event).await;
    }
    Ok((before, after))
}

/// The workers the autoscaler last asked for, as the status recorded them: after an operator
/// restart, the jobs keep their size until the autoscaler decides again.
fn last_autoscaled_replicas(job: &StreamJob) -> Option<i32> {
    let status = job.status.as_ref()?;
    (job.autoscaling_enabled() && status.lag.is_some() && status.desired_replicas > 0)
        .then_some(status.desired_replicas)
}

fn record_job_metrics(context: &Context, job: &StreamJob, status: &StreamJobStatus) {
    let labels = JobLabels::of(job);
    context.metrics.track_job(&labels);
    context.metrics.desired_replicas.get_or_create(&labels).set(status.desired_replicas.into());
    context.metrics.ready_replicas.get_or_create(&labels).set(status.ready_replicas.into());
    let degraded = condition_is_true(Some(status), DEGRADED);
    context.metrics.degraded_jobs.get_or_create(&labels).set(i64::from(degraded));
}
