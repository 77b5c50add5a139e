use std::sync::atomic::Ordering;
use std::sync::Arc;

use streamjob_crds::{SinkFormat, SourceFormat};

use super::*;
use crate::pipeline::Accumulator;
use crate::repartition::RepartitionMessage;

const SECOND: i64 = 1000;
const REPARTITION: &str = "job-repartition";

fn engine(pipeline: &str, source_format: SourceFormat, repartition: Option<i32>, dead_letter: bool) -> Engine {
    let stages: Vec<streamjob_crds::PipelineStage> = serde_yaml::from_str(pipeline).expect("pipeline");
    let settings = EngineSettings {
        source_format,
        sink_format: SinkFormat::Json,
        dead_letter,
        repartition: repartition.map(|partitions| (REPARTITION.to_owned(), partitions)),
        flush_interval_ms: 200,
        idle_timeout_ms: 10 * SECOND,
        max_partials: 1000,
    };
    Engine::new(settings, CompiledPipeline::compile(&stages).expect("compiles"), Arc::default(), Arc::default())
}

fn wordcount_engine() -> Engine {
    let wordcount =
        "[{split: {field: value}}, {keyBy: {field: value}}, {window: {size: 10s, aggregate: {function: count}}}]";
    engine(wordcount, SourceFormat::Text, Some(1), false)
}

fn direct_engine(pipeline: &str) -> Engine {
    engine(pipeline, SourceFormat::Json, None, true)
}

/// Without stages that change records, each valid record leaves byte for byte as it came;
/// an invalid one still goes to the dead-letter topic.
#[test]
fn records_no_stage_changes_are_forwarded_unchanged() {
    for pipeline in ["[]", "[{filter: {field: type, op: eq, value: click}}]"] {
        let mut engine = direct_engine(pipeline);
        engine.assign("events", 0, None);
        read(&mut engine, "events", 0, Some("k0"), br#"{ "type": "click",  "amount": 1.50 }"#, 0);
        read(&mut engine, "events", 1, Some("k1"), br#"{"type": "click""#, 0);
        let outputs = engine.take_outputs();
        let sent: Vec<String> = outputs
            .iter()
            .map(|o| {
                let key = String::from_utf8_lossy(o.key.as_deref().unwrap_or_default());
                format!("{:?} {key} {}", o.destination, String::from_utf8_lossy(&o.payload))
            })
            .collect();
        assert_eq!(
            sent,
            [r#"Sink k0 { "type": "click",  "amount": 1.50 }"#, r#"DeadLetter k1 {"type": "click""#],
            "pipeline {pipeline}"
        );
    }
    let mut filtering = direct_engine("[{filter: {field: type, op: eq, value: click}}]");
    filtering.assign("events", 0, None);
    read(&mut filtering, "events", 0, Some("k0"), br#"{"type": "view"}"#, 0);
    assert!(filtering.take_outputs().is_empty(), "a filtered-out record is not sent");
    assert_eq!(filtering.commits(true).first().map(|c| c.offset), Some(1), "and its offset is committable");
}

/// A window result that a later stage rejects is counted as skipped (as the records it counts),
/// not lost unseen.
#[test]
fn a_window_result_a_later_stage_rejects_is_counted() {
    let pipeline = "[{split: {field: value}}, {keyBy: {field: value}}, \
                    {window: {size: 10s, aggregate: {function: count}}}, {keyBy: {field: absent}}]";
    let mut engine = engine(pipeline, SourceFormat::Text, Some(1), false);
    engine.assign(REPARTITION, 0, None);
    let window = 1_000 * SECOND;
    let now = window + 60 * SECOND;
    read(&mut engine, REPARTITION, 0, Some("fox"), &partial("lines/0", 0, 9, window, 2), now);
    read(&mut engine, REPARTITION, 1, None, &progress("lines/0", window + 20 * SECOND, true), now);
    engine.on_tick(now);
    assert!(sink_counts(&engine.take_outputs()).is_empty());
    assert_eq!(engine.totals.skipped.load(Ordering::Relaxed), 2, "the result of two records");
}

/// A key that is not text (a serialized number, say) keeps its bytes through stages that
/// change the value, so the sink partitions it as the source did.
#[test]
fn an_input_key_leaves_byte_for_byte() {
    let mut engine = direct_engine("[{map: {set: {seen: true}}}]");
    engine.assign("events", 0, None);
    let key = [0xff, 0x00, 0x80, b'k'];
    let input =
        Input { topic: "events", partition: 0, offset: 0, key: Some(&key), payload: Some(b"{}"), timestamp_ms: None };
    engine.on_input(&input, 0);
    let outputs = engine.take_outputs();
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].key.as_deref(), Some(&key[..]));
    assert_eq!(outputs[0].payload, br#"{"seen":true}"#);
}

/// A source partition commits only where a range of partials starts: a reset drops the
/// ranges from its offset on, so a commit inside one would have the replay count its first
/// records twice. A dead-lettered record inside a range holds the range's start.
#[test]
fn a_dead_lettered_record_holds_its_ranges_start_not_its_own_offset() {
    let summed = "[{split: {field: value}}, {keyBy: {field: value}}, \
                  {window: {size: 10s, aggregate: {function: sum, field: value}}}]";
    let mut engine = engine(summed, SourceFormat::Text, Some(1), true);
    engine.assign("lines", 0, None);
    read(&mut engine, "lines", 0, None, b"1", 0);
    read(&mut engine, "lines", 1, None, b"x", 0);
    read(&mut engine, "lines", 2, None, b"2", 0);
    engine.flush_all();
    for output in engine.take_outputs() {
        if let (Some(ticket), false) = (output.ticket, output.destination == Destination::DeadLetter) {
            engine.on_delivery(ticket, Ok(()), 0);
        }
    }
    assert_eq!(engine.commits(true).first().map(|c| c.offset), Some(0), "the dead letter is not acknowledged");
}

/// A record is processed whole or not at all: when one of its pieces fails, none of the
/// others reach the window, and the record goes to the dead-letter topic.
#[test]
fn a_record_with_a_failing_piece_adds_nothing_to_its_window() {
    let summed = "[{split: {field: value}}, {keyBy: {field: value}}, \
                  {window: {size: 10s, aggregate: {function: sum, field: value}}}]";
    let mut engine = engine(summed, SourceFormat::Text, Some(1), true);
    engine.assign("lines", 0, None);
    read(&mut engine, "lines", 0, None, b"1 2 x", 0);
    read(&mut engine, "lines", 1, None, b"2 3", 0);
    engine.flush_all();
    let outputs = engine.take_outputs();
    let dead: Vec<_> = outputs.iter().filter(|o| o.destination == Destination::DeadLetter).collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, b"1 2 x");
    let mut partials: Vec<(String, u64, f64)> = outputs
        .iter()
        .filter_map(|o| match serde_json::from_slice(&o.payload) {
            Ok(RepartitionMessage::Partial { accumulator, .. }) => Some((
                String::from_utf8_lossy(o.key.as_deref().unwrap_or_default()).into_owned(),
                accumulator.count,
                accumulator.sum,
            )),
            _ => None,
        })
        .collect();
    partials.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(partials, [("2".to_owned(), 1, 2.0), ("3".to_owned(), 1, 3.0)]);
}

fn partial(src: &str, from: i64, to: i64, window: i64, count: u64) -> Vec<u8> {
    let accumulator = Accumulator { count, sum: count as f64, min: 1.0, max: 1.0 };
    RepartitionMessage::Partial { src: src.into(), owner: 0, pipeline: 0, from, to, window, accumulator }.encode()
}

fn progress(src: &str, watermark: i64, idle: bool) -> Vec<u8> {
    RepartitionMessage::Progress { src: src.into(), owner: 0, pipeline: 0, watermark, idle, through: -1 }.encode()
}

fn read(engine: &mut Engine, topic: &str, offset: i64, key: Option<&str>, payload: &[u8], now_ms: i64) {
    let input = Input {
        topic,
        partition: 0,
        offset,
        key: key.map(str::as_bytes),
        payload: Some(payload),
        timestamp_ms: Some(now_ms),
    };
    engine.on_input(&input, now_ms);
}

fn sink_counts(outputs: &[Output]) -> Vec<(String, i64)> {
    let mut counts: Vec<(String, i64)> = outputs
        .iter()
        .filter(|o| o.destination == Destination::Sink)
        .map(|o| {
            let value: serde_json::Value = serde_json::from_slice(&o.payload).expect("json result");
            (
                format!("{}@{}", value["key"].as_str().unwrap_or_default(), value["windowStart"]),
                value["count"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    counts.sort();
    counts
}

fn reset(src: &str, from: i64) -> Vec<u8> {
    RepartitionMessage::Reset { src: src.into(), owner: 0, pipeline: 0, from }.encode()
}

/// A source partition moves to a new owner that replays it from its last commit. Windows
/// the replay refills wait for the new owner's progress, even when the old owner had
/// reported it past their end: emitted early, they would miss the replayed records.
#[test]
fn a_reset_source_holds_its_windows_until_its_new_owner_reports_progress() {
    let window = 1_000 * SECOND;
    let mut engine = wordcount_engine();
    engine.assign(REPARTITION, 0, None);
    let now = window + 60 * SECOND;
    read(&mut engine, REPARTITION, 0, Some("fox"), &partial("lines/0", 100, 149, window, 2), now);
    read(&mut engine, REPARTITION, 1, Some("fox"), &partial("lines/0", 150, 199, window, 3), now);
    read(&mut engine, REPARTITION, 2, None, &progress("lines/0", window + 12 * SECOND, true), now);
    read(&mut engine, REPARTITION, 3, None, &reset("lines/0", 150), now);
    engine.on_tick(now);
    let early = sink_counts(&engine.take_outputs());
    assert!(early.is_empty(), "the window waits for the replay: {early:?}");

    read(&mut engine, REPARTITION, 4, Some("fox"), &partial("lines/0", 150, 199, window, 3), now);
    read(&mut engine, REPARTITION, 5, None, &progress("lines/0", window + 2 * SECOND, false), now);
    engine.on_tick(now);
    assert!(sink_counts(&engine.take_outputs()).is_empty(), "the source is not past the window's end");
    read(&mut engine, REPARTITION, 6, None, &progress("lines/0", window + 12 * SECOND, true), now);
    engine.on_tick(now);
    let start = format!("\"{}\"", pipeline::rfc3339(window));
    assert_eq!(sink_counts(&engine.take_outputs()), vec![(format!("fox@{start}"), 5)]);
    assert_eq!(engine.totals.late.load(Ordering::Relaxed), 0);
}

/// A new owner of a repartition partition replays from its commit. What it replays is
/// older than its checkpoint: until the replay is through, no window is emitted, so a
/// stale marker cannot close the open window early and the window comes out whole.
#[test]
fn a_replay_keeps_the_checkpointed_watermark_and_emits_the_open_window_whole() {
    let window = 1_000 * SECOND;
    let checkpoint = format!(r#"{{"wm":{},"to":4}}"#, window - SECOND);
    let mut engine = wordcount_engine();
    engine.assign(REPARTITION, 0, Some(&checkpoint));

    // Long after the window (a slow rebalance): the wall clock is far ahead of the data.
    let now = window + 60 * SECOND;
    read(&mut engine, REPARTITION, 0, Some("fox"), &partial("lines/0", 100, 199, window, 3), now);
    read(&mut engine, REPARTITION, 1, None, &progress("lines/0", window + 12 * SECOND, true), now);
    engine.on_tick(now);
    read(&mut engine, REPARTITION, 2, Some("fox"), &reset("lines/0", 200), now);
    read(&mut engine, REPARTITION, 3, Some("fox"), &partial("lines/0", 200, 300, window, 4), now);
    engine.on_tick(now);
    let early = sink_counts(&engine.take_outputs());
    assert!(early.is_empty(), "the window stays open until its source passes its end again: {early:?}");

    read(&mut engine, REPARTITION, 4, Some("fox"), &partial("lines/0", 301, 310, window, 1), now);
    read(&mut engine, REPARTITION, 5, None, &progress("lines/0", window + 11 * SECOND, false), now);
    engine.on_tick(now);
    let start = format!("\"{}\"", pipeline::rfc3339(window));
    assert_eq!(sink_counts(&engine.take_outputs()), vec![(format!("fox@{start}"), 8)]);
}

/// A partial for a window already emitted is late only when it is no replay: its records
/// are counted (all of them, not one per partial), and a replay is counted nowhere.
#[test]
fn late_partials_count_their_records_and_replays_count_nowhere() {
    let window = 1_000 * SECOND;
    let mut engine = wordcount_engine();
    engine.assign(REPARTITION, 0, None);
    let now = window + 60 * SECOND;
    read(&mut engine, REPARTITION, 0, Some("fox"), &partial("lines/0", 0, 9, window, 2), now);
    read(&mut engine, REPARTITION, 1, None, &progress("lines/0", window + 20 * SECOND, false), now);
    engine.on_tick(now);
    assert_eq!(sink_counts(&engine.take_outputs()).len(), 1);
    read(&mut engine, REPARTITION, 2, None, &reset("lines/0", 0), now);
    read(&mut engine, REPARTITION, 3, Some("fox"), &partial("lines/0", 0, 9, window, 2), now);
    assert_eq!(engine.totals.late.load(Ordering::Relaxed), 0, "a replay is absorbed");
    read(&mut engine, REPARTITION, 4, Some("fox"), &partial("lines/0", 10, 19, window, 5), now);
    assert_eq!(engine.totals.late.load(Ordering::Relaxed), 5);
    assert_eq!(engine.totals.skipped.load(Ordering::Relaxed), 5);
}
