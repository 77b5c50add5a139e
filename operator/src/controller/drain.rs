//! The drain roll, as pure decisions: when a change to a job's pipeline changes what its
//! partial aggregates mean (the pipeline fingerprint, `streamjob_crds::fingerprint`), the
//! workers are not rolled one at a time, which would run old and new pipelines side by side in
//! one consumer group. Instead the operator stops every worker (StatefulSet to 0, the old
//! template and ConfigMap kept), waits until no worker pod is left and the consumer group has
//! no member, and only then applies the new ConfigMap and template with the wanted replicas.
//! The state lives in the cluster (the running template's fingerprint annotation, its replicas,
//! the pods, the `Progressing` condition), so an operator restart picks the drain up where it
//! was. The I/O is in `drain_roll.rs`.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use streamjob_crds::StreamJob;

use super::events::JobEvent;
pub use crate::status::DRAINING_REASON;
use crate::status::PROGRESSING;

/// How long after the drain began the operator waits for the consumer group to empty (a
/// stopped worker leaves at once; one that died stays a member for its session timeout, a
/// static member too) before it starts the new pipeline anyway. Partials of the old pipeline
/// are discarded by fingerprint either way.
pub const DRAIN_GROUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a drain checks again.
pub const DRAIN_POLL: Duration = Duration::from_secs(2);

/// The workers as they run now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running<'a> {
    /// The running template's fingerprint annotation; `None` for a template written by an
    /// operator from before fingerprints.
    pub fingerprint: Option<&'a str>,
    /// Whether the worker configuration (its checksum) differs from the one to apply.
    pub config_changed: bool,
    /// The StatefulSet's `spec.replicas`.
    pub replicas: i32,
    /// Worker pods that still exist, terminating ones included.
    pods: usize,
}

impl<'a> Running<'a> {
    pub fn new(fingerprint: Option<&'a str>, config_changed: bool, replicas: i32, pods: usize) -> Self {
        Self { fingerprint, config_changed, replicas, pods }
    }
}

/// What the consumer group said, when asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupCheck {
    Members(usize),
    /// It could not be asked (the error).
    Unknown(String),
}

/// The next step of a change to the workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainStep {
    /// No drain: apply as usual (a rolling update, if anything changed).
    Roll,
    /// Set the StatefulSet's replicas to 0, the old template kept.
    StopWorkers { workers: i32 },
    /// Pods of the old pipeline are still there.
    WaitForPods { left: usize },
    /// No pod is left: ask the consumer group for its members.
    CheckGroup,
    /// Stopped workers are still members of the group.
    WaitForGroup { members: usize },
    /// Every worker is gone: apply the new pipeline. `caveat` says why the group was not seen
    /// empty, when it was not.
    Start { caveat: Option<String> },
}

/// Whether going from the running workers to a template of fingerprint `wanted` needs a drain:
/// the fingerprint changes and one side has a window (`none` to `none` is a stateless roll).
/// A template from before fingerprints drains when the configuration changes and the new
/// pipeline has a window, as its old fingerprint is unknown.
pub fn needs_drain(running: &Running<'_>, wanted: &str) -> bool {
    match running.fingerprint {
        Some(fingerprint) => fingerprint != wanted,
        None => running.config_changed && wanted != "none",
    }
}

/// The next step, from the running workers (`None`: no StatefulSet yet), the fingerprint to
/// apply, the group's answer once asked, and how long the drain has been under way.
pub fn next_step(
    running: Option<&Running<'_>>,
    wanted: &str,
    group: Option<&GroupCheck>,
    waited: Duration,
) -> DrainStep {
    let Some(running) = running.filter(|running| needs_drain(running, wanted)) else {
        return DrainStep::Roll;
    };
    if running.replicas > 0 {
        return DrainStep::StopWorkers { workers: running.replicas };
    }
    if running.pods > 0 {
        return DrainStep::WaitForPods { left: running.pods };
    }
    match group {
        None => DrainStep::CheckGroup,
        Some(GroupCheck::Members(0)) => DrainStep::Start { caveat: None },
        Some(GroupCheck::Members(members)) if waited < DRAIN_GROUP_TIMEOUT => {
            DrainStep::WaitForGroup { members: *members }
        }
        Some(GroupCheck::Members(members)) => DrainStep::Start {
            caveat: Some(format!(
                "the consumer group still had {members} members after {}s",
                DRAIN_GROUP_TIMEOUT.as_secs()
            )),
        },
        Some(GroupCheck::Unknown(error)) => {
            DrainStep::Start { caveat: Some(format!("the consumer group's members could not be read ({error})")) }
        }
    }
}

/// The `Progressing` message while the drain holds at `step`.
pub fn drain_message(step: &DrainStep, from: &str, to: &str) -> Option<String> {
    let what = match step {
        DrainStep::StopWorkers { workers } => format!("stopping all {workers} workers"),
        DrainStep::WaitForPods { left } => format!("waiting for {left} worker pods to stop"),
        DrainStep::CheckGroup => "no worker pod left; checking the consumer group".to_owned(),
        DrainStep::WaitForGroup { members } => format!("waiting for {members} consumer group members to leave"),
        DrainStep::Roll | DrainStep::Start { .. } => return None,
    };
    Some(format!(
        "the pipeline's window, aggregate or stages feeding them changed (fingerprint {from} → {to}): draining \
         before the new pipeline starts: {what}"
    ))
}

/// Whether a drain is under way, as the job's status says (the autoscaler holds meanwhile).
pub fn draining(job: &StreamJob) -> bool {
    draining_since(job).is_some()
}

/// When the drain under way began (the `Progressing` condition's transition to it).
pub fn draining_since(job: &StreamJob) -> Option<&Time> {
    let status = job.status.as_ref()?;
    status
        .conditions
        .iter()
        .find(|c| c.type_ == PROGRESSING && c.status == "True" && c.reason == DRAINING_REASON)
        .map(|c| &c.last_transition_time)
}

/// The event for a step that changes something or waits on Kafka; none for the others.
pub fn drain_event(step: &DrainStep, from: &str, to: &str, group: &str, replicas: i32) -> Option<JobEvent> {
    match step {
        DrainStep::StopWorkers { workers } => Some(JobEvent::normal(
            DRAINING_REASON,
            "Drain",
            format!(
                "pipeline fingerprint {from} → {to}: stopping all {workers} workers (StatefulSet to 0) before the \
                 new pipeline starts; old and new pipelines never run side by side, and the new one discards the \
                 old one's partials"
            ),
        )),
        DrainStep::WaitForGroup { members } => Some(JobEvent::normal(
            "WaitingForConsumerGroup",
            "Drain",
            format!("no worker pod left; waiting for consumer group {group} to be empty ({members} members left)"),
        )),
        DrainStep::Start { caveat: None } => Some(JobEvent::normal(
            "PipelineChangeStarted",
            "Drain",
            format!(
                "every worker stopped and consumer group {group} empty: starting pipeline {to} with {replicas} \
                 workers"
            ),
        )),
        DrainStep::Start { caveat: Some(caveat) } => Some(JobEvent::warning(
            "PipelineChangeStarted",
            "Drain",
            format!("every worker pod stopped, but {caveat}: starting pipeline {to} with {replicas} workers"),
        )),
        DrainStep::Roll | DrainStep::WaitForPods { .. } | DrainStep::CheckGroup => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "00000000000000aa";
    const B: &str = "00000000000000bb";

    #[test]
    fn which_changes_need_a_drain() {
        let running = |fingerprint, config_changed| Running::new(fingerprint, config_changed, 2, 2);
        let cases = [
            ("same windowed pipeline", running(Some(A), true), A, false),
            ("window changed", running(Some(A), true), B, true),
            ("stateless stays stateless", running(Some("none"), true), "none", false),
            ("a window added", running(Some("none"), true), A, true),
            ("the window removed", running(Some(A), true), "none", true),
            ("older operator, config changed, windowed", running(None, true), A, true),
            ("older operator, config unchanged", running(None, false), A, false),
            ("older operator, stateless", running(None, true), "none", false),
        ];
        for (what, running, wanted, drain) in cases {
            assert_eq!(needs_drain(&running, wanted), drain, "{what}");
        }
    }

    /// The drain state machine, step by step as the cluster moves.
    #[test]
    fn the_drain_stops_everything_before_the_new_pipeline_starts() {
        let members = |n| Some(GroupCheck::Members(n));
        let unknown = Some(GroupCheck::Unknown("timed out".to_owned()));
        let short = Duration::from_secs(5);
        let long = DRAIN_GROUP_TIMEOUT + Duration::from_secs(1);
        type Case<'a> = (&'a str, Option<Running<'a>>, &'a str, Option<GroupCheck>, Duration, DrainStep);
        let cases: Vec<Case<'_>> = vec![
            ("no StatefulSet yet", None, A, None, short, DrainStep::Roll),
            ("nothing stateful changed", Some(Running::new(Some(A), true, 3, 3)), A, None, short, DrainStep::Roll),
            (
                "workers run the old pipeline",
                Some(Running::new(Some(A), true, 3, 3)),
                B,
                None,
                short,
                DrainStep::StopWorkers { workers: 3 },
            ),
            (
                "scaled back up meanwhile (the old template)",
                Some(Running::new(Some(A), true, 1, 0)),
                B,
                None,
                short,
                DrainStep::StopWorkers { workers: 1 },
            ),
            (
                "pods still terminating",
                Some(Running::new(Some(A), true, 0, 2)),
                B,
                None,
                short,
                DrainStep::WaitForPods { left: 2 },
            ),
            ("no pod left", Some(Running::new(Some(A), true, 0, 0)), B, None, short, DrainStep::CheckGroup),
            (
                "members left",
                Some(Running::new(Some(A), true, 0, 0)),
                B,
                members(2),
                short,
                DrainStep::WaitForGroup { members: 2 },
            ),
            (
                "group empty",
                Some(Running::new(Some(A), true, 0, 0)),
                B,
                members(0),
                short,
                DrainStep::Start { caveat: None },
            ),
            (
                "members past the bound",
                Some(Running::new(Some(A), true, 0, 0)),
                B,
                members(1),
                long,
                DrainStep::Start { caveat: Some("the consumer group still had 1 members after 120s".to_owned()) },
            ),
            (
                "group not readable",
                Some(Running::new(Some(A), true, 0, 0)),
                B,
                unknown,
                short,
                DrainStep::Start {
                    caveat: Some("the consumer group's members could not be read (timed out)".to_owned()),
                },
            ),
            (
                "changed back to the running pipeline mid-drain",
                Some(Running::new(Some(A), true, 0, 1)),
                A,
                None,
                short,
                DrainStep::Roll,
            ),
            (
                "suspended: nothing runs",
                Some(Running::new(Some(A), true, 0, 0)),
                B,
                members(0),
                short,
                DrainStep::Start { caveat: None },
            ),
        ];
        for (what, running, wanted, group, waited, step) in cases {
            assert_eq!(next_step(running.as_ref(), wanted, group.as_ref(), waited), step, "{what}");
        }
    }

    #[test]
    fn holding_steps_say_so_and_the_events_name_the_fingerprints() {
        let stop = DrainStep::StopWorkers { workers: 3 };
        let message = drain_message(&stop, A, B).expect("a holding step");
        assert!(message.contains(&format!("{A} → {B}")) && message.contains("stopping all 3 workers"), "{message}");
        assert_eq!(drain_message(&DrainStep::Start { caveat: None }, A, B), None);
        let event = drain_event(&stop, A, B, "g", 3).expect("an event");
        assert_eq!((event.reason, event.type_), (DRAINING_REASON, kube::runtime::events::EventType::Normal));
        let started = drain_event(&DrainStep::Start { caveat: Some("x".into()) }, A, B, "g", 3).expect("an event");
        assert_eq!(started.type_, kube::runtime::events::EventType::Warning);
        assert_eq!(drain_event(&DrainStep::WaitForPods { left: 1 }, A, B, "g", 3), None);
    }
}
