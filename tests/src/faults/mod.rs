//! The fault suite's library: the checker, a row's topics and workers, the worker processes a
//! row runs (restarted as a StatefulSet would, unless the row stops them for good), a 3-node
//! cluster for broker faults, and the table every fault file prints. `tests/tests/fault_suite.rs`
//! runs the faults a worker was built for (a kill with an at-once restart, SIGTERM, scaling, a
//! broker bounce, poison records); the `faults_*.rs` files run the faults production brings.
//!
//! Counting is in the style of Jepsen's queue checker: per row, what the sink lost, duplicated
//! and holds unexpectedly, and what went to the dead-letter topic.

mod case;
mod checker;
mod cluster;
mod suite;
mod worker;

use std::time::{Duration, Instant};

pub use case::{keys_in_topic, manifest_text, record, write_paced, Case, Feed};
pub use checker::{key_number, word_count_result, Checker, Expected};
pub use cluster::Cluster;
pub use suite::{run_all, Task};
pub use worker::Worker;

/// The word-count examples' window size.
pub const WINDOW_MS: i64 = 10_000;
pub const PARTITIONS: i32 = 4;
pub const IDLE_TIMEOUT: &str = "4s";
/// How long the sink is read for, at most, once a row's input is all written.
/// The longest wait is the 45 s session's: its rebalance ends some 35 s after the input does.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(100);
/// Once the sink holds everything expected, it is read this much longer for late duplicates.
pub const SETTLE: Duration = Duration::from_secs(4);
/// Every `POISON_EVERY`th record of a poison row is one the job must dead-letter.
pub const POISON_EVERY: usize = 25;
pub const VOCABULARY: usize = 150;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    AtLeastOnce,
    ExactlyOnce,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    Passthrough,
    WordCount,
}

pub const DELIVERIES: [Delivery; 2] = [Delivery::AtLeastOnce, Delivery::ExactlyOnce];

/// One row of the table: what the checker counted for one scenario, job and delivery.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    pub input: usize,
    pub sink: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub unexpected: usize,
    pub dead_lettered: usize,
    pub poison: usize,
}

pub struct Row {
    pub scenario: String,
    pub job: Job,
    pub delivery: Delivery,
    pub outcome: Result<Tally, String>,
    pub notes: Vec<String>,
    pub elapsed: Duration,
}

impl Row {
    pub fn passed(&self) -> bool {
        self.outcome.as_ref().is_ok_and(|t| {
            t.lost == 0 && t.unexpected == 0 && (self.delivery == Delivery::AtLeastOnce || t.duplicated == 0)
        })
    }
}

/// A row that could not run: it fails.
pub fn failed_row(scenario: &str, error: String) -> Row {
    let (job, delivery) = (Job::Passthrough, Delivery::ExactlyOnce);
    Row {
        scenario: scenario.to_owned(),
        job,
        delivery,
        outcome: Err(error),
        notes: Vec::new(),
        elapsed: Duration::ZERO,
    }
}

/// The table a fault file prints: a row per scenario, job and delivery, and what each column
/// counts.
pub fn table(rows: &[Row]) -> String {
    let mut text = format!(
        "{:<26} {:<11} {:<13} {:>6} {:>6} {:>5} {:>10} {:>10} {:>13} {:>5}\n",
        "scenario", "job", "delivery", "input", "sink", "lost", "duplicated", "unexpected", "dead-lettered", "secs"
    );
    for row in rows {
        let (job, delivery) = (format!("{:?}", row.job), format!("{:?}", row.delivery));
        let line = match &row.outcome {
            Ok(t) => format!(
                "{:<26} {job:<11} {delivery:<13} {:>6} {:>6} {:>5} {:>10} {:>10} {:>13} {:>5}",
                row.scenario,
                t.input,
                t.sink,
                t.lost,
                t.duplicated,
                t.unexpected,
                format!("{}/{}", t.dead_lettered, t.poison),
                row.elapsed.as_secs()
            ),
            Err(error) => format!("{:<26} {job:<11} {delivery:<13} error: {error}", row.scenario),
        };
        let verdict = if row.passed() { "" } else { "  FAIL" };
        text.push_str(&format!("{line}{verdict}\n"));
        for note in &row.notes {
            text.push_str(&format!("    {note}\n"));
        }
    }
    text.push_str(
        "input: records (passthrough) or (window, word, count) results (word count) the input topic \
         holds, poison included; sink: records read (read_committed for exactly-once); \
         dead-lettered: poison records found in the dead-letter topic / poison written\n",
    );
    text
}

/// Prints a fault file's table under `title` and fails when a row lost a record, holds an
/// unexpected one or, with exactly-once delivery, a duplicate.
pub fn report(title: &str, rows: &[Row], started: Instant) {
    eprintln!("\n{title} ({} rows, {:.0?}):\n{}", rows.len(), started.elapsed(), table(rows));
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.passed())
        .map(|r| format!("{} / {:?} / {:?}", r.scenario, r.job, r.delivery))
        .collect();
    assert!(failed.is_empty(), "rows that lost, duplicated (exactly once) or hold unexpected records: {failed:?}");
}

/// How many records a row of `job` writes.
pub fn records_for(job: Job) -> usize {
    match job {
        Job::Passthrough => 2400,
        Job::WordCount => 1200,
    }
}

pub fn sleep_until(at: Instant) {
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
}

/// Waits (a bounded while) until `worker` has read something, so a fault hits a busy worker.
pub fn wait_busy(worker: &Worker) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker.records_in() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}
