//! The consumer-group finalizer: present only while `deletionPolicy: DeleteConsumerGroup` has
//! work to do at deletion, and never holding a job back for good.

use futures::future::BoxFuture;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;
use streamjob_crds::{DeletionPolicy, StreamJob};

use super::events::{consumer_group_deleted, consumer_group_not_deleted, publish};
use super::{backoff, job_key, Context, Error};

/// Finalizer added only while `deletionPolicy: DeleteConsumerGroup` has work to do at deletion.
pub const CONSUMER_GROUP_FINALIZER: &str = "streamjob.io/delete-consumer-group";
/// Attempts to delete a consumer group before giving up and letting the job go.
pub const MAX_GROUP_DELETION_ATTEMPTS: u32 = 5;

/// Why a consumer group could not be deleted, as the deleter tells it.
pub type GroupDeletionError = Box<dyn std::error::Error + Send + Sync>;

/// Deletes a job's Kafka consumer group (for `deletionPolicy: DeleteConsumerGroup`).
pub trait ConsumerGroupDeleter: Send + Sync {
    fn delete_group<'a>(&'a self, job: &'a StreamJob) -> BoxFuture<'a, Result<(), GroupDeletionError>>;
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

/// Deletion: delete the consumer group if asked, with bounded attempts, then let the job go.
/// The children go with it through their owner references.
pub(super) async fn finalize(job: &StreamJob, jobs: &Api<StreamJob>, context: &Context) -> Result<Action, Error> {
    let (namespace, name) = job_key(job);
    context.decisions.forget(&namespace, &name);
    if !has_finalizer(job) {
        return Ok(Action::await_change());
    }
    let uid = job.uid().unwrap_or_default();
    let group = job.consumer_group();
    match context.group_deleter.delete_group(job).await {
        Ok(()) => publish(context, job, consumer_group_deleted(&group)).await,
        Err(error) => {
            let attempts = context.deletion_attempts.record(uid.clone());
            publish(context, job, consumer_group_not_deleted(&group, attempts, &error)).await;
            if attempts < MAX_GROUP_DELETION_ATTEMPTS {
                return Ok(Action::requeue(backoff(attempts)));
            }
        }
    }
    context.deletion_attempts.reset(&uid);
    remove_finalizer(jobs, job).await?;
    Ok(Action::await_change())
}
