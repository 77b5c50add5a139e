//! Worker throughput against one broker: produces N records, then measures records/s of
//! (a) a raw rdkafka consumer that only counts, (b) the worker with a passthrough pipeline,
//! (c) a JSON filter + map, (d) word count with a 10 s tumbling window, each as records/s and
//! as a ratio to (a). Each rate is timed from the first record read to the N-th, so group
//! joins do not count. Beside each case it prints the same work as a hand-written rdkafka loop,
//! and the worker's engine alone, without Kafka. Case (i) is the cost of reading with
//! `isolation.level=read_committed`, as every worker does: the raw consumer with
//! `read_uncommitted` on the same input, and with `read_committed` on the same records written
//! in transactions of 1 000 (the input of a job downstream of an exactly-once one).
//!
//! `cargo bench -p streamjob-worker --bench throughput -- [--records N] [--repeat R] [--bootstrap HOST:PORT] [--engine-only]`
//! Without `--bootstrap` the broker is librdkafka's mock cluster in this process. Each run makes
//! its own topics and groups (the broker may be shared and keeps them), and reports no case
//! whose input the broker did not keep whole.
//!
//! One file for one table: the cases, their hand-written baselines and the engine-alone runs
//! are printed side by side and read together.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use streamjob_worker::engine::{Engine, Input};
use streamjob_worker::mock_broker::MockBroker;
use streamjob_worker::pipeline::CompiledPipeline;
use streamjob_worker::runner::engine_settings;
use streamjob_worker::topic_io::{assign_from_beginning, create_topics, producer, send_waiting};
use streamjob_worker::{Control, Overrides, WorkerConfig};

#[derive(Parser)]
struct Args {
    /// Records per input topic.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Partitions of the topics the bench creates.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// A Kafka to measure against instead of the in-process mock cluster.
    #[arg(long)]
    bootstrap: Option<String>,
    /// Which cases to run, for example `ab` (the raw consumer always runs: it is the baseline).
    #[arg(long, default_value = "abcdi")]
    cases: String,
    /// Runs of each case; the median is printed.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Only measure the engine alone, without Kafka.
    #[arg(long)]
    engine_only: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const WORDS: [&str; 16] = [
    "stream",
    "window",
    "kafka",
    "worker",
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "lag",
    "offset",
    "commit",
    "partition",
];

fn json_record(i: usize) -> String {
    let kind = if i.is_multiple_of(2) { "click" } else { "view" };
    format!(
        r#"{{"id":{i},"user":"u{}","type":"{kind}","amount":{}.5,"page":"/products/{}"}}"#,
        i % 1000,
        i % 97,
        i % 500
    )
}

fn text_record(i: usize) -> String {
    (0..17).map(|j| WORDS[(i * 7 + j * 5) % WORDS.len()]).collect::<Vec<_>>().join(" ")
}

fn produce(bootstrap: &str, topic: &str, records: usize, make: fn(usize) -> String) -> anyhow::Result<()> {
    let producer = producer(bootstrap)?;
    let started = Instant::now();
    for i in 0..records {
        let value = make(i);
        let key = format!("k{i}");
        send_waiting(&producer, BaseRecord::to(topic).key(key.as_bytes()).payload(value.as_bytes()))?;
    }
    producer.flush(Duration::from_secs(120))?;
    println!(
        "produced {records} records to {topic} in {:.1} s (~{} bytes each)",
        started.elapsed().as_secs_f64(),
        make(1).len()
    );
    Ok(())
}

/// The records of `produce`, written in transactions of `TRANSACTION_RECORDS` by a
/// transactional producer.
fn produce_in_transactions(
    bootstrap: &str,
    topic: &str,
    records: usize,
    make: fn(usize) -> String,
) -> anyhow::Result<()> {
    const TIMEOUT: Duration = Duration::from_secs(60);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("transactional.id", format!("{topic}-writer"))
        .create()?;
    producer.init_transactions(TIMEOUT)?;
    for first in (0..records).step_by(TRANSACTION_RECORDS) {
        producer.begin_transaction()?;
        for i in first..(first + TRANSACTION_RECORDS).min(records) {
            let (key, value) = (format!("k{i}"), make(i));
            send_waiting(&producer, BaseRecord::to(topic).key(key.as_bytes()).payload(value.as_bytes()))?;
        }
        producer.commit_transaction(TIMEOUT)?;
    }
    Ok(())
}

const TRANSACTION_RECORDS: usize = 1_000;

/// librdkafka's default isolation level, and what every worker reads with.
const READ_COMMITTED: &str = "read_committed";

/// A consumer of every partition of `topic` from the beginning, outside any group's commits.
fn assigned_consumer_reading(
    bootstrap: &str,
    topic: &str,
    group: &str,
    isolation: &str,
) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("fetch.queue.backoff.ms", "10")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()?;
    assign_from_beginning(&consumer, topic)?;
    Ok(consumer)
}

/// Reads `records` records of `topic`, handing each to `handle`; the rate from the first read to the last.
fn consume(
    bootstrap: &str,
    topic: &str,
    records: usize,
    group: &str,
    handle: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    consume_reading(bootstrap, topic, records, group, READ_COMMITTED, handle)
}

fn consume_reading(
    bootstrap: &str,
    topic: &str,
    records: usize,
    group: &str,
    isolation: &str,
    mut handle: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let consumer = assigned_consumer_reading(bootstrap, topic, group, isolation)?;
    let mut count = 0;
    let mut first: Option<Instant> = None;
    while count < records {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            handle(&message)?;
            count += 1;
        }
    }
    Ok(rate(records, first))
}

/// (a): only counts.
fn raw_consumer(bootstrap: &str, run: &str, records: usize) -> anyhow::Result<f64> {
    consume(bootstrap, &Feed::Json.topic(run), records, &format!("{run}-raw"), |_| Ok(()))
}

/// (i): only counts, reading `topic` with `isolation`.
fn raw_consumer_reading(
    bootstrap: &str,
    topic: &str,
    group: &str,
    isolation: &str,
    records: usize,
) -> anyhow::Result<f64> {
    consume_reading(bootstrap, topic, records, group, isolation, |_| Ok(()))
}

/// (i): the raw consumer with `read_uncommitted` on the JSON input, and with `read_committed`
/// on the same records written in transactions.
fn isolation_cases(bootstrap: &str, run: &str, records: usize, repeat: usize) -> anyhow::Result<Results> {
    let (json, transactional) = (Feed::Json.topic(run), transactional_topic(run));
    produce_in_transactions(bootstrap, &transactional, records, json_record)?;
    let uncommitted = median_of(repeat, |i| {
        raw_consumer_reading(bootstrap, &json, &format!("{run}-uncommitted-{i}"), "read_uncommitted", records)
    })?;
    let in_transactions = median_of(repeat, |i| {
        raw_consumer_reading(bootstrap, &transactional, &format!("{run}-committed-{i}"), READ_COMMITTED, records)
    })?;
    Ok(vec![
        ("(i) raw consumer, read_uncommitted", uncommitted, None),
        ("(i) raw, read_committed, in transactions", in_transactions, None),
    ])
}

fn transactional_topic(run: &str) -> String {
    format!("{run}-in-transactions")
}

/// The same work as a case, written the way a hand-written rdkafka loop does it: no offset
/// tracking, no dead-letter topic, no metrics: what this machine and broker allow for the
/// same work.
fn hand_written(bootstrap: &str, run: &str, case: char, records: usize) -> anyhow::Result<f64> {
    let producer = producer(bootstrap)?;
    let group = format!("{run}-hand-{case}");
    let (json, text, hand_topic) = (Feed::Json.topic(run), Feed::Text.topic(run), format!("{run}-hand-{case}"));
    let send = |topic: &str, key: Option<&[u8]>, payload: &[u8]| {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        send_waiting(&producer, record)
    };
    let rate = match case {
        'b' => consume(bootstrap, &json, records, &group, |message| {
            Ok(send(&hand_topic, message.key(), message.payload().unwrap_or_default())?)
        }),
        'c' => consume(bootstrap, &json, records, &group, |message| {
            let event: serde_json::Value = serde_json::from_slice(message.payload().unwrap_or_default())?;
            if event["type"] == "click" {
                let out = serde_json::json!({"user": event["user"], "amount": event["amount"], "source": "web"});
                send(&hand_topic, message.key(), &serde_json::to_vec(&out)?)?;
            }
            Ok(())
        }),
        _ => {
            let mut counts: HashMap<(i64, String), u64> = HashMap::new();
            consume(bootstrap, &text, records, &group, |message| {
                let window = message.timestamp().to_millis().unwrap_or_default() / 10_000;
                for word in std::str::from_utf8(message.payload().unwrap_or_default())?.split_whitespace() {
                    *counts.entry((window, word.to_lowercase())).or_default() += 1;
                }
                Ok(())
            })
        }
    }?;
    producer.flush(Duration::from_secs(60))?;
    Ok(rate)
}

/// Why the broker does not hold all `produced` records of `topic` (its watermarks span fewer:
/// librdkafka's mock cluster keeps a bounded log per partition), or `None` when it does.
fn not_kept_whole(bootstrap: &str, topic: &str, produced: usize) -> anyhow::Result<Option<String>> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut kept = 0;
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(10))?;
        kept += (high - low) as usize;
    }
    Ok((kept != produced).then(|| format!("the broker holds {kept} of the {produced} records produced to {topic}")))
}

/// The median of `repeat` runs of `run`, each given its run number.
fn median_of(repeat: usize, mut run: impl FnMut(usize) -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let mut rates = (0..repeat.max(1)).map(&mut run).collect::<anyhow::Result<Vec<f64>>>()?;
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

fn rate(records: usize, first: Option<Instant>) -> f64 {
    first.map_or(0.0, |f| records as f64 / f.elapsed().as_secs_f64())
}

fn worker_rate(bootstrap: &str, manifest: &str, records: usize, group: &str) -> anyhow::Result<f64> {
    let mut job = streamjob_crds::parse_manifest(manifest).map_err(|e| anyhow::anyhow!("{e}"))?;
    job.metadata.name = Some(group.to_owned());
    let overrides = Overrides {
        bootstrap_servers: Some(bootstrap.to_owned()),
        consumer_group: Some(group.to_owned()),
        instance_id: Some(format!("{group}-0")),
    };
    let config = WorkerConfig::from_job(job, &overrides, |_| None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let control = Control::default();
    let worker_control = control.clone();
    let handle = std::thread::spawn(move || streamjob_worker::run(config, worker_control));
    let mut first = None;
    loop {
        let read = control.totals.records_in.load(Ordering::Relaxed) as usize;
        if read > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if read >= records {
            break;
        }
        if handle.is_finished() {
            anyhow::bail!("the worker stopped early");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let result = rate(records, first);
    control.shutdown.store(true, Ordering::SeqCst);
    handle.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    Ok(result)
}

/// The engine alone, without Kafka: records/s of `make`'s records through `manifest`'s
/// pipeline, every output acknowledged at once: the processing cost apart from the client and
/// the broker.
fn engine_alone(manifest: &str, make: fn(usize) -> String, records: usize) -> anyhow::Result<f64> {
    let job = streamjob_crds::parse_manifest(manifest).map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = WorkerConfig::from_job(job, &Overrides::default(), |_| None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pipeline = CompiledPipeline::compile(&config.job.spec.pipeline)?;
    let repartition = pipeline.window.is_some().then(|| (config.repartition_topic(), 6));
    let settings = engine_settings(&config, repartition);
    let mut engine = Engine::new(settings, pipeline, Arc::default(), Arc::default());
    engine.assign("bench", 0, None);
    let payloads: Vec<String> = (0..10_000).map(make).collect();
    let started = Instant::now();
    let now_ms = 1_700_000_000_000;
    for offset in 0..records {
        let payload = payloads[offset % payloads.len()].as_bytes();
        let input = Input {
            topic: "bench",
            partition: 0,
            offset: offset as i64,
            key: Some(b"key"),
            payload: Some(payload),
            timestamp_ms: Some(now_ms),
        };
        engine.on_input(&input, now_ms);
        if offset % 256 == 255 {
            engine.on_tick(now_ms);
            let outputs = engine.take_outputs();
            for ticket in outputs.iter().filter_map(|output| output.ticket) {
                engine.on_delivery(ticket, Ok(()), now_ms);
            }
            engine.recycle_outputs(outputs);
        }
    }
    Ok(records as f64 / started.elapsed().as_secs_f64())
}

fn job(source_topic: &str, format: &str, pipeline: &str, sink: &str) -> String {
    format!(
        "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata: {{name: bench}}\nspec:\n  source:\n    \
         bootstrapServers: unused:9092\n    topics: [{source_topic}]\n    format: {format}\n  pipeline: {pipeline}\n  \
         sink: {{topic: {sink}}}\n"
    )
}

/// The two inputs the cases read.
#[derive(Clone, Copy, PartialEq)]
enum Feed {
    Json,
    Text,
}

impl Feed {
    fn topic(self, run: &str) -> String {
        match self {
            Feed::Json => format!("{run}-json"),
            Feed::Text => format!("{run}-text"),
        }
    }

    fn make(self) -> fn(usize) -> String {
        match self {
            Feed::Json => json_record,
            Feed::Text => text_record,
        }
    }
}

/// (letter, description, job manifest, input), on the topics of `run`.
fn cases(run: &str) -> [(char, &'static str, String, Feed); 3] {
    let (json, text) = (Feed::Json.topic(run), Feed::Text.topic(run));
    let out = |letter: char| format!("{run}-out-{letter}");
    [
        ('b', "(b) worker, passthrough (json in, json out)", job(&json, "json", "[]", &out('b')), Feed::Json),
        (
            'c',
            "(c) worker, JSON filter + map",
            job(
                &json,
                "json",
                "[{filter: {field: type, op: eq, value: click}}, {map: {select: [user, amount], set: {source: web}}}]",
                &out('c'),
            ),
            Feed::Json,
        ),
        (
            'd',
            "(d) worker, word count, 10 s tumbling",
            job(
                &text,
                "text",
                "[{split: {field: value, lowercase: true}}, {keyBy: {field: value}}, {window: {size: 10s, aggregate: {function: count}}}]",
                &out('d'),
            ),
            Feed::Text,
        ),
    ]
}

/// Every topic a run writes: the inputs, the workers' sinks and the hand-written loops' sinks.
fn run_topics(run: &str) -> Vec<String> {
    let mut topics = vec![Feed::Json.topic(run), Feed::Text.topic(run)];
    topics.extend(['b', 'c', 'd'].map(|letter| format!("{run}-out-{letter}")));
    topics.extend(['b', 'c'].map(|letter| format!("{run}-hand-{letter}")));
    topics.push(transactional_topic(run));
    topics
}

/// A name for this run's topics and groups: the broker may be shared and keeps them.
fn run_name() -> String {
    let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("bench-{}-{seconds}", std::process::id())
}

fn engine_only(args: &Args) -> anyhow::Result<()> {
    println!("{:<44} {:>12}", "engine alone (no Kafka)", "records/s");
    for (letter, case, manifest, feed) in cases("bench").iter().filter(|(letter, ..)| args.cases.contains(*letter)) {
        let alone = median_of(args.repeat, |_| engine_alone(manifest, feed.make(), args.records))?;
        println!("{case:<44} {alone:>12.0}   ({letter})");
    }
    Ok(())
}

/// (case, worker records/s, hand-written loop and engine alone records/s)
type Results = Vec<(&'static str, f64, Option<(f64, f64)>)>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.engine_only {
        return engine_only(&args);
    }
    let run = run_name();
    let topics = run_topics(&run);
    let mock;
    let bootstrap = match &args.bootstrap {
        Some(bootstrap) => {
            let wanted: Vec<(&str, i32)> = topics.iter().map(|t| (t.as_str(), args.partitions)).collect();
            create_topics(bootstrap, &wanted)?;
            bootstrap.clone()
        }
        None => {
            mock = MockBroker::start(1)?;
            for topic in &topics {
                mock.create_topic(topic, args.partitions)?;
            }
            mock.bootstrap_servers()
        }
    };
    let n = args.records;
    produce(&bootstrap, &Feed::Json.topic(&run), n, json_record)?;
    produce(&bootstrap, &Feed::Text.topic(&run), n, text_record)?;
    if let Some(missing) = not_kept_whole(&bootstrap, &Feed::Json.topic(&run), n)? {
        anyhow::bail!(
            "{missing}: no rate is reported over part of the input (the mock cluster keeps up to 100 000 records \
             or 5 MiB per partition: use fewer --records or more --partitions)"
        );
    }
    let text_missing = not_kept_whole(&bootstrap, &Feed::Text.topic(&run), n)?;
    let raw = median_of(args.repeat, |_| raw_consumer(&bootstrap, &run, n))?;
    let mut results: Results = vec![("(a) raw rdkafka consumer, counting", raw, None)];
    if args.cases.contains('i') {
        results.extend(isolation_cases(&bootstrap, &run, n, args.repeat)?);
    }
    for (letter, case, manifest, feed) in cases(&run).iter().filter(|(letter, ..)| args.cases.contains(*letter)) {
        if let (Feed::Text, Some(missing)) = (feed, &text_missing) {
            println!("{case}: not reported: {missing}");
            continue;
        }
        let rate = median_of(args.repeat, |i| worker_rate(&bootstrap, manifest, n, &format!("{run}-{letter}-{i}")))?;
        let hand = median_of(args.repeat, |_| hand_written(&bootstrap, &run, *letter, n))?;
        let alone = median_of(args.repeat, |_| engine_alone(manifest, feed.make(), n))?;
        results.push((case, rate, Some((hand, alone))));
    }
    let broker = if args.bootstrap.is_some() { bootstrap.as_str() } else { "in-process mock cluster" };
    println!("\n{n} records, {} partitions, broker {broker}, median of {} runs", args.partitions, args.repeat.max(1));
    print_results(&results, raw);
    Ok(())
}

fn print_results(results: &Results, raw: f64) {
    println!(
        "{:<44} {:>12} {:>8}   {:>21}   {:>12}",
        "case", "records/s", "ratio", "hand-written loop", "engine alone"
    );
    for (case, value, others) in results {
        let others =
            others.map_or(String::new(), |(hand, alone)| format!("{hand:>12.0} {:>8.2}   {alone:>12.0}", hand / raw));
        println!("{case:<44} {value:>12.0} {:>8.2}   {others}", value / raw);
    }
}
