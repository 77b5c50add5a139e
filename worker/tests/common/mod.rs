//! Shared helpers for the worker's tests against librdkafka's mock cluster.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use streamjob_worker::topic_io::{self, NewRecord, ReadRecord, WordCounts};
use streamjob_worker::{Control, Overrides, Timings, WorkerConfig, WorkerError};

pub const WINDOW_MS: i64 = 10_000;

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

pub fn config(manifest: &str, bootstrap: &str, group: &str, instance: &str) -> WorkerConfig {
    let overrides = Overrides {
        bootstrap_servers: Some(bootstrap.to_owned()),
        consumer_group: Some(group.to_owned()),
        instance_id: Some(instance.to_owned()),
    };
    let mut config = match WorkerConfig::load(&example(manifest), &overrides, |_| None) {
        Ok(config) => config,
        Err(error) => panic!("{manifest}: {error}"),
    };
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
    topic_io::expected_word_counts(lines, WINDOW_MS)
}

/// The last count the sink holds for each (window, word); every sink record must be JSON.
pub fn final_word_counts(records: &[ReadRecord]) -> WordCounts {
    topic_io::final_word_counts(records).unwrap_or_else(|error| panic!("{error}"))
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
