//! The drain roll's I/O (its decisions are `drain.rs`): reads the running StatefulSet, its
//! pods and, once no pod is left, the consumer group's members; holds the new ConfigMap and
//! template back while the drain is under way, says so in the status and in events, and sets
//! the StatefulSet to 0.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;
use streamjob_crds::StreamJob;

use super::apply::write_status;
use super::drain::{drain_event, drain_message, draining_since, next_step, DrainStep, GroupCheck, Running, DRAIN_POLL};
use super::events::publish;
use super::{now, Context, Error};
use crate::build::{
    selector_string, template_annotation, Children, CONFIG_CHECKSUM_ANNOTATION, PIPELINE_FINGERPRINT_ANNOTATION,
};
use crate::status::{compute_status, Observation};

/// How long the consumer group's members are asked for before the drain goes on without the
/// answer (the members of a group whose brokers do not answer cannot be waited for).
const GROUP_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the children may be applied now.
pub(super) enum DrainGate {
    /// A drain is under way: look again after this.
    Hold(Action),
    /// No drain, or the drain is through and the new pipeline starts now: apply, over the
    /// StatefulSet as it was just read (so the apply need not read it again).
    Proceed(Option<Box<StatefulSet>>),
}

/// Before the children are applied: when the change to apply needs a drain that is not
/// finished, takes its next step and says when to look again.
pub(super) async fn hold_for_drain(
    job: &StreamJob,
    context: &Context,
    children: &Children,
    desired: i32,
) -> Result<DrainGate, Error> {
    let namespace = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let sets: Api<StatefulSet> = Api::namespaced(context.client.clone(), &namespace);
    let Some(live) = sets.get_opt(&name).await.map_err(Error::Drain)? else { return Ok(DrainGate::Proceed(None)) };
    let wanted_set = &children.stateful_set;
    let wanted = template_annotation(wanted_set, PIPELINE_FINGERPRINT_ANNOTATION).unwrap_or("none");
    let running_fingerprint = template_annotation(&live, PIPELINE_FINGERPRINT_ANNOTATION);
    let config_changed = template_annotation(&live, CONFIG_CHECKSUM_ANNOTATION)
        != template_annotation(wanted_set, CONFIG_CHECKSUM_ANNOTATION);
    let replicas = live.spec.as_ref().and_then(|spec| spec.replicas).unwrap_or(1);
    if !super::drain::needs_drain(&Running::new(running_fingerprint, config_changed, replicas, 0), wanted) {
        return Ok(DrainGate::Proceed(Some(Box::new(live))));
    }
    let pods: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let pods = pods.list(&ListParams::default().labels(&selector_string(&name))).await.map_err(Error::ListPods)?.items;
    let running = Running::new(running_fingerprint, config_changed, replicas, pods.len());
    let waited = draining_since(job).map_or(Duration::ZERO, |since| {
        Duration::try_from(k8s_openapi::jiff::Timestamp::now().duration_since(since.0)).unwrap_or(Duration::ZERO)
    });
    let mut step = next_step(Some(&running), wanted, None, waited);
    if step == DrainStep::CheckGroup {
        let group = match tokio::time::timeout(GROUP_CHECK_TIMEOUT, context.group_deleter.group_members(job)).await {
            Ok(Ok(members)) => GroupCheck::Members(members),
            Ok(Err(error)) => GroupCheck::Unknown(error.to_string()),
            Err(_) => GroupCheck::Unknown(format!("no answer within {}s", GROUP_CHECK_TIMEOUT.as_secs())),
        };
        step = next_step(Some(&running), wanted, Some(&group), waited);
    }
    let from = running_fingerprint.unwrap_or("unknown");
    tracing::info!(job = %name, namespace, ?step, from, to = wanted, "pipeline change drain");
    let event = drain_event(&step, from, wanted, &job.consumer_group(), desired);
    let Some(message) = drain_message(&step, from, wanted) else {
        if let Some(event) = event {
            publish(context, job, event).await;
        }
        return Ok(DrainGate::Proceed(Some(Box::new(live))));
    };
    // The status first: the autoscaler holds while it says a drain is under way.
    let observation = Observation {
        stateful_set: Some(&live),
        pods: &pods,
        desired_replicas: desired,
        draining: Some(message),
        ..Observation::default()
    };
    write_status(&jobs(context, &namespace), job, compute_status(job, &observation, &now())).await?;
    if let DrainStep::StopWorkers { .. } = step {
        let patch = json!({ "spec": { "replicas": 0 } });
        sets.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(Error::Drain)?;
    }
    if let Some(event) = event {
        publish(context, job, event).await;
    }
    Ok(DrainGate::Hold(Action::requeue(DRAIN_POLL)))
}

fn jobs(context: &Context, namespace: &str) -> Api<StreamJob> {
    Api::namespaced(context.client.clone(), namespace)
}
