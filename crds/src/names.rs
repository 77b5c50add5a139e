//! The Kafka names a job derives from its namespace and name: consumer group, repartition topic
//! and transactional ids, in an encoding no two jobs can share.
//!
//! A namespace is a DNS-1123 label (`[a-z0-9-]`, no `.`); a StreamJob name is a DNS-1123
//! subdomain (`[a-z0-9.-]`). `streamjob.<namespace>.<name>` is therefore unambiguous: the first
//! `.` after the prefix ends the namespace. (The old `streamjob-<namespace>-<name>` was not:
//! `team-a/orders` and `team/a-orders` both gave `streamjob-team-a-orders`.) Every character is
//! one Kafka allows in a topic name, and none is `_`, so no two derived topic names collide even
//! under Kafka's `.`/`_` equivalence. A transactional id adds `/<ordinal>`: `/` is in neither a
//! namespace nor a name.

/// Longest StreamJob name: the StatefulSet of that name labels its pods
/// `controller-revision-hash: <name>-<10 characters>`, and a label value has at most 63.
pub const MAX_JOB_NAME_LENGTH: usize = 52;
/// Longest namespace (a DNS-1123 label).
pub const MAX_NAMESPACE_LENGTH: usize = 63;
/// Suffix of the repartition topic after the consumer group.
pub const REPARTITION_SUFFIX: &str = "-repartition";

const PREFIX: &str = "streamjob";

/// The default consumer group of a job created by this operator version.
pub fn default_consumer_group(namespace: &str, name: &str) -> String {
    format!("{PREFIX}.{namespace}.{name}")
}

/// The default consumer group of operator versions before the unambiguous encoding; jobs that
/// ran under it keep it (see [`crate::StreamJob::consumer_group`]).
pub fn legacy_consumer_group(namespace: &str, name: &str) -> String {
    format!("{PREFIX}-{namespace}-{name}")
}

/// The namespace and name a default consumer group was derived from, if it is one.
pub fn decode_default_consumer_group(group: &str) -> Option<(&str, &str)> {
    let rest = group.strip_prefix(PREFIX)?.strip_prefix('.')?;
    let (namespace, name) = rest.split_once('.')?;
    (!namespace.is_empty() && !name.is_empty()).then_some((namespace, name))
}

/// The repartition topic of a consumer group: `<group>-repartition`.
pub fn repartition_topic(group: &str) -> String {
    format!("{group}{REPARTITION_SUFFIX}")
}

/// The transactional id of one worker: `streamjob.<namespace>.<name>/<instance>` (the instance
/// is the pod's ordinal). Unique per worker of a job and across jobs.
pub fn transactional_id(namespace: &str, name: &str, instance: &str) -> String {
    format!("{}/{instance}", default_consumer_group(namespace, name))
}

/// Why a job's name cannot carry its derived names, if it cannot.
pub fn name_problems(namespace: &str, name: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if name.len() > MAX_JOB_NAME_LENGTH {
        problems.push(format!(
            "metadata.name: Too long: {} characters, at most {MAX_JOB_NAME_LENGTH} (the StatefulSet's pods carry \
             `controller-revision-hash: <name>-<hash>`, a label of at most 63)",
            name.len()
        ));
    }
    let topic = repartition_topic(&default_consumer_group(namespace, name));
    if topic.len() > crate::types::MAX_TOPIC_NAME_LENGTH {
        problems.push(format!("the repartition topic {topic} would be longer than Kafka's 249 characters"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (namespace, name) pairs whose old names collide, and whose new ones must not.
    const COLLIDING_BEFORE: &[[(&str, &str); 2]] =
        &[[("team-a", "orders"), ("team", "a-orders")], [("a", "b-c-d"), ("a-b-c", "d")], [("x", "y.z"), ("x", "y-z")]];

    #[test]
    fn names_that_collided_do_not_any_more() {
        for [(ns1, n1), (ns2, n2)] in COLLIDING_BEFORE {
            let (old1, old2) = (legacy_consumer_group(ns1, n1), legacy_consumer_group(ns2, n2));
            if ns1 != ns2 {
                assert_eq!(old1, old2, "the legacy encoding collided for {ns1}/{n1} and {ns2}/{n2}");
            }
            assert_ne!(default_consumer_group(ns1, n1), default_consumer_group(ns2, n2));
            assert_ne!(
                repartition_topic(&default_consumer_group(ns1, n1)),
                repartition_topic(&default_consumer_group(ns2, n2))
            );
            assert_ne!(transactional_id(ns1, n1, "0"), transactional_id(ns2, n2, "0"));
        }
    }

    #[test]
    fn the_encoding_is_the_expected_text_and_decodes_back() {
        let cases = [
            ("team-a", "orders", "streamjob.team-a.orders"),
            ("team", "a-orders", "streamjob.team.a-orders"),
            ("default", "wordcount", "streamjob.default.wordcount"),
            ("ns", "a.b.c", "streamjob.ns.a.b.c"),
        ];
        for (namespace, name, group) in cases {
            assert_eq!(default_consumer_group(namespace, name), group);
            assert_eq!(decode_default_consumer_group(group), Some((namespace, name)));
        }
        assert_eq!(decode_default_consumer_group("streamjob-team-a-orders"), None);
        assert_eq!(transactional_id("team-a", "orders", "0"), "streamjob.team-a.orders/0");
        assert_eq!(repartition_topic("streamjob.team-a.orders"), "streamjob.team-a.orders-repartition");
    }

    /// Every valid (namespace, name) pair over a small alphabet, including names with dots:
    /// distinct pairs give distinct groups, topics and transactional ids.
    #[test]
    fn no_two_pairs_share_a_name_over_an_exhaustive_small_alphabet() {
        let labels = ["a", "b", "a-b", "b-a", "a-a", "ab"];
        let names = ["a", "b", "a-b", "a.b", "b.a", "a-b.a", "a.b-a", "ab", "a.a"];
        let mut groups = std::collections::HashMap::new();
        let mut topics = std::collections::HashMap::new();
        let mut ids = std::collections::HashMap::new();
        for namespace in labels {
            for name in names {
                let group = default_consumer_group(namespace, name);
                assert_eq!(groups.insert(group.clone(), (namespace, name)), None, "{group}");
                // Kafka treats `.` and `_` alike in topic names: compare with both folded.
                let topic = repartition_topic(&group).replace('_', ".");
                assert_eq!(topics.insert(topic.clone(), (namespace, name)), None, "{topic}");
                for ordinal in ["0", "1", "10"] {
                    let id = transactional_id(namespace, name, ordinal);
                    assert_eq!(ids.insert(id.clone(), (namespace, name, ordinal)), None, "{id}");
                }
            }
        }
    }

    #[test]
    fn the_longest_valid_names_fit_kafka() {
        let namespace = "n".repeat(MAX_NAMESPACE_LENGTH);
        let name = "j".repeat(MAX_JOB_NAME_LENGTH);
        assert_eq!(name_problems(&namespace, &name), Vec::<String>::new());
        let topic = repartition_topic(&default_consumer_group(&namespace, &name));
        assert!(topic.len() <= crate::types::MAX_TOPIC_NAME_LENGTH, "{}", topic.len());
        assert!(topic.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'), "{topic}");
        let too_long = "j".repeat(MAX_JOB_NAME_LENGTH + 1);
        assert_eq!(name_problems(&namespace, &too_long).len(), 1);
    }
}
