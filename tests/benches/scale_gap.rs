//! How long scaling pauses a job: `streamjob-worker` processes run a stateless job (filter, map)
//! over a 12-partition topic fed at a constant rate on a real Kafka broker, and are scaled
//! 1 → 3 → 6 → 1 (new processes to scale up, SIGTERM to all removed ones at once, as a
//! StatefulSet with `podManagementPolicy: Parallel` does). Each input record carries its
//! partition and the time it was produced; the sink record's timestamp is when a worker
//! processed it (the worker's producer stamps it). Per scale event and group protocol the
//! table shows the longest time any input partition went without a record processed, the
//! lowest 250 ms throughput against the steady rate, the highest end-to-end latency, and the
//! time until latency was back to its steady level.
//!
//! ```text
//! scripts/kafka-broker.sh start /tmp/kafka 1    # prints STREAMJOB_TEST_BOOTSTRAP=...
//! cargo build -p streamjob-worker --bin streamjob-worker
//! STREAMJOB_TEST_BOOTSTRAP=... cargo bench -p streamjob-e2e --bench scale_gap --profile dev
//! ```
//!
//! Knobs (environment): `SCALE_GAP_PROTOCOLS` (comma-separated values of the worker's
//! `--group-protocol`, or `default` for none; default `classic,consumer`), `SCALE_GAP_RATE`
//! (records/s, default 5000), `SCALE_GAP_PHASE_S` (seconds between events, default 20),
//! `SCALE_GAP_WORKER_ARGS` (more worker arguments), `STREAMJOB_WORKER_BIN` (the worker binary;
//! default the workspace's debug build), `SCALE_GAP_VERBOSE` (print each event's 250 ms counts).
//!
//! The rows also go to `target/scale-gap.csv` (under `CARGO_TARGET_DIR` when set), whose longest
//! gap of the default protocol the autoscaler bench charges per scale event.
//!
//! One file for one table: the scenario, the sink reader and the analysis share the sample
//! type and are read together.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use streamjob_e2e::{free_port, scratch_dir, unique, workspace_binary, ChildGuard};
use streamjob_worker::runner::now_ms;
use streamjob_worker::topic_io::{assign_from_beginning, create_topics, producer, send_waiting};

const PARTITIONS: i32 = 12;
const BUCKET_MS: i64 = 250;
/// The steady rate and latency are taken over this long before each event.
const BASELINE_MS: i64 = 5_000;
/// Once the input stops, the sink is read this much longer at most for what is still in flight.
const DRAIN: Duration = Duration::from_secs(30);

struct Settings {
    bootstrap: String,
    protocols: Vec<String>,
    rate: u64,
    phase: Duration,
    worker_bin: PathBuf,
    worker_args: Vec<String>,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let bootstrap = std::env::var("STREAMJOB_TEST_BOOTSTRAP")
            .ok()
            .filter(|b| !b.is_empty())
            .context("set STREAMJOB_TEST_BOOTSTRAP to a real Kafka broker (scripts/kafka-broker.sh start DIR 1)")?;
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        Ok(Self {
            bootstrap,
            protocols: var("SCALE_GAP_PROTOCOLS", "classic,consumer").split(',').map(str::to_owned).collect(),
            rate: var("SCALE_GAP_RATE", "5000").parse().context("SCALE_GAP_RATE")?,
            phase: Duration::from_secs(var("SCALE_GAP_PHASE_S", "20").parse().context("SCALE_GAP_PHASE_S")?),
            worker_bin: std::env::var_os("STREAMJOB_WORKER_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_binary("streamjob-worker")),
            worker_args: var("SCALE_GAP_WORKER_ARGS", "").split_whitespace().map(str::to_owned).collect(),
        })
    }
}

/// One record read from the sink.
#[derive(Clone, Copy)]
struct Sample {
    seq: u64,
    partition: i32,
    produced_ms: i64,
    processed_ms: i64,
}

/// A scale event: when it began and what it was.
struct Event {
    name: String,
    at_ms: i64,
}

/// What one event did to the job.
struct EventImpact {
    name: String,
    longest_gap_ms: i64,
    gap_partition: i32,
    /// When that gap began, from the event.
    gap_start_ms: i64,
    min_rate: f64,
    steady_rate: f64,
    max_latency_ms: i64,
    steady_latency_ms: i64,
    time_to_steady_ms: i64,
}

struct Run {
    protocol: String,
    impacts: Vec<EventImpact>,
    produced: u64,
    lost: u64,
    duplicated: u64,
}

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    if !settings.worker_bin.exists() {
        bail!("{} is missing: cargo build -p streamjob-worker first", settings.worker_bin.display());
    }
    let mut runs = Vec::new();
    for protocol in &settings.protocols {
        eprintln!("== {protocol}: 1 -> 3 -> 6 -> 1 workers at {} records/s", settings.rate);
        runs.push(run(&settings, protocol)?);
    }
    println!();
    println!(
        "scale gap: {} partitions, {} records/s, {} s between events, worker {}",
        PARTITIONS,
        settings.rate,
        settings.phase.as_secs(),
        settings.worker_bin.display()
    );
    for run in &runs {
        print_table(run);
    }
    let csv_path = streamjob_testkit::scale_gap_csv();
    std::fs::write(&csv_path, csv(&runs)).with_context(|| format!("writing {}", csv_path.display()))?;
    println!();
    println!("wrote {} (the autoscaler simulation charges its longest gap per scale event)", csv_path.display());
    Ok(())
}

/// One row per event and protocol, read by the autoscaler bench (`simulator::longest_gap`).
fn csv(runs: &[Run]) -> String {
    let mut out = String::from(
        "protocol,event,longest_partition_gap_s,min_rate,steady_rate,max_latency_s,time_to_steady_s,lost,duplicated\n",
    );
    for run in runs {
        for impact in &run.impacts {
            out.push_str(&format!(
                "{},{},{:.2},{:.0},{:.0},{:.2},{:.2},{},{}\n",
                run.protocol,
                impact.name,
                impact.longest_gap_ms as f64 / 1000.0,
                impact.min_rate,
                impact.steady_rate,
                impact.max_latency_ms as f64 / 1000.0,
                impact.time_to_steady_ms as f64 / 1000.0,
                run.lost,
                run.duplicated,
            ));
        }
    }
    out
}

fn print_table(run: &Run) {
    println!();
    println!(
        "group protocol: {} (produced {}, lost {}, duplicated {})",
        run.protocol, run.produced, run.lost, run.duplicated
    );
    println!(
        "| event | longest partition gap (s), its partition, from event + s | throughput min / steady (rec/s) | max latency (s) | steady latency (s) | time to steady (s) |"
    );
    println!("|---|---|---|---|---|---|");
    for impact in &run.impacts {
        println!(
            "| {} | {:.2} (p{} {:+.2}) | {:.0} / {:.0} | {:.2} | {:.2} | {:.2} |",
            impact.name,
            impact.longest_gap_ms as f64 / 1000.0,
            impact.gap_partition,
            impact.gap_start_ms as f64 / 1000.0,
            impact.min_rate,
            impact.steady_rate,
            impact.max_latency_ms as f64 / 1000.0,
            impact.steady_latency_ms as f64 / 1000.0,
            impact.time_to_steady_ms as f64 / 1000.0,
        );
    }
}

/// The stateless job: every input record, reduced to its three fields.
fn manifest(dir: &Path, name: &str, input: &str, sink: &str) -> anyhow::Result<PathBuf> {
    let text = format!(
        "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata: {{name: {name}}}\nspec:\n  \
         source: {{bootstrapServers: 'unused:9092', topics: [{input}], format: json}}\n  \
         pipeline:\n    - filter: {{field: seq, op: exists}}\n    - map: {{select: [seq, p, ts]}}\n  \
         sink: {{topic: {sink}, format: json}}\n"
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

struct Workers<'a> {
    settings: &'a Settings,
    protocol: &'a str,
    manifest: PathBuf,
    group: String,
    logs: PathBuf,
    running: Vec<ChildGuard>,
}

impl Workers<'_> {
    fn start(&mut self) -> anyhow::Result<()> {
        let ordinal = self.running.len();
        let log = std::fs::File::create(self.logs.join(format!("worker-{ordinal}.log")))?;
        let mut command = Command::new(&self.settings.worker_bin);
        command
            .args(["--config", &self.manifest.display().to_string(), "--bootstrap", &self.settings.bootstrap])
            .args(["--group", &self.group, "--instance-id", &format!("{}-{ordinal}", self.group)])
            .args(["--http-address", &format!("127.0.0.1:{}", free_port()?), "--log-format", "text"])
            .args(&self.settings.worker_args);
        if self.protocol != "default" {
            command.args(["--group-protocol", self.protocol]);
        }
        let child = command.stdout(Stdio::null()).stderr(log).spawn().context("streamjob-worker starts")?;
        self.running.push(ChildGuard(child));
        Ok(())
    }

    /// SIGTERM to every worker past the first `keep`, all at once; returns without waiting.
    fn terminate_all_but(&mut self, keep: usize) -> Vec<ChildGuard> {
        let removed: Vec<ChildGuard> = self.running.drain(keep..).collect();
        for worker in &removed {
            // SAFETY: signals our own child, not yet waited for, so its pid is live.
            unsafe { libc::kill(worker.0.id() as i32, libc::SIGTERM) };
        }
        removed
    }
}

fn run(settings: &Settings, protocol: &str) -> anyhow::Result<Run> {
    let name = unique("scale-gap");
    let (input, sink) = (format!("{name}-in"), format!("{name}-out"));
    create_topics(&settings.bootstrap, &[(&input, PARTITIONS), (&sink, PARTITIONS)])?;
    let logs = scratch_dir("scale-gap")?;
    eprintln!("   worker logs in {}", logs.display());
    let mut workers = Workers {
        settings,
        protocol,
        manifest: manifest(&logs, &name, &input, &sink)?,
        group: name.clone(),
        logs,
        running: Vec::new(),
    };

    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let reading = Arc::new(AtomicBool::new(true));
    let reader = read_sink(&settings.bootstrap, &sink, samples.clone(), reading.clone())?;
    let producing = Arc::new(AtomicBool::new(true));
    let produced = Arc::new(AtomicU64::new(0));
    let feeder = feed(&settings.bootstrap, &input, settings.rate, producing.clone(), produced.clone())?;

    let mut events = Vec::new();
    workers.start()?;
    std::thread::sleep(settings.phase);
    events.push(Event { name: "1 -> 3".into(), at_ms: now_ms() });
    for _ in 0..2 {
        workers.start()?;
    }
    std::thread::sleep(settings.phase);
    events.push(Event { name: "3 -> 6".into(), at_ms: now_ms() });
    for _ in 0..3 {
        workers.start()?;
    }
    std::thread::sleep(settings.phase);
    events.push(Event { name: "6 -> 1".into(), at_ms: now_ms() });
    let stopping = workers.terminate_all_but(1);
    std::thread::sleep(settings.phase);
    for mut worker in stopping {
        if !matches!(worker.0.try_wait(), Ok(Some(_))) {
            eprintln!("   warning: a worker still runs {} s after SIGTERM", settings.phase.as_secs());
        }
    }

    producing.store(false, Ordering::SeqCst);
    feeder.join().map_err(|_| anyhow::anyhow!("the feeder panicked"))??;
    let produced = produced.load(Ordering::SeqCst);
    let deadline = Instant::now() + DRAIN;
    while distinct(&lock(&samples)) < produced as usize && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    reading.store(false, Ordering::SeqCst);
    reader.join().map_err(|_| anyhow::anyhow!("the sink reader panicked"))??;
    drop(workers);

    let samples = std::mem::take(&mut *lock(&samples));
    let seen = distinct(&samples) as u64;
    let impacts = events
        .iter()
        .map(|event| impact(&samples, event, settings.phase.as_millis() as i64, settings.rate as f64))
        .collect();
    Ok(Run {
        protocol: protocol.to_owned(),
        impacts,
        produced,
        lost: produced.saturating_sub(seen),
        duplicated: samples.len() as u64 - seen,
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn distinct(samples: &[Sample]) -> usize {
    samples.iter().map(|s| s.seq).collect::<HashSet<_>>().len()
}

/// Produces `rate` records/s round-robin over the partitions until `producing` is cleared.
fn feed(
    bootstrap: &str,
    topic: &str,
    rate: u64,
    producing: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let producer = producer(bootstrap)?;
    let topic = topic.to_owned();
    Ok(std::thread::spawn(move || {
        let start = Instant::now();
        let mut seq: u64 = 0;
        while producing.load(Ordering::Relaxed) {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            while seq < due {
                let partition = (seq % PARTITIONS as u64) as i32;
                let value = format!(r#"{{"seq":{seq},"p":{partition},"ts":{}}}"#, now_ms());
                send_waiting(&producer, BaseRecord::to(&topic).partition(partition).payload(value.as_bytes()))?;
                seq += 1;
            }
            produced.store(seq, Ordering::Relaxed);
            producer.poll(Duration::from_millis(5));
        }
        producer.flush(Duration::from_secs(30))?;
        Ok(())
    }))
}

/// Reads every sink record into `samples` until `reading` is cleared.
fn read_sink(
    bootstrap: &str,
    topic: &str,
    samples: Arc<Mutex<Vec<Sample>>>,
    reading: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "streamjob-scale-gap-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()?;
    assign_from_beginning(&consumer, topic)?;
    Ok(std::thread::spawn(move || {
        while reading.load(Ordering::Relaxed) {
            let Some(result) = consumer.poll(Duration::from_millis(100)) else { continue };
            let message = result?;
            let Some(processed_ms) = message.timestamp().to_millis() else { continue };
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(message.payload().unwrap_or_default()) else {
                continue;
            };
            let field = |name: &str| value.get(name).and_then(serde_json::Value::as_i64);
            if let (Some(seq), Some(partition), Some(produced_ms)) = (field("seq"), field("p"), field("ts")) {
                let sample = Sample { seq: seq as u64, partition: partition as i32, produced_ms, processed_ms };
                lock(&samples).push(sample);
            }
        }
        Ok(())
    }))
}

/// What `event` did over the `window_ms` after it, against the [`BASELINE_MS`] before it.
fn impact(samples: &[Sample], event: &Event, window_ms: i64, rate: f64) -> EventImpact {
    let (start, end) = (event.at_ms, event.at_ms + window_ms);
    let (longest_gap_ms, gap_partition, gap_began_ms) = longest_gap(samples, start, end);
    let in_window = |from: i64, to: i64| samples.iter().filter(move |s| s.processed_ms >= from && s.processed_ms < to);
    let mut buckets: HashMap<i64, u64> = HashMap::new();
    for sample in in_window(start - BASELINE_MS, end) {
        *buckets.entry((sample.processed_ms - start).div_euclid(BUCKET_MS)).or_default() += 1;
    }
    let per_second = 1000.0 / BUCKET_MS as f64;
    if std::env::var_os("SCALE_GAP_VERBOSE").is_some() {
        let shown: Vec<String> =
            (-4..window_ms / BUCKET_MS).map(|b| buckets.get(&b).copied().unwrap_or(0).to_string()).collect();
        eprintln!("   {}: records per {BUCKET_MS} ms from 1 s before: {}", event.name, shown.join(" "));
    }
    let baseline: u64 = (-BASELINE_MS / BUCKET_MS..0).map(|b| buckets.get(&b).copied().unwrap_or(0)).sum();
    let steady_rate = baseline as f64 / (BASELINE_MS as f64 / 1000.0);
    let min_rate = (0..window_ms / BUCKET_MS).map(|b| buckets.get(&b).copied().unwrap_or(0)).min().unwrap_or(0) as f64
        * per_second;
    let mut steady_latencies: Vec<i64> =
        in_window(start - BASELINE_MS, start).map(|s| s.processed_ms - s.produced_ms).collect();
    steady_latencies.sort_unstable();
    let steady_latency_ms = steady_latencies.get(steady_latencies.len() * 99 / 100).copied().unwrap_or(0);
    let threshold = (2 * steady_latency_ms).max(steady_latency_ms + BUCKET_MS);
    let max_latency_ms = in_window(start, end).map(|s| s.processed_ms - s.produced_ms).max().unwrap_or(0);
    let time_to_steady_ms = in_window(start, end)
        .filter(|s| s.processed_ms - s.produced_ms > threshold)
        .map(|s| s.processed_ms - start)
        .max()
        .unwrap_or(0);
    EventImpact {
        name: event.name.clone(),
        longest_gap_ms,
        gap_partition,
        gap_start_ms: gap_began_ms - start,
        min_rate,
        steady_rate: if steady_rate > 0.0 { steady_rate } else { rate },
        max_latency_ms,
        steady_latency_ms,
        time_to_steady_ms,
    }
}

/// The longest time between two records of one input partition processed one after the
/// other, of the pauses that end after `start` and begin in `[start, end)` (give or take a
/// bucket: a worker told to stop may have sent its last record just before the event was
/// noted, and one that began just before `end` is the next event's), its partition, and when
/// it began.
fn longest_gap(samples: &[Sample], start: i64, end: i64) -> (i64, i32, i64) {
    let mut by_partition: HashMap<i32, Vec<i64>> = HashMap::new();
    for sample in samples {
        by_partition.entry(sample.partition).or_default().push(sample.processed_ms);
    }
    let mut longest = (0, -1, start);
    for (partition, mut times) in by_partition {
        times.sort_unstable();
        for pair in times.windows(2) {
            let began_in_window = pair[0] >= start - BUCKET_MS && pair[0] < end - BUCKET_MS;
            if pair[1] > start && began_in_window && pair[1] - pair[0] > longest.0 {
                longest = (pair[1] - pair[0], partition, pair[0]);
            }
        }
    }
    longest
}
