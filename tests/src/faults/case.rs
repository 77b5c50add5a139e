//! A row's topics, manifest, workers and load.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer};
use streamjob_testkit::kafka::NewRecord;
use streamjob_worker::runner::now_ms;
use streamjob_worker::topic_io::{create_topics, producer, send_waiting, TopicReader};

use super::{
    Checker, Delivery, Job, Row, Tally, Worker, DRAIN_LIMIT, IDLE_TIMEOUT, PARTITIONS, POISON_EVERY, SETTLE, VOCABULARY,
};
use crate::{free_port, repo_root, scratch_dir, unique, workspace_binary};

// A row's topics, manifest, workers and load.

pub struct Case {
    pub scenario: String,
    pub job: Job,
    pub delivery: Delivery,
    pub bootstrap: String,
    pub input: String,
    pub sink: String,
    pub dead_letters: String,
    pub group: String,
    pub manifest: PathBuf,
    pub session_timeout: String,
    pub logs: PathBuf,
    pub poison: bool,
}

impl Case {
    /// A row over the shipped example for `job` and `delivery`, on fresh topics of
    /// [`PARTITIONS`] partitions.
    pub fn new(scenario: &str, job: Job, delivery: Delivery, bootstrap: &str) -> anyhow::Result<Self> {
        Self::create(scenario, job, delivery, bootstrap, PARTITIONS, |_| Ok(()))
    }

    /// A row on fresh input and sink topics of `partitions` partitions, its manifest changed by
    /// `edit` (the shipped example already renamed onto the row's topics).
    pub fn create(
        scenario: &str,
        job: Job,
        delivery: Delivery,
        bootstrap: &str,
        partitions: i32,
        edit: impl FnOnce(&mut serde_yaml::Value) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let name = unique(match job {
            Job::Passthrough => "fs-pt",
            Job::WordCount => "fs-wc",
        });
        let (input, sink, dead_letters) = (format!("{name}-in"), format!("{name}-out"), format!("{name}-dead"));
        create_topics(bootstrap, &[(&input, partitions), (&sink, partitions), (&dead_letters, 1)])?;
        let logs = scratch_dir(&name)?;
        let manifest = logs.join("job.yaml");
        let mut doc: serde_yaml::Value =
            serde_yaml::from_str(&manifest_text(job, delivery, &name, [&input, &sink, &dead_letters])?)?;
        edit(&mut doc)?;
        std::fs::write(&manifest, serde_yaml::to_string(&doc)?)?;
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

    pub fn with_session_timeout(mut self, timeout: &str) -> Self {
        timeout.clone_into(&mut self.session_timeout);
        self
    }

    pub fn with_poison(mut self) -> Self {
        self.poison = true;
        self
    }

    /// Worker `ordinal` of this row, its log appended to `worker-<ordinal>.log`.
    pub fn worker(&self, ordinal: usize) -> anyhow::Result<Worker> {
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

    pub fn workers(&self, count: usize) -> anyhow::Result<Vec<Worker>> {
        let workers = (0..count).map(|ordinal| self.worker(ordinal)).collect::<anyhow::Result<Vec<_>>>()?;
        for worker in &workers {
            worker.wait_ready()?;
        }
        Ok(workers)
    }

    /// Writes `total` records over `over` in the background.
    pub fn feed(&self, total: usize, over: Duration) -> Feed {
        let (bootstrap, topic, job, poison) = (self.bootstrap.clone(), self.input.clone(), self.job, self.poison);
        Feed(std::thread::spawn(move || write_paced(&bootstrap, &topic, total, over, |i| record(job, i, poison))))
    }

    /// Reads the sink and the dead-letter topic until they hold all that the input topic's
    /// records should make (or [`DRAIN_LIMIT`] passes), then a little longer, and counts.
    pub fn check(&self, written: Vec<NewRecord>) -> anyhow::Result<(Tally, Vec<String>)> {
        self.check_with(written, |input| Checker::new(self.job, input))
    }

    /// [`Case::check`] with the expectations of `checker`, made from the records the input
    /// topic holds of those written.
    pub fn check_with(
        &self,
        written: Vec<NewRecord>,
        checker: impl FnOnce(&[NewRecord]) -> Checker,
    ) -> anyhow::Result<(Tally, Vec<String>)> {
        let stored = keys_in_topic(&self.bootstrap, &self.input)?;
        let input: Vec<NewRecord> =
            written.into_iter().filter(|r| r.key.as_ref().is_some_and(|k| stored.contains(k))).collect();
        self.count(&checker(&input))
    }

    /// Reads the sink and the dead-letter topic until `checker` finds nothing lost (or
    /// [`DRAIN_LIMIT`] passes), then a little longer, and counts. For an input whose records the
    /// checker is given as they are (a transactional input's offsets also hold its markers).
    pub fn count(&self, checker: &Checker) -> anyhow::Result<(Tally, Vec<String>)> {
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

    pub fn row(&self, outcome: anyhow::Result<(Tally, Vec<String>)>, workers: &mut [Worker], started: Instant) -> Row {
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
pub fn manifest_text(
    job: Job,
    delivery: Delivery,
    name: &str,
    [input, sink, dead]: [&str; 3],
) -> anyhow::Result<String> {
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
pub fn record(job: Job, i: usize, poison: bool) -> NewRecord {
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

pub struct Feed(pub std::thread::JoinHandle<anyhow::Result<Vec<NewRecord>>>);

impl Feed {
    pub fn join(self) -> anyhow::Result<Vec<NewRecord>> {
        self.0.join().map_err(|_| anyhow::anyhow!("the feed panicked"))?
    }
}

/// Writes `total` records made by `make` in steps of 100 ms over `over`, and waits until the
/// broker has acknowledged them (through broker restarts: the producer is idempotent).
pub fn write_paced(
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
pub fn keys_in_topic(bootstrap: &str, topic: &str) -> anyhow::Result<HashSet<String>> {
    let watermarks: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let metadata = watermarks.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata.topics().first().map_or(0, |t| t.partitions().len() as i32);
    let mut total = 0;
    for partition in 0..partitions {
        let (low, high) = watermarks.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        total += (high - low) as usize;
    }
    let mut reader = TopicReader::new(bootstrap, topic, false)?;
    if !reader.read_until(Duration::from_secs(60), |records| records.len() >= total) {
        bail!("read {} of the {total} records of {topic}", reader.records.len());
    }
    Ok(reader.records.into_iter().filter_map(|r| r.key).collect())
}
