//! Faults production brings to the consumer side, against the real broker: partitions whose
//! owner does not come back, partitions added while the job runs, a transactional input with
//! aborted transactions, a sink the broker refuses. One table, counted by the fault suite's
//! checker (`streamjob_e2e::faults`): nothing lost, nothing unexpected, no duplicate under
//! exactly-once, and every record not in the sink in the dead-letter topic.
//!
//! Rows:
//! - **stays dead**: two workers over 6 partitions, `kill -9` of one under load, never restarted.
//!   Under exactly-once the kill is joined by a transaction left open on the group's offsets (as
//!   a worker killed between sending its offsets to its transaction and committing it leaves one,
//!   which a random kill hits a few percent of the time): the survivor's committed-offset reads
//!   answer UNSTABLE_OFFSET_COMMIT until the broker aborts that transaction (its
//!   `transaction.timeout.ms`, 30 s, as the worker's), and the partitions must wait for it
//!   rather than start from `startFrom`.
//! - **scale-down 3 → 1**: three exactly-once workers, two killed at once with transactions open
//!   the same way, never restarted.
//! - **partitions 3 → 6**: the input topic grows while it is written; every record written to the
//!   new partitions must reach the sink (the passthrough), every count come out right (the word
//!   count, with an `allowedLateness` of 5 s).
//! - **aborted input txns**: the input is written in transactions, one in four aborted: the sink
//!   holds none of the aborted records, and once drained every input partition's lag (high
//!   watermark − committed offset, as the operator's probe computes it) reaches 0.
//! - **sink deleted**: the sink topic is deleted (the test broker does not create topics), the
//!   input written, the worker must say why on `/readyz` and in `streamjob_worker_sink_refused`,
//!   and once the sink is created again every record must reach it.
//!
//! One file for one table: the rows' helpers (a transaction left open, a partitioned writer, a
//! transactional writer, the lag and readiness probes) are used only here.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use streamjob_e2e::faults::{
    record, report, run_all, wait_busy, Case, Checker, Delivery, Job, Row, Task, Worker, IDLE_TIMEOUT,
};
use streamjob_e2e::{free_port, http_get, real_broker, unique, workspace_binary};
use streamjob_testkit::kafka::NewRecord;
use streamjob_worker::topic_io::{create_topics, send_waiting};

/// The worker's `transaction.timeout.ms`, given to the transaction a row leaves open.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// `workers` workers over 6 partitions under load; `kill -9` of all but the first, none
/// restarted; under exactly-once, with a transaction left open on the group's offsets.
fn stays_dead(case: &Case, workers_count: usize) -> Row {
    let started = Instant::now();
    let mut workers = Vec::new();
    let mut notes = Vec::new();
    let mut zombie = None;
    let outcome = (|| {
        workers = case.workers(workers_count)?;
        let feed = case.feed(records_for(case.job), Duration::from_secs(12));
        std::thread::sleep(Duration::from_secs(4));
        wait_busy(&workers[workers_count - 1]);
        for victim in workers.drain(1..) {
            victim.kill_9();
        }
        if case.delivery == Delivery::ExactlyOnce {
            let (producer, pending) = leave_offsets_pending(case)?;
            notes.push(format!("a transaction left open on {pending} committed offsets of the group"));
            zombie = Some(producer);
        }
        case.check(feed.join()?)
    })();
    drop(zombie);
    with_notes(case.row(outcome, &mut workers, started), notes)
}

/// Two workers over 3 partitions; the input grows to 6 partitions while it is written.
fn partitions_added(case: &Case) -> Row {
    let started = Instant::now();
    let mut workers = Vec::new();
    let outcome = (|| {
        workers = case.workers(2)?;
        let partitions = Arc::new(AtomicI32::new(3));
        let feed = {
            let (bootstrap, topic, job, partitions) =
                (case.bootstrap.clone(), case.input.clone(), case.job, partitions.clone());
            let total = records_for(job);
            std::thread::spawn(move || {
                write_partitioned(&bootstrap, &topic, total, Duration::from_secs(14), &partitions, |i| {
                    record(job, i, false)
                })
            })
        };
        std::thread::sleep(Duration::from_secs(5));
        grow_topic(&case.bootstrap, &case.input, 6)?;
        partitions.store(6, Ordering::SeqCst);
        let written = feed.join().map_err(|_| anyhow::anyhow!("the feed panicked"))??;
        case.check(written)
    })();
    case.row(outcome, &mut workers, started)
}

/// One worker; the input written in transactions of 40, every fourth aborted.
fn aborted_input(case: &Case) -> Row {
    let started = Instant::now();
    let mut workers = Vec::new();
    let mut notes = Vec::new();
    let outcome = (|| {
        workers = case.workers(1)?;
        let (committed, aborted) = write_transactions(&case.bootstrap, &case.input, 30, 40)?;
        notes.push(format!("{aborted} records written in aborted transactions"));
        let checker = Checker::new(case.job, &committed);
        let tally = case.count(&checker)?;
        match wait_lag_zero(&case.bootstrap, &case.group, &case.input) {
            Ok(waited) => notes.push(format!(
                "every input partition's lag 0, {:.1} s after the sink was complete",
                waited.as_secs_f64()
            )),
            Err(error) => bail!("lag after the input was drained: {error:#}"),
        }
        Ok(tally)
    })();
    with_notes(case.row(outcome, &mut workers, started), notes)
}

/// One worker; the sink deleted, the input written, the sink created again.
fn sink_deleted(case: &Case) -> Row {
    let started = Instant::now();
    let mut workers = Vec::new();
    let mut notes = Vec::new();
    let outcome = (|| {
        let (worker, port) = worker_on_a_known_port(case)?;
        workers.push(worker);
        workers[0].wait_ready()?;
        delete_topic(&case.bootstrap, &case.sink)?;
        let feed = case.feed(records_for(case.job) / 4, Duration::from_secs(3));
        let deadline = Instant::now() + Duration::from_secs(120);
        let readyz = loop {
            let readyz = http_get(port, "/readyz");
            if readyz.contains("503") && readyz.contains("refuses the sink") {
                break readyz;
            }
            if Instant::now() > deadline {
                bail!("the worker never said the sink is refused; /readyz: {readyz}");
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        let metrics = http_get(port, "/metrics");
        let refused = metrics.lines().find(|l| l.starts_with("streamjob_worker_sink_refused{") && l.ends_with(" 1"));
        let Some(refused) = refused else {
            bail!("streamjob_worker_sink_refused is not 1 while /readyz says {readyz}")
        };
        notes.push(format!("/readyz: {}", readyz.lines().last().unwrap_or_default()));
        notes.push(refused.to_owned());
        create_topics(&case.bootstrap, &[(&case.sink, 4)])?;
        let checked = case.check(feed.join()?);
        let rewinds = counter(&http_get(port, "/metrics"), "streamjob_worker_rewinds_total");
        notes.push(format!("rewinds (each after a back-off) until the sink took everything: {rewinds}"));
        checked
    })();
    with_notes(case.row(outcome, &mut workers, started), notes)
}

/// Worker 0 of `case`, as [`Case::worker`] starts it, and the port of its `/readyz` and
/// `/metrics`.
fn worker_on_a_known_port(case: &Case) -> anyhow::Result<(Worker, u16)> {
    let port = free_port()?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(case.logs.join("worker-0.log"))?;
    let mut command = std::process::Command::new(workspace_binary("streamjob-worker"));
    command
        .args(["--config", &case.manifest.display().to_string(), "--bootstrap", &case.bootstrap])
        .args(["--group", &case.group, "--instance-id", &format!("{}-0", case.group)])
        .args(["--http-address", &format!("127.0.0.1:{port}"), "--log-format", "text"])
        .args(["--commit-interval", "500ms", "--idle-timeout", IDLE_TIMEOUT])
        .args(["--session-timeout", &case.session_timeout])
        .stdout(std::process::Stdio::null());
    let start = move || -> anyhow::Result<std::process::Child> {
        command
            .stderr(log.try_clone()?)
            .spawn()
            .context("streamjob-worker starts (cargo build --workspace --bins first)")
    };
    Ok((Worker::supervise(start, port, 0)?, port))
}

fn records_for(job: Job) -> usize {
    streamjob_e2e::faults::records_for(job)
}

fn with_notes(mut row: Row, notes: Vec<String>) -> Row {
    row.notes.splice(0..0, notes);
    row
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Opens a transaction that commits the group's current offsets again (the input's and the
/// repartition topic's, metadata included) and never ends it: until the broker aborts it,
/// `transaction.timeout.ms` later, a `read_committed` read of those offsets answers
/// UNSTABLE_OFFSET_COMMIT, as after a worker killed with its offset commit pending. Returns the
/// producer (kept, not polled, until the row ends) and how many offsets it holds.
fn leave_offsets_pending(case: &Case) -> anyhow::Result<(BaseProducer, usize)> {
    let mut list = TopicPartitionList::new();
    for topic in [case.input.clone(), format!("{}-repartition", case.group)] {
        let Ok(count) = partition_count(&case.bootstrap, &topic) else { continue };
        let partitions: Vec<i32> = (0..count).collect();
        // Without waiting: a killed worker's own open transaction may hold some of them.
        let commits = streamjob_worker::group_offsets::committed_without_waiting(
            &case.bootstrap,
            &case.group,
            &topic,
            &partitions,
        )?;
        for commit in commits {
            list.add_partition_offset(&commit.topic, commit.partition, Offset::Offset(commit.offset))?;
            if let (Some(metadata), Some(mut element)) =
                (&commit.metadata, list.find_partition(&commit.topic, commit.partition))
            {
                element.set_metadata(metadata.as_str());
            }
        }
    }
    if list.count() == 0 {
        bail!("the group has committed nothing yet");
    }
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &case.bootstrap)
        .set("transactional.id", unique("zombie"))
        .set("transaction.timeout.ms", TRANSACTION_TIMEOUT.as_millis().to_string())
        .create()?;
    producer.init_transactions(TIMEOUT)?;
    producer.begin_transaction()?;
    let group: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &case.bootstrap).set("group.id", &case.group).create()?;
    let metadata = group.group_metadata().context("the group's metadata")?;
    producer.send_offsets_to_transaction(&list, &metadata, TIMEOUT).context("offsets into the open transaction")?;
    Ok((producer, list.count()))
}

fn partition_count(bootstrap: &str, topic: &str) -> anyhow::Result<i32> {
    let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let found = metadata.topics().first().filter(|t| t.error().is_none()).context("no such topic")?;
    Ok(found.partitions().len() as i32)
}

fn admin(bootstrap: &str) -> anyhow::Result<(AdminClient<DefaultClientContext>, tokio::runtime::Runtime)> {
    let admin = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    Ok((admin, tokio::runtime::Builder::new_current_thread().enable_all().build()?))
}

fn grow_topic(bootstrap: &str, topic: &str, partitions: usize) -> anyhow::Result<()> {
    let (admin, runtime) = admin(bootstrap)?;
    let results =
        runtime.block_on(admin.create_partitions(&[NewPartitions::new(topic, partitions)], &AdminOptions::new()))?;
    for result in results {
        result.map_err(|(topic, code)| anyhow::anyhow!("cannot add partitions to {topic}: {code}"))?;
    }
    let deadline = Instant::now() + TIMEOUT;
    while partition_count(bootstrap, topic)? < partitions as i32 {
        if Instant::now() > deadline {
            bail!("{topic} does not show {partitions} partitions");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn delete_topic(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let (admin, runtime) = admin(bootstrap)?;
    let results = runtime.block_on(admin.delete_topics(&[topic], &AdminOptions::new()))?;
    for result in results {
        result.map_err(|(topic, code)| anyhow::anyhow!("cannot delete {topic}: {code}"))?;
    }
    let deadline = Instant::now() + TIMEOUT;
    while partition_count(bootstrap, topic).is_ok() {
        if Instant::now() > deadline {
            bail!("{topic} still exists");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Writes `total` records over `over`, record `i` to partition `i % partitions` (what
/// `partitions` says at the time): the producer's own metadata would see new partitions only
/// at its refresh, minutes later.
fn write_partitioned(
    bootstrap: &str,
    topic: &str,
    total: usize,
    over: Duration,
    partitions: &AtomicI32,
    make: impl Fn(usize) -> NewRecord,
) -> anyhow::Result<Vec<NewRecord>> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()?;
    let steps = (over.as_millis() / 100).max(1) as usize;
    let start = Instant::now();
    let mut written = Vec::with_capacity(total);
    for step in 0..steps {
        std::thread::sleep(
            (start + Duration::from_millis(100 * step as u64)).saturating_duration_since(Instant::now()),
        );
        for i in written.len()..total * (step + 1) / steps {
            let record = make(i);
            let partition = i as i32 % partitions.load(Ordering::SeqCst);
            let mut tries = 0;
            loop {
                let mut base =
                    BaseRecord::<[u8], [u8]>::to(topic).payload(record.value.as_slice()).partition(partition);
                if let (Some(key), Some(timestamp)) = (&record.key, record.timestamp_ms) {
                    base = base.key(key.as_bytes()).timestamp(timestamp);
                }
                match send_waiting(&producer, base) {
                    Ok(()) => break,
                    // A partition added a moment ago: the producer learns of it from new metadata.
                    Err(rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition))
                        if tries < 100 =>
                    {
                        tries += 1;
                        let _ = producer.client().fetch_metadata(Some(topic), Duration::from_secs(5));
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            written.push(record);
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(written)
}

/// Writes `transactions` transactions of `size` passthrough records (unique `seq`s), every
/// fourth aborted. Returns the committed records and how many were aborted.
fn write_transactions(
    bootstrap: &str,
    topic: &str,
    transactions: usize,
    size: usize,
) -> anyhow::Result<(Vec<NewRecord>, usize)> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", unique("input-writer"))
        .create()?;
    producer.init_transactions(TIMEOUT)?;
    let (mut committed, mut aborted) = (Vec::new(), 0);
    for transaction in 0..transactions {
        producer.begin_transaction()?;
        let records: Vec<NewRecord> =
            (0..size).map(|j| record(Job::Passthrough, transaction * size + j, false)).collect();
        for record in &records {
            let key = record.key.as_deref().unwrap_or_default();
            send_waiting(&producer, BaseRecord::to(topic).key(key.as_bytes()).payload(record.value.as_slice()))?;
        }
        // Aborting waits for the delivery reports, which only a poll serves.
        producer.flush(TIMEOUT)?;
        if transaction % 4 == 3 {
            producer.abort_transaction(TIMEOUT)?;
            aborted += records.len();
        } else {
            producer.commit_transaction(TIMEOUT)?;
            committed.extend(records);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((committed, aborted))
}

/// Waits until every partition of `topic` has a commit of `group` at its high watermark, as the
/// operator's probe computes lag; returns how long that took.
fn wait_lag_zero(bootstrap: &str, group: &str, topic: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let partitions: Vec<i32> = (0..partition_count(bootstrap, topic)?).collect();
    let deadline = started + Duration::from_secs(20);
    loop {
        let commits = streamjob_worker::group_offsets::committed(bootstrap, group, topic, &partitions)?;
        let mut lags = Vec::new();
        for partition in &partitions {
            let (_, high) = client.fetch_watermarks(topic, *partition, Duration::from_secs(10))?;
            let committed = commits.iter().find(|c| c.partition == *partition).map_or(-1, |c| c.offset);
            lags.push(high - committed.max(0));
        }
        if lags.iter().all(|lag| *lag == 0) {
            return Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            bail!("lag per partition stays {lags:?} 20 s after the sink was complete");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// The table.

struct Spec {
    scenario: &'static str,
    job: Job,
    delivery: Delivery,
    partitions: i32,
    lateness: Option<&'static str>,
    run: Box<dyn Fn(&Case) -> Row + Send>,
}

impl Spec {
    fn task(self, bootstrap: &str) -> Task {
        let bootstrap = bootstrap.to_owned();
        let weight = 1;
        let run = move || {
            let lateness = self.lateness;
            let edit = move |doc: &mut serde_yaml::Value| {
                if let Some(lateness) = lateness {
                    let pipeline = doc["spec"]["pipeline"].as_sequence_mut().context("a pipeline")?;
                    for stage in pipeline.iter_mut().filter(|stage| stage.get("window").is_some()) {
                        stage["window"]["allowedLateness"] = lateness.into();
                    }
                }
                Ok(())
            };
            match Case::create(self.scenario, self.job, self.delivery, &bootstrap, self.partitions, edit) {
                Ok(case) => vec![(self.run)(&case)],
                Err(error) => vec![Row {
                    scenario: self.scenario.to_owned(),
                    job: self.job,
                    delivery: self.delivery,
                    outcome: Err(format!("{error:#}")),
                    notes: Vec::new(),
                    elapsed: Duration::ZERO,
                }],
            }
        };
        Task { weight, run: Box::new(run) }
    }
}

fn plan(bootstrap: &str) -> Vec<Task> {
    let mut specs = Vec::new();
    let spec = |scenario, job, delivery, partitions, run: Box<dyn Fn(&Case) -> Row + Send>| Spec {
        scenario,
        job,
        delivery,
        partitions,
        lateness: None,
        run,
    };
    for job in [Job::Passthrough, Job::WordCount] {
        for delivery in [Delivery::AtLeastOnce, Delivery::ExactlyOnce] {
            specs.push(spec("stays dead", job, delivery, 6, Box::new(|case| stays_dead(case, 2))));
        }
        specs.push(spec("scale-down 3 → 1", job, Delivery::ExactlyOnce, 6, Box::new(|case| stays_dead(case, 3))));
    }
    specs.push(spec("partitions 3 → 6", Job::Passthrough, Delivery::ExactlyOnce, 3, Box::new(partitions_added)));
    specs.push(Spec {
        lateness: Some("5s"),
        ..spec("partitions 3 → 6", Job::WordCount, Delivery::AtLeastOnce, 3, Box::new(partitions_added))
    });
    for delivery in [Delivery::AtLeastOnce, Delivery::ExactlyOnce] {
        specs.push(spec("aborted input txns", Job::Passthrough, delivery, 4, Box::new(aborted_input)));
        specs.push(spec("sink deleted", Job::Passthrough, delivery, 4, Box::new(sink_deleted)));
    }
    // STREAMJOB_FAULT_SUITE_ONLY=<text> runs only the scenarios whose name contains it.
    let only = std::env::var("STREAMJOB_FAULT_SUITE_ONLY").unwrap_or_default();
    specs.into_iter().filter(|spec| spec.scenario.contains(&only)).map(|spec| spec.task(bootstrap)).collect()
}

/// Every row against the real broker of `STREAMJOB_TEST_BOOTSTRAP`, one table, and no lost,
/// unexpected or (exactly once) duplicated record.
#[test]
fn faults_takeover() {
    let Some(bootstrap) = real_broker() else { return };
    let started = Instant::now();
    let rows = run_all(plan(&bootstrap));
    report("faults: takeover, growth, transactional input, refusing sink", &rows, started);
}
