//! The consumer-group finalizer: present only while `deletionPolicy: DeleteConsumerGroup` has
//! work to do at deletion, and never holding a job back for good. At deletion it stops the
//! workers (StatefulSet to 0), waits for the consumer group to be empty, deletes the group and
//! the repartition topic, and only then lets the job go; each step is an event.

use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;
use streamjob_crds::{DeletionPolicy, StreamJob};

use super::events::{
    consumer_group_deleted, consumer_group_left_behind, consumer_group_not_deleted, publish, stopping_workers,
    waiting_for_group_to_empty,
};
use super::{backoff, job_key, Context, Error};

/// Finalizer added only while `deletionPolicy: DeleteConsumerGroup` has work to do at deletion.
pub const CONSUMER_GROUP_FINALIZER: &str = "streamjob.io/delete-consumer-group";
/// Attempts to delete a consumer group before giving up and letting the job go.
pub const MAX_GROUP_DELETION_ATTEMPTS: u32 = 5;

/// Why a consumer group could not be deleted, as the deleter tells it.
pub type GroupDeletionError = Box<dyn std::error::Error + Send + Sync>;

/// How long a deleted job waits for its consumer group to empty (its workers get 60 s to drain
/// and commit, and a member that died keeps its place for the session timeout) before the
/// finalizer gives up, leaves the group and the repartition topic, and lets the job go.
pub const GROUP_EMPTY_TIMEOUT: Duration = Duration::from_secs(180);
/// How often a deleted job checks whether its group is empty.
const GROUP_EMPTY_POLL: Duration = Duration::from_secs(3);

/// What a deletion removed besides the group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCleanup {
    /// Whether `<group>-repartition` existed (and is now deleted).
    pub repartition_topic_existed: bool,
}

/// A job's Kafka state at deletion (for `deletionPolicy: DeleteConsumerGroup`).
pub trait ConsumerGroupDeleter: Send + Sync {
    /// Members of the job's consumer group now (0 when empty or absent).
    fn group_members<'a>(&'a self, _job: &'a StreamJob) -> BoxFuture<'a, Result<usize, GroupDeletionError>> {
        Box::pin(async { Ok(0) })
    }

    /// Deletes the job's consumer group and its repartition topic.
    fn delete_group<'a>(&'a self, job: &'a StreamJob) -> BoxFuture<'a, Result<GroupCleanup, GroupDeletionError>>;
}

fn wants_finalizer(job: &StreamJob) -> bool {
    job.spec.deletion_policy == DeletionPolicy::DeleteConsumerGroup
}

fn has_finalizer(job: &StreamJob) -> bool {
    job.finalizers().iter().any(|f| f == CONSUMER_GROUP_FINALIZER)
}

/// Adds the finalizer only when `DeleteConsumerGroup` needs it, and removes it when the policy
/// changes back to `Retain`.
pub(super) async fn ensure_finalizer(job: &StreamJob, jobs: &Api<StreamJob>) -> Result<(), Error> {
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
    jobs.patch(&job.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(Error::Finalizer)?;
    Ok(())
}

async fn remove_finalizer(jobs: &Api<StreamJob>, job: &StreamJob) -> Result<(), Error> {
    let remaining: Vec<String> = job.finalizers().iter().filter(|f| *f != CONSUMER_GROUP_FINALIZER).cloned().collect();
    set_finalizers(jobs, job, remaining).await
}

/// Deletion: with the finalizer, stop the workers, wait (bounded) for the group to empty, delete
/// the group and the repartition topic, then let the job go. The children go with it through
/// their owner references.
pub(super) async fn finalize(job: &StreamJob, jobs: &Api<StreamJob>, context: &Context) -> Result<Action, Error> {
    let (namespace, name) = job_key(job);
    context.decisions.forget(&namespace, &name);
    context.group_claims.release(&namespace, &name);
    if !has_finalizer(job) {
        return Ok(Action::await_change());
    }
    let uid = job.uid().unwrap_or_default();
    let group = job.consumer_group();
    let topic = job.repartition_topic();
    if let Some(workers) = stop_workers(job, context).await? {
        publish(context, job, stopping_workers(&group, workers)).await;
    }
    let failure = match context.group_deleter.group_members(job).await {
        Ok(0) => match context.group_deleter.delete_group(job).await {
            Ok(cleanup) => {
                publish(context, job, consumer_group_deleted(&group, &topic, cleanup.repartition_topic_existed)).await;
                None
            }
            Err(error) => Some(error),
        },
        Ok(members) => {
            let waited = deleting_for(job);
            if waited < GROUP_EMPTY_TIMEOUT {
                publish(context, job, waiting_for_group_to_empty(&group, members, GROUP_EMPTY_TIMEOUT)).await;
                return Ok(Action::requeue(GROUP_EMPTY_POLL));
            }
            publish(context, job, consumer_group_left_behind(&group, &topic, members, waited)).await;
            None
        }
        Err(error) => Some(error),
    };
    if let Some(error) = failure {
        let attempts = context.deletion_attempts.record(uid.clone());
        publish(context, job, consumer_group_not_deleted(&group, &topic, attempts, &error)).await;
        if attempts < MAX_GROUP_DELETION_ATTEMPTS {
            return Ok(Action::requeue(backoff(attempts)));
        }
    }
    context.deletion_attempts.reset(&uid);
    remove_finalizer(jobs, job).await?;
    Ok(Action::await_change())
}

/// How long ago the job was deleted.
fn deleting_for(job: &StreamJob) -> Duration {
    let Some(deleted) = job.metadata.deletion_timestamp.as_ref() else { return Duration::ZERO };
    let elapsed = k8s_openapi::jiff::Timestamp::now().duration_since(deleted.0);
    Duration::try_from(elapsed).unwrap_or(Duration::ZERO)
}

/// Scales the job's StatefulSet to 0 so that its workers leave the group; returns the workers
/// it had when it was not at 0 yet. A StatefulSet already gone is no error.
async fn stop_workers(job: &StreamJob, context: &Context) -> Result<Option<i32>, Error> {
    let sets: Api<StatefulSet> = Api::namespaced(context.client.clone(), &job.namespace().unwrap_or_default());
    let Some(set) = sets.get_opt(&job.name_any()).await.map_err(Error::StopWorkers)? else { return Ok(None) };
    let replicas = set.spec.as_ref().and_then(|spec| spec.replicas).unwrap_or(1);
    if replicas == 0 {
        return Ok(None);
    }
    let patch = json!({ "spec": { "replicas": 0 } });
    sets.patch(&job.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(Error::StopWorkers)?;
    Ok(Some(replicas))
}
