//! The StreamJob status as a pure function of what the operator observed: the StatefulSet, the
//! worker pods and the configuration check.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use streamjob_crds::{Phase, StreamJob, StreamJobStatus};

use crate::autoscaler::sink_check::SINK_REFUSED;
use crate::build::selector_string;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const CONFIG_VALID: &str = "ConfigValid";
pub const SUSPENDED: &str = "Suspended";
pub const RECONCILIATION_PAUSED: &str = "ReconciliationPaused";
pub const AUTOSCALER_DEGRADED: &str = "AutoscalerDegraded";
pub const SCALE_BLOCKED: &str = "ScaleBlocked";
/// The `Progressing` reason while the workers are drained for a pipeline change (see
/// `controller/drain.rs`).
pub const DRAINING_REASON: &str = "DrainingForPipelineChange";

/// The conditions the autoscaler writes, under its own field manager.
pub const AUTOSCALER_CONDITIONS: &[&str] = &[AUTOSCALER_DEGRADED, SCALE_BLOCKED];

/// Whether the autoscaler writes this condition (see [`AUTOSCALER_CONDITIONS`]).
pub fn is_autoscaler_condition(condition: &Condition) -> bool {
    AUTOSCALER_CONDITIONS.contains(&condition.type_.as_str())
}

/// Container states that mean a worker cannot run, as the kubelet names them.
const FAILING_WAITING_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// What one reconcile saw.
#[derive(Clone, Debug, Default)]
pub struct Observation<'a> {
    pub stateful_set: Option<&'a StatefulSet>,
    pub pods: &'a [Pod],
    /// Why the spec cannot run, for what the schema could not catch.
    pub config_problem: Option<String>,
    /// Why the job's sink or dead-letter topic cannot be written (`autoscaler/sink_check.rs`).
    pub output_problem: Option<String>,
    /// The reason of the `ConfigValid=False` condition for `config_problem`; `InvalidSpec`
    /// when `None`.
    pub config_problem_reason: Option<&'static str>,
    pub desired_replicas: i32,
    /// What a drain for a pipeline change waits for, while one is under way.
    pub draining: Option<String>,
}

/// The part of a status the reconciler writes (field manager `streamjob-operator`): all but
/// what the autoscaler measures and decides (`lag`, `partitions`, `throughput`, `lastScale` and
/// the `AutoscalerDegraded` and `ScaleBlocked` conditions), which it writes under its own field manager. Each field
/// has one writer, so neither puts back an old copy of the other's.
pub fn reconciler_part(status: &StreamJobStatus) -> StreamJobStatus {
    let mut part = status.clone();
    (part.lag, part.partitions, part.throughput, part.last_scale) = (None, None, None, None);
    part.conditions.retain(|c| !is_autoscaler_condition(c));
    part
}

/// The part of a status the autoscaler writes (see [`reconciler_part`]), as applied.
pub fn autoscaler_part(status: &StreamJobStatus) -> serde_json::Value {
    let conditions: Vec<&Condition> = status.conditions.iter().filter(|c| is_autoscaler_condition(c)).collect();
    let mut part = serde_json::json!({ "conditions": conditions });
    let fields = [
        ("partitions", serde_json::to_value(status.partitions)),
        ("lag", serde_json::to_value(&status.lag)),
        ("throughput", serde_json::to_value(status.throughput)),
        ("lastScale", serde_json::to_value(&status.last_scale)),
    ];
    for (name, value) in fields {
        match value {
            Ok(value) if !value.is_null() => part[name] = value,
            _ => {}
        }
    }
    part
}

/// Sets a condition, keeping `lastTransitionTime` unless its status changes.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if status { "True" } else { "False" }.to_owned();
    let last_transition_time = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    let condition = Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        last_transition_time,
        observed_generation: generation,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

/// Removes a condition type.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// Whether the condition is present and True.
pub fn condition_is_true(status: Option<&StreamJobStatus>, type_: &str) -> bool {
    status.is_some_and(|s| s.conditions.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// Why worker pods are failing, one line per failing pod; empty when none is.
pub fn pod_failures(pods: &[Pod]) -> Vec<String> {
    pods.iter().filter_map(pod_failure).collect()
}

fn pod_failure(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let name = pod.name_any();
    for container in status.container_statuses.iter().flatten() {
        let waiting = container.state.as_ref().and_then(|s| s.waiting.as_ref());
        if let Some(reason) = waiting.and_then(|w| w.reason.as_deref()) {
            if FAILING_WAITING_REASONS.contains(&reason) {
                let detail = waiting.and_then(|w| w.message.as_deref()).unwrap_or("");
                return Some(format!(
                    "pod {name}: container {} is {reason} (restarts {}){}{detail}",
                    container.name,
                    container.restart_count,
                    if detail.is_empty() { "" } else { ": " }
                ));
            }
        }
    }
    let unschedulable = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable"));
    if let Some(condition) = unschedulable {
        return Some(format!("pod {name} is unschedulable: {}", condition.message.as_deref().unwrap_or("")));
    }
    (status.phase.as_deref() == Some("Failed"))
        .then(|| format!("pod {name} failed: {}", status.message.as_deref().unwrap_or("no message")))
}

/// Whether the StatefulSet has not yet reached the desired count and template.
fn rollout_in_progress(stateful_set: &StatefulSet, desired: i32) -> Option<String> {
    let generation = stateful_set.metadata.generation.unwrap_or(0);
    let Some(status) = stateful_set.status.as_ref() else {
        return Some("the StatefulSet has no status yet".to_owned());
    };
    if status.observed_generation.unwrap_or(0) < generation {
        return Some(format!(
            "the StatefulSet controller has not yet seen generation {generation} (observed {})",
            status.observed_generation.unwrap_or(0)
        ));
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    if status.replicas != desired {
        return Some(format!("{} workers exist, {desired} desired", status.replicas));
    }
    if desired > 0 && (updated < desired || status.update_revision != status.current_revision) {
        return Some(format!("rolling out new configuration: {updated}/{desired} workers updated"));
    }
    if ready < desired {
        return Some(format!("{ready}/{desired} workers ready"));
    }
    None
}

/// The status a job should have given `observation`; fields the autoscaler owns (lag,
/// partitions, throughput, lastScale, AutoscalerDegraded) are carried over from `previous`.
pub fn compute_status(job: &StreamJob, observation: &Observation<'_>, now: &Time) -> StreamJobStatus {
    let previous = job.status.clone().unwrap_or_default();
    let generation = job.metadata.generation;
    let desired = observation.desired_replicas;
    let sts_status = observation.stateful_set.and_then(|s| s.status.as_ref());
    let replicas = sts_status.map_or(0, |s| s.replicas);
    let ready = sts_status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let mut conditions = previous.conditions.clone();
    remove_condition(&mut conditions, RECONCILIATION_PAUSED);

    if let Some(problem) = &observation.config_problem {
        let reason = observation.config_problem_reason.unwrap_or("InvalidSpec");
        set_condition(&mut conditions, CONFIG_VALID, false, reason, problem.clone(), generation, now);
        set_condition(
            &mut conditions,
            READY,
            false,
            reason,
            "the spec cannot run; see ConfigValid".to_owned(),
            generation,
            now,
        );
        set_condition(
            &mut conditions,
            PROGRESSING,
            false,
            reason,
            if observation.config_problem_reason.is_some() {
                "waiting for the spec or the Secrets to change; see ConfigValid".to_owned()
            } else {
                "waiting for a spec change".to_owned()
            },
            generation,
            now,
        );
        return StreamJobStatus { observed_generation: generation, phase: Some(Phase::Failed), conditions, ..previous };
    }
    set_condition(&mut conditions, CONFIG_VALID, true, "Valid", "the spec is valid".to_owned(), generation, now);

    let progress = match (&observation.draining, observation.stateful_set) {
        (Some(drain), _) => Some(drain.clone()),
        (None, Some(stateful_set)) => rollout_in_progress(stateful_set, desired),
        (None, None) => Some("creating the StatefulSet".to_owned()),
    };
    let failures = pod_failures(observation.pods);
    let suspended = job.spec.suspend;
    // A suspended job writes nothing: its outputs are not its problem now.
    let output_problem = observation.output_problem.as_ref().filter(|_| !suspended);

    match &progress {
        Some(what) if observation.draining.is_some() => {
            // The drain's start is the condition's transition time: it bounds the wait.
            conditions.retain(|c| c.type_ != PROGRESSING || c.reason == DRAINING_REASON);
            set_condition(&mut conditions, PROGRESSING, true, DRAINING_REASON, what.clone(), generation, now)
        }
        Some(what) => set_condition(&mut conditions, PROGRESSING, true, "RollingOut", what.clone(), generation, now),
        None => set_condition(
            &mut conditions,
            PROGRESSING,
            false,
            "Complete",
            format!("{ready}/{desired} workers ready and up to date"),
            generation,
            now,
        ),
    }
    if let (true, Some(problem)) = (failures.is_empty(), output_problem) {
        set_condition(&mut conditions, DEGRADED, true, SINK_REFUSED, problem.clone(), generation, now);
    } else if failures.is_empty() {
        set_condition(
            &mut conditions,
            DEGRADED,
            false,
            "WorkersHealthy",
            "no worker is failing".to_owned(),
            generation,
            now,
        );
    } else {
        let reason = if failures.iter().any(|f| f.contains("ImagePull") || f.contains("ErrImagePull")) {
            "ImagePullFailing"
        } else if failures.iter().any(|f| f.contains("CrashLoopBackOff")) {
            "CrashLooping"
        } else {
            "WorkersFailing"
        };
        set_condition(&mut conditions, DEGRADED, true, reason, failures.join("; "), generation, now);
    }
    set_condition(
        &mut conditions,
        SUSPENDED,
        suspended,
        if suspended { "Suspended" } else { "Active" },
        if suspended {
            "spec.suspend is true: no workers run".to_owned()
        } else {
            "the job is not suspended".to_owned()
        },
        generation,
        now,
    );
    let all_ready = !suspended
        && progress.is_none()
        && failures.is_empty()
        && output_problem.is_none()
        && ready == desired
        && desired > 0;
    let (ready_reason, ready_message) = if all_ready {
        ("AllWorkersReady", format!("{ready}/{desired} workers ready"))
    } else if suspended {
        ("Suspended", "the job is suspended".to_owned())
    } else if desired == 0 {
        ("ScaledToZero", "no workers are desired (scaled to zero)".to_owned())
    } else if !failures.is_empty() {
        ("WorkersFailing", format!("{ready}/{desired} workers ready; see Degraded"))
    } else if output_problem.is_some() {
        (SINK_REFUSED, format!("{ready}/{desired} workers running, but their output is refused; see Degraded"))
    } else {
        ("WorkersNotReady", format!("{ready}/{desired} workers ready"))
    };
    set_condition(&mut conditions, READY, all_ready, ready_reason, ready_message, generation, now);

    let phase = if suspended && replicas == 0 {
        Phase::Suspended
    } else if !failures.is_empty() || output_problem.is_some() {
        Phase::Degraded
    } else if progress.is_none() {
        Phase::Running
    } else if ready == 0 && matches!(previous.phase, None | Some(Phase::Pending)) {
        Phase::Pending
    } else {
        Phase::Scaling
    };

    StreamJobStatus {
        observed_generation: generation,
        phase: Some(phase),
        replicas,
        ready_replicas: ready,
        desired_replicas: desired,
        ready: Some(format!("{ready}/{desired}")),
        selector: Some(selector_string(&job.name_any())),
        consumer_group: Some(job.consumer_group()),
        conditions,
        ..previous
    }
}

/// The status to report while `streamjob.io/pause-reconciliation` is set: everything as it
/// was, plus a condition saying the operator is not acting.
pub fn paused_status(job: &StreamJob, now: &Time) -> StreamJobStatus {
    let mut status = job.status.clone().unwrap_or_default();
    set_condition(
        &mut status.conditions,
        RECONCILIATION_PAUSED,
        true,
        "AnnotationSet",
        format!("{} is \"true\": the operator leaves this job and its children untouched", crate::PAUSE_ANNOTATION),
        job.metadata.generation,
        now,
    );
    status
}
