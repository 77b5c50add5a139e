//! The fault suite: `streamjob-worker` processes against real Kafka, each scenario over an input
//! of known content, and a checker in the style of Jepsen's queue checker that counts, per
//! scenario, what the sink lost, duplicated and holds unexpectedly, and what went to the
//! dead-letter topic. One test prints one table and fails when a row lost a record, holds an
//! unexpected one, or, with exactly-once delivery, a duplicate (read with `read_committed`).
//!
//! Scenarios: `kill -9` of one of two workers (restarted at once, as a StatefulSet would) with
//! session timeouts of 6, 10 and 45 s; SIGTERM under load; scaling 1 → 3 → 1 under load; a
//! `kill -9` and restart of one node of a 3-node cluster (started here with
//! `scripts/kafka-broker.sh`); poison records, which must reach the dead-letter topic. Injected
//! request errors and a whole-broker outage are in `worker/tests/broker_faults.rs` (librdkafka's
//! mock cluster, the only one that fails requests on cue).
//!
//! The jobs: a passthrough (JSON records with a unique `seq`, keyed by it) checked record by
//! record; the word count, checked result by result: each (window, word, count) the input makes
//! is one element, so a wrong count is one lost and one unexpected element.
//!
//! One file for one table: the scenarios, the checker and the 3-node cluster's control share
//! the row types and are read together.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer};
use streamjob_e2e::{
    free_port, http_get, in_ci, real_broker, repo_root, require_real_part, scratch_dir, unique, workspace_binary,
    ChildGuard,
};
use streamjob_runtime::sync::lock;
use streamjob_testkit::kafka::{expected_word_counts, NewRecord, WordCounts};
use streamjob_worker::runner::now_ms;
use streamjob_worker::topic_io::{create_topics, producer, send_waiting, ReadRecord, TopicReader};

/// The word-count examples' window size.
const WINDOW_MS: i64 = 10_000;
const PARTITIONS: i32 = 4;
const IDLE_TIMEOUT: &str = "4s";
/// How long the sink is read for, at most, once a row's input is all written.
/// The longest wait is the 45 s session's: its rebalance ends some 35 s after the input does.
const DRAIN_LIMIT: Duration = Duration::from_secs(100);
/// Once the sink holds everything expected, it is read this much longer for late duplicates.
const SETTLE: Duration = Duration::from_secs(4);
/// Rows whose workers run at once: the machine has two cores.
const CONCURRENT_ROWS: usize = 8;
/// Every `POISON_EVERY`th record of a poison row is one the job must dead-letter.
const POISON_EVERY: usize = 25;
const VOCABULARY: usize = 150;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    AtLeastOnce,
    ExactlyOnce,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Job {
    Passthrough,
    WordCount,
}

const DELIVERIES: [Delivery; 2] = [Delivery::AtLeastOnce, Delivery::ExactlyOnce];

/// One row of the table: what the checker counted for one scenario, job and delivery.
#[derive(Debug, Default, Clone, PartialEq)]
struct Tally {
    input: usize,
    sink: usize,
    lost: usize,
    duplicated: usize,
    unexpected: usize,
    dead_lettered: usize,
    poison: usize,
}

struct Row {
    scenario: String,
    job: Job,
    delivery: Delivery,
    outcome: Result<Tally, String>,
    notes: Vec<String>,
    elapsed: Duration,
}

impl Row {
    fn passed(&self) -> bool {
        self.outcome.as_ref().is_ok_and(|t| {
            t.lost == 0 && t.unexpected == 0 && (self.delivery == Delivery::AtLeastOnce || t.duplicated == 0)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The checker.

/// What the sink and the dead-letter topic should hold, from what the input topic holds.
enum Expected {
    /// The passthrough: each `seq` once in the sink.
    Records(BTreeSet<u64>),
    /// The word count: each (window, word) once, with its count.
    Counts(WordCounts),
}

struct Checker {
    expected: Expected,
    /// Keys of the records that must be dead-lettered.
    poison: BTreeSet<String>,
}

impl Checker {
    fn new(job: Job, input: &[NewRecord]) -> Self {
        let (poison, valid): (Vec<&NewRecord>, Vec<&NewRecord>) =
            input.iter().partition(|r| r.key.as_deref().is_some_and(|k| k.starts_with("poison-")));
        let poison = poison.iter().filter_map(|r| r.key.clone()).collect();
        let expected = match job {
            Job::Passthrough => Expected::Records(valid.iter().filter_map(|r| key_number(r.key.as_deref())).collect()),
            Job::WordCount => {
                let lines: Vec<NewRecord> = valid.into_iter().cloned().collect();
                Expected::Counts(expected_word_counts(&lines, WINDOW_MS))
            }
        };
        Self { expected, poison }
    }

    fn tally(&self, sink: &[ReadRecord], dead_letters: &[ReadRecord]) -> Tally {
        let mut tally = match &self.expected {
            Expected::Records(seqs) => tally_records(seqs, sink),
            Expected::Counts(counts) => tally_counts(counts, sink),
        };
        tally.sink = sink.len();
        self.tally_dead_letters(dead_letters, &mut tally);
        tally
    }

    /// A poison record missing from the dead-letter topic is lost; a record there that is not
    /// poison is unexpected.
    fn tally_dead_letters(&self, dead_letters: &[ReadRecord], tally: &mut Tally) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for letter in dead_letters {
            match letter.key.as_deref().filter(|key| self.poison.contains(*key)) {
                Some(key) => *seen.entry(key).or_default() += 1,
                None => tally.unexpected += 1,
            }
        }
        tally.poison = self.poison.len();
        tally.input += self.poison.len();
        tally.dead_lettered = seen.len();
        tally.lost += self.poison.len() - seen.len();
        tally.duplicated += seen.values().map(|copies| copies - 1).sum::<usize>();
    }

    /// A few of the wrong outcomes, for a failed row.
    fn explain(&self, sink: &[ReadRecord], dead_letters: &[ReadRecord]) -> Vec<String> {
        let mut details = match &self.expected {
            Expected::Records(seqs) => explain_records(seqs, sink),
            Expected::Counts(counts) => explain_counts(counts, sink),
        };
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        for letter in dead_letters.iter().filter(|l| !l.key.as_ref().is_some_and(|k| self.poison.contains(k))) {
            let error = letter.headers.get("streamjob.error").cloned().unwrap_or_default();
            *errors.entry(error.chars().take(120).collect()).or_default() += 1;
        }
        details.extend(errors.into_iter().take(3).map(|(error, n)| format!("{n} dead-lettered: {error}")));
        details
    }
}

fn explain_records(expected: &BTreeSet<u64>, sink: &[ReadRecord]) -> Vec<String> {
    let seen: HashSet<u64> =
        sink.iter().filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.value).ok()?["seq"].as_u64()).collect();
    let lost: Vec<&u64> = expected.iter().filter(|seq| !seen.contains(seq)).take(10).collect();
    if lost.is_empty() {
        return Vec::new();
    }
    vec![format!("lost seq (first 10): {lost:?}")]
}

fn explain_counts(expected: &WordCounts, sink: &[ReadRecord]) -> Vec<String> {
    let mut emitted: HashMap<(i64, String), Vec<i64>> = HashMap::new();
    for (key, count) in sink.iter().filter_map(word_count_result) {
        emitted.entry(key).or_default().push(count);
    }
    let wrong = expected.iter().filter(|(key, want)| emitted.get(*key).is_none_or(|counts| counts != &vec![**want]));
    wrong
        .take(5)
        .map(|((window, word), want)| {
            let got = emitted.get(&(*window, word.clone()));
            format!("window {window} {word}: want {want}, emitted {got:?}")
        })
        .collect()
}

/// `rec-17` → 17.
fn key_number(key: Option<&str>) -> Option<u64> {
    key?.rsplit_once('-')?.1.parse().ok()
}

fn tally_records(expected: &BTreeSet<u64>, sink: &[ReadRecord]) -> Tally {
    let mut copies: BTreeMap<u64, usize> = BTreeMap::new();
    let mut unexpected = 0;
    for record in sink {
        let seq = serde_json::from_str::<serde_json::Value>(&record.value).ok().and_then(|v| v["seq"].as_u64());
        match seq.filter(|seq| expected.contains(seq)) {
            Some(seq) => *copies.entry(seq).or_default() += 1,
            None => unexpected += 1,
        }
    }
    Tally {
        input: expected.len(),
        lost: expected.len() - copies.len(),
        duplicated: copies.values().map(|c| c - 1).sum(),
        unexpected,
        ..Tally::default()
    }
}

fn tally_counts(expected: &WordCounts, sink: &[ReadRecord]) -> Tally {
    let mut emitted: HashMap<(i64, String), Vec<i64>> = HashMap::new();
    let mut unexpected = 0;
    for record in sink {
        match word_count_result(record) {
            Some((key, count)) => emitted.entry(key).or_default().push(count),
            None => unexpected += 1,
        }
    }
    let (mut lost, mut duplicated) = (0, 0);
    for (key, want) in expected {
        let counts = emitted.remove(key).unwrap_or_default();
        let right = counts.iter().filter(|count| *count == want).count();
        unexpected += counts.len() - right;
        match right {
            0 => lost += 1,
            n => duplicated += n - 1,
        }
    }
    unexpected += emitted.values().map(Vec::len).sum::<usize>();
    Tally { input: expected.len(), lost, duplicated, unexpected, ..Tally::default() }
}

/// ((window start, word), count) of a word-count sink record.
fn word_count_result(record: &ReadRecord) -> Option<((i64, String), i64)> {
    let value: serde_json::Value = serde_json::from_str(&record.value).ok()?;
    let start = chrono::DateTime::parse_from_rfc3339(value["windowStart"].as_str()?).ok()?.timestamp_millis();
    Some(((start, value["key"].as_str()?.to_owned()), value["count"].as_i64()?))
}

// ---------------------------------------------------------------------------------------------
// A row's topics, manifest, workers and load.

struct Case {
    scenario: String,
    job: Job,
    delivery: Delivery,
    bootstrap: String,
    input: String,
    sink: String,
    dead_letters: String,
    group: String,
    manifest: PathBuf,
    session_timeout: String,
    logs: PathBuf,
    poison: bool,
}

impl Case {
    fn new(scenario: &str, job: Job, delivery: Delivery, bootstrap: &str) -> anyhow::Result<Self> {
        let name = unique(match job {
            Job::Passthrough => "fs-pt",
            Job::WordCount => "fs-wc",
        });
        let (input, sink, dead_letters) = (format!("{name}-in"), format!("{name}-out"), format!("{name}-dead"));
        create_topics(bootstrap, &[(&input, PARTITIONS), (&sink, PARTITIONS), (&dead_letters, 1)])?;
        let logs = scratch_dir(&name)?;
        let manifest = logs.join("job.yaml");
        std::fs::write(&manifest, manifest_text(job, delivery, &name, [&input, &sink, &dead_letters])?)?;
        Ok(Self {
            scenario: scenario.to_owned(),
            job,
            delivery,
            bootstrap: bootstrap.to_owned(),
            input,
            sink,
            dead_letters,
            group: name,
            manifest,
            session_timeout: "10s".to_owned(),
            logs,
            poison: false,
        })
    }

    fn with_session_timeout(mut self, timeout: &str) -> Self {
        timeout.clone_into(&mut self.session_timeout);
        self
    }

    fn with_poison(mut self) -> Self {
        self.poison = true;
        self
    }

    /// Worker `ordinal` of this row, its log appended to `worker-<ordinal>.log`.
    fn worker(&self, ordinal: usize) -> anyhow::Result<Worker> {
        let port = free_port()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("worker-{ordinal}.log")))?;
        let mut command = Command::new(workspace_binary("streamjob-worker"));
        command
            .args(["--config", &self.manifest.display().to_string(), "--bootstrap", &self.bootstrap])
            .args(["--group", &self.group, "--instance-id", &format!("{}-{ordinal}", self.group)])
            .args(["--http-address", &format!("127.0.0.1:{port}"), "--log-format", "text"])
            .args(["--commit-interval", "500ms", "--idle-timeout", IDLE_TIMEOUT])
            .args(["--session-timeout", &self.session_timeout])
            .stdout(Stdio::null());
        let start = move || -> anyhow::Result<Child> {
            let child = command
                .stderr(log.try_clone()?)
                .spawn()
                .context("streamjob-worker starts (cargo build --workspace --bins first)")?;
            Ok(child)
        };
        Worker::supervise(start, port, ordinal)
    }

    fn workers(&self, count: usize) -> anyhow::Result<Vec<Worker>> {
        let workers = (0..count).map(|ordinal| self.worker(ordinal)).collect::<anyhow::Result<Vec<_>>>()?;
        for worker in &workers {
            worker.wait_ready()?;
        }
        Ok(workers)
    }

    /// Writes `total` records over `over` in the background.
    fn feed(&self, total: usize, over: Duration) -> Feed {
        let (bootstrap, topic, job, poison) = (self.bootstrap.clone(), self.input.clone(), self.job, self.poison);
        Feed(std::thread::spawn(move || write_paced(&bootstrap, &topic, total, over, |i| record(job, i, poison))))
    }

    /// Reads the sink and the dead-letter topic until they hold all that the input topic's
    /// records should make (or [`DRAIN_LIMIT`] passes), then a little longer, and counts.
    fn check(&self, written: Vec<NewRecord>) -> anyhow::Result<(Tally, Vec<String>)> {
        let stored = keys_in_topic(&self.bootstrap, &self.input)?;
        let input: Vec<NewRecord> =
            written.into_iter().filter(|r| r.key.as_ref().is_some_and(|k| stored.contains(k))).collect();
        let checker = Checker::new(self.job, &input);
        let committed = self.delivery == Delivery::ExactlyOnce;
        let mut sink = TopicReader::new(&self.bootstrap, &self.sink, committed)?;
        let mut dead_letters = TopicReader::new(&self.bootstrap, &self.dead_letters, committed)?;
        let deadline = Instant::now() + DRAIN_LIMIT;
        while checker.tally(&sink.records, &dead_letters.records).lost > 0 && Instant::now() < deadline {
            sink.poll_for(Duration::from_millis(300));
            dead_letters.poll_for(Duration::from_millis(100));
        }
        sink.poll_for(SETTLE);
        dead_letters.poll_for(Duration::from_millis(500));
        let details = checker.explain(&sink.records, &dead_letters.records);
        Ok((checker.tally(&sink.records, &dead_letters.records), details))
    }

    fn row(&self, outcome: anyhow::Result<(Tally, Vec<String>)>, workers: &mut [Worker], started: Instant) -> Row {
        let mut notes: Vec<String> = workers.iter_mut().filter_map(Worker::exited_on_its_own).collect();
        let (outcome, details) = match outcome {
            Ok((tally, details)) => (Ok(tally), details),
            Err(error) => (Err(format!("{error:#}")), Vec::new()),
        };
        let mut row = Row {
            scenario: self.scenario.clone(),
            job: self.job,
            delivery: self.delivery,
            outcome,
            notes: Vec::new(),
            elapsed: started.elapsed(),
        };
        if !row.passed() || !notes.is_empty() {
            notes.extend(details);
            notes.push(format!("worker logs in {}", self.logs.display()));
        }
        row.notes = notes;
        row
    }
}

/// The shipped example for `job` and `delivery`, renamed onto this row's topics; the
/// passthrough is keyed by `seq`, which a record without one fails.
fn manifest_text(job: Job, delivery: Delivery, name: &str, [input, sink, dead]: [&str; 3]) -> anyhow::Result<String> {
    let example = match (job, delivery) {
        (Job::WordCount, Delivery::AtLeastOnce) => "wordcount.yaml",
        (Job::WordCount, Delivery::ExactlyOnce) => "wordcount-exactly-once.yaml",
        (Job::Passthrough, _) => "passthrough-exactly-once.yaml",
    };
    let text = std::fs::read_to_string(repo_root().join("examples").join(example))?;
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text)?;
    doc["metadata"]["name"] = name.into();
    let spec = &mut doc["spec"];
    spec["source"]["topics"] = vec![input].into();
    if let Some(source) = spec["source"].as_mapping_mut() {
        source.remove("auth");
    }
    spec["delivery"] = match delivery {
        Delivery::AtLeastOnce => "atLeastOnce",
        Delivery::ExactlyOnce => "exactlyOnce",
    }
    .into();
    spec["sink"]["topic"] = sink.into();
    spec["sink"]["deadLetterTopic"] = dead.into();
    if job == Job::Passthrough {
        spec["pipeline"] = serde_yaml::from_str("[{keyBy: {field: seq}}]")?;
    }
    Ok(serde_yaml::to_string(&doc)?)
}

/// Input record `i` of `job`; in a poison row every [`POISON_EVERY`]th is one the job rejects:
/// not JSON, JSON without `seq` or with a null one, not UTF-8.
fn record(job: Job, i: usize, poison: bool) -> NewRecord {
    let now = Some(now_ms());
    if poison && i % POISON_EVERY == POISON_EVERY / 2 {
        let value: &[u8] = match (job, i / POISON_EVERY % 4) {
            (Job::WordCount, _) | (_, 0) => b"\xff\xfe{\"seq\"",
            (_, 1) => b"{\"seq\": 1",
            (_, 2) => b"{\"no_seq\": true}",
            _ => b"{\"seq\": null}",
        };
        return NewRecord { key: Some(format!("poison-{i}")), value: value.to_vec(), timestamp_ms: now };
    }
    match job {
        Job::Passthrough => NewRecord {
            key: Some(format!("rec-{i}")),
            value: format!(r#"{{"seq": {i}, "pad": "{}"}}"#, "x".repeat(i % 64)).into_bytes(),
            timestamp_ms: now,
        },
        Job::WordCount => NewRecord {
            key: Some(format!("line-{i}")),
            value: (0..(2 + i % 4))
                .map(|j| format!("w{:03}", (i * 7 + j * 13) % VOCABULARY))
                .collect::<Vec<_>>()
                .join(" ")
                .into_bytes(),
            timestamp_ms: now,
        },
    }
}

struct Feed(std::thread::JoinHandle<anyhow::Result<Vec<NewRecord>>>);

impl Feed {
    fn join(self) -> anyhow::Result<Vec<NewRecord>> {
        self.0.join().map_err(|_| anyhow::anyhow!("the feed panicked"))?
    }
}

/// Writes `total` records made by `make` in steps of 100 ms over `over`, and waits until the
/// broker has acknowledged them (through broker restarts: the producer is idempotent).
fn write_paced(
    bootstrap: &str,
    topic: &str,
    total: usize,
    over: Duration,
    make: impl Fn(usize) -> NewRecord,
) -> anyhow::Result<Vec<NewRecord>> {
    let producer = producer(bootstrap)?;
    let steps = (over.as_millis() / 100).max(1) as usize;
    let start = Instant::now();
    let mut written = Vec::with_capacity(total);
    for step in 0..steps {
        std::thread::sleep(
            (start + Duration::from_millis(100 * step as u64)).saturating_duration_since(Instant::now()),
        );
        for i in written.len()..total * (step + 1) / steps {
            let record = make(i);
            let mut base = BaseRecord::<[u8], [u8]>::to(topic).payload(record.value.as_slice());
            if let (Some(key), Some(timestamp)) = (&record.key, record.timestamp_ms) {
                base = base.key(key.as_bytes()).timestamp(timestamp);
            }
            send_waiting(&producer, base)?;
            written.push(record);
        }
        producer.poll(Duration::ZERO);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while producer.flush(Duration::from_secs(10)).is_err() {
        if Instant::now() > deadline {
            bail!("{} records to {topic} unacknowledged after 2 minutes", producer.in_flight_count());
        }
    }
    Ok(written)
}

/// The keys of every record `topic` holds (its partitions read up to their high watermarks).
fn keys_in_topic(bootstrap: &str, topic: &str) -> anyhow::Result<HashSet<String>> {
    let watermarks: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let mut total = 0;
    for partition in 0..PARTITIONS {
        let (low, high) = watermarks.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        total += (high - low) as usize;
    }
    let mut reader = TopicReader::new(bootstrap, topic, false)?;
    if !reader.read_until(Duration::from_secs(60), |records| records.len() >= total) {
        bail!("read {} of the {total} records of {topic}", reader.records.len());
    }
    Ok(reader.records.into_iter().filter_map(|r| r.key).collect())
}

// ---------------------------------------------------------------------------------------------
// Worker processes.

/// A worker process, started again whenever it exits by itself, as a StatefulSet restarts a
/// pod's container (a worker stuck inside librdkafka exits for that: `streamjob_worker::stall`).
struct Worker {
    supervised: Arc<Supervised>,
    supervisor: Option<std::thread::JoinHandle<()>>,
    port: u16,
    ordinal: usize,
}

struct Supervised {
    process: Mutex<ChildGuard>,
    /// Set once the test stops the worker: it is not restarted any more.
    stopping: AtomicBool,
    /// How each exit the test did not ask for ended.
    exits: Mutex<Vec<String>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.supervised.stopping.store(true, Ordering::SeqCst);
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.join();
        }
    }
}

impl Worker {
    fn supervise(
        mut start: impl FnMut() -> anyhow::Result<Child> + Send + 'static,
        port: u16,
        ordinal: usize,
    ) -> anyhow::Result<Self> {
        let supervised = Arc::new(Supervised {
            process: Mutex::new(ChildGuard(start()?)),
            stopping: AtomicBool::new(false),
            exits: Mutex::default(),
        });
        let watched = supervised.clone();
        let supervisor = std::thread::spawn(move || {
            while !watched.stopping.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(250));
                let mut process = lock(&watched.process);
                let Ok(Some(status)) = process.0.try_wait() else { continue };
                if watched.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let restarted = start();
                let mut exits = lock(&watched.exits);
                exits.push(status.to_string());
                match restarted {
                    Ok(child) => *process = ChildGuard(child),
                    Err(error) => return exits.push(format!("could not be started again: {error:#}")),
                }
            }
        });
        Ok(Self { supervised, supervisor: Some(supervisor), port, ordinal })
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !http_get(self.port, "/readyz").contains("200 OK") {
            if Instant::now() > deadline {
                bail!("worker {} never ready", self.ordinal);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    fn kill_9(self) {
        self.supervised.stopping.store(true, Ordering::SeqCst);
        let mut process = lock(&self.supervised.process);
        let _ = process.0.kill();
        let _ = process.0.wait();
    }

    /// SIGTERM, as Kubernetes stops a pod, and the wait for the worker to drain and exit.
    fn terminate(self) -> anyhow::Result<()> {
        self.supervised.stopping.store(true, Ordering::SeqCst);
        let mut process = lock(&self.supervised.process);
        if process.0.try_wait()?.is_none() {
            // SAFETY: signals our own child, which has not been waited for, so its pid is live.
            unsafe { libc::kill(process.0.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while process.0.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("worker {} did not stop within 60 s of SIGTERM", self.ordinal);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Says so when the worker exited without being told to (and was started again).
    fn exited_on_its_own(&mut self) -> Option<String> {
        let exits = lock(&self.supervised.exits);
        (!exits.is_empty())
            .then(|| format!("worker {} exited by itself, then started again: {}", self.ordinal, exits.join("; ")))
    }

    fn records_in(&self) -> u64 {
        http_get(self.port, "/metrics")
            .lines()
            .filter(|line| line.starts_with("streamjob_worker_records_in_total"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

fn sleep_until(at: Instant) {
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
}

/// Waits (a bounded while) until `worker` has read something, so a fault hits a busy worker.
fn wait_busy(worker: &Worker) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker.records_in() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

fn records_for(job: Job) -> usize {
    match job {
        Job::Passthrough => 2400,
        Job::WordCount => 1200,
    }
}

/// Two workers; `kill -9` of one under load, and at once a new process in its place.
fn kill_9(case: &Case) -> Row {
    replace_a_worker_under_load(case, |victim| {
        victim.kill_9();
        Ok(())
    })
}

/// Two workers; SIGTERM to one under load, it drains and leaves, and a new process replaces it.
fn sigterm(case: &Case) -> Row {
    replace_a_worker_under_load(case, Worker::terminate)
}

/// Two workers under load; `stop` ends the second one, and a new process takes its place.
fn replace_a_worker_under_load(case: &Case, stop: impl FnOnce(Worker) -> anyhow::Result<()>) -> Row {
    let started = Instant::now();
    let mut workers = Vec::new();
    let outcome = (|| {
        workers = case.workers(2)?;
        let feed = case.feed(records_for(case.job), Duration::from_secs(16));
        std::thread::sleep(Duration::from_secs(6));
        wait_busy(&workers[1]);
        workers.pop().map(stop).transpose()?;
        workers.push(case.worker(1)?);
        case.check(feed.join()?)
    })();
    case.row(outcome, &mut workers, started)
}

/// One worker, then three, then one (the two added stopped with SIGTERM), all under load.
fn scale(case: &Case) -> Row {
    let started = Instant::now();
    let mut workers = Vec::new();
    let outcome = (|| {
        workers = case.workers(1)?;
        let start = Instant::now();
        let feed = case.feed(records_for(case.job), Duration::from_secs(24));
        sleep_until(start + Duration::from_secs(5));
        workers.extend([case.worker(1)?, case.worker(2)?]);
        sleep_until(start + Duration::from_secs(14));
        let removed: Vec<Worker> = workers.drain(1..).collect();
        let stopping: Vec<_> = removed.into_iter().map(|w| std::thread::spawn(move || w.terminate())).collect();
        for stopped in stopping {
            stopped.join().map_err(|_| anyhow::anyhow!("stopping a worker panicked"))??;
        }
        case.check(feed.join()?)
    })();
    case.row(outcome, &mut workers, started)
}

/// One worker over input with poison records mixed in, and no other fault.
fn poison(case: &Case) -> Row {
    let started = Instant::now();
    let mut workers = Vec::new();
    let outcome = (|| {
        workers = case.workers(1)?;
        let feed = case.feed(records_for(case.job) / 2, Duration::from_secs(10));
        case.check(feed.join()?)
    })();
    case.row(outcome, &mut workers, started)
}

/// On a 3-node cluster of its own: one worker per row, and under load a `kill -9` of the node
/// that coordinates the exactly-once word count's group (it leads that group's partition of
/// `__consumer_offsets`), restarted 10 s later with its command line.
fn broker_restart() -> Vec<Row> {
    let started = Instant::now();
    let cluster = match Cluster::start() {
        Ok(cluster) => cluster,
        Err(error) if in_ci() => return vec![failed_row("broker restart", format!("{error:#}"))],
        Err(error) => {
            let _ = require_real_part::<()>(&format!("a 3-node Kafka cluster for the broker-restart rows: {error:#}"));
            return Vec::new();
        }
    };
    let mut cases = Vec::new();
    for job in [Job::Passthrough, Job::WordCount] {
        for delivery in DELIVERIES {
            match Case::new("broker kill -9 + restart", job, delivery, &cluster.bootstrap) {
                Ok(case) => cases.push(case),
                Err(error) => return vec![failed_row("broker restart", format!("{error:#}"))],
            }
        }
    }
    let mut workers: Vec<Vec<Worker>> = cases.iter().map(|_| Vec::new()).collect();
    let outcome = (|| {
        for (case, slot) in cases.iter().zip(&mut workers) {
            *slot = case.workers(1)?;
        }
        let start = Instant::now();
        let feeds: Vec<Feed> = cases.iter().map(|c| c.feed(records_for(c.job), Duration::from_secs(24))).collect();
        sleep_until(start + Duration::from_secs(7));
        let target = cases.iter().find(|c| c.job == Job::WordCount && c.delivery == Delivery::ExactlyOnce);
        let node = cluster.group_coordinator(&target.context("the exactly-once word count")?.group)?;
        let command = cluster.kill_9(node)?;
        eprintln!("fault suite: killed Kafka node {node} of 3 (a group coordinator); restarting it in 10 s");
        sleep_until(start + Duration::from_secs(17));
        cluster.restart(node, &command)?;
        feeds.into_iter().map(Feed::join).collect::<anyhow::Result<Vec<_>>>()
    })();
    match outcome {
        Ok(written) => std::thread::scope(|scope| {
            let checks: Vec<_> =
                cases.iter().zip(written).map(|(case, written)| scope.spawn(move || case.check(written))).collect();
            let checked =
                checks.into_iter().map(|check| check.join().unwrap_or_else(|_| Err(anyhow::anyhow!("panicked"))));
            cases.iter().zip(checked).zip(&mut workers).map(|((case, c), w)| case.row(c, w, started)).collect()
        }),
        Err(error) => {
            let text = format!("{error:#}");
            let failed = |(case, w): (&Case, &mut Vec<Worker>)| case.row(Err(anyhow::anyhow!("{text}")), w, started);
            cases.iter().zip(&mut workers).map(failed).collect()
        }
    }
}

fn failed_row(scenario: &str, error: String) -> Row {
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

/// A 3-node KRaft cluster started by `scripts/kafka-broker.sh`, stopped when dropped.
struct Cluster {
    dir: PathBuf,
    bootstrap: String,
    restarted: Mutex<Vec<Child>>,
}

impl Cluster {
    fn start() -> anyhow::Result<Self> {
        let dir = scratch_dir("fault-cluster")?;
        let output = Command::new(repo_root().join("scripts/kafka-broker.sh"))
            .arg("start")
            .arg(&dir)
            .arg("3")
            .stderr(Stdio::inherit())
            .output()
            .context("scripts/kafka-broker.sh runs")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().find_map(|line| line.strip_prefix("STREAMJOB_TEST_BOOTSTRAP="));
        let cluster = Self { dir, bootstrap: line.unwrap_or_default().to_owned(), restarted: Mutex::default() };
        if !output.status.success() || cluster.bootstrap.is_empty() {
            bail!("scripts/kafka-broker.sh start {} 3 failed: {}", cluster.dir.display(), output.status);
        }
        Ok(cluster)
    }

    fn node_dir(&self, node: i32) -> PathBuf {
        self.dir.join(format!("node-{node}"))
    }

    /// The node leading `group`'s partition of `__consumer_offsets` (50 partitions by default):
    /// Kafka picks it by the Java hash code of the group id.
    fn group_coordinator(&self, group: &str) -> anyhow::Result<i32> {
        let hash = group.encode_utf16().fold(0_i32, |h, unit| h.wrapping_mul(31).wrapping_add(i32::from(unit)));
        self.leader_of("__consumer_offsets", (hash & 0x7fff_ffff) % 50)
    }

    fn leader_of(&self, topic: &str, partition: i32) -> anyhow::Result<i32> {
        let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &self.bootstrap).create()?;
        let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let found = metadata.topics().first().and_then(|t| t.partitions().iter().find(|p| p.id() == partition));
        found.map(|p| p.leader()).filter(|leader| *leader > 0).context("no leader")
    }

    /// SIGKILL to `node`'s process; returns its command line, to start it again.
    fn kill_9(&self, node: i32) -> anyhow::Result<Vec<String>> {
        let pid: i32 = std::fs::read_to_string(self.node_dir(node).join("pid"))?.trim().parse()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
        let command: Vec<String> =
            cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into()).collect();
        // SAFETY: a plain signal to the node's process, read from its pid file just now.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while process_alive(pid) {
            if Instant::now() > deadline {
                bail!("Kafka node {node} (pid {pid}) still alive 30 s after SIGKILL");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(command)
    }

    /// Starts `node` again with `command`, as the script does, and waits until it has started.
    fn restart(&self, node: i32, command: &[String]) -> anyhow::Result<()> {
        let home = self.node_dir(node);
        let log_path = home.join("broker.log");
        let started_before = started_count(&log_path);
        let log = std::fs::OpenOptions::new().append(true).open(&log_path)?;
        let (program, args) = command.split_first().context("an empty command line")?;
        let child = Command::new(program)
            .args(args)
            .env("KAFKA_NODE_HOME", &home)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        std::fs::write(home.join("pid"), child.id().to_string())?;
        self.restarted.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        while started_count(&log_path) <= started_before {
            if Instant::now() > deadline {
                bail!("Kafka node {node} did not start again within 2 minutes (see {})", log_path.display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/kafka-broker.sh")).arg("stop").arg(&self.dir).status();
        for child in self.restarted.get_mut().map(std::mem::take).unwrap_or_default().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn started_count(log: &Path) -> usize {
    std::fs::read_to_string(log).map(|text| text.matches("Kafka Server started").count()).unwrap_or(0)
}

/// Whether `pid` runs (a zombie, which holds no port or lock, does not).
fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

// ---------------------------------------------------------------------------------------------
// The suite.

/// A scenario to run and how many rows' worth of workers it runs at once.
struct Task {
    weight: usize,
    run: Box<dyn FnOnce() -> Vec<Row> + Send>,
}

/// One row on the shared broker: its scenario, job, delivery, session timeout and whether its
/// input has poison records.
struct Spec {
    scenario: &'static str,
    job: Job,
    delivery: Delivery,
    session_timeout: &'static str,
    poison: bool,
    run: fn(&Case) -> Row,
}

impl Spec {
    fn task(self, bootstrap: &str) -> Task {
        let bootstrap = bootstrap.to_owned();
        let run = move || match Case::new(self.scenario, self.job, self.delivery, &bootstrap) {
            Ok(case) => {
                let case = case.with_session_timeout(self.session_timeout);
                vec![(self.run)(&if self.poison { case.with_poison() } else { case })]
            }
            Err(error) => {
                let (scenario, job, delivery) = (self.scenario.to_owned(), self.job, self.delivery);
                let outcome = Err(format!("{error:#}"));
                vec![Row { scenario, job, delivery, outcome, notes: Vec::new(), elapsed: Duration::ZERO }]
            }
        };
        Task { weight: 1, run: Box::new(run) }
    }
}

/// Every scenario, the longest first.
fn plan(bootstrap: &str) -> Vec<Task> {
    let spec = |scenario, job, delivery, session_timeout, run| Spec {
        scenario,
        job,
        delivery,
        session_timeout,
        poison: false,
        run,
    };
    let mut specs = Vec::new();
    for delivery in DELIVERIES {
        specs.push(spec("kill -9, session 45s", Job::WordCount, delivery, "45s", kill_9 as fn(&Case) -> Row));
        specs.push(spec("kill -9, session 45s", Job::Passthrough, delivery, "45s", kill_9));
    }
    for job in [Job::Passthrough, Job::WordCount] {
        for delivery in DELIVERIES {
            specs.push(spec("scale 1 → 3 → 1", job, delivery, "10s", scale));
            specs.push(spec("SIGTERM under load", job, delivery, "10s", sigterm));
        }
    }
    for delivery in DELIVERIES {
        specs.push(spec("kill -9, session 10s", Job::Passthrough, delivery, "10s", kill_9));
        specs.push(spec("kill -9, session 6s", Job::Passthrough, delivery, "6s", kill_9));
    }
    for job in [Job::Passthrough, Job::WordCount] {
        for delivery in DELIVERIES {
            specs.push(Spec { poison: true, ..spec("poison records", job, delivery, "10s", poison) });
        }
    }
    // STREAMJOB_FAULT_SUITE_ONLY=<text> runs only the scenarios whose name contains it.
    let only = std::env::var("STREAMJOB_FAULT_SUITE_ONLY").unwrap_or_default();
    let mut tasks = Vec::new();
    if "broker kill -9 + restart".contains(&only) {
        tasks.push(Task { weight: 4, run: Box::new(broker_restart) });
    }
    tasks.extend(specs.into_iter().filter(|spec| spec.scenario.contains(&only)).map(|spec| spec.task(bootstrap)));
    tasks
}

/// A counting semaphore over rows' worth of workers.
#[derive(Default)]
struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    fn run(&self, task: Task) -> Vec<Row> {
        let mut used = lock(&self.used);
        while *used + task.weight > CONCURRENT_ROWS {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += task.weight;
        drop(used);
        let rows = (task.run)();
        *lock(&self.used) -= task.weight;
        self.freed.notify_all();
        rows
    }
}

/// Runs the tasks, at most [`CONCURRENT_ROWS`] rows at once, in the order given.
fn run_all(tasks: Vec<Task>) -> Vec<Row> {
    let slots = Arc::new(Slots::default());
    let queue = Arc::new(Mutex::new(tasks.into_iter().collect::<std::collections::VecDeque<_>>()));
    let runners: Vec<_> = (0..CONCURRENT_ROWS)
        .map(|_| {
            let (slots, queue) = (slots.clone(), queue.clone());
            std::thread::spawn(move || {
                let mut rows = Vec::new();
                loop {
                    // Its own statement: the queue's lock is not held while the task runs.
                    let next = lock(&queue).pop_front();
                    let Some(task) = next else { break };
                    rows.extend(slots.run(task));
                }
                rows
            })
        })
        .collect();
    let mut rows: Vec<Row> = runners.into_iter().flat_map(|r| r.join().unwrap_or_default()).collect();
    rows.sort_by_key(|row| (row.scenario.clone(), format!("{:?}{:?}", row.job, row.delivery)));
    rows
}

fn table(rows: &[Row]) -> String {
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

/// Every scenario against the real broker of `STREAMJOB_TEST_BOOTSTRAP` (the broker-restart
/// rows on a 3-node cluster of their own), one table, and no lost, unexpected or (exactly
/// once) duplicated record.
#[test]
fn fault_suite() {
    let Some(bootstrap) = real_broker() else { return };
    let started = Instant::now();
    let rows = run_all(plan(&bootstrap));
    eprintln!("\nfault suite ({} rows, {:.0?}):\n{}", rows.len(), started.elapsed(), table(&rows));
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.passed())
        .map(|r| format!("{} / {:?} / {:?}", r.scenario, r.job, r.delivery))
        .collect();
    assert!(failed.is_empty(), "rows that lost, duplicated (exactly once) or hold unexpected records: {failed:?}");
}

fn read_record(key: &str, value: &str) -> ReadRecord {
    ReadRecord { partition: 0, offset: 0, key: Some(key.to_owned()), value: value.to_owned(), headers: HashMap::new() }
}

/// The checker itself: each kind of wrong outcome lands in its own column.
#[test]
fn the_checker_counts_lost_duplicated_unexpected_and_dead_lettered() {
    let input: Vec<NewRecord> = [0, 1, 2, 3].into_iter().map(|i| record(Job::Passthrough, i, false)).collect();
    let poison = NewRecord { key: Some("poison-9".into()), value: b"{".to_vec(), timestamp_ms: Some(0) };
    let checker = Checker::new(Job::Passthrough, &[input, vec![poison]].concat());
    let sink = [r#"{"seq": 0}"#, r#"{"seq": 1}"#, r#"{"seq": 1}"#, r#"{"seq": 7}"#, "{"];
    let sink: Vec<ReadRecord> = sink.iter().map(|value| read_record("k", value)).collect();
    let dead = [read_record("poison-9", "{"), read_record("rec-3", r#"{"seq": 3}"#)];
    let want = Tally { input: 5, sink: 5, lost: 2, duplicated: 1, unexpected: 3, dead_lettered: 1, poison: 1 };
    assert_eq!(checker.tally(&sink, &dead), want);

    let line = |i: usize, ts: i64| NewRecord {
        key: Some(format!("line-{i}")),
        value: b"a b a".to_vec(),
        timestamp_ms: Some(ts),
    };
    let checker = Checker::new(Job::WordCount, &[line(0, 0), line(1, 10_001)]);
    let result = |start: &str, word: &str, count: i64| {
        read_record(word, &format!(r#"{{"windowStart": "{start}", "key": "{word}", "count": {count}}}"#))
    };
    let epoch = "1970-01-01T00:00:00.000Z";
    let later = "1970-01-01T00:00:10.000Z";
    let sink = [result(epoch, "a", 2), result(epoch, "a", 2), result(epoch, "b", 1), result(later, "a", 1)];
    let want = Tally { input: 4, sink: 4, lost: 2, duplicated: 1, unexpected: 1, dead_lettered: 0, poison: 0 };
    assert_eq!(checker.tally(&sink, &[]), want);
}
