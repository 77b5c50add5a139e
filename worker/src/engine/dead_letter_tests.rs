//! Records a stage cannot evaluate, and results too large for the sink: each goes to the
//! dead-letter topic with its reason, or is counted by reason without one; none is dropped in
//! silence, and none makes the worker rewind.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use streamjob_crds::{SinkFormat, SourceFormat};

use super::*;
use crate::metrics::{PartitionLabels, SkipLabels};

fn engine(pipeline: &str, source_format: SourceFormat, dead_letter: bool) -> Engine {
    let stages: Vec<streamjob_crds::PipelineStage> = serde_yaml::from_str(pipeline).expect("pipeline");
    let settings = EngineSettings {
        source_format,
        sink_format: SinkFormat::Json,
        dead_letter,
        repartition: None,
        flush_interval_ms: 200,
        idle_timeout_ms: 10_000,
        max_partials: 1000,
    };
    let mut engine =
        Engine::new(settings, CompiledPipeline::compile(&stages).expect("compiles"), Arc::default(), Arc::default());
    engine.assign("orders", 0, None);
    engine
}

fn read(engine: &mut Engine, offset: i64, payload: &[u8]) {
    let input =
        Input { topic: "orders", partition: 0, offset, key: Some(b"k"), payload: Some(payload), timestamp_ms: None };
    engine.on_input(&input, 0);
}

fn header<'a>(output: &'a Output, name: &str) -> Option<&'a str> {
    output.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
}

/// (destination, reason header) of each output, acknowledging them all.
fn deliver(engine: &mut Engine) -> Vec<(Destination, Option<String>)> {
    let outputs = engine.take_outputs();
    for ticket in outputs.iter().filter_map(|o| o.ticket) {
        engine.on_delivery(ticket, Ok(()), 0);
    }
    outputs.iter().map(|o| (o.destination, header(o, "streamjob.reason").map(str::to_owned))).collect()
}

const AMOUNTS: [&str; 9] = [r#"100"#, r#""100""#, r#""1e3""#, r#""7""#, r#""9""#, r#""abc""#, "true", "null", ""];

fn amount_record(amount: &str) -> Vec<u8> {
    match amount {
        "" => br#"{"id": 1}"#.to_vec(),
        amount => format!(r#"{{"id": 1, "amount": {amount}}}"#).into_bytes(),
    }
}

/// The issue's values under `amount gt 50`, forwarded as they came (a filter-only job) and
/// mapped: each is in the sink, filtered out, or dead-lettered with its reason.
#[test]
fn type_drift_under_a_filter_is_dead_lettered_with_its_reason() {
    let want = [
        (Destination::Sink, None),
        (Destination::Sink, None),
        (Destination::Sink, None),
        (Destination::DeadLetter, Some("type-mismatch".to_owned())),
        (Destination::DeadLetter, Some("type-mismatch".to_owned())),
        (Destination::DeadLetter, Some("missing-field".to_owned())),
        (Destination::DeadLetter, Some("missing-field".to_owned())),
    ];
    for pipeline in [
        "[{filter: {field: amount, op: gt, value: 50}}]",
        "[{filter: {field: amount, op: gt, value: 50}}, {map: {set: {seen: true}}}]",
    ] {
        let mut engine = engine(pipeline, SourceFormat::Json, true);
        for (offset, amount) in AMOUNTS.iter().enumerate() {
            read(&mut engine, offset as i64, &amount_record(amount));
        }
        assert_eq!(deliver(&mut engine), want, "{pipeline}: \"7\" and \"9\" are filtered out");
        assert!(engine.failure().is_none());
        assert_eq!(engine.commits(true).first().map(|c| c.offset), Some(AMOUNTS.len() as i64), "{pipeline}");
        assert_eq!(engine.totals.dead_lettered.load(Ordering::Relaxed), 4);
    }
}

/// Without a dead-letter topic, each is counted under its stage and reason.
#[test]
fn without_a_dead_letter_topic_each_is_counted_by_stage_and_reason() {
    let mut engine = engine("[{filter: {field: amount, op: gt, value: 50}}]", SourceFormat::Json, false);
    for (offset, amount) in AMOUNTS.iter().enumerate() {
        read(&mut engine, offset as i64, &amount_record(amount));
    }
    read(&mut engine, 9, br#"{"amount": "NaN"}"#);
    read(&mut engine, 10, b"not json");
    deliver(&mut engine);
    let partition = PartitionLabels::new("orders", 0);
    let skipped = |stage: &str, reason: &str| {
        engine.metrics.records_skipped.get_or_create(&SkipLabels::new(&partition, stage, reason)).get()
    };
    assert_eq!(skipped("pipeline[0] (filter)", "type-mismatch"), 2);
    assert_eq!(skipped("pipeline[0] (filter)", "missing-field"), 2);
    assert_eq!(skipped("pipeline[0] (filter)", "non-finite"), 1);
    assert_eq!(skipped("decode", "decode"), 1);
    assert_eq!(engine.totals.skipped.load(Ordering::Relaxed), 6);
    assert_eq!(engine.commits(true).first().map(|c| c.offset), Some(11));
}

/// A result larger than the sink takes is not sent to fail: its input goes to the dead-letter
/// topic with the reason, and the records around it go to the sink once, with no rewind.
#[test]
fn a_result_larger_than_the_sink_takes_is_dead_lettered_without_a_rewind() {
    let mut engine = engine("[]", SourceFormat::Json, true);
    engine.limit_record_sizes(RecordLimits { sink: 2_000, dead_letter: 5_000 });
    let big = format!(r#"{{"pad": "{}"}}"#, "x".repeat(3_000));
    read(&mut engine, 0, br#"{"n": 1}"#);
    read(&mut engine, 1, big.as_bytes());
    read(&mut engine, 2, br#"{"n": 2}"#);
    let outputs = engine.take_outputs();
    let sent: Vec<Destination> = outputs.iter().map(|o| o.destination).collect();
    assert_eq!(sent, [Destination::Sink, Destination::DeadLetter, Destination::Sink]);
    assert_eq!(outputs[1].payload, big.as_bytes(), "the input as it came");
    assert_eq!(header(&outputs[1], "streamjob.reason"), Some("too-large"));
    let error = header(&outputs[1], "streamjob.error").unwrap_or_default();
    assert!(error.contains("more than the sink topic takes (max.message.bytes 2000)"), "{error}");
    for ticket in outputs.iter().filter_map(|o| o.ticket) {
        engine.on_delivery(ticket, Ok(()), 0);
    }
    assert!(engine.failure().is_none(), "nothing to rewind");
    assert_eq!(engine.commits(true).first().map(|c| c.offset), Some(3));
}

/// A record larger than the dead-letter topic takes too goes there without its value, which
/// the headers say, with where to find it.
#[test]
fn a_record_too_large_for_the_dead_letter_topic_goes_there_without_its_value() {
    let mut engine = engine("[{map: {set: {seen: true}}}]", SourceFormat::Json, true);
    engine.limit_record_sizes(RecordLimits { sink: 2_000, dead_letter: 2_000 });
    let big = format!(r#"{{"pad": "{}"}}"#, "x".repeat(3_000));
    read(&mut engine, 7, big.as_bytes());
    let outputs = engine.take_outputs();
    assert_eq!(outputs.len(), 1);
    let dead = &outputs[0];
    assert_eq!((dead.destination, dead.payload.len()), (Destination::DeadLetter, 0));
    assert_eq!(header(dead, "streamjob.value.omitted"), Some(big.len().to_string().as_str()));
    assert_eq!(header(dead, "streamjob.source.offset"), Some("7"));
    let error = header(dead, "streamjob.error").unwrap_or_default();
    assert!(error.contains("is left out: the dead-letter topic takes at most 2000 bytes"), "{error}");
    assert!(record_size(dead.key.as_deref(), &dead.payload, &dead.headers) <= 2_000);
}

/// A non-finite amount never reaches a partial aggregate (which it would make unreadable, and
/// with it every record of its key in that flush): the record is dead-lettered, and the
/// partial holds the others.
#[test]
fn a_non_finite_amount_is_dead_lettered_and_the_partial_stays_readable() {
    let stages: Vec<streamjob_crds::PipelineStage> =
        serde_yaml::from_str("[{keyBy: {field: k}}, {window: {size: 10s, aggregate: {function: sum, field: amount}}}]")
            .expect("pipeline");
    let settings = EngineSettings {
        source_format: SourceFormat::Json,
        sink_format: SinkFormat::Json,
        dead_letter: true,
        repartition: Some(("job-repartition".to_owned(), 1)),
        flush_interval_ms: 200,
        idle_timeout_ms: 10_000,
        max_partials: 1000,
    };
    let mut engine =
        Engine::new(settings, CompiledPipeline::compile(&stages).expect("compiles"), Arc::default(), Arc::default());
    engine.assign("orders", 0, None);
    for (offset, amount) in [r#""NaN""#, "2", r#""Infinity""#, r#""3""#, r#""abc""#].iter().enumerate() {
        read(&mut engine, offset as i64, format!(r#"{{"k": "a", "amount": {amount}}}"#).as_bytes());
    }
    engine.flush_all();
    let outputs = engine.take_outputs();
    let reasons: Vec<&str> = outputs
        .iter()
        .filter(|o| o.destination == Destination::DeadLetter)
        .filter_map(|o| header(o, "streamjob.reason"))
        .collect();
    assert_eq!(reasons, ["non-finite", "non-finite", "type-mismatch"]);
    let partials: Vec<(u64, f64)> = outputs
        .iter()
        .filter_map(|o| match serde_json::from_slice(&o.payload) {
            Ok(crate::repartition::RepartitionMessage::Partial { accumulator, .. }) => {
                Some((accumulator.count, accumulator.sum))
            }
            _ => None,
        })
        .collect();
    assert_eq!(partials, [(2, 5.0)], "a readable partial of the two numbers");
}

/// Sums that would overflow a double: the record that would make a partial's sum infinite is
/// dead-lettered, and the partial stays finite and readable.
#[test]
fn a_record_that_would_overflow_a_sum_is_dead_lettered() {
    let stages: Vec<streamjob_crds::PipelineStage> =
        serde_yaml::from_str("[{keyBy: {field: k}}, {window: {size: 10s, aggregate: {function: sum, field: amount}}}]")
            .expect("pipeline");
    let settings = EngineSettings {
        source_format: SourceFormat::Json,
        sink_format: SinkFormat::Json,
        dead_letter: true,
        repartition: Some(("job-repartition".to_owned(), 1)),
        flush_interval_ms: 200,
        idle_timeout_ms: 10_000,
        max_partials: 1000,
    };
    let mut engine =
        Engine::new(settings, CompiledPipeline::compile(&stages).expect("compiles"), Arc::default(), Arc::default());
    engine.assign("orders", 0, None);
    for (offset, amount) in ["1e308", "1e308", "1"].iter().enumerate() {
        read(&mut engine, offset as i64, format!(r#"{{"k": "a", "amount": {amount}}}"#).as_bytes());
    }
    engine.flush_all();
    let outputs = engine.take_outputs();
    let reasons: Vec<&str> = outputs
        .iter()
        .filter(|o| o.destination == Destination::DeadLetter)
        .filter_map(|o| header(o, "streamjob.reason"))
        .collect();
    assert_eq!(reasons, ["non-finite"]);
    let sums: Vec<f64> = outputs
        .iter()
        .filter_map(|o| match serde_json::from_slice(&o.payload) {
            Ok(crate::repartition::RepartitionMessage::Partial { accumulator, .. }) => Some(accumulator.sum),
            _ => None,
        })
        .collect();
    assert_eq!(sums, [1e308 + 1.0]);
}
