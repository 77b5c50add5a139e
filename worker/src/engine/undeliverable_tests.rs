//! Outputs no retry can deliver: the input goes to the dead-letter topic, or is counted and
//! skipped, and its partition moves on instead of rewinding forever.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use streamjob_crds::{SinkFormat, SourceFormat};

use super::*;
use crate::undeliverable::{DeliveryFailure, FailureKind};

fn passthrough(dead_letter: bool) -> Engine {
    let stages: Vec<streamjob_crds::PipelineStage> =
        serde_yaml::from_str("[{map: {set: {seen: true}}}]").expect("yaml");
    let settings = EngineSettings {
        source_format: SourceFormat::Json,
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

fn read(engine: &mut Engine, offset: i64) {
    let input =
        Input { topic: "orders", partition: 0, offset, key: None, payload: Some(br#"{"n": 1}"#), timestamp_ms: None };
    engine.on_input(&input, 0);
}

fn failure(kind: FailureKind) -> DeliveryFailure {
    DeliveryFailure { error: "Broker: Message size too large".into(), kind }
}

/// Delivers the queued outputs, failing those bound for `failing` with `kind`; returns the
/// outputs by destination.
fn deliver(engine: &mut Engine, failing: Option<(Destination, FailureKind)>) -> Vec<Output> {
    let outputs = engine.take_outputs();
    for output in &outputs {
        let Some(ticket) = output.ticket else { continue };
        match failing {
            Some((destination, kind)) if destination == output.destination => {
                engine.on_delivery(ticket, Err(failure(kind)), 0)
            }
            _ => engine.on_delivery(ticket, Ok(()), 0),
        }
    }
    outputs
}

/// Reads the two records again from the last commit, as the runner's rewind does.
fn rewind_and_read_again(engine: &mut Engine) {
    assert!(engine.failure().is_some(), "the failure rewinds");
    assert_eq!(engine.rewind(), vec![("orders".to_owned(), 0, 0)]);
    read(engine, 0);
    read(engine, 1);
}

/// The record's output is too large for the sink: the rewind reads it again and sends it,
/// as it came, to the dead-letter topic with the error.
#[test]
fn a_record_the_sink_never_takes_goes_to_the_dead_letter_topic_with_the_error() {
    let mut engine = passthrough(true);
    read(&mut engine, 0);
    deliver(&mut engine, Some((Destination::Sink, FailureKind::Record)));
    read(&mut engine, 1);
    rewind_and_read_again(&mut engine);
    let outputs = deliver(&mut engine, None);
    let sent: Vec<(Destination, Option<&str>)> = outputs
        .iter()
        .map(|o| {
            (o.destination, o.headers.iter().find(|(name, _)| *name == "streamjob.error").map(|(_, v)| v.as_str()))
        })
        .collect();
    assert_eq!(
        sent,
        [
            (Destination::DeadLetter, Some("the sink cannot take it: Broker: Message size too large")),
            (Destination::Sink, None)
        ]
    );
    assert_eq!(outputs[0].payload, br#"{"n": 1}"#, "the input, as it came");
    assert!(engine.failure().is_none());
    assert_eq!(engine.commits(true).first().map(|c| c.offset), Some(2), "the partition moves on");
    assert_eq!(engine.totals.dead_lettered.load(Ordering::Relaxed), 1);
}

/// A dead-letter topic that cannot exist takes nothing: the record is counted as skipped.
#[test]
fn a_record_no_topic_takes_is_counted_and_skipped() {
    let mut engine = passthrough(true);
    read(&mut engine, 0);
    deliver(&mut engine, Some((Destination::Sink, FailureKind::Record)));
    read(&mut engine, 1);
    rewind_and_read_again(&mut engine);
    deliver(&mut engine, Some((Destination::DeadLetter, FailureKind::Topic)));
    rewind_and_read_again(&mut engine);
    let outputs = deliver(&mut engine, None);
    assert_eq!(outputs.iter().map(|o| o.destination).collect::<Vec<_>>(), [Destination::Sink]);
    assert_eq!(engine.totals.skipped.load(Ordering::Relaxed), 1);
    assert_eq!(engine.commits(true).first().map(|c| c.offset), Some(2));

    let mut without_dead_letters = passthrough(false);
    read(&mut without_dead_letters, 0);
    deliver(&mut without_dead_letters, Some((Destination::Sink, FailureKind::Record)));
    read(&mut without_dead_letters, 1);
    rewind_and_read_again(&mut without_dead_letters);
    assert_eq!(deliver(&mut without_dead_letters, None).len(), 1);
    assert_eq!(without_dead_letters.totals.skipped.load(Ordering::Relaxed), 1);
}

/// A sink topic that does not exist yet may be created: that failure rewinds and retries.
#[test]
fn a_missing_sink_topic_is_retried() {
    let mut engine = passthrough(true);
    read(&mut engine, 0);
    deliver(&mut engine, Some((Destination::Sink, FailureKind::Topic)));
    read(&mut engine, 1);
    rewind_and_read_again(&mut engine);
    let outputs = deliver(&mut engine, None);
    assert_eq!(outputs.iter().map(|o| o.destination).collect::<Vec<_>>(), [Destination::Sink, Destination::Sink]);
    assert_eq!(engine.totals.skipped.load(Ordering::Relaxed), 0);
}

/// Each rewind before the commit passes a skipped record reads it again: it is still one
/// record skipped (the issue counted 9–10 skips for 5 records).
#[test]
fn a_skipped_record_read_again_by_later_rewinds_counts_once() {
    let mut engine = passthrough(false);
    read(&mut engine, 0);
    deliver(&mut engine, Some((Destination::Sink, FailureKind::Record)));
    read(&mut engine, 1);
    rewind_and_read_again(&mut engine);
    deliver(&mut engine, Some((Destination::Sink, FailureKind::Retriable)));
    rewind_and_read_again(&mut engine);
    deliver(&mut engine, None);
    assert_eq!(engine.totals.skipped.load(Ordering::Relaxed), 1);
    assert_eq!(engine.commits(true).first().map(|c| c.offset), Some(2));
}
