//! The events the operator publishes on a job: their wording as pure functions of what changed
//! (before, after, the decision behind it), and [`publish`].

use std::fmt::Display;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use streamjob_crds::{Phase, StreamJob};

use super::{Context, MAX_GROUP_DELETION_ATTEMPTS};
use crate::build::CONFIG_CHECKSUM_ANNOTATION;

/// One event on a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEvent {
    pub type_: EventType,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

impl JobEvent {
    pub fn normal(reason: &'static str, action: &'static str, note: String) -> Self {
        Self { type_: EventType::Normal, reason, action, note }
    }

    pub fn warning(reason: &'static str, action: &'static str, note: String) -> Self {
        Self { type_: EventType::Warning, reason, action, note }
    }
}

/// Publishes an event on the job. kube's recorder folds events with the same key into one
/// series and keeps the first note, so the note's digest goes into `action` (which
/// `kubectl describe` does not show): a repeated message counts up, a new one is a new event.
pub async fn publish(context: &Context, job: &StreamJob, event: JobEvent) {
    let JobEvent { type_, reason, action, note } = event;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&note, &mut hasher);
    let action = format!("{action}-{:08x}", std::hash::Hasher::finish(&hasher) as u32);
    let event = Event { type_, reason: reason.to_owned(), note: Some(note), action, secondary: None };
    if let Err(error) = context.recorder.publish(&event, &job.object_ref(&())).await {
        tracing::warn!(job = %job.name_any(), %error, reason, "could not publish event");
    }
}

/// A child created, or changed by the apply; nothing when the apply left it as it was.
pub fn child_applied<K: Resource<DynamicType = ()>>(before: Option<&K>, after: &K) -> Option<JobEvent> {
    let (kind, name) = (K::kind(&()), after.name_any());
    match before {
        None => Some(JobEvent::normal("Created", "Apply", format!("created {kind} {name}"))),
        Some(previous) if previous.resource_version() != after.resource_version() => {
            Some(JobEvent::normal("Updated", "Apply", format!("updated {kind} {name} to match the StreamJob")))
        }
        Some(_) => None,
    }
}

fn template_checksum(stateful_set: &StatefulSet) -> Option<&String> {
    stateful_set.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()?.get(CONFIG_CHECKSUM_ANNOTATION)
}

fn stateful_set_replicas(stateful_set: &StatefulSet) -> i32 {
    stateful_set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

/// Rollouts, scaling, suspend and resume, with the numbers behind them: what changed from the
/// StatefulSet `before` the apply to the one `after` it, for `desired` workers from `decision`
/// (the autoscaler's, if any). Nothing for a StatefulSet just created.
pub fn workload_changes(
    job: &StreamJob,
    before: Option<&StatefulSet>,
    after: &StatefulSet,
    desired: i32,
    decision: Option<i32>,
) -> Vec<JobEvent> {
    let Some(before) = before else { return Vec::new() };
    let mut events = Vec::new();
    let (old_checksum, new_checksum) = (template_checksum(before), template_checksum(after));
    if old_checksum != new_checksum {
        let short = |c: Option<&String>| c.map(|c| c.chars().take(12).collect::<String>()).unwrap_or_default();
        let note = format!(
            "worker configuration changed (checksum {} → {}): rolling {desired} workers",
            short(old_checksum),
            short(new_checksum)
        );
        events.push(JobEvent::normal("RollingOut", "Rollout", note));
    }
    let old_replicas = stateful_set_replicas(before);
    if old_replicas == desired {
        return events;
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
    events.push(JobEvent::normal(reason, "Scale", note));
    events
}

pub fn reconcile_failed(error: &impl Display) -> JobEvent {
    JobEvent::warning("ReconcileError", "Reconcile", format!("reconcile failed, will retry with backoff: {error}"))
}

pub fn invalid_config(problems: &[String]) -> JobEvent {
    let note = format!("invalid configuration ({} problems): {}", problems.len(), problems.join("; "));
    JobEvent::warning("InvalidConfig", "Validate", note)
}

/// The first step of a `DeleteConsumerGroup` deletion.
pub fn stopping_workers(group: &str, workers: i32) -> JobEvent {
    let note =
        format!("deleting: stopping the {workers} workers (StatefulSet to 0) before deleting consumer group {group}");
    JobEvent::normal("StoppingWorkers", "Delete", note)
}

/// Waiting for the stopped workers to leave the group.
pub fn waiting_for_group_to_empty(group: &str, members: usize, timeout: std::time::Duration) -> JobEvent {
    let note = format!(
        "deleting: waiting for consumer group {group} to be empty ({members} members left); after {}s from the \
         deletion the group and the repartition topic are left in place and the job goes",
        timeout.as_secs()
    );
    JobEvent::normal("WaitingForConsumerGroup", "Delete", note)
}

pub fn consumer_group_deleted(group: &str, topic: &str, topic_existed: bool) -> JobEvent {
    let topic_note = if topic_existed {
        format!("deleted repartition topic {topic}")
    } else {
        format!("repartition topic {topic} did not exist")
    };
    let note = format!("deleted consumer group {group} (deletionPolicy: DeleteConsumerGroup); {topic_note}");
    JobEvent::normal("ConsumerGroupDeleted", "Delete", note)
}

/// The group never emptied within the bound.
pub fn consumer_group_left_behind(group: &str, topic: &str, members: usize, waited: std::time::Duration) -> JobEvent {
    let note = format!(
        "gave up after {}s: consumer group {group} still has {members} members; left in place: consumer group \
         {group} and repartition topic {topic}; delete them by hand once no worker runs",
        waited.as_secs()
    );
    JobEvent::warning("ConsumerGroupNotDeleted", "Delete", note)
}

/// A failed deletion: retried until `attempts` reaches [`MAX_GROUP_DELETION_ATTEMPTS`], then
/// given up.
pub fn consumer_group_not_deleted(group: &str, topic: &str, attempts: u32, error: &impl Display) -> JobEvent {
    if attempts < MAX_GROUP_DELETION_ATTEMPTS {
        let note = format!(
            "could not delete consumer group {group} and repartition topic {topic} (attempt {attempts} of \
             {MAX_GROUP_DELETION_ATTEMPTS}): {error}"
        );
        JobEvent::warning("ConsumerGroupDeletionFailed", "Delete", note)
    } else {
        let note = format!(
            "gave up deleting consumer group {group} and repartition topic {topic} after {attempts} attempts \
             ({error}); left in place: whichever of them still exists; delete it by hand"
        );
        JobEvent::warning("ConsumerGroupNotDeleted", "Delete", note)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::job;
    use k8s_openapi::api::apps::v1::StatefulSetSpec;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn stateful_set(replicas: i32, checksum: &str) -> StatefulSet {
        let annotations = BTreeMap::from([(CONFIG_CHECKSUM_ANNOTATION.to_owned(), checksum.to_owned())]);
        StatefulSet {
            metadata: ObjectMeta { name: Some("j".into()), ..ObjectMeta::default() },
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta { annotations: Some(annotations), ..ObjectMeta::default() }),
                    spec: None,
                },
                ..StatefulSetSpec::default()
            }),
            status: None,
        }
    }

    fn suspended_before(mut job: StreamJob) -> StreamJob {
        job.status = Some(streamjob_crds::StreamJobStatus { phase: Some(Phase::Suspended), ..Default::default() });
        job
    }

    /// (case, job, StatefulSet before, after, desired, decision) → (reason, note) of each event.
    type WorkloadCase = (
        &'static str,
        StreamJob,
        Option<StatefulSet>,
        StatefulSet,
        i32,
        Option<i32>,
        Vec<(&'static str, &'static str)>,
    );

    #[test]
    fn workload_events_say_what_changed_and_why() {
        let autoscaled = "  autoscaling: {minReplicas: 1, maxReplicas: 6}\n";
        let cases: Vec<WorkloadCase> = vec![
            ("first apply", job(""), None, stateful_set(2, "aaaa"), 2, None, vec![]),
            ("nothing changed", job(""), Some(stateful_set(2, "aaaa")), stateful_set(2, "aaaa"), 2, None, vec![]),
            (
                "new configuration",
                job(""),
                Some(stateful_set(2, "0123456789abcdef")),
                stateful_set(2, "fedcba9876543210"),
                2,
                None,
                vec![(
                    "RollingOut",
                    "worker configuration changed (checksum 0123456789ab → fedcba987654): rolling 2 workers",
                )],
            ),
            (
                "spec.replicas",
                job("  replicas: 3\n"),
                Some(stateful_set(1, "aaaa")),
                stateful_set(3, "aaaa"),
                3,
                None,
                vec![("Scaled", "workers 1 → 3 (spec.replicas)")],
            ),
            (
                "suspend",
                job("  suspend: true\n"),
                Some(stateful_set(2, "aaaa")),
                stateful_set(0, "aaaa"),
                0,
                None,
                vec![("Suspended", "spec.suspend is true: workers 2 → 0; consumer-group offsets are kept")],
            ),
            (
                "resume",
                suspended_before(job("  replicas: 2\n")),
                Some(stateful_set(0, "aaaa")),
                stateful_set(2, "aaaa"),
                2,
                None,
                vec![("Resumed", "spec.suspend is false: workers 0 → 2")],
            ),
            (
                "autoscaler decision",
                job(autoscaled),
                Some(stateful_set(1, "aaaa")),
                stateful_set(4, "aaaa"),
                4,
                Some(4),
                vec![("Scaled", "workers 1 → 4 (the autoscaler's decision)")],
            ),
            (
                "autoscaling before a decision",
                job(autoscaled),
                Some(stateful_set(3, "aaaa")),
                stateful_set(1, "aaaa"),
                1,
                None,
                vec![("Scaled", "workers 3 → 1 (autoscaling.minReplicas)")],
            ),
            (
                "new configuration and size at once",
                job("  replicas: 3\n"),
                Some(stateful_set(1, "aaaa")),
                stateful_set(3, "bbbb"),
                3,
                None,
                vec![
                    ("RollingOut", "worker configuration changed (checksum aaaa → bbbb): rolling 3 workers"),
                    ("Scaled", "workers 1 → 3 (spec.replicas)"),
                ],
            ),
        ];
        for (case, job, before, after, desired, decision, expected) in cases {
            let events = workload_changes(&job, before.as_ref(), &after, desired, decision);
            let got: Vec<(&str, &str)> = events.iter().map(|e| (e.reason, e.note.as_str())).collect();
            assert_eq!(got, expected, "{case}");
            assert!(events.iter().all(|e| e.type_ == EventType::Normal), "{case}");
        }
    }

    #[test]
    fn an_apply_reports_a_created_or_changed_child_only() {
        let child = |version: &str| ConfigMap {
            metadata: ObjectMeta {
                name: Some("j-config".into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        let created = child_applied(None, &child("1")).expect("an event");
        assert_eq!((created.reason, created.note.as_str()), ("Created", "created ConfigMap j-config"));
        let updated = child_applied(Some(&child("1")), &child("2")).expect("an event");
        assert_eq!(
            (updated.reason, updated.note.as_str()),
            ("Updated", "updated ConfigMap j-config to match the StreamJob")
        );
        assert_eq!(child_applied(Some(&child("2")), &child("2")), None);
    }

    #[test]
    fn a_failing_group_deletion_is_retried_then_given_up() {
        let failed = consumer_group_not_deleted("g", "g-repartition", 1, &"broker unreachable");
        assert_eq!(failed.reason, "ConsumerGroupDeletionFailed");
        assert_eq!(
            failed.note,
            "could not delete consumer group g and repartition topic g-repartition (attempt 1 of 5): broker unreachable"
        );
        let given_up = consumer_group_not_deleted("g", "g-repartition", MAX_GROUP_DELETION_ATTEMPTS, &"unreachable");
        assert_eq!(given_up.reason, "ConsumerGroupNotDeleted");
        assert_eq!(
            given_up.note,
            "gave up deleting consumer group g and repartition topic g-repartition after 5 attempts (unreachable); \
             left in place: whichever of them still exists; delete it by hand"
        );
    }

    #[test]
    fn deletion_steps_say_what_they_do_and_what_is_left() {
        let stopping = stopping_workers("g", 3);
        assert_eq!(
            stopping.note,
            "deleting: stopping the 3 workers (StatefulSet to 0) before deleting consumer group g"
        );
        let waiting = waiting_for_group_to_empty("g", 2, std::time::Duration::from_secs(180));
        assert!(waiting.note.contains("2 members left") && waiting.note.contains("180s"), "{}", waiting.note);
        let deleted = consumer_group_deleted("g", "g-repartition", true);
        assert_eq!(
            deleted.note,
            "deleted consumer group g (deletionPolicy: DeleteConsumerGroup); deleted repartition topic g-repartition"
        );
        let left = consumer_group_left_behind("g", "g-repartition", 1, std::time::Duration::from_secs(181));
        assert_eq!(left.type_, EventType::Warning);
        assert!(left.note.contains("consumer group g and repartition topic g-repartition"), "{}", left.note);
    }
}
