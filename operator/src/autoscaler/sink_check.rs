//! Whether a job's outputs can be written: its sink topic (on the sink's cluster) and its
//! dead-letter topic (on the source's, where the workers write it) must exist and be visible to
//! the job's credentials. A worker whose sink refuses pauses, backs off and sends again
//! (`worker/src/sink_refusal.rs`), which only its pod's `/readyz` and metrics show; this check,
//! run with the lag probe, puts the broker's reason where the user looks: `Degraded` with reason
//! `SinkRefused` (so `kubectl get sj` shows the phase `Degraded`), `Ready` false, and an event
//! when it starts and when it ends. The operator never creates the topics.
//!
//! Pure, but for the map the driver writes and the reconciler reads ([`OutputProblems`]).

use std::collections::HashMap;
use std::sync::Mutex;

use streamjob_runtime::sync::lock;

use super::kafka_admin::TopicPartitions;

/// The `Degraded` reason while an output topic refuses.
pub const SINK_REFUSED: &str = "SinkRefused";

/// Seconds between two checks of a job's output topics.
pub const OUTPUT_CHECK_SECONDS: f64 = 30.0;

/// One output topic and the cluster's answer about it.
pub struct OutputAnswer<'a> {
    /// `sink` or `dead-letter`.
    pub role: &'a str,
    pub topic: &'a str,
    pub bootstrap: &'a str,
    pub answer: &'a [(String, TopicPartitions)],
}

/// What is wrong with the first output the answers show unusable, worded for the status and
/// the event; `None` when every output topic exists with partitions.
pub fn output_problem(outputs: &[OutputAnswer<'_>]) -> Option<String> {
    outputs.iter().find_map(|output| {
        let found = output.answer.iter().find(|(name, _)| name == output.topic);
        let reason = match found {
            None => "not in the cluster's metadata".to_owned(),
            Some((_, Err(message))) => message.clone(),
            Some((_, Ok(partitions))) if partitions.is_empty() => "has no partitions".to_owned(),
            Some((_, Ok(_))) => return None,
        };
        Some(format!(
            "{} topic {} on {}: {reason}; the workers hold its records and retry (nothing is dropped) \
             until the topic exists and the job's credentials may write it",
            output.role, output.topic, output.bootstrap
        ))
    })
}

/// The output problem of each job whose outputs were last found unusable, by (namespace,
/// name): written by the autoscaler's checks, read by the reconciler into the status.
#[derive(Default)]
pub struct OutputProblems(Mutex<HashMap<(String, String), String>>);

impl OutputProblems {
    pub fn get(&self, namespace: &str, name: &str) -> Option<String> {
        lock(&self.0).get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    /// Records the job's finding; true when it differs from the last one.
    pub fn set(&self, namespace: &str, name: &str, problem: Option<String>) -> bool {
        let key = (namespace.to_owned(), name.to_owned());
        let mut problems = lock(&self.0);
        let changed = problems.get(&key) != problem.as_ref();
        match problem {
            Some(problem) => problems.insert(key, problem),
            None => problems.remove(&key),
        };
        changed
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        lock(&self.0).remove(&(namespace.to_owned(), name.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(topic: &str, result: TopicPartitions) -> Vec<(String, TopicPartitions)> {
        vec![(topic.to_owned(), result)]
    }

    #[test]
    fn the_first_unusable_output_is_named_with_the_brokers_reason() {
        let ok = answer("out", Ok(vec![0, 1]));
        let missing = answer("out", Err("Broker: Unknown topic or partition".to_owned()));
        let denied = answer("dlq", Err("Broker: Topic authorization failed".to_owned()));
        let empty = answer("out", Ok(vec![]));
        let sink = |answer| OutputAnswer { role: "sink", topic: "out", bootstrap: "k:9092", answer };
        let dead_letter = |answer| OutputAnswer { role: "dead-letter", topic: "dlq", bootstrap: "s:9092", answer };
        let dlq_ok = answer("dlq", Ok(vec![0]));
        let cases: Vec<(Vec<OutputAnswer>, Option<&str>)> = vec![
            (vec![sink(&ok)], None),
            (vec![sink(&ok), dead_letter(&dlq_ok)], None),
            (vec![sink(&missing)], Some("sink topic out on k:9092: Broker: Unknown topic or partition;")),
            (
                vec![sink(&ok), dead_letter(&denied)],
                Some("dead-letter topic dlq on s:9092: Broker: Topic authorization failed;"),
            ),
            (vec![sink(&missing), dead_letter(&denied)], Some("sink topic out on k:9092: Broker: Unknown")),
            (vec![sink(&empty)], Some("sink topic out on k:9092: has no partitions;")),
            (vec![sink(&dlq_ok)], Some("sink topic out on k:9092: not in the cluster's metadata;")),
        ];
        for (outputs, expected) in cases {
            let problem = output_problem(&outputs);
            match expected {
                None => assert_eq!(problem, None),
                Some(start) => {
                    let problem = problem.expect("a problem");
                    assert!(problem.starts_with(start), "{problem:?} should start with {start:?}");
                }
            }
        }
    }

    #[test]
    fn a_finding_counts_as_changed_only_when_it_differs() {
        let problems = OutputProblems::default();
        assert!(!problems.set("ns", "a", None), "nothing known and nothing found");
        assert!(problems.set("ns", "a", Some("missing".to_owned())));
        assert!(!problems.set("ns", "a", Some("missing".to_owned())));
        assert_eq!(problems.get("ns", "a").as_deref(), Some("missing"));
        assert_eq!(problems.get("other", "a"), None);
        assert!(problems.set("ns", "a", Some("denied".to_owned())));
        assert!(problems.set("ns", "a", None));
        assert_eq!(problems.get("ns", "a"), None);
    }
}
