//! Fault rows of the records themselves (issue 26, item 6: no silent drop), on the real
//! broker, each at-least-once and exactly-once, one worker process per row:
//! - type drift under `amount gt 50`: the issue's values of `amount` (numbers, numeric
//!   strings, `"abc"`, `true`, `null`, missing, `"NaN"`, `"Infinity"`); every record is in the
//!   sink, filtered out by the job's own condition, or in the dead-letter topic with the reason
//!   it should have (`streamjob.reason`), counted per reason;
//! - big records: records of 1.5 MB among small ones, on sink and dead-letter topics that take
//!   5 MiB (`max.message.bytes`), all reach the sink once, and under at-least-once no small record
//!   is duplicated (the worker once rewound around each big one); records of 6 MB, over the
//!   topics' limit, are dead-lettered with reason `too-large` and without their value.
//!
//! A row fails on a lost or unexpected record, a duplicate under exactly-once, and here also a
//! record dead-lettered with another reason than its own, and (big records) a duplicate under
//! at-least-once: those are counted as unexpected, and the row's notes say so.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use streamjob_e2e::faults::{
    key_number, report, run_all, write_paced, Case, Checker, Delivery, Expected, Feed, Job, Row, Task, DELIVERIES,
};
use streamjob_e2e::real_broker;
use streamjob_testkit::kafka::NewRecord;
use streamjob_worker::runner::now_ms;
use streamjob_worker::topic_io::{send_waiting, TopicReader};

/// What `amount gt 50` must make of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Sink,
    /// The condition does not hold: the job's own choice, in no topic.
    FilteredOut,
    /// Dead-lettered with this `streamjob.reason`.
    Dead(&'static str),
}

/// The issue's values of `amount` (`None`: no `amount` field), and their fates.
const AMOUNTS: [(Option<&str>, Fate); 13] = [
    (Some("100"), Fate::Sink),
    (Some(r#""100""#), Fate::Sink),
    (Some(r#""1e3""#), Fate::Sink),
    (Some("50.5"), Fate::Sink),
    (Some(r#""7""#), Fate::FilteredOut),
    (Some(r#""9""#), Fate::FilteredOut),
    (Some("7"), Fate::FilteredOut),
    (Some(r#""abc""#), Fate::Dead("type-mismatch")),
    (Some("true"), Fate::Dead("type-mismatch")),
    (Some("null"), Fate::Dead("missing-field")),
    (None, Fate::Dead("missing-field")),
    (Some(r#""NaN""#), Fate::Dead("non-finite")),
    (Some(r#""Infinity""#), Fate::Dead("non-finite")),
];
const DRIFT_RECORDS: usize = 13 * 30;

/// Record `i` of the type-drift rows: `poison-<i>` for those the job must dead-letter,
/// `filtered-<i>` for those its condition drops, `rec-<i>` for the sink's.
fn drift_record(i: usize) -> NewRecord {
    let (amount, fate) = AMOUNTS[i % AMOUNTS.len()];
    let prefix = match fate {
        Fate::Sink => "rec",
        Fate::FilteredOut => "filtered",
        Fate::Dead(_) => "poison",
    };
    let value = match amount {
        Some(amount) => format!(r#"{{"seq": {i}, "amount": {amount}}}"#),
        None => format!(r#"{{"seq": {i}}}"#),
    };
    NewRecord { key: Some(format!("{prefix}-{i}")), value: value.into_bytes(), timestamp_ms: Some(now_ms()) }
}

/// The reason each dead-lettered record's key must carry.
fn drift_reasons() -> BTreeMap<String, &'static str> {
    (0..DRIFT_RECORDS)
        .filter_map(|i| match AMOUNTS[i % AMOUNTS.len()].1 {
            Fate::Dead(reason) => Some((format!("poison-{i}"), reason)),
            _ => None,
        })
        .collect()
}

/// A checker expecting the `rec-` records in the sink and the `poison-` ones dead-lettered;
/// a `filtered-` record in either is unexpected.
fn checker_of(input: &[NewRecord]) -> Checker {
    let keys = || input.iter().filter_map(|r| r.key.clone());
    Checker {
        expected: Expected::Records(
            keys().filter(|k| k.starts_with("rec-")).filter_map(|k| key_number(Some(&k))).collect(),
        ),
        poison: keys().filter(|k| k.starts_with("poison-")).collect(),
    }
}

/// At-least-once: the JSON filter alone (records forwarded as they came); exactly-once: the
/// filter and a `map` (records decoded and written again).
fn type_drift(delivery: Delivery, bootstrap: &str) -> Row {
    let started = Instant::now();
    let pipeline = match delivery {
        Delivery::AtLeastOnce => "[{filter: {field: amount, op: gt, value: 50}}]",
        Delivery::ExactlyOnce => "[{filter: {field: amount, op: gt, value: 50}}, {map: {set: {checked: true}}}]",
    };
    let case = match Case::create("type drift (amount gt 50)", Job::Passthrough, delivery, bootstrap, 2, |doc| {
        doc["spec"]["pipeline"] = serde_yaml::from_str(pipeline)?;
        Ok(())
    }) {
        Ok(case) => case,
        Err(error) => return failed_row("type drift (amount gt 50)", delivery, error),
    };
    let mut workers = Vec::new();
    let mut notes = Vec::new();
    let outcome = (|| {
        workers = case.workers(1)?;
        let (bootstrap, topic) = (case.bootstrap.clone(), case.input.clone());
        let feed = Feed(std::thread::spawn(move || {
            write_paced(&bootstrap, &topic, DRIFT_RECORDS, Duration::from_secs(3), drift_record)
        }));
        let (mut tally, details) = case.check_with(feed.join()?, checker_of)?;
        let wrong = check_reasons(&case, &drift_reasons(), &mut notes)?;
        tally.unexpected += wrong;
        let filtered = (0..DRIFT_RECORDS).filter(|i| AMOUNTS[i % AMOUNTS.len()].1 == Fate::FilteredOut).count();
        notes.push(format!("filtered out by amount gt 50 (\"7\", \"9\", 7): {filtered}"));
        Ok((tally, details))
    })();
    with_notes(case.row(outcome, &mut workers, started), notes)
}

/// Reads the dead-letter topic until it holds every key of `reasons`, and counts per reason;
/// returns how many carry another reason than theirs (or none), and notes the counts.
fn check_reasons(case: &Case, reasons: &BTreeMap<String, &str>, notes: &mut Vec<String>) -> anyhow::Result<usize> {
    let committed = case.delivery == Delivery::ExactlyOnce;
    let mut dead = TopicReader::new(&case.bootstrap, &case.dead_letters, committed)?;
    dead.read_until(Duration::from_secs(30), |records| records.len() >= reasons.len());
    let mut per_reason: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong = 0;
    let mut seen = BTreeSet::new();
    let omitted = dead.records.iter().filter(|l| l.headers.contains_key("streamjob.value.omitted")).count();
    if omitted > 0 {
        notes.push(format!("dead-lettered without their value (streamjob.value.omitted): {omitted}"));
    }
    for letter in &dead.records {
        let reason = letter.headers.get("streamjob.reason").cloned().unwrap_or_else(|| "(none)".into());
        let key = letter.key.clone().unwrap_or_default();
        if reasons.get(&key).is_some_and(|want| *want != reason) {
            wrong += 1;
            notes.push(format!("{key} dead-lettered with reason {reason}, want {}", reasons[&key]));
        }
        if seen.insert(key) {
            *per_reason.entry(reason).or_default() += 1;
        }
    }
    let counts: Vec<String> = per_reason.iter().map(|(reason, n)| format!("{reason} {n}")).collect();
    notes.push(format!("dead-lettered by reason: {}", counts.join(", ")));
    Ok(wrong)
}

// ---------------------------------------------------------------------------------------------
// Big records.

const MIB: usize = 1 << 20;
const BIG_RECORDS: usize = 160;
/// Of each 32 records, one of 1.5 MB and one of 6 MB; the rest small.
fn big_record(i: usize) -> NewRecord {
    let (prefix, pad) = match i % 32 {
        8 => ("rec", 3 * MIB / 2),
        24 => ("poison", 6 * MIB),
        _ => ("rec", i % 64),
    };
    NewRecord {
        key: Some(format!("{prefix}-{i}")),
        value: format!(r#"{{"seq": {i}, "pad": "{}"}}"#, "x".repeat(pad)).into_bytes(),
        timestamp_ms: Some(now_ms()),
    }
}

/// Sets `max.message.bytes` of each topic.
fn set_max_message_bytes(bootstrap: &str, topics: &[(&str, usize)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let values: Vec<String> = topics.iter().map(|(_, bytes)| bytes.to_string()).collect();
    let configs: Vec<AlterConfig<'_>> = topics
        .iter()
        .zip(&values)
        .map(|((topic, _), bytes)| AlterConfig::new(ResourceSpecifier::Topic(topic)).set("max.message.bytes", bytes))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(15)));
    for result in futures::executor::block_on(admin.alter_configs(&configs, &options))? {
        if let Err((resource, code)) = result {
            bail!("cannot set max.message.bytes of {resource:?}: {code}");
        }
    }
    // The broker applies the change a moment later: the worker reads the limits at start.
    let deadline = Instant::now() + Duration::from_secs(30);
    for ((topic, _), bytes) in topics.iter().zip(&values) {
        let resource = [ResourceSpecifier::Topic(topic)];
        loop {
            let described = futures::executor::block_on(admin.describe_configs(&resource, &options))?;
            let value = described
                .into_iter()
                .next()
                .and_then(Result::ok)
                .and_then(|config| config.get("max.message.bytes").and_then(|entry| entry.value.clone()));
            if value.as_ref() == Some(bytes) {
                break;
            }
            if Instant::now() > deadline {
                bail!("{topic}'s max.message.bytes is still {value:?}, not {bytes}, after 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Writes the big rows' input over about 3 s with a producer that sends records up to 10 MB.
fn write_big(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<NewRecord>> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("message.max.bytes", (10 * MIB).to_string())
        .create()?;
    let mut written = Vec::with_capacity(BIG_RECORDS);
    for i in 0..BIG_RECORDS {
        if i % 8 == 0 {
            std::thread::sleep(Duration::from_millis(150));
        }
        let record = big_record(i);
        let key = record.key.clone().unwrap_or_default();
        send_waiting(&producer, BaseRecord::to(topic).key(key.as_bytes()).payload(record.value.as_slice()))
            .with_context(|| format!("writing {key}"))?;
        written.push(record);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while producer.flush(Duration::from_secs(10)).is_err() {
        if Instant::now() > deadline {
            bail!("{} records to {topic} unacknowledged after a minute", producer.in_flight_count());
        }
    }
    Ok(written)
}

/// The passthrough (keyed by `seq`) on an input that takes 8 MiB, sink and dead-letter topics
/// that take 5 MiB.
fn big_records(delivery: Delivery, bootstrap: &str) -> Row {
    let scenario = "records over 1 MB";
    let started = Instant::now();
    let case = match Case::create(scenario, Job::Passthrough, delivery, bootstrap, 2, |_| Ok(())) {
        Ok(case) => case,
        Err(error) => return failed_row(scenario, delivery, error),
    };
    let mut workers = Vec::new();
    let mut notes = Vec::new();
    let outcome = (|| {
        set_max_message_bytes(
            bootstrap,
            &[(&case.input, 8 * MIB), (&case.sink, 5 * MIB), (&case.dead_letters, 5 * MIB)],
        )?;
        workers = case.workers(1)?;
        let (bootstrap, topic) = (case.bootstrap.clone(), case.input.clone());
        let feed = Feed(std::thread::spawn(move || write_big(&bootstrap, &topic)));
        let (mut tally, details) = case.check_with(feed.join()?, checker_of)?;
        let reasons: BTreeMap<String, &str> =
            (0..BIG_RECORDS).filter(|i| i % 32 == 24).map(|i| (format!("poison-{i}"), "too-large")).collect();
        tally.unexpected += check_reasons(&case, &reasons, &mut notes)?;
        if delivery == Delivery::AtLeastOnce && tally.duplicated > 0 {
            notes.push(format!("{} duplicates under at-least-once, counted as unexpected", tally.duplicated));
            tally.unexpected += tally.duplicated;
        }
        let big = (0..BIG_RECORDS).filter(|i| i % 32 == 8).count();
        notes.push(format!(
            "{big} records of 1.5 MB, {} of 6 MB (sink and dead-letter topics take 5 MiB)",
            reasons.len()
        ));
        Ok((tally, details))
    })();
    with_notes(case.row(outcome, &mut workers, started), notes)
}

/// A row that could not start: it fails.
fn failed_row(scenario: &str, delivery: Delivery, error: anyhow::Error) -> Row {
    Row { delivery, ..streamjob_e2e::faults::failed_row(scenario, format!("{error:#}")) }
}

fn with_notes(mut row: Row, notes: Vec<String>) -> Row {
    row.notes.splice(0..0, notes);
    row
}

fn plan(bootstrap: &str) -> Vec<Task> {
    let mut tasks = Vec::new();
    for delivery in DELIVERIES {
        for scenario in [type_drift as fn(Delivery, &str) -> Row, big_records] {
            let bootstrap = bootstrap.to_owned();
            tasks.push(Task { weight: 1, run: Box::new(move || vec![scenario(delivery, &bootstrap)]) });
        }
    }
    tasks
}

#[test]
fn faults_records() {
    let Some(bootstrap) = real_broker() else { return };
    let started = Instant::now();
    let rows = run_all(plan(&bootstrap));
    report("faults of records", &rows, started);
}

/// The fates of the issue's values are those of the worker's own filter tests, and the checker
/// tells a filtered record in the sink from an expected one.
#[test]
fn the_type_drift_checker_expects_only_what_passes() {
    let input: Vec<NewRecord> = (0..AMOUNTS.len()).map(drift_record).collect();
    let checker = checker_of(&input);
    let Expected::Records(expected) = &checker.expected else { panic!("records expected") };
    assert_eq!(expected.iter().copied().collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(checker.poison.len(), 6);
    let read = |key: &str, value: &str| streamjob_worker::topic_io::ReadRecord {
        partition: 0,
        offset: 0,
        key: Some(key.to_owned()),
        value: value.to_owned(),
        headers: Default::default(),
    };
    let sink: Vec<_> = (0..4).map(|i| read(&format!("rec-{i}"), &format!(r#"{{"seq": {i}}}"#))).collect();
    let dead: Vec<_> = checker.poison.iter().map(|key| read(key, "")).collect();
    let tally = checker.tally(&sink, &dead);
    assert_eq!((tally.lost, tally.unexpected, tally.dead_lettered), (0, 0, 6));
    let with_filtered = [sink.clone(), vec![read("filtered-4", r#"{"seq": 4}"#)]].concat();
    assert_eq!(checker.tally(&with_filtered, &dead).unexpected, 1);
}
