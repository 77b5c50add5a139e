//! The worker against the real Kafka broker named by `STREAMJOB_TEST_BOOTSTRAP`: word count,
//! crashes, rebalances, poison messages and a pipeline change. Every test makes its own topics and group.
//! Broker faults need librdkafka's mock cluster: they are in `broker_faults.rs`.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use streamjob_crds::capacity_report::CapacityReport;
use streamjob_testkit::kafka::{produce_all, NewRecord};
use streamjob_worker::group_offsets;
use streamjob_worker::metrics::PartitionLabels;
use streamjob_worker::topic_io::{ReadRecord, TopicReader};

#[test]
fn word_count_emits_the_exact_count_of_every_word_in_every_window() {
    let Some(bootstrap) = real_broker() else { return };
    let names = JobNames::new("wc-exact");
    create_topics(&bootstrap, &[(&names.source, 4), (&names.sink, 4)]);
    let lines = text_lines(400, now_ms() - 35_000, 80);
    let expected = expected_word_counts(&lines);
    produce_all(&bootstrap, &names.source, &lines).expect("input produced");

    let _worker = TestWorker::start(config("wordcount.yaml", &bootstrap, &names, "0"));
    let mut sink = TopicReader::new(&bootstrap, &names.sink, false).expect("reader");
    let complete = sink.read_until(LIMIT, |records| final_word_counts(records).len() >= expected.len());
    sink.poll_for(Duration::from_secs(2));
    assert!(complete, "only {} of {} counts arrived", final_word_counts(&sink.records).len(), expected.len());
    assert_eq!(final_word_counts(&sink.records), expected);
    assert!(duplicates(&sink.records).is_empty(), "without a failure each window is emitted once");
}

/// Runs `manifest`'s word count, crashes its worker halfway and restarts it under the same
/// instance id; returns what the sink holds once the counts are right, and how many counts.
fn crash_and_restart(bootstrap: &str, manifest: &str, test: &str) -> (Vec<ReadRecord>, usize) {
    let names = JobNames::new(test);
    create_topics(bootstrap, &[(&names.source, 4), (&names.sink, 4)]);
    let lines = text_lines(600, 0, 0);
    let first_half = stamped(&lines[..300], now_ms(), 3);
    produce_all(bootstrap, &names.source, &first_half).expect("first half produced");

    let first = TestWorker::start(config(manifest, bootstrap, &names, "0"));
    assert!(wait_until(LIMIT, || first.records_in() >= 150), "the first worker never got going");
    first.crash();
    let second_half = stamped(&lines[300..], now_ms(), 3);
    produce_all(bootstrap, &names.source, &second_half).expect("second half produced");
    let expected = expected_word_counts(&[first_half, second_half].concat());

    let _second = TestWorker::start(config(manifest, bootstrap, &names, "0"));
    let read_committed = manifest.contains("exactly-once");
    let mut sink = read_until_counts_are(bootstrap, &names.sink, read_committed, &expected, "after the crash");
    sink.poll_for(Duration::from_secs(2));
    (sink.records, expected.len())
}

#[test]
fn a_crash_without_commit_loses_nothing_and_final_counts_are_right() {
    let Some(bootstrap) = real_broker() else { return };
    crash_and_restart(&bootstrap, "wordcount.yaml", "wc-crash");
}

#[test]
fn exactly_once_crash_leaves_no_duplicates_for_a_read_committed_reader() {
    let Some(bootstrap) = real_broker() else { return };
    let (records, windows) = crash_and_restart(&bootstrap, "wordcount-exactly-once.yaml", "wc-eos");
    assert!(duplicates(&records).is_empty(), "duplicates: {:?}", duplicates(&records));
    assert_eq!(records.len(), windows, "each window and word exactly once");
}

#[test]
fn a_late_joiner_and_a_leaver_share_the_work_and_nothing_is_lost() {
    let Some(bootstrap) = real_broker() else { return };
    let names = JobNames::new("wc-pair");
    create_topics(&bootstrap, &[(&names.source, 6), (&names.sink, 4)]);
    let lines = text_lines(900, 0, 0);
    let mut produced = stamped(&lines[..300], now_ms(), 3);
    produce_all(&bootstrap, &names.source, &produced).expect("first third");

    let first = TestWorker::start(config("wordcount.yaml", &bootstrap, &names, "0"));
    assert!(wait_until(LIMIT, || first.records_in() > 0), "the first worker never got going");
    let second = TestWorker::start(config("wordcount.yaml", &bootstrap, &names, "1"));
    let second_third = stamped(&lines[300..600], now_ms(), 3);
    produce_all(&bootstrap, &names.source, &second_third).expect("second third");
    produced.extend(second_third);
    assert!(wait_until(LIMIT, || second.assigned_partitions() > 0), "the late joiner never got partitions");
    assert!(first.assigned_partitions() > 0, "the first worker kept a share");
    first.stop();
    let last_third = stamped(&lines[600..], now_ms(), 3);
    produce_all(&bootstrap, &names.source, &last_third).expect("last third");
    produced.extend(last_third);
    let expected = expected_word_counts(&produced);

    read_until_counts_are(&bootstrap, &names.sink, false, &expected, "after join and leave");
    drop(second);
}

#[test]
fn a_poison_message_goes_to_the_dead_letter_topic_and_its_partition_continues() {
    let Some(bootstrap) = real_broker() else { return };
    let names = JobNames::new("poison");
    create_topics(&bootstrap, &[(&names.source, 1), (&names.sink, 1), (&names.dead_letter, 1)]);
    let record = |value: &str| NewRecord { key: None, value: value.as_bytes().to_vec(), timestamp_ms: None };
    let input = [record(r#"{"id":1,"amount":5}"#), record("{not json"), record(r#"{"id":3}"#)];
    produce_all(&bootstrap, &names.source, &input).expect("input");

    let _worker = TestWorker::start(config("orders-dead-letter.yaml", &bootstrap, &names, "0"));
    let mut dead = TopicReader::new(&bootstrap, &names.dead_letter, false).expect("reader");
    assert!(dead.read_until(LIMIT, |r| !r.is_empty()), "nothing dead-lettered");
    let poison = &dead.records[0];
    let header = |name: &str| poison.headers.get(name).map(String::as_str);
    assert_eq!(poison.value, "{not json");
    assert_eq!(header("streamjob.stage"), Some("decode"));
    assert!(header("streamjob.error").is_some_and(|e| e.contains("invalid JSON")), "{poison:?}");
    assert_eq!(header("streamjob.source.topic"), Some(names.source.as_str()));
    assert_eq!(header("streamjob.source.partition"), Some("0"));
    assert_eq!(header("streamjob.source.offset"), Some("1"));

    let mut sink = TopicReader::new(&bootstrap, &names.sink, false).expect("reader");
    assert!(sink.read_until(LIMIT, |r| r.len() >= 2), "the partition stalled behind the poison message");
    let ids: Vec<serde_json::Value> = sink
        .records
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(&r.value).expect("json")["id"].clone())
        .collect();
    assert_eq!(ids, vec![serde_json::json!(1), serde_json::json!(3)]);
}

/// The partitions of `topic` in the broker's metadata.
fn partition_count(bootstrap: &str, topic: &str) -> usize {
    let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("client");
    let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    metadata.topics().iter().map(|t| t.partitions().len()).sum()
}

#[test]
fn created_topics_are_ready_with_their_partitions_and_creating_again_keeps_them() {
    let Some(bootstrap) = real_broker() else { return };
    let (four, one) = (unique("topics-four"), unique("topics-one"));
    create_topics(&bootstrap, &[(&four, 4), (&one, 1)]);
    let partitions = |topic: &str| partition_count(&bootstrap, topic);
    assert_eq!((partitions(&four), partitions(&one)), (4, 1), "ready as soon as create_topics returns");

    create_topics(&bootstrap, &[(&four, 2)]);
    assert_eq!(partitions(&four), 4, "an existing topic is kept as it is");
}

/// A metadata request for a missing topic must not create it with the broker's num.partitions.
#[test]
fn the_repartition_topic_has_as_many_partitions_as_the_source() {
    let Some(bootstrap) = real_broker() else { return };
    let names = JobNames::new("wc-repartition");
    create_topics(&bootstrap, &[(&names.source, 4), (&names.sink, 4)]);
    let worker = TestWorker::start(config("wordcount.yaml", &bootstrap, &names, "0"));
    let ready = wait_until(LIMIT, || worker.control.ready.load(std::sync::atomic::Ordering::SeqCst));
    assert!(ready, "the worker never became ready");
    assert_eq!(partition_count(&bootstrap, &names.repartition()), 4);
}

#[test]
fn every_commit_of_a_source_partition_carries_the_workers_true_rate() {
    let Some(bootstrap) = real_broker() else { return };
    let names = JobNames::new("true-rate");
    create_topics(&bootstrap, &[(&names.source, 4), (&names.sink, 4)]);
    let lines = text_lines(20_000, now_ms() - 35_000, 1);
    let expected = expected_word_counts(&lines);
    produce_all(&bootstrap, &names.source, &lines).expect("input produced");

    let worker = TestWorker::start(config("wordcount.yaml", &bootstrap, &names, "0"));
    let mut sink = TopicReader::new(&bootstrap, &names.sink, false).expect("reader");
    let complete = sink.read_until(LIMIT, |records| final_word_counts(records).len() >= expected.len());
    worker.stop();
    assert!(complete, "only {} of {} counts arrived", final_word_counts(&sink.records).len(), expected.len());
    assert_eq!(final_word_counts(&sink.records), expected, "the reports leave the results alone");

    let source = group_offsets::committed(&bootstrap, &names.group, &names.source, &[0, 1, 2, 3]).expect("commits");
    assert_eq!(source.len(), 4, "{source:?}");
    for commit in &source {
        let metadata = commit.metadata.as_deref().unwrap_or_default();
        let report = CapacityReport::decode(metadata).unwrap_or_else(|| panic!("no report in {metadata:?}"));
        assert_eq!(report.worker, names.instance("0"));
        assert!(report.records_per_busy_second > 0.0 && report.busy_share > 0.0, "{report:?}");
    }
    let repartition = names.repartition();
    let checkpoints = group_offsets::committed(&bootstrap, &names.group, &repartition, &[0, 1, 2, 3]).expect("commits");
    assert!(!checkpoints.is_empty());
    for commit in &checkpoints {
        let metadata = commit.metadata.as_deref().unwrap_or_default();
        assert_eq!(CapacityReport::decode(metadata), None, "the aggregating stage keeps its checkpoint: {metadata:?}");
    }
}

/// A pipeline change on a windowed job, as the operator's drain makes it: every worker of the
/// old pipeline (10 s windows) stops with a window open, and a worker of the new one (20 s) starts
/// on the same group. The old pipeline's partials on the repartition topic are discarded and
/// counted, every one of them; the window the new pipeline emits holds its own records only.
#[test]
fn a_new_pipeline_discards_the_old_pipelines_partials_and_never_merges_them() {
    let Some(bootstrap) = real_broker() else { return };
    let names = JobNames::new("pipeline-change");
    create_topics(&bootstrap, &[(&names.source, 2), (&names.sink, 2)]);
    // One event time for both batches, so both pipelines' windows hold them.
    let event_ms = now_ms() - 30_000;
    let lines = text_lines(160, 0, 0);
    let (before, after) = (stamped(&lines[..100], event_ms, 0), stamped(&lines[100..], event_ms, 0));
    let words = |batch: &[NewRecord]| -> u64 {
        batch.iter().map(|line| String::from_utf8_lossy(&line.value).split_whitespace().count() as u64).sum()
    };
    produce_all(&bootstrap, &names.source, &before).expect("first batch produced");

    // The old pipeline never goes idle while it runs, so its window stays open.
    let mut old = config("wordcount.yaml", &bootstrap, &names, "0");
    old.timings.idle_timeout = Duration::from_secs(600);
    let old = TestWorker::start(old);
    assert!(wait_until(LIMIT, || old.records_in() >= 100), "the old pipeline never read its input");
    old.stop();
    let mut sink = TopicReader::new(&bootstrap, &names.sink, false).expect("reader");
    sink.poll_for(Duration::from_secs(1));
    assert!(sink.records.is_empty(), "the old pipeline's window was still open: {:?}", sink.records);

    let mut new = config("wordcount.yaml", &bootstrap, &names, "0");
    let window = new.job.spec.pipeline.iter_mut().find_map(|stage| stage.window.as_mut()).expect("a window stage");
    window.size = "20s".to_owned();
    let new = TestWorker::start(new);
    produce_all(&bootstrap, &names.source, &after).expect("second batch produced");
    let expected = streamjob_testkit::kafka::expected_word_counts(&after, 20_000);
    let complete = sink.read_until(LIMIT, |records| final_word_counts(records).len() >= expected.len());
    sink.poll_for(Duration::from_secs(2));
    assert!(complete, "the new pipeline's window never came");
    assert_eq!(final_word_counts(&sink.records), expected, "the new pipeline's records only");
    let metrics = &new.control.metrics;
    type Counters =
        prometheus_client::metrics::family::Family<PartitionLabels, prometheus_client::metrics::counter::Counter>;
    let discarded = |family: &Counters| -> u64 {
        (0..2).map(|partition| family.get_or_create(&PartitionLabels::new(&names.repartition(), partition)).get()).sum()
    };
    assert_eq!(discarded(&metrics.other_pipeline_records_discarded), words(&before), "every old contribution");
    assert!(discarded(&metrics.other_pipeline_partials_discarded) > 0);
    println!(
        "pipeline change: {} old partials with {} words discarded; {} new counts emitted",
        discarded(&metrics.other_pipeline_partials_discarded),
        words(&before),
        expected.len()
    );
}
