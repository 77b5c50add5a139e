//! Why workers the autoscaler asked for do not run: pods the StatefulSet controller cannot
//! create (a `ResourceQuota`, an admission webhook), pods no node takes (`PodScheduled=False`,
//! `Unschedulable`), workers that crash-loop. Reported as the `ScaleBlocked` condition and a
//! warning event, so that a job never says `Scaling` without saying why.

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::ResourceExt;

/// One reason workers are missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    /// The condition's reason: `QuotaExceeded`, `FailedCreate`, `Unschedulable`, `CrashLoop`.
    pub reason: &'static str,
    pub message: String,
}

/// The blockers of a StatefulSet that wants `wanted` pods and has `existing`: its newest
/// `FailedCreate` event while pods are missing, and the pods that cannot be scheduled or keep
/// crashing. Most important first (a quota before a pod that waits for a node).
pub fn scale_blockers(wanted: i32, existing: i32, create_failures: &[Event], pods: &[Pod]) -> Vec<Blocker> {
    let mut blockers = Vec::new();
    if existing < wanted {
        let newest = create_failures
            .iter()
            .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
            .max_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0).or(e.event_time.as_ref().map(|t| t.0)));
        if let Some(event) = newest {
            let message = event.message.clone().unwrap_or_default();
            let reason = if message.contains("exceeded quota") { "QuotaExceeded" } else { "FailedCreate" };
            let missing = wanted - existing;
            blockers.push(Blocker {
                reason,
                message: format!("{missing} of {wanted} worker pods cannot be created: {}", message.trim()),
            });
        }
    }
    for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        let Some(status) = pod.status.as_ref() else { continue };
        let unschedulable =
            status.conditions.iter().flatten().find(|c| {
                c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
            });
        if let Some(condition) = unschedulable {
            let why = condition.message.as_deref().unwrap_or("no node fits");
            blockers.push(Blocker {
                reason: "Unschedulable",
                message: format!("pod {} cannot be scheduled: {why}", pod.name_any()),
            });
        }
        let crashing = status.container_statuses.iter().flatten().find(|c| {
            c.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref())
                == Some("CrashLoopBackOff")
        });
        if let Some(container) = crashing {
            blockers.push(Blocker {
                reason: "CrashLoop",
                message: format!(
                    "pod {}: container {} is in CrashLoopBackOff (restarts {})",
                    pod.name_any(),
                    container.name,
                    container.restart_count
                ),
            });
        }
    }
    let rank = |b: &Blocker| {
        ["QuotaExceeded", "FailedCreate", "Unschedulable", "CrashLoop"].iter().position(|r| *r == b.reason)
    };
    blockers.sort_by_key(rank);
    blockers
}

/// The `ScaleBlocked` condition's reason and message for `blockers` (the first one's reason,
/// every message), or `None` when nothing blocks.
pub fn summary(blockers: &[Blocker]) -> Option<(&'static str, String)> {
    let first = blockers.first()?;
    let messages: Vec<&str> = blockers.iter().map(|b| b.message.as_str()).collect();
    Some((first.reason, messages.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(reason: &str, message: &str, at: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": format!("e-{at}")},
            "involvedObject": {"kind": "StatefulSet", "name": "job"},
            "reason": reason, "message": message, "lastTimestamp": at
        }))
        .expect("event")
    }

    fn pod(name: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name}, "status": status})).expect("pod")
    }

    fn unschedulable(name: &str) -> Pod {
        pod(
            name,
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient cpu."}]}),
        )
    }

    fn crash_looping(name: &str) -> Pod {
        pod(
            name,
            json!({"phase": "Running", "containerStatuses": [{"name": "worker", "image": "w", "imageID": "", "ready": false,
                "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}),
        )
    }

    /// (case, wanted, existing, events, pods, reasons)
    type Case = (&'static str, i32, i32, Vec<Event>, Vec<Pod>, Vec<&'static str>);

    #[test]
    fn each_reason_workers_are_missing_is_named() {
        let quota = event(
            "FailedCreate",
            "create Pod job-3 in StatefulSet job failed error: pods \"job-3\" is forbidden: exceeded quota: pods, requested: pods=1, used: pods=3, limited: pods=3",
            "2026-01-01T00:00:10Z",
        );
        let older = event("FailedCreate", "admission webhook denied", "2026-01-01T00:00:01Z");
        let webhook = event("FailedCreate", "admission webhook \"x\" denied the request", "2026-01-01T00:00:20Z");
        let running = pod("job-0", json!({"phase": "Running"}));
        // (case, wanted, existing, events, pods, reasons)
        let table: Vec<Case> = vec![
            ("nothing wrong", 3, 3, vec![], vec![running.clone()], vec![]),
            (
                "a quota: the newest failure counts",
                6,
                3,
                vec![older.clone(), quota.clone()],
                vec![running.clone()],
                vec!["QuotaExceeded"],
            ),
            ("another create failure", 4, 3, vec![webhook], vec![], vec!["FailedCreate"]),
            ("an old failure, every pod exists", 3, 3, vec![quota.clone()], vec![], vec![]),
            ("a pod no node takes", 2, 2, vec![], vec![running.clone(), unschedulable("job-1")], vec!["Unschedulable"]),
            ("a crash loop", 2, 2, vec![], vec![crash_looping("job-1")], vec!["CrashLoop"]),
            (
                "all at once, quota first",
                6,
                4,
                vec![quota],
                vec![crash_looping("job-1"), unschedulable("job-3")],
                vec!["QuotaExceeded", "Unschedulable", "CrashLoop"],
            ),
        ];
        for (case, wanted, existing, events, pods, reasons) in table {
            let blockers = scale_blockers(wanted, existing, &events, &pods);
            assert_eq!(blockers.iter().map(|b| b.reason).collect::<Vec<_>>(), reasons, "{case}: {blockers:?}");
        }
    }

    #[test]
    fn the_summary_names_the_first_reason_and_every_message() {
        assert_eq!(summary(&[]), None);
        let quota = event("FailedCreate", "pods \"job-3\" is forbidden: exceeded quota: pods", "2026-01-01T00:00:10Z");
        let blockers = scale_blockers(6, 3, &[quota], &[unschedulable("job-2")]);
        let (reason, message) = summary(&blockers).expect("blocked");
        assert_eq!(reason, "QuotaExceeded");
        assert!(
            message.starts_with("3 of 6 worker pods cannot be created: pods \"job-3\" is forbidden: exceeded quota"),
            "{message}"
        );
        assert!(message.contains("pod job-2 cannot be scheduled: 0/3 nodes are available"), "{message}");
    }
}
