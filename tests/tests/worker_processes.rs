//! The worker as separate `streamjob-worker` processes against a broker in its own process:
//! `streamjob-mock-broker` (librdkafka's mock cluster on local TCP ports), or the Kafka named by
//! `STREAMJOB_TEST_BOOTSTRAP`. Word count, then a `kill -9` and a restart; and two workers
//! counting a live stream while one of them is killed at different points of a window.
//!
//! Over 400 lines because the scenarios share one harness (processes, topics, the independent
//! count) that only they use; each test is short.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use streamjob_e2e::{broker, free_port, http_get, repo_root, unique, workspace_binary, ChildGuard};
use streamjob_testkit::kafka::{
    expected_word_counts, final_word_counts, produce_all, word_count_differences, NewRecord,
};
use streamjob_worker::engine::Commit;
use streamjob_worker::group_offsets;
use streamjob_worker::topic_io::TopicReader;

const LIMIT: Duration = Duration::from_secs(120);
/// The wordcount example's window size.
const WINDOW_MS: i64 = 10_000;

/// The wordcount example with its topics renamed, so a shared Kafka gets fresh ones.
fn manifest(lines: &str, counts: &str) -> PathBuf {
    let example = std::fs::read_to_string(repo_root().join("examples/wordcount.yaml")).expect("example");
    let text = example
        .replace("topics: [lines]", &format!("topics: [{lines}]"))
        .replace("topic: word-counts", &format!("topic: {counts}"));
    let path = std::env::temp_dir().join(format!("{lines}.yaml"));
    std::fs::write(&path, text).expect("manifest written");
    path
}

fn worker(manifest: &std::path::Path, bootstrap: &str, group: &str, port: u16) -> ChildGuard {
    let timings = ["--commit-interval", "200ms", "--idle-timeout", "4s", "--session-timeout", "3s"];
    worker_with(manifest, bootstrap, group, ("wordcount-0", port), &timings)
}

/// A `streamjob-worker` process as `instance` with its HTTP port, and `timings` arguments.
fn worker_with(
    manifest: &std::path::Path,
    bootstrap: &str,
    group: &str,
    (instance, port): (&str, u16),
    timings: &[&str],
) -> ChildGuard {
    let child = Command::new(workspace_binary("streamjob-worker"))
        .args(["--config", &manifest.display().to_string(), "--bootstrap", bootstrap, "--group", group])
        .args(["--instance-id", instance, "--http-address", &format!("127.0.0.1:{port}"), "--log-format", "text"])
        .args(timings)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("streamjob-worker starts (cargo build --bins first)");
    ChildGuard(child)
}

fn lines(range: std::ops::Range<usize>, start_ms: i64) -> Vec<NewRecord> {
    const WORDS: [&str; 9] = ["alpha", "beta", "gamma", "delta", "Alpha", "epsilon", "zeta", "eta", "theta"];
    range
        .map(|i| NewRecord {
            key: Some(format!("line-{i}")),
            value: (0..(2 + i % 4))
                .map(|j| WORDS[(i * 7 + j * 3) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
                .into_bytes(),
            timestamp_ms: Some(start_ms + (i as i64 % 300) * 3),
        })
        .collect()
}

/// The sum of a counter's samples whose labels contain `labels`, read from the worker's /metrics.
fn counter(port: u16, name: &str, labels: &str) -> u64 {
    http_get(port, "/metrics")
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The sum of `streamjob_worker_records_in_total` for `topic`, read from the worker's /metrics.
fn records_in(port: u16, topic: &str) -> u64 {
    counter(port, "streamjob_worker_records_in_total", &format!("topic=\"{topic}\""))
}

fn wait_for(condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn worker_processes_count_words_exactly_across_a_kill_9() {
    let (lines_topic, counts_topic) = (unique("lines"), unique("word-counts"));
    let broker = broker(&[(&lines_topic, 4), (&counts_topic, 4)]);
    let manifest = manifest(&lines_topic, &counts_topic);
    let group = unique("wordcount");

    let now = streamjob_worker::runner::now_ms();
    let first_half = lines(0..300, now);
    produce_all(&broker.bootstrap, &lines_topic, &first_half).expect("first half");
    let port = free_port().expect("a free port");
    let mut first = worker(&manifest, &broker.bootstrap, &group, port);
    assert!(wait_for(|| records_in(port, &lines_topic) >= 150), "the worker never got going");
    first.0.kill().expect("kill -9");
    let _ = first.0.wait();

    let second_half = lines(300..600, streamjob_worker::runner::now_ms());
    produce_all(&broker.bootstrap, &lines_topic, &second_half).expect("second half");
    let _second = worker(&manifest, &broker.bootstrap, &group, free_port().expect("a free port"));
    let want = expected_word_counts(&[first_half, second_half].concat(), WINDOW_MS);
    let mut sink = TopicReader::new(&broker.bootstrap, &counts_topic, false).expect("reader");
    let complete = sink.read_until(LIMIT, |records| final_word_counts(records).is_ok_and(|counts| counts == want));
    let got = final_word_counts(&sink.records).unwrap_or_else(|error| panic!("{error}"));
    let wrong = word_count_differences(&want, &got);
    assert!(complete, "counts after kill -9 and restart differ: {wrong:?}");
}

/// Session timeout of the live-stream test: the real broker's minimum is 6 s by default.
const SESSION_TIMEOUT: &str = "10s";
/// Shorter than the session timeout: a dead worker's partitions are silent for longer than
/// this before they move, and that silence must not close a window.
const IDLE_TIMEOUT: &str = "3s";
/// How long the live stream runs. It writes [`LINES_PER_BURST`] lines every [`BURST_EVERY_MS`]
/// of the wall clock, a quiet longer than the idle timeout in between: between bursts the
/// source partitions are idle, and what a burst writes while a worker is dead waits for it.
const STREAM: Duration = Duration::from_secs(40);
const LINES_PER_BURST: usize = 1000;
const BURST_EVERY_MS: i64 = 5_000;
/// When in each [`BURST_EVERY_MS`] a burst is written: 1 s before a window ends, after a
/// quiet longer than the idle timeout, so a worker killed 1.5 s before the end has its
/// partitions idle, and the burst lands in them while they have no reader.
const BURST_AT_MS: i64 = 4_000;
const WORDS: usize = 800;

/// A line of 2-5 of the words w000..w799, and its timestamp.
fn live_line(i: usize) -> NewRecord {
    NewRecord {
        key: Some(format!("line-{i}")),
        value: (0..(2 + i % 4))
            .map(|j| format!("w{:03}", (i * 7 + j * 13) % WORDS))
            .collect::<Vec<_>>()
            .join(" ")
            .into_bytes(),
        timestamp_ms: Some(streamjob_worker::runner::now_ms()),
    }
}

/// Writes bursts of lines stamped with the wall clock for [`STREAM`], and returns them.
fn write_live_stream(bootstrap: String, topic: String) -> std::thread::JoinHandle<Vec<NewRecord>> {
    std::thread::spawn(move || {
        let mut written = Vec::new();
        let end = Instant::now() + STREAM;
        while Instant::now() < end {
            let now = streamjob_worker::runner::now_ms();
            let wait = (BURST_AT_MS - now).rem_euclid(BURST_EVERY_MS);
            std::thread::sleep(Duration::from_millis(wait as u64));
            let burst: Vec<NewRecord> = (written.len()..written.len() + LINES_PER_BURST).map(live_line).collect();
            produce_all(&bootstrap, &topic, &burst).expect("lines written");
            written.extend(burst);
        }
        written
    })
}

/// Which worker a test kills: one that aggregates (reads the repartition topic) or one that
/// reads the source topic. The assignment decides which is which; often each does both.
#[derive(Debug, Clone, Copy)]
enum Victim {
    Aggregator,
    Source,
}

/// The index `find` returns, once it returns one within [`LIMIT`].
fn wait_for_index(find: impl Fn() -> Option<usize>) -> Option<usize> {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        if let Some(index) = find() {
            return Some(index);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// Two workers count a live stream; at `before_window_end` before the end of a window some
/// seconds in, the `victim` is killed with SIGKILL and started again at once. Its partitions
/// have no reader for the session timeout, longer than the idle timeout, and a burst lands in
/// them meanwhile: every count must still be exact, and the surviving worker and the restarted
/// one count nothing late or skipped.
fn count_a_live_stream_across_a_kill_9(victim: Victim, before_window_end: Duration) {
    let (lines_topic, counts_topic) = (unique("live-lines"), unique("live-counts"));
    let group = unique("live-wordcount");
    // Created here too, so that each worker surely aggregates some of its partitions.
    let repartition_topic = format!("{group}-repartition");
    let broker = broker(&[(&lines_topic, 4), (&counts_topic, 4), (&repartition_topic, 4)]);
    let manifest = manifest(&lines_topic, &counts_topic);
    let timings = ["--commit-interval", "500ms", "--idle-timeout", IDLE_TIMEOUT, "--session-timeout", SESSION_TIMEOUT];
    let ports = [free_port().expect("a free port"), free_port().expect("a free port")];
    let mut workers = [
        Some(worker_with(&manifest, &broker.bootstrap, &group, ("live-0", ports[0]), &timings)),
        Some(worker_with(&manifest, &broker.bootstrap, &group, ("live-1", ports[1]), &timings)),
    ];
    assert!(wait_for(|| ports.iter().all(|port| http_get(*port, "/readyz").contains("200 OK"))), "workers not ready");

    let writer = write_live_stream(broker.bootstrap.clone(), lines_topic.clone());
    let victim_topic = match victim {
        Victim::Aggregator => &repartition_topic,
        Victim::Source => &lines_topic,
    };
    let doomed = wait_for_index(|| ports.iter().position(|port| records_in(*port, victim_topic) > 0))
        .expect("no worker reads the victim's topic");
    let mut doomed_process = workers[doomed].take().expect("the doomed worker");
    let survivor_port = ports[1 - doomed];
    let now = streamjob_worker::runner::now_ms();
    let window_end = now + 12_000 - (now + 12_000).rem_euclid(WINDOW_MS) + WINDOW_MS;
    let kill_at = window_end - before_window_end.as_millis() as i64;
    std::thread::sleep(Duration::from_millis((kill_at - streamjob_worker::runner::now_ms()).max(0) as u64));
    doomed_process.0.kill().expect("kill -9");
    let _ = doomed_process.0.wait();
    let restarted_port = free_port().expect("a free port");
    let instance = format!("live-{doomed}");
    let _restarted = worker_with(&manifest, &broker.bootstrap, &group, (&instance, restarted_port), &timings);
    eprintln!(
        "killed the {victim:?} worker {} ms before the window ending at {window_end}",
        before_window_end.as_millis()
    );

    let written = writer.join().expect("the writer finished");
    let want = expected_word_counts(&written, WINDOW_MS);
    let mut sink = TopicReader::new(&broker.bootstrap, &counts_topic, false).expect("reader");
    let complete = sink.read_until(LIMIT, |records| final_word_counts(records).is_ok_and(|counts| counts == want));
    let got = final_word_counts(&sink.records).unwrap_or_else(|error| panic!("{error}"));
    let wrong = word_count_differences(&want, &got);
    let exact = want.iter().filter(|(key, count)| got.get(*key) == Some(*count)).count();
    assert!(complete, "{exact} of {} counts exact after kill -9 and restart; wrong: {wrong:?}", want.len());
    for port in [survivor_port, restarted_port] {
        for name in ["streamjob_worker_records_late_total", "streamjob_worker_records_skipped_total"] {
            assert_eq!(counter(port, name, ""), 0, "{name} of the worker on port {port}");
        }
    }
}

#[test]
fn an_aggregator_killed_just_before_a_window_ends_loses_no_record() {
    count_a_live_stream_across_a_kill_9(Victim::Aggregator, Duration::from_millis(1500));
}

#[test]
fn a_source_reader_killed_just_before_a_window_ends_loses_no_record() {
    count_a_live_stream_across_a_kill_9(Victim::Source, Duration::from_millis(1500));
}

#[test]
fn an_aggregator_killed_in_the_middle_of_a_window_loses_no_record() {
    count_a_live_stream_across_a_kill_9(Victim::Aggregator, Duration::from_millis(5000));
}

#[test]
fn a_source_reader_killed_just_after_a_window_starts_loses_no_record() {
    count_a_live_stream_across_a_kill_9(Victim::Source, Duration::from_millis(9500));
}

const LONG_SESSION: [&str; 6] =
    ["--commit-interval", "500ms", "--idle-timeout", IDLE_TIMEOUT, "--session-timeout", SESSION_TIMEOUT];

/// A committed offset the broker no longer has (here: past the end) resumes where `startFrom`
/// says, `earliest` in the word count, instead of librdkafka's default, the end; and the
/// reset is counted.
#[test]
fn an_out_of_range_commit_resumes_where_start_from_says_and_is_counted() {
    let (port, topic, _worker) = count_after_an_out_of_range_commit("reset", 1000, None);
    let resets = format!("topic=\"{topic}\"");
    assert!(counter(port, "streamjob_worker_offset_resets_total", &resets) >= 1, "the reset is counted");
}

/// Retention deleted records before the job read them (its committed offset is below the log
/// start): the reset says how many records it jumped over, and the rest is counted exactly.
#[test]
fn records_deleted_before_they_were_read_are_counted_as_passed_over() {
    let (port, topic, _worker) = count_after_an_out_of_range_commit("deleted", 10, Some(25));
    let labels = format!("topic=\"{topic}\"");
    let passed_over = counter(port, "streamjob_worker_records_passed_over_by_offset_reset_total", &labels);
    assert_eq!(passed_over, 15, "offsets 10 to 24 were deleted unread");
}

/// A word count of 30 lines whose group has `committed` as its offset, the records before
/// `deleted_before` deleted by the broker: the worker counts every line the broker kept, exactly.
/// Returns the worker's HTTP port, the source topic and the running worker.
fn count_after_an_out_of_range_commit(
    name: &str,
    committed: i64,
    deleted_before: Option<i64>,
) -> (u16, String, ChildGuard) {
    let (lines_topic, counts_topic) = (unique(&format!("{name}-lines")), unique(&format!("{name}-counts")));
    let broker = broker(&[(&lines_topic, 1), (&counts_topic, 1)]);
    let manifest = manifest(&lines_topic, &counts_topic);
    let group = unique(&format!("{name}-wordcount"));
    let written: Vec<NewRecord> = (0..30).map(live_line).collect();
    produce_all(&broker.bootstrap, &lines_topic, &written).expect("lines written");
    let commit = Commit { topic: lines_topic.clone(), partition: 0, offset: committed, metadata: None };
    group_offsets::commit(&broker.bootstrap, &group, &[commit]).expect("commit for the group");
    if let Some(offset) = deleted_before {
        delete_records_before(&broker.bootstrap, &lines_topic, offset);
    }

    let port = free_port().expect("a free port");
    let worker = worker_with(&manifest, &broker.bootstrap, &group, (&format!("{name}-0"), port), &LONG_SESSION);
    let kept = deleted_before.map_or(0, |offset| offset as usize);
    let want = expected_word_counts(&written[kept..], WINDOW_MS);
    let mut sink = TopicReader::new(&broker.bootstrap, &counts_topic, false).expect("reader");
    let complete = sink.read_until(LIMIT, |records| final_word_counts(records).is_ok_and(|counts| counts == want));
    let got = final_word_counts(&sink.records).unwrap_or_else(|error| panic!("{error}"));
    assert!(complete, "lines skipped after the reset: {:?}", word_count_differences(&want, &got));
    (port, lines_topic, worker)
}

fn delete_records_before(bootstrap: &str, topic: &str, offset: i64) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("an admin client");
    let mut before = rdkafka::TopicPartitionList::new();
    before.add_partition_offset(topic, 0, rdkafka::Offset::Offset(offset)).expect("a partition list");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let deleted = runtime.block_on(admin.delete_records(&before, &AdminOptions::new())).expect("records deleted");
    let errors: Vec<_> = deleted.elements().iter().filter_map(|e| e.error().err()).collect();
    assert!(errors.is_empty(), "delete records: {errors:?}");
}

/// A passthrough job, for the readiness test.
fn passthrough_manifest(input: &str, output: &str) -> PathBuf {
    let text = format!(
        "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata: {{name: ready}}\n\
         spec:\n  source: {{bootstrapServers: 'kafka:9092', topics: [{input}], format: text}}\n  \
         sink: {{topic: {output}, format: text}}\n"
    );
    let path = std::env::temp_dir().join(format!("{input}.yaml"));
    std::fs::write(&path, text).expect("manifest written");
    path
}

/// `/readyz` says ready once the worker is in its group with its assignment, not when it has
/// merely subscribed: with no broker to join it never is; with one it becomes ready.
#[test]
fn readiness_follows_group_membership() {
    let (input, output) = (unique("ready-in"), unique("ready-out"));
    let broker = broker(&[(&input, 1), (&output, 1)]);
    let manifest = passthrough_manifest(&input, &output);
    let nowhere = format!("127.0.0.1:{}", free_port().expect("a free port"));
    let port = free_port().expect("a free port");
    let _stranded = worker_with(&manifest, &nowhere, &unique("ready"), ("ready-0", port), &LONG_SESSION);
    assert!(wait_for(|| http_get(port, "/healthz").contains("200 OK")), "the worker serves no /healthz");
    let checks_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < checks_until {
        assert!(http_get(port, "/readyz").contains("503"), "ready without a group to be in");
        std::thread::sleep(Duration::from_millis(200));
    }

    let port = free_port().expect("a free port");
    let _member = worker_with(&manifest, &broker.bootstrap, &unique("ready"), ("ready-1", port), &LONG_SESSION);
    assert!(wait_for(|| http_get(port, "/readyz").contains("200 OK")), "never ready in its group");
}

/// The aggregating stage's commit, with a thousand source partitions reporting, fits the
/// broker's `offset.metadata.max.bytes` (4096 by default): the real broker takes it and gives
/// it back unchanged.
#[test]
fn a_checkpoint_with_a_thousand_source_partitions_commits() {
    use streamjob_worker::engine::{Engine, EngineSettings, Input};
    use streamjob_worker::repartition::{source_id, RepartitionMessage};

    let repartition_topic = unique("checkpoint-repartition");
    let broker = broker(&[(&repartition_topic, 1)]);
    let stages: Vec<streamjob_crds::PipelineStage> = serde_yaml::from_str(
        "[{split: {field: value}}, {keyBy: {field: value}}, {window: {size: 10s, aggregate: {function: count}}}]",
    )
    .expect("pipeline");
    let settings = EngineSettings {
        source_format: streamjob_crds::SourceFormat::Text,
        sink_format: streamjob_crds::SinkFormat::Json,
        dead_letter: false,
        repartition: Some((repartition_topic.clone(), 1)),
        flush_interval_ms: 200,
        idle_timeout_ms: 3_000,
        max_partials: 1000,
    };
    let pipeline = streamjob_worker::pipeline::CompiledPipeline::compile(&stages).expect("compiles");
    let mut engine = Engine::new(settings, pipeline, Default::default(), Default::default());
    let sources: Vec<String> =
        (0..1000).map(|partition| source_id("lines-with-a-long-topic-name", partition)).collect();
    engine.expect_sources(sources.clone());
    engine.assign(&repartition_topic, 0, None);
    let now = streamjob_worker::runner::now_ms();
    for (offset, src) in sources.into_iter().enumerate() {
        let marker = RepartitionMessage::Progress {
            src,
            owner: 1,
            pipeline: 0,
            watermark: now + offset as i64,
            idle: false,
            through: 1 << 40,
        };
        let payload = marker.encode();
        let input = Input {
            topic: &repartition_topic,
            partition: 0,
            offset: offset as i64,
            key: None,
            payload: Some(&payload),
            timestamp_ms: Some(now),
        };
        engine.on_input(&input, now);
    }
    engine.on_tick(now);
    let commits = engine.commits(true);
    let metadata = commits.first().and_then(|c| c.metadata.clone()).expect("a checkpoint");
    assert!(metadata.len() < 4096, "{} bytes of commit metadata", metadata.len());

    let group = unique("checkpoint");
    let oversized = Commit { metadata: Some("x".repeat(4097)), ..commits[0].clone() };
    let refused = group_offsets::commit(&broker.bootstrap, &group, &[oversized]);
    assert!(refused.is_err(), "the broker's limit is 4096 bytes: {refused:?}");
    group_offsets::commit(&broker.bootstrap, &group, &commits).expect("the broker takes the commit");
    let committed = group_offsets::committed(&broker.bootstrap, &group, &repartition_topic, &[0]).expect("read back");
    assert_eq!(committed, commits);
}

/// A JSON job whose map pads every record by `pad_bytes`, with a dead-letter topic.
fn padding_manifest(input: &str, output: &str, dead_letter: &str, pad_bytes: usize) -> PathBuf {
    let text = format!(
        "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata: {{name: padding}}\n\
         spec:\n  source: {{bootstrapServers: 'kafka:9092', topics: [{input}], format: json}}\n  \
         pipeline: [{{map: {{set: {{pad: '{}'}}}}}}]\n  \
         sink: {{topic: {output}, format: json, deadLetterTopic: {dead_letter}}}\n",
        "p".repeat(pad_bytes)
    );
    let path = std::env::temp_dir().join(format!("{input}.yaml"));
    std::fs::write(&path, text).expect("manifest written");
    path
}

fn json_record(i: usize, blob_bytes: usize) -> NewRecord {
    NewRecord {
        key: Some(format!("k{i}")),
        value: format!(r#"{{"i": {i}, "blob": "{}"}}"#, "b".repeat(blob_bytes)).into_bytes(),
        timestamp_ms: None,
    }
}

/// A record the sink can never take (padded past the topic's 1 MB `max.message.bytes`) goes to
/// the dead-letter topic with the reason, as it came, and the records after it reach the sink,
/// with no rewind: the worker knows the topic's limit and does not send it to fail. (Before,
/// the worker rewound and retried it forever; then it rewound once per such record.)
#[test]
fn a_record_too_large_for_the_sink_goes_to_the_dead_letter_topic() {
    let (input, output, dead) = (unique("large-in"), unique("large-out"), unique("large-dead"));
    let broker = broker(&[(&input, 1), (&output, 1), (&dead, 1)]);
    let manifest = padding_manifest(&input, &output, &dead, 300_000);
    let records = [json_record(0, 10), json_record(1, 800_000), json_record(2, 10), json_record(3, 10)];
    produce_all(&broker.bootstrap, &input, &records).expect("records written");
    let port = free_port().expect("a free port");
    let _worker = worker_with(&manifest, &broker.bootstrap, &unique("large"), ("large-0", port), &LONG_SESSION);

    let mut sink = TopicReader::new(&broker.bootstrap, &output, false).expect("sink reader");
    assert!(sink.read_until(LIMIT, |records| records.len() >= 3), "the records after the large one never came");
    let mut dead_letters = TopicReader::new(&broker.bootstrap, &dead, false).expect("dead-letter reader");
    assert!(dead_letters.read_until(LIMIT, |records| !records.is_empty()), "nothing dead-lettered");
    let letter = &dead_letters.records[0];
    assert_eq!(letter.key.as_deref(), Some("k1"));
    assert_eq!(letter.value.len(), records[1].value.len(), "the input as it came");
    let error = letter.headers.get("streamjob.error").cloned().unwrap_or_default();
    assert!(error.contains("more than the sink topic takes (max.message.bytes"), "the error: {error}");
    assert_eq!(letter.headers.get("streamjob.reason").map(String::as_str), Some("too-large"));
    let sent: Vec<&str> = sink.records.iter().filter_map(|r| r.key.as_deref()).collect();
    assert!(["k0", "k2", "k3"].iter().all(|key| sent.contains(key)), "{sent:?}");
    assert_eq!(sent.len(), 3, "each once: {sent:?}");
    assert!(wait_for(|| counter(port, "streamjob_worker_records_dead_lettered_total", "") >= 1));
    assert_eq!(counter(port, "streamjob_worker_rewinds_total", ""), 0, "nothing was rewound");
}

/// A dead-letter topic that cannot exist (its name collides with an existing topic's, `.`
/// for `_`) takes nothing: the rejected record is counted as skipped, and the partition moves on.
#[test]
fn a_dead_letter_topic_that_cannot_exist_is_counted_and_the_partition_moves_on() {
    let (input, output) = (unique("nodead-in"), unique("nodead-out"));
    let existing = unique("nodead_letters");
    let broker = broker(&[(&input, 1), (&output, 1), (&existing, 1)]);
    let manifest = padding_manifest(&input, &output, &existing.replace('_', "."), 10);
    let invalid = NewRecord { key: Some("bad".into()), value: b"{not json".to_vec(), timestamp_ms: None };
    let records = [json_record(0, 10), invalid, json_record(2, 10)];
    produce_all(&broker.bootstrap, &input, &records).expect("records written");
    let port = free_port().expect("a free port");
    let _worker = worker_with(&manifest, &broker.bootstrap, &unique("nodead"), ("nodead-0", port), &LONG_SESSION);

    assert!(
        wait_for(|| counter(port, "streamjob_worker_records_skipped_total", "") >= 1),
        "the record the dead-letter topic cannot take is never counted"
    );
    let mut sink = TopicReader::new(&broker.bootstrap, &output, false).expect("sink reader");
    assert!(sink.read_until(LIMIT, |records| records.len() >= 2), "the partition did not move on");
    assert!(counter(port, "streamjob_worker_records_undeliverable_total", "") >= 1);
}
