//! Shared helpers for the worker's tests: the real Kafka broker they run against, unique
//! names on it, workers in threads, and deterministic input with its expected output.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use streamjob_testkit::kafka::{self, NewRecord, WordCounts};
use streamjob_worker::topic_io::{self, ReadRecord, TopicReader};
use streamjob_worker::{Control, Overrides, Timings, WorkerConfig, WorkerError};

pub const WINDOW_MS: i64 = 10_000;

/// How long a test waits for a worker's output.
pub const LIMIT: Duration = Duration::from_secs(90);

pub fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("examples").join(name)
}

pub fn fast_timings() -> Timings {
    Timings {
        commit_interval: Duration::from_millis(200),
        flush_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_secs(4),
        shutdown_timeout: Duration::from_secs(10),
        session_timeout: Duration::from_secs(3),
    }
}

pub use streamjob_testkit::unique;

/// The real Kafka broker (see [`streamjob_testkit::real_broker`]), with the worker's logs on.
pub fn real_broker() -> Option<String> {
    let bootstrap = streamjob_testkit::real_broker()?;
    init_logs();
    Some(bootstrap)
}

/// One test's names on the broker: its job's topics, consumer group and member ids.
pub struct JobNames {
    pub source: String,
    pub sink: String,
    pub dead_letter: String,
    pub group: String,
}

impl JobNames {
    pub fn new(test: &str) -> Self {
        let id = unique(test);
        Self {
            source: format!("{id}-in"),
            sink: format!("{id}-out"),
            dead_letter: format!("{id}-dlq"),
            group: format!("{id}-group"),
        }
    }

    /// The repartition topic a windowed job's workers create.
    pub fn repartition(&self) -> String {
        format!("{}-repartition", self.group)
    }

    /// The worker's instance id (its transactional id under exactly-once) for `member`.
    pub fn instance(&self, member: &str) -> String {
        format!("{}-{member}", self.group)
    }
}

/// Creates `topics` with the admin API, waiting until the broker shows them.
pub fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    if let Err(error) = topic_io::create_topics(bootstrap, topics) {
        panic!("creating {topics:?} on {bootstrap}: {error}");
    }
}

/// `manifest`'s job on `bootstrap`, reading and writing the topics of `names`, as `member`.
pub fn config(manifest: &str, bootstrap: &str, names: &JobNames, member: &str) -> WorkerConfig {
    let overrides = Overrides {
        bootstrap_servers: Some(bootstrap.to_owned()),
        consumer_group: Some(names.group.clone()),
        instance_id: Some(names.instance(member)),
    };
    let mut config = match WorkerConfig::load(&example(manifest), &overrides, |_| None) {
        Ok(config) => config,
        Err(error) => panic!("{manifest}: {error}"),
    };
    config.job.spec.source.topics = vec![names.source.clone()];
    config.job.spec.sink.topic = names.sink.clone();
    if config.job.spec.sink.dead_letter_topic.is_some() {
        config.job.spec.sink.dead_letter_topic = Some(names.dead_letter.clone());
    }
    config.timings = fast_timings();
    config
}

pub struct TestWorker {
    pub control: Control,
    handle: Option<JoinHandle<Result<(), WorkerError>>>,
}

impl TestWorker {
    pub fn start(config: WorkerConfig) -> Self {
        let control = Control::default();
        let worker_control = control.clone();
        let handle = std::thread::spawn(move || streamjob_worker::run(config, worker_control));
        Self { control, handle: Some(handle) }
    }

    pub fn records_in(&self) -> u64 {
        self.control.totals.records_in.load(Ordering::Relaxed)
    }

    pub fn assigned_partitions(&self) -> i64 {
        self.control.metrics.assigned_partitions.get()
    }

    /// Drains, commits and leaves the group.
    pub fn stop(mut self) {
        self.control.shutdown.store(true, Ordering::SeqCst);
        self.join();
    }

    /// Stops at once without committing, as a crash would.
    pub fn crash(mut self) {
        self.control.abandon.store(true, Ordering::SeqCst);
        self.join();
    }

    fn join(&mut self) {
        if let Some(handle) = self.handle.take() {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => panic!("worker failed: {error}"),
                Err(_) => panic!("worker panicked"),
            }
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.control.shutdown.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Deterministic text: `count` lines of words from a small vocabulary, one line every
/// `spacing_ms` from `start_ms`.
pub fn text_lines(count: usize, start_ms: i64, spacing_ms: i64) -> Vec<NewRecord> {
    const WORDS: [&str; 12] =
        ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "The", "stream", "window", "Kafka"];
    let mut state: u64 = 42;
    (0..count)
        .map(|i| {
            let words: Vec<&str> = (0..(3 + i % 5))
                .map(|_| {
                    state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    WORDS[(state >> 33) as usize % WORDS.len()]
                })
                .collect();
            NewRecord {
                key: Some(format!("line-{i}")),
                value: words.join(" ").into_bytes(),
                timestamp_ms: Some(start_ms + i as i64 * spacing_ms),
            }
        })
        .collect()
}

/// An independent word count of `lines` in the jobs' 10 s windows.
pub fn expected_word_counts(lines: &[NewRecord]) -> WordCounts {
    kafka::expected_word_counts(lines, WINDOW_MS)
}

/// The last count the sink holds for each (window, word); every sink record must be JSON.
pub fn final_word_counts(records: &[ReadRecord]) -> WordCounts {
    kafka::final_word_counts(records).unwrap_or_else(|error| panic!("{error}"))
}

/// Every (window, word) emitted more than once.
pub fn duplicates(records: &[ReadRecord]) -> Vec<String> {
    let mut seen = std::collections::HashMap::new();
    for record in records {
        *seen.entry(record.value.clone()).or_insert(0) += 1;
    }
    seen.into_iter().filter(|(_, n)| *n > 1).map(|(v, n)| format!("{n}× {v}")).collect()
}

/// Sets the lines' timestamps from `start_ms`, `spacing_ms` apart. Inputs produced in batches
/// are stamped when produced: between batches every partition goes idle, and an idle
/// partition's watermark follows the wall clock, so a batch stamped in the past would be late.
pub fn stamped(lines: &[NewRecord], start_ms: i64, spacing_ms: i64) -> Vec<NewRecord> {
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| NewRecord { timestamp_ms: Some(start_ms + i as i64 * spacing_ms), ..line.clone() })
        .collect()
}

pub fn now_ms() -> i64 {
    streamjob_worker::runner::now_ms()
}

/// Worker logs on the test's output (shown for failing tests); `RUST_LOG` sets the level.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .with_test_writer()
        .try_init();
}

/// Polls `condition` every 50 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Reads `topic` until its final word counts equal `expected`; fails showing what differs.
pub fn read_until_counts_are(
    bootstrap: &str,
    topic: &str,
    read_committed: bool,
    expected: &WordCounts,
    when: &str,
) -> TopicReader {
    let mut sink = TopicReader::new(bootstrap, topic, read_committed).expect("reader");
    let complete = sink.read_until(LIMIT, |records| final_word_counts(records) == *expected);
    assert!(
        complete,
        "missing or wrong {when}: {:?}",
        kafka::word_count_differences(expected, &final_word_counts(&sink.records))
    );
    sink
}
