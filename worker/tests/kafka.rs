//! The worker against librdkafka's mock cluster, in process: word count, crashes, rebalances,
//! poison messages and broker faults.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use streamjob_worker::mock_broker::MockBroker;
use streamjob_worker::topic_io::{produce_all, word_count_differences, TopicReader, WordCounts};

const LIMIT: Duration = Duration::from_secs(90);

fn broker_with(topics: &[(&str, i32)]) -> MockBroker {
    init_logs();
    let broker = MockBroker::start(1).expect("mock cluster starts");
    for (topic, partitions) in topics {
        broker.create_topic(topic, *partitions).expect("topic created");
    }
    broker
}

fn wait_until(limit: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn word_count_emits_the_exact_count_of_every_word_in_every_window() {
    let broker = broker_with(&[("lines", 4), ("word-counts", 4)]);
    let bootstrap = broker.bootstrap_servers();
    let lines = text_lines(400, now_ms() - 35_000, 80);
    let expected = expected_word_counts(&lines);
    produce_all(&bootstrap, "lines", &lines).expect("input produced");

    let _worker = TestWorker::start(config("wordcount.yaml", &bootstrap, "wc-exact", "wc-0"));
    let mut sink = TopicReader::new(&bootstrap, "word-counts", false).expect("reader");
    let complete = sink.read_until(LIMIT, |records| final_word_counts(records).len() >= expected.len());
    sink.poll_for(Duration::from_secs(2));
    assert!(complete, "only {} of {} counts arrived", final_word_counts(&sink.records).len(), expected.len());
    assert_eq!(final_word_counts(&sink.records), expected);
    assert!(duplicates(&sink.records).is_empty(), "without a failure each window is emitted once");
}

fn crash_and_restart(manifest: &str, group: &str) -> (Vec<streamjob_worker::topic_io::ReadRecord>, usize) {
    let broker = broker_with(&[("lines", 4), ("word-counts", 4)]);
    let bootstrap = broker.bootstrap_servers();
    let lines = text_lines(600, 0, 0);
    let first_half = stamped(&lines[..300], now_ms(), 3);
    produce_all(&bootstrap, "lines", &first_half).expect("first half produced");

    let first = TestWorker::start(config(manifest, &bootstrap, group, "wc-0"));
    assert!(wait_until(LIMIT, || first.records_in() >= 150), "the first worker never got going");
    first.crash();
    let second_half = stamped(&lines[300..], now_ms(), 3);
    produce_all(&bootstrap, "lines", &second_half).expect("second half produced");
    let expected = expected_word_counts(&[first_half, second_half].concat());

    let _second = TestWorker::start(config(manifest, &bootstrap, group, "wc-0"));
    let read_committed = manifest.contains("exactly-once");
    let mut sink = read_until_counts_are(&bootstrap, read_committed, &expected, "after the crash");
    sink.poll_for(Duration::from_secs(2));
    (sink.records, expected.len())
}

/// Reads `word-counts` until its final counts equal `expected`; fails showing what differs.
fn read_until_counts_are(bootstrap: &str, read_committed: bool, expected: &WordCounts, when: &str) -> TopicReader {
    let mut sink = TopicReader::new(bootstrap, "word-counts", read_committed).expect("reader");
    let complete = sink.read_until(LIMIT, |records| final_word_counts(records) == *expected);
    assert!(
        complete,
        "missing or wrong {when}: {:?}",
        word_count_differences(expected, &final_word_counts(&sink.records))
    );
    sink
}

#[test]
fn a_crash_without_commit_loses_nothing_and_final_counts_are_right() {
    crash_and_restart("wordcount.yaml", "wc-crash");
}

#[test]
fn exactly_once_crash_leaves_no_duplicates_for_a_read_committed_reader() {
    let (records, windows) = crash_and_restart("wordcount-exactly-once.yaml", "wc-eos");
    assert!(duplicates(&records).is_empty(), "duplicates: {:?}", duplicates(&records));
    assert_eq!(records.len(), windows, "each window and word exactly once");
}

#[test]
fn a_late_joiner_and_a_leaver_share_the_work_and_nothing_is_lost() {
    let broker = broker_with(&[("lines", 6), ("word-counts", 4)]);
    let bootstrap = broker.bootstrap_servers();
    let lines = text_lines(900, 0, 0);
    let mut produced = stamped(&lines[..300], now_ms(), 3);
    produce_all(&bootstrap, "lines", &produced).expect("first third");

    let first = TestWorker::start(config("wordcount.yaml", &bootstrap, "wc-pair", "wc-0"));
    assert!(wait_until(LIMIT, || first.records_in() > 0));
    let second = TestWorker::start(config("wordcount.yaml", &bootstrap, "wc-pair", "wc-1"));
    let second_third = stamped(&lines[300..600], now_ms(), 3);
    produce_all(&bootstrap, "lines", &second_third).expect("second third");
    produced.extend(second_third);
    assert!(wait_until(LIMIT, || second.assigned_partitions() > 0), "the late joiner never got partitions");
    assert!(first.assigned_partitions() > 0, "the first worker kept a share");
    first.stop();
    let last_third = stamped(&lines[600..], now_ms(), 3);
    produce_all(&bootstrap, "lines", &last_third).expect("last third");
    produced.extend(last_third);
    let expected = expected_word_counts(&produced);

    read_until_counts_are(&bootstrap, false, &expected, "after join and leave");
    drop(second);
}

#[test]
fn a_poison_message_goes_to_the_dead_letter_topic_and_its_partition_continues() {
    let broker = broker_with(&[("orders", 1), ("orders-copy", 1), ("orders-dlq", 1)]);
    let bootstrap = broker.bootstrap_servers();
    let record = |value: &str| streamjob_worker::topic_io::NewRecord {
        key: None,
        value: value.as_bytes().to_vec(),
        timestamp_ms: None,
    };
    produce_all(&bootstrap, "orders", &[record(r#"{"id":1,"amount":5}"#), record("{not json"), record(r#"{"id":3}"#)])
        .expect("input");

    let _worker = TestWorker::start(config("orders-dead-letter.yaml", &bootstrap, "poison", "p-0"));
    let mut dead = TopicReader::new(&bootstrap, "orders-dlq", false).expect("reader");
    assert!(dead.read_until(LIMIT, |r| !r.is_empty()), "nothing dead-lettered");
    let poison = &dead.records[0];
    assert_eq!(poison.value, "{not json");
    assert_eq!(poison.headers.get("streamjob.stage").map(String::as_str), Some("decode"));
    assert!(poison.headers.get("streamjob.error").is_some_and(|e| e.contains("invalid JSON")), "{poison:?}");
    assert_eq!(poison.headers.get("streamjob.source.topic").map(String::as_str), Some("orders"));
    assert_eq!(poison.headers.get("streamjob.source.partition").map(String::as_str), Some("0"));
    assert_eq!(poison.headers.get("streamjob.source.offset").map(String::as_str), Some("1"));

    let mut sink = TopicReader::new(&bootstrap, "orders-copy", false).expect("reader");
    assert!(sink.read_until(LIMIT, |r| r.len() >= 2), "the partition stalled behind the poison message");
    let ids: Vec<serde_json::Value> = sink
        .records
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(&r.value).expect("json")["id"].clone())
        .collect();
    assert_eq!(ids, vec![serde_json::json!(1), serde_json::json!(3)]);
}

#[test]
fn broker_outage_and_request_errors_are_survived_without_loss() {
    let broker = broker_with(&[("lines", 4), ("word-counts", 4)]);
    let bootstrap = broker.bootstrap_servers();
    let lines = text_lines(600, 0, 0);
    let mut produced = stamped(&lines[..200], now_ms(), 3);
    produce_all(&bootstrap, "lines", &produced).expect("first part");

    let worker = TestWorker::start(config("wordcount.yaml", &bootstrap, "wc-faults", "wc-0"));
    assert!(wait_until(LIMIT, || worker.records_in() > 0));
    broker.cluster().broker_down(1).expect("broker down");
    std::thread::sleep(Duration::from_secs(3));
    broker.cluster().broker_up(1).expect("broker up");
    broker.cluster().request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    broker
        .cluster()
        .request_errors(RDKafkaApiKey::OffsetCommit, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE]);
    let rest = stamped(&lines[200..], now_ms(), 3);
    produce_all(&bootstrap, "lines", &rest).expect("rest");
    produced.extend(rest);
    let expected = expected_word_counts(&produced);

    read_until_counts_are(&bootstrap, false, &expected, "after the outage");
    drop(worker);
}
