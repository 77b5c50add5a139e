//! How many workers a job runs.

use streamjob_crds::StreamJob;

/// Workers the operator runs: 0 when suspended; the autoscaler's decision (or `minReplicas`
/// before its first decision) when autoscaling is on; else `spec.replicas`.
pub fn desired_replicas(job: &StreamJob, autoscaler_decision: Option<i32>) -> i32 {
    if job.spec.suspend {
        return 0;
    }
    match &job.spec.autoscaling {
        Some(autoscaling) if autoscaling.enabled => autoscaler_decision
            .unwrap_or(autoscaling.min_replicas)
            .clamp(autoscaling.min_replicas, autoscaling.max_replicas),
        _ => job.spec.replicas.max(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::job;

    #[test]
    fn desired_replicas_follows_suspend_autoscaling_and_spec() {
        let cases = [
            ("  replicas: 3\n", None, 3),
            ("  replicas: 3\n  suspend: true\n", None, 0),
            ("  autoscaling: {minReplicas: 2, maxReplicas: 6}\n", None, 2),
            ("  autoscaling: {minReplicas: 2, maxReplicas: 6}\n", Some(5), 5),
            ("  autoscaling: {minReplicas: 2, maxReplicas: 6}\n", Some(9), 6),
            ("  autoscaling: {minReplicas: 0, maxReplicas: 6}\n", Some(0), 0),
            ("  autoscaling: {enabled: false, maxReplicas: 6}\n  replicas: 4\n", Some(1), 4),
            ("  autoscaling: {maxReplicas: 6}\n  suspend: true\n", Some(5), 0),
        ];
        for (spec, decision, expected) in cases {
            assert_eq!(desired_replicas(&job(spec), decision), expected, "{spec} with decision {decision:?}");
        }
    }
}
