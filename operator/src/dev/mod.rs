//! `streamjob-operator dev`: one StreamJob on a laptop. An embedded Kafka-protocol broker
//! (librdkafka's mock cluster) or a real one, synthetic or replayed input, in-process workers
//! (the worker crate's own `run`), scaled by the operator's policy from the operator's lag probe,
//! and a live status screen.

mod autoscale;
pub mod io;
pub mod load;
pub mod pool;
pub mod screen;

use std::io::{BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use streamjob_crds::{DeliveryGuarantee, StreamJob};
use streamjob_worker::config::{Overrides, Timings, WorkerConfig};
use streamjob_worker::mock_broker::MockBroker;
use streamjob_worker::pipeline::CompiledPipeline;

use autoscale::{poll_autoscaler, DevAutoscaler};
use io::{Feeder, InputSource, SinkReader};
use load::{LoadPlan, RecordGenerator};
use pool::{PoolTotals, WorkerPool};
use screen::{render_frame, render_line, ScaleLine, Snapshot, CLEAR};

/// Load when neither `--load` nor `--input` is given.
pub const DEFAULT_LOAD: &str = "1000/s";

pub struct DevOptions {
    pub manifest: PathBuf,
    /// A real broker; without it, an embedded one.
    pub bootstrap: Option<String>,
    pub load: Option<LoadPlan>,
    /// A file of input lines, or `-` for standard input.
    pub input: Option<PathBuf>,
    pub duration: Option<Duration>,
    /// Partitions of the source topics the embedded broker creates.
    pub partitions: i32,
    /// Plain lines even on a terminal.
    pub plain: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Manifest { path: String, message: String },
    #[error("embedded broker: {0}")]
    Broker(String),
    #[error("creating topics: {0}")]
    Topics(String),
    #[error("{0}")]
    Io(String),
    #[error("worker {ordinal} failed: {message}")]
    Worker { ordinal: i32, message: String },
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub elapsed: Duration,
    pub produced: u64,
    /// What the workers counted, all of them.
    pub workers: PoolTotals,
    pub sink_records: u64,
    pub max_lag: i64,
    pub scale_events: Vec<ScaleLine>,
}

impl Summary {
    pub fn render(&self) -> String {
        let events: Vec<String> =
            self.scale_events.iter().map(|e| format!("{} → {} at {:.0}s", e.from, e.to, e.at.as_secs_f64())).collect();
        format!(
            "Summary after {:.0}s: produced {}, records in {}, records out {}, dead-lettered {}, skipped {}, sink records read {}, max lag {}, scale events {}{}",
            self.elapsed.as_secs_f64(),
            self.produced,
            self.workers.records_in,
            self.workers.records_out,
            self.workers.dead_lettered,
            self.workers.skipped,
            self.sink_records,
            self.max_lag,
            self.scale_events.len(),
            if events.is_empty() { String::new() } else { format!(" ({})", events.join(", ")) }
        ) + &self.loss_note()
    }

    fn loss_note(&self) -> String {
        match self.workers.lost_before_read {
            0 => String::new(),
            lost => format!("; LOST {lost} input records {}", screen::LOST_BEFORE_READ),
        }
    }
}

/// The broker a run uses; the embedded one lives as long as this.
struct Broker {
    bootstrap: String,
    _embedded: Option<MockBroker>,
}

/// Worker timings for a laptop: a short session, so a stopped worker's partitions move on in
/// seconds (6 s is the smallest session real brokers accept by default), and a short idle
/// timeout, so the last windows close soon after the input stops.
fn dev_timings() -> Timings {
    Timings {
        session_timeout: Duration::from_secs(6),
        shutdown_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(5),
        ..Timings::default()
    }
}

fn load_job(path: &PathBuf) -> Result<StreamJob, DevError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| DevError::Read { path: shown.clone(), source })?;
    streamjob_crds::parse_manifest(&text).map_err(|e| DevError::Manifest { path: shown, message: e.to_string() })
}

/// The topics a job needs: (name, partitions).
fn job_topics(job: &StreamJob, partitions: i32) -> Vec<(String, i32)> {
    let mut topics: Vec<(String, i32)> = job.spec.source.topics.iter().map(|t| (t.clone(), partitions)).collect();
    topics.push((job.spec.sink.topic.clone(), partitions));
    if let Some(dead_letter) = &job.spec.sink.dead_letter_topic {
        topics.push((dead_letter.clone(), 1));
    }
    topics
}

fn start_broker(options: &DevOptions, job: &StreamJob, windowed: bool) -> Result<Broker, DevError> {
    let mut topics = job_topics(job, options.partitions);
    match &options.bootstrap {
        Some(bootstrap) => {
            let missing = missing_topics(bootstrap, &topics).map_err(DevError::Topics)?;
            if !missing.is_empty() {
                streamjob_worker::topic_io::create_topics(bootstrap, &missing)
                    .map_err(|e| DevError::Topics(format!("{e} (creating {missing:?})")))?;
            }
            Ok(Broker { bootstrap: bootstrap.clone(), _embedded: None })
        }
        None => {
            let broker = MockBroker::start(1).map_err(|e| DevError::Broker(e.to_string()))?;
            if windowed {
                // The mock cluster has no CreateTopics; the worker would get an auto-created
                // topic with the broker's default partition count.
                topics.push((job.repartition_topic(), options.partitions));
            }
            for (topic, partitions) in &topics {
                broker.create_topic(topic, *partitions).map_err(|e| DevError::Broker(e.to_string()))?;
            }
            Ok(Broker { bootstrap: broker.bootstrap_servers(), _embedded: Some(broker) })
        }
    }
}

/// The topics of `topics` the broker does not have.
fn missing_topics<'a>(bootstrap: &str, topics: &'a [(String, i32)]) -> Result<Vec<(&'a str, i32)>, String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().map_err(|e| e.to_string())?;
    let metadata = client.fetch_metadata(None, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    Ok(topics
        .iter()
        .filter(|(name, _)| !metadata.topics().iter().any(|t| t.name() == name && !t.partitions().is_empty()))
        .map(|(name, partitions)| (name.as_str(), *partitions))
        .collect())
}

fn input_source(options: &DevOptions, job: &StreamJob) -> Result<InputSource, DevError> {
    Ok(match &options.input {
        None => InputSource::Synthetic(RecordGenerator::for_job(job, 42)),
        Some(path) if path.as_os_str() == "-" => InputSource::Lines(Box::new(BufReader::new(std::io::stdin()))),
        Some(path) => {
            let file = std::fs::File::open(path)
                .map_err(|source| DevError::Read { path: path.display().to_string(), source })?;
            InputSource::Lines(Box::new(BufReader::new(file)))
        }
    })
}

/// Runs the job until `--duration` passes or Ctrl-C; writes the screen to `out`.
pub async fn run_dev(options: DevOptions, out: &mut (dyn Write + Send)) -> Result<Summary, DevError> {
    let job = load_job(&options.manifest)?;
    let pipeline = CompiledPipeline::compile(&job.spec.pipeline)
        .map_err(|e| DevError::Manifest { path: options.manifest.display().to_string(), message: e.to_string() })?;
    let windowed = pipeline.window.is_some();
    let broker = {
        let (options_ref, job_ref) = (&options, &job);
        tokio::task::block_in_place(|| start_broker(options_ref, job_ref, windowed))?
    };
    let bootstrap = broker.bootstrap.clone();
    let overrides = Overrides { bootstrap_servers: Some(bootstrap.clone()), ..Overrides::default() };
    let mut template = WorkerConfig::from_job(job.clone(), &overrides, |name| std::env::var(name).ok())
        .map_err(|e| DevError::Manifest { path: options.manifest.display().to_string(), message: e.to_string() })?;
    template.timings = dev_timings();

    let plan = match (&options.load, &options.input) {
        (Some(plan), _) => Some(plan.clone()),
        (None, Some(_)) => None,
        (None, None) => LoadPlan::parse(DEFAULT_LOAD).ok(),
    };
    let feeder = Feeder::start(&bootstrap, job.spec.source.topics.clone(), plan, input_source(&options, &job)?);
    let exactly_once = job.spec.delivery == DeliveryGuarantee::ExactlyOnce;
    let sink = SinkReader::start(&bootstrap, &job.spec.sink.topic, exactly_once).map_err(DevError::Io)?;

    let mut autoscaler = DevAutoscaler::new(&job, &bootstrap);
    let initial = match &autoscaler.settings {
        Some(settings) => settings.min_replicas.max(1),
        None => job.spec.replicas.max(1),
    };
    let mut pool = WorkerPool::new(template);
    pool.scale_to(initial).map_err(|e| DevError::Io(format!("starting workers: {e}")))?;

    let terminal = std::io::stdout().is_terminal() && !options.plain;
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let mut summary = Summary::default();
    let mut snapshot = Snapshot {
        job: job_name,
        bootstrap: bootstrap.clone(),
        phase: "Pending".into(),
        desired: initial,
        decision: "waiting for the first lag measurement".into(),
        ..Snapshot::default()
    };
    let started = Instant::now();
    let clock = |at: Instant| at.duration_since(started).as_secs_f64();
    let mut next_poll = started;
    let mut next_line = started;
    let mut previous = (started, 0u64, pool.totals());
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let outcome = loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut ctrl_c => break Ok(()),
        }
        let now = Instant::now();
        if options.duration.is_some_and(|limit| now - started >= limit) {
            break Ok(());
        }
        if let Some((ordinal, message)) = pool.failure() {
            break Err(DevError::Worker { ordinal, message });
        }
        let expected_assignments = i64::from(autoscaler.partitions) * if windowed { 2 } else { 1 };
        let settled = pool.settled(expected_assignments);
        if now >= next_poll {
            next_poll = now + autoscaler.poll_interval;
            let decision = poll_autoscaler(&mut autoscaler, &mut pool, settled, clock(now), &mut snapshot).await;
            if let Some(scale) = decision {
                let line = scale.event();
                summary.scale_events.push(scale.clone());
                snapshot.last_scale = Some(scale);
                if !terminal {
                    let _ = writeln!(out, "[{:>4.0}s] {line}", clock(now));
                }
            }
            summary.max_lag = summary.max_lag.max(snapshot.total_lag.unwrap_or(0));
        }

        let totals = pool.totals();
        let produced = feeder.produced.load(Ordering::Relaxed);
        // Rates over less than half a second (the first tick) say little.
        let seconds = (now - previous.0).as_secs_f64().max(0.5);
        snapshot.elapsed = now - started;
        snapshot.produced_per_second = (produced - previous.1) as f64 / seconds;
        snapshot.in_per_second = (totals.records_in - previous.2.records_in) as f64 / seconds;
        snapshot.out_per_second = (totals.records_out - previous.2.records_out) as f64 / seconds;
        snapshot.dead_lettered = totals.dead_lettered;
        snapshot.lost_before_read = totals.lost_before_read;
        snapshot.ready = pool.ready();
        snapshot.desired = pool.len();
        snapshot.phase = phase(&pool, settled).into();
        snapshot.recent_sink_records = sink.recent();
        previous = (now, produced, totals);

        let fresh = sink.take_fresh();
        if terminal {
            let _ = write!(out, "{CLEAR}{}", render_frame(&snapshot));
        } else if now >= next_line {
            next_line = now + Duration::from_secs(5);
            let _ = writeln!(out, "{}", render_line(&snapshot));
            print_sink_records(out, &fresh);
        } else {
            print_sink_records(out, &fresh);
        }
        let _ = out.flush();
    };

    let feeder_produced = feeder.produced.clone();
    let feeder_result = tokio::task::block_in_place(|| feeder.stop());
    let (workers, stop_errors) = tokio::task::block_in_place(|| pool.shutdown());
    summary.workers = workers;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fresh = sink.take_fresh();
    print_sink_records(out, &fresh);
    summary.sink_records = sink.received.load(Ordering::Relaxed);
    tokio::task::block_in_place(|| sink.stop());
    summary.elapsed = started.elapsed();
    summary.produced = feeder_produced.load(Ordering::Relaxed);
    outcome?;
    feeder_result.map_err(DevError::Io)?;
    if let Some((ordinal, message)) = stop_errors.into_iter().next() {
        return Err(DevError::Worker { ordinal, message });
    }
    Ok(summary)
}

const SINK_LINES_PER_TICK: usize = 10;

fn print_sink_records(out: &mut (dyn Write + Send), records: &[String]) {
    for record in records.iter().take(SINK_LINES_PER_TICK) {
        let _ = writeln!(out, "  sink: {record}");
    }
    if records.len() > SINK_LINES_PER_TICK {
        let _ = writeln!(out, "  sink: … and {} more", records.len() - SINK_LINES_PER_TICK);
    }
}

/// The phase as the operator would report it. `settled` was measured before this tick's
/// decision, so a scale just made shows as fewer ready than running.
fn phase(pool: &WorkerPool, settled: bool) -> &'static str {
    match (pool.ready(), settled) {
        (0, _) => "Pending",
        (ready, true) if ready == pool.len() => "Running",
        _ => "Scaling",
    }
}
