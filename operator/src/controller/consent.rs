//! The reconciler's side of Secrets by consent (`crate::secrets`): a job naming a Secret that
//! did not opt in gets `ConfigValid=False` (reason `SecretNotOptedIn`) and one warning event,
//! and no child is applied, so no pod template refers to the Secret. The job is checked again
//! every [`SECRET_RECHECK`]: labelling the Secret lets it proceed without a change to the job.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::Api;
use streamjob_crds::StreamJob;

use super::apply::write_status;
use super::events::{publish, JobEvent};
use super::{now, Context, Error};
use crate::secrets::{check_secrets, SecretsCheck, SECRET_NOT_OPTED_IN};
use crate::status::{compute_status, Observation, CONFIG_VALID};

/// How often a job held for a Secret that did not opt in looks again.
pub const SECRET_RECHECK: Duration = Duration::from_secs(5);

/// The Secrets of `job`, judged from their metadata.
pub(super) async fn check(context: &Context, job: &StreamJob, namespace: &str) -> Result<SecretsCheck, Error> {
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), namespace);
    check_secrets(&secrets, &job.spec).await.map_err(Error::ReadSecrets)
}

/// The warning event of a refused job.
pub fn secret_not_opted_in(message: &str) -> JobEvent {
    JobEvent::warning(SECRET_NOT_OPTED_IN, "CheckSecrets", format!("not started: {message}"))
}

/// When the job names a Secret it may not use: its status and event, and when to look again.
pub(super) async fn refuse_if_needed(
    context: &Context,
    jobs: &Api<StreamJob>,
    job: &StreamJob,
    check: &SecretsCheck,
) -> Result<Option<Action>, Error> {
    let Some(message) = check.message() else {
        return Ok(None);
    };
    let already_reported = job.status.as_ref().is_some_and(|status| {
        status.conditions.iter().any(|c| {
            c.type_ == CONFIG_VALID && c.status == "False" && c.reason == SECRET_NOT_OPTED_IN && c.message == message
        })
    });
    let observation = Observation {
        config_problem: Some(message.clone()),
        config_problem_reason: Some(SECRET_NOT_OPTED_IN),
        ..Observation::default()
    };
    write_status(jobs, job, compute_status(job, &observation, &now())).await?;
    if !already_reported {
        tracing::warn!(job = %kube::ResourceExt::name_any(job), %message, "job names a Secret that did not opt in");
        publish(context, job, secret_not_opted_in(&message)).await;
    }
    Ok(Some(Action::requeue(SECRET_RECHECK)))
}
