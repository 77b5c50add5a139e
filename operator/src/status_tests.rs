//! `compute_status` as a table: what the operator observed → the phase and every condition.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use streamjob_crds::{Phase, StreamJob, StreamJobStatus};

use crate::build::tests::job;
use crate::status::{compute_status, set_condition, Observation, RECONCILIATION_PAUSED};

/// A StatefulSet the controller has seen, with `replicas` pods of which `ready` are ready and
/// `updated` run the current template.
fn stateful_set(replicas: i32, ready: i32, updated: i32) -> StatefulSet {
    StatefulSet {
        metadata: ObjectMeta { name: Some("j".into()), generation: Some(1), ..ObjectMeta::default() },
        spec: None,
        status: Some(StatefulSetStatus {
            replicas,
            ready_replicas: Some(ready),
            updated_replicas: Some(updated),
            observed_generation: Some(1),
            current_revision: Some("r1".into()),
            update_revision: Some("r1".into()),
            ..StatefulSetStatus::default()
        }),
    }
}

fn waiting_pod(reason: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "j-0"},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "worker", "image": "w", "imageID": "", "ready": false, "restartCount": 3,
            "state": {"waiting": {"reason": reason}}}]}
    }))
    .expect("pod")
}

fn unschedulable_pod() -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "j-0"},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/3 nodes are available"}]}
    }))
    .expect("pod")
}

fn with_status(mut job: StreamJob, phase: Phase) -> StreamJob {
    let mut conditions = Vec::new();
    let now = Time(Timestamp::UNIX_EPOCH);
    set_condition(&mut conditions, RECONCILIATION_PAUSED, true, "AnnotationSet", String::new(), None, &now);
    job.status = Some(StreamJobStatus { phase: Some(phase), conditions, ..StreamJobStatus::default() });
    job
}

struct Case {
    name: &'static str,
    job: StreamJob,
    stateful_set: Option<StatefulSet>,
    pods: Vec<Pod>,
    config_problem: Option<&'static str>,
    output_problem: Option<&'static str>,
    desired: i32,
    phase: Phase,
    /// (type, status, reason) of every condition, in the order the status lists them.
    conditions: [(&'static str, &'static str, &'static str); 5],
}

const VALID: (&str, &str, &str) = ("ConfigValid", "True", "Valid");
const HEALTHY: (&str, &str, &str) = ("Degraded", "False", "WorkersHealthy");
const ACTIVE: (&str, &str, &str) = ("Suspended", "False", "Active");
const ROLLING: (&str, &str, &str) = ("Progressing", "True", "RollingOut");
const COMPLETE: (&str, &str, &str) = ("Progressing", "False", "Complete");
const NOT_READY: (&str, &str, &str) = ("Ready", "False", "WorkersNotReady");

fn cases() -> Vec<Case> {
    let case = |name, job, stateful_set, desired, phase, conditions| Case {
        name,
        job,
        stateful_set,
        pods: Vec::new(),
        config_problem: None,
        output_problem: None,
        desired,
        phase,
        conditions,
    };
    vec![
        Case {
            config_problem: Some("autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas"),
            conditions: [
                ("ConfigValid", "False", "InvalidSpec"),
                ("Ready", "False", "InvalidSpec"),
                ("Progressing", "False", "InvalidSpec"),
                ("", "", ""),
                ("", "", ""),
            ],
            ..case("invalid spec", job(""), None, 0, Phase::Failed, Default::default())
        },
        case("no StatefulSet yet", job(""), None, 2, Phase::Pending, [VALID, ROLLING, HEALTHY, ACTIVE, NOT_READY]),
        case(
            "still none ready",
            with_status(job(""), Phase::Pending),
            Some(stateful_set(2, 0, 2)),
            2,
            Phase::Pending,
            [VALID, ROLLING, HEALTHY, ACTIVE, NOT_READY],
        ),
        case(
            "all ready",
            job(""),
            Some(stateful_set(2, 2, 2)),
            2,
            Phase::Running,
            [VALID, COMPLETE, HEALTHY, ACTIVE, ("Ready", "True", "AllWorkersReady")],
        ),
        case(
            "scaling up from running",
            with_status(job(""), Phase::Running),
            Some(stateful_set(2, 2, 2)),
            3,
            Phase::Scaling,
            [VALID, ROLLING, HEALTHY, ACTIVE, NOT_READY],
        ),
        case(
            "rolling a new template",
            with_status(job(""), Phase::Running),
            Some(stateful_set(2, 2, 1)),
            2,
            Phase::Scaling,
            [VALID, ROLLING, HEALTHY, ACTIVE, NOT_READY],
        ),
        case(
            "suspended",
            job("  suspend: true\n"),
            Some(stateful_set(0, 0, 0)),
            0,
            Phase::Suspended,
            [VALID, COMPLETE, HEALTHY, ("Suspended", "True", "Suspended"), ("Ready", "False", "Suspended")],
        ),
        case(
            "suspending, a worker still running",
            with_status(job("  suspend: true\n"), Phase::Running),
            Some(stateful_set(1, 1, 1)),
            0,
            Phase::Scaling,
            [VALID, ROLLING, HEALTHY, ("Suspended", "True", "Suspended"), ("Ready", "False", "Suspended")],
        ),
        case(
            "autoscaled to zero",
            job("  autoscaling: {minReplicas: 0, maxReplicas: 4}\n"),
            Some(stateful_set(0, 0, 0)),
            0,
            Phase::Running,
            [VALID, COMPLETE, HEALTHY, ACTIVE, ("Ready", "False", "ScaledToZero")],
        ),
        Case {
            pods: vec![waiting_pod("CrashLoopBackOff")],
            ..case(
                "crash looping",
                job(""),
                Some(stateful_set(2, 1, 2)),
                2,
                Phase::Degraded,
                [VALID, ROLLING, ("Degraded", "True", "CrashLooping"), ACTIVE, ("Ready", "False", "WorkersFailing")],
            )
        },
        Case {
            pods: vec![waiting_pod("ImagePullBackOff")],
            ..case(
                "image not pulled",
                job(""),
                Some(stateful_set(2, 0, 2)),
                2,
                Phase::Degraded,
                [
                    VALID,
                    ROLLING,
                    ("Degraded", "True", "ImagePullFailing"),
                    ACTIVE,
                    ("Ready", "False", "WorkersFailing"),
                ],
            )
        },
        Case {
            pods: vec![unschedulable_pod()],
            ..case(
                "unschedulable",
                job(""),
                Some(stateful_set(2, 1, 2)),
                2,
                Phase::Degraded,
                [VALID, ROLLING, ("Degraded", "True", "WorkersFailing"), ACTIVE, ("Ready", "False", "WorkersFailing")],
            )
        },
        Case {
            output_problem: Some("sink topic out on k:9092: Broker: Unknown topic or partition"),
            ..case(
                "sink refused, every worker running",
                with_status(job(""), Phase::Running),
                Some(stateful_set(2, 2, 2)),
                2,
                Phase::Degraded,
                [VALID, COMPLETE, ("Degraded", "True", "SinkRefused"), ACTIVE, ("Ready", "False", "SinkRefused")],
            )
        },
        Case {
            pods: vec![waiting_pod("CrashLoopBackOff")],
            output_problem: Some("sink topic out on k:9092: Broker: Unknown topic or partition"),
            ..case(
                "sink refused and a worker crash looping: the crash is the first thing to fix",
                job(""),
                Some(stateful_set(2, 1, 2)),
                2,
                Phase::Degraded,
                [VALID, ROLLING, ("Degraded", "True", "CrashLooping"), ACTIVE, ("Ready", "False", "WorkersFailing")],
            )
        },
        Case {
            output_problem: Some("sink topic out on k:9092: Broker: Unknown topic or partition"),
            ..case(
                "sink refused while suspended: nothing is written",
                job("  suspend: true\n"),
                Some(stateful_set(0, 0, 0)),
                0,
                Phase::Suspended,
                [VALID, COMPLETE, HEALTHY, ("Suspended", "True", "Suspended"), ("Ready", "False", "Suspended")],
            )
        },
    ]
}

#[test]
fn phase_and_conditions_follow_what_was_observed() {
    let now = Time(Timestamp::UNIX_EPOCH);
    for case in cases() {
        let observation = Observation {
            stateful_set: case.stateful_set.as_ref(),
            pods: &case.pods,
            config_problem: case.config_problem.map(str::to_owned),
            output_problem: case.output_problem.map(str::to_owned),
            config_problem_reason: None,
            desired_replicas: case.desired,
            draining: None,
        };
        let status = compute_status(&case.job, &observation, &now);
        assert_eq!(status.phase, Some(case.phase), "{}", case.name);
        let conditions: Vec<(&str, &str, &str)> =
            status.conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str())).collect();
        let expected: Vec<(&str, &str, &str)> = case.conditions.into_iter().filter(|c| !c.0.is_empty()).collect();
        assert_eq!(conditions, expected, "{}: ReconciliationPaused is dropped, the rest in order", case.name);
    }
}
