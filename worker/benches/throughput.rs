//! Worker throughput against one broker: produces N records, then measures records/s of
//! (a) a raw rdkafka consumer that only counts, (b) the worker with a passthrough pipeline,
//! (c) a JSON filter + map, (d) word count with a 10 s tumbling window, each as records/s and
//! as a ratio to (a). Each rate is timed from the first record read to the N-th, so group
//! joins do not count. Beside each case it prints the same work as a hand-written rdkafka loop,
//! and the worker's engine alone, without Kafka.
//!
//! `cargo bench -p streamjob-worker --bench throughput -- [--records N] [--repeat R] [--bootstrap HOST:PORT] [--engine-only]`
//! Without `--bootstrap` the broker is librdkafka's mock cluster in this process.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, Producer};
use streamjob_worker::engine::{Engine, Input};
use streamjob_worker::mock_broker::MockBroker;
use streamjob_worker::pipeline::CompiledPipeline;
use streamjob_worker::runner::engine_settings;
use streamjob_worker::topic_io::{assign_from_beginning, producer, send_waiting};
use streamjob_worker::{Control, Overrides, WorkerConfig};

#[derive(Parser)]
struct Args {
    /// Records per input topic.
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Partitions of the input topics (mock broker only).
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// A Kafka to measure against instead of the in-process mock cluster.
    #[arg(long)]
    bootstrap: Option<String>,
    /// Which cases to run, for example `ab` (the raw consumer always runs: it is the baseline).
    #[arg(long, default_value = "abcd")]
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

/// A consumer of every partition of `topic` from the beginning, outside any group's commits.
fn assigned_consumer(bootstrap: &str, topic: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("fetch.queue.backoff.ms", "10")
        .set("enable.auto.commit", "false")
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
    mut handle: impl FnMut(&BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let consumer = assigned_consumer(bootstrap, topic, group)?;
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
fn raw_consumer(bootstrap: &str, topic: &str, records: usize) -> anyhow::Result<f64> {
    consume(bootstrap, topic, records, "streamjob-bench-raw", |_| Ok(()))
}

/// The same work as a case, written the way a hand-written rdkafka loop does it: no offset
/// tracking, no dead-letter topic, no metrics: what this machine and broker allow for the
/// same work.
fn hand_written(bootstrap: &str, case: char, records: usize) -> anyhow::Result<f64> {
    let producer = producer(bootstrap)?;
    let group = format!("streamjob-bench-hand-{case}");
    let send = |topic: &str, key: Option<&[u8]>, payload: &[u8]| {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        send_waiting(&producer, record)
    };
    let rate = match case {
        'b' => consume(bootstrap, "bench-json", records, &group, |message| {
            Ok(send("bench-hand-b", message.key(), message.payload().unwrap_or_default())?)
        }),
        'c' => consume(bootstrap, "bench-json", records, &group, |message| {
            let event: serde_json::Value = serde_json::from_slice(message.payload().unwrap_or_default())?;
            if event["type"] == "click" {
                let out = serde_json::json!({"user": event["user"], "amount": event["amount"], "source": "web"});
                send("bench-hand-c", message.key(), &serde_json::to_vec(&out)?)?;
            }
            Ok(())
        }),
        _ => {
            let mut counts: HashMap<(i64, String), u64> = HashMap::new();
            consume(bootstrap, "bench-text", records, &group, |message| {
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

/// Records the broker still holds (librdkafka's mock cluster keeps a bounded log per partition).
fn retained(bootstrap: &str, topic: &str) -> anyhow::Result<usize> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut total = 0;
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(10))?;
        total += (high - low) as usize;
    }
    Ok(total)
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

/// (letter, description, job manifest, input topic)
fn cases() -> [(char, &'static str, String, &'static str); 3] {
    [
        ('b', "(b) worker, passthrough (json in, json out)", job("bench-json", "json", "[]", "bench-out-b"), "bench-json"),
        (
            'c',
            "(c) worker, JSON filter + map",
            job(
                "bench-json",
                "json",
                "[{filter: {field: type, op: eq, value: click}}, {map: {select: [user, amount], set: {source: web}}}]",
                "bench-out-c",
            ),
            "bench-json",
        ),
        (
            'd',
            "(d) worker, word count, 10 s tumbling",
            job(
                "bench-text",
                "text",
                "[{split: {field: value, lowercase: true}}, {keyBy: {field: value}}, {window: {size: 10s, aggregate: {function: count}}}]",
                "bench-out-d",
            ),
            "bench-text",
        ),
    ]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let selected = |letter: &char| args.cases.contains(*letter);
    if args.engine_only {
        println!("{:<44} {:>12}", "engine alone (no Kafka)", "records/s");
        for (letter, case, manifest, topic) in cases().iter().filter(|(letter, ..)| selected(letter)) {
            let make = if *topic == "bench-json" { json_record } else { text_record };
            let alone = median_of(args.repeat, |_| engine_alone(manifest, make, args.records))?;
            println!("{case:<44} {alone:>12.0}   ({letter})");
        }
        return Ok(());
    }
    let mock;
    let bootstrap = match &args.bootstrap {
        Some(bootstrap) => bootstrap.clone(),
        None => {
            mock = MockBroker::start(1)?;
            for topic in ["bench-json", "bench-text"] {
                mock.create_topic(topic, args.partitions)?;
            }
            for topic in ["bench-out-b", "bench-out-c", "bench-out-d", "bench-hand-b", "bench-hand-c"] {
                mock.create_topic(topic, args.partitions)?;
            }
            mock.bootstrap_servers()
        }
    };
    let n = args.records;
    produce(&bootstrap, "bench-json", n, json_record)?;
    produce(&bootstrap, "bench-text", n, text_record)?;

    let (json_records, text_records) = (retained(&bootstrap, "bench-json")?, retained(&bootstrap, "bench-text")?);
    println!("retained by the broker: {json_records} JSON, {text_records} text records");
    let raw = median_of(args.repeat, |_| raw_consumer(&bootstrap, "bench-json", json_records))?;
    let cases = cases();
    let mut results = vec![("(a) raw rdkafka consumer, counting", raw, None)];
    for (letter, case, manifest, topic) in cases.iter().filter(|(letter, ..)| selected(letter)) {
        let records = if *topic == "bench-json" { json_records } else { text_records };
        let rate =
            median_of(args.repeat, |run| worker_rate(&bootstrap, manifest, records, &format!("bench-{letter}-{run}")))?;
        let hand = median_of(args.repeat, |_| hand_written(&bootstrap, *letter, records))?;
        let make = if *topic == "bench-json" { json_record } else { text_record };
        let alone = median_of(args.repeat, |_| engine_alone(manifest, make, n))?;
        results.push((case, rate, Some((hand, alone))));
    }
    println!(
        "\n{n} records, {} partitions, broker {}, median of {} runs",
        args.partitions,
        if args.bootstrap.is_some() { bootstrap.as_str() } else { "in-process mock cluster" },
        args.repeat.max(1)
    );
    println!(
        "{:<44} {:>12} {:>8}   {:>21}   {:>12}",
        "case", "records/s", "ratio", "hand-written loop", "engine alone"
    );
    for (case, value, others) in results {
        let others =
            others.map_or(String::new(), |(hand, alone)| format!("{hand:>12.0} {:>8.2}   {alone:>12.0}", hand / raw));
        println!("{case:<44} {value:>12.0} {:>8.2}   {others}", value / raw);
    }
    Ok(())
}
