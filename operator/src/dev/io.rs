//! The input feeder (synthetic load or a replayed file) and the sink reader of `dev`, each on
//! its own thread.

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, Producer};
use streamjob_runtime::clock::now_ms;
use streamjob_runtime::sync::lock;
use streamjob_worker::topic_io::{producer, send_waiting, TopicReader};

use super::load::{LoadPlan, RecordGenerator};

/// Where input records come from.
pub enum InputSource {
    Synthetic(RecordGenerator),
    /// Lines of a file or standard input, one record each.
    Lines(Box<dyn BufRead + Send>),
}

/// The producing thread and what it has sent.
pub struct Feeder {
    pub produced: Arc<AtomicU64>,
    /// Set when the input is exhausted (replays) or the producer failed.
    pub finished: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Feeder {
    /// Produces to `topics` in turn at the plan's rate (as fast as possible without a plan).
    pub fn start(bootstrap: &str, topics: Vec<String>, plan: Option<LoadPlan>, source: InputSource) -> Self {
        let produced = Arc::new(AtomicU64::new(0));
        let finished = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let bootstrap = bootstrap.to_owned();
        let (counter, done, stopping) = (produced.clone(), finished.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let result = feed(&bootstrap, &topics, plan.as_ref(), source, &counter, &stopping);
            done.store(true, Ordering::SeqCst);
            result
        });
        Self { produced, finished, stop, thread: Some(thread) }
    }

    /// Stops producing and flushes; returns the producer's error, if it failed.
    pub fn stop(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err("the input feeder panicked".to_owned()),
            None => Ok(()),
        }
    }
}

fn feed(
    bootstrap: &str,
    topics: &[String],
    plan: Option<&LoadPlan>,
    mut source: InputSource,
    produced: &AtomicU64,
    stop: &AtomicBool,
) -> Result<(), String> {
    let producer = producer(bootstrap).map_err(|e| format!("input producer: {e}"))?;
    let started = Instant::now();
    let mut allowance = 0.0f64;
    let mut last = started;
    let mut line = String::new();
    let mut sent: u64 = 0;
    'feeding: while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        let batch = match plan {
            Some(plan) => {
                allowance += plan.rate_at(now - started) * (now - last).as_secs_f64();
                last = now;
                let whole = allowance.floor();
                allowance -= whole;
                whole as u64
            }
            None => 1000,
        };
        for _ in 0..batch {
            let topic = &topics[(sent % topics.len() as u64) as usize];
            let (key, payload) = match &mut source {
                InputSource::Synthetic(generator) => {
                    let (key, payload) = generator.next(now_ms());
                    (Some(key), payload)
                }
                InputSource::Lines(reader) => {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) => break 'feeding,
                        Ok(_) => (None, line.trim_end_matches(['\r', '\n']).as_bytes().to_vec()),
                        Err(error) => return Err(format!("reading the input: {error}")),
                    }
                }
            };
            let mut record = BaseRecord::to(topic).payload(&payload[..]);
            if let Some(key) = &key {
                record = record.key(key.as_bytes());
            }
            send_waiting(&producer, record).map_err(|e| format!("producing to {topic}: {e}"))?;
            sent += 1;
            produced.store(sent, Ordering::Relaxed);
        }
        producer.poll(Duration::ZERO);
        if plan.is_some() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    producer.flush(Duration::from_secs(30)).map_err(|e| format!("flushing the input: {e}"))
}

/// The sink topic's records as they arrive: a count and the newest few.
pub struct SinkReader {
    pub received: Arc<AtomicU64>,
    recent: Arc<Mutex<Vec<String>>>,
    fresh: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How many of the newest sink records are kept for the screen.
const RECENT: usize = 5;

impl SinkReader {
    pub fn start(bootstrap: &str, topic: &str, read_committed: bool) -> Result<Self, String> {
        let mut reader =
            TopicReader::new(bootstrap, topic, read_committed).map_err(|e| format!("reading the sink {topic}: {e}"))?;
        let received = Arc::new(AtomicU64::new(0));
        let recent = Arc::new(Mutex::new(Vec::new()));
        let fresh = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, newest, unseen, stopping) = (received.clone(), recent.clone(), fresh.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                reader.poll_for(Duration::from_millis(200));
                if reader.records.is_empty() {
                    continue;
                }
                let lines: Vec<String> = reader
                    .records
                    .drain(..)
                    .map(|r| match r.key {
                        Some(key) => format!("{key} {}", r.value),
                        None => r.value,
                    })
                    .collect();
                count.fetch_add(lines.len() as u64, Ordering::Relaxed);
                let mut newest = lock(&newest);
                newest.extend(lines.iter().cloned());
                let excess = newest.len().saturating_sub(RECENT);
                newest.drain(..excess);
                lock(&unseen).extend(lines);
            }
        });
        Ok(Self { received, recent, fresh, stop, thread: Some(thread) })
    }

    /// The newest records, oldest first.
    pub fn recent(&self) -> Vec<String> {
        lock(&self.recent).clone()
    }

    /// Records that arrived since the last call.
    pub fn take_fresh(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.fresh))
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
