//! Server-side apply of a job's children and of its status.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use streamjob_crds::{StreamJob, StreamJobStatus};

use super::Error;
use crate::build::FIELD_MANAGER;
use crate::status::reconciler_part;

/// Server-side applies one child; returns what was there before and what is there now.
pub(super) async fn apply_child<K>(api: &Api<K>, child: &K) -> Result<(Option<K>, K), Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = child.name_any();
    let failed = |source| Error::ApplyChild { kind: K::kind(&()).into_owned(), name: name.clone(), source };
    let before = api.get_opt(&name).await.map_err(failed)?;
    apply_child_over(api, child, before).await
}

/// Server-side applies one child whose current state the caller has just read (`before`).
pub(super) async fn apply_child_over<K>(api: &Api<K>, child: &K, before: Option<K>) -> Result<(Option<K>, K), Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = child.name_any();
    let failed = |source| Error::ApplyChild { kind: K::kind(&()).into_owned(), name: name.clone(), source };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let after = api.patch(&name, &params, &Patch::Apply(child)).await.map_err(failed)?;
    Ok((before, after))
}

/// Writes the reconciler's part of the status, only when it differs from what the job carries,
/// so the operator's own writes do not cause further work.
pub(super) async fn write_status(jobs: &Api<StreamJob>, job: &StreamJob, status: StreamJobStatus) -> Result<(), Error> {
    let wanted = reconciler_part(&status);
    if job.status.as_ref().map(reconciler_part).as_ref() == Some(&wanted) {
        return Ok(());
    }
    apply_status(jobs, &job.name_any(), FIELD_MANAGER, json!(wanted)).await.map_err(Error::PatchStatus)
}

/// Server-side applies `status` as `manager`: the fields it sends are that manager's, the
/// others' stay as they are (conditions are a list map keyed by `type`).
pub async fn apply_status(
    jobs: &Api<StreamJob>,
    name: &str,
    manager: &str,
    status: serde_json::Value,
) -> Result<(), kube::Error> {
    let patch = json!({ "apiVersion": "streamjob.io/v1alpha1", "kind": "StreamJob", "status": status });
    jobs.patch_status(name, &PatchParams::apply(manager).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}
