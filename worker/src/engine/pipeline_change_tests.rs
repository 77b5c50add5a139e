//! A pipeline change on a windowed job: what the old pipeline left on the repartition topic
//! (partials, markers, the aggregating partition's checkpoint) is discarded by the new
//! pipeline, counted, and never merged into its windows.

use std::sync::Arc;

use streamjob_crds::{SinkFormat, SourceFormat};

use super::*;
use crate::metrics::{PartitionLabels, WorkerMetrics};
use crate::pipeline::Accumulator;
use crate::repartition::RepartitionMessage;

const SECOND: i64 = 1000;
const REPARTITION: &str = "job-repartition";
const OLD: u64 = 0x01d;
const NEW: u64 = 0x2e3;

fn count_engine(size: &str, pipeline_fingerprint: u64) -> (Engine, Arc<WorkerMetrics>) {
    let stages = format!(
        "[{{split: {{field: value}}}}, {{keyBy: {{field: value}}}}, \
         {{window: {{size: {size}, aggregate: {{function: count}}}}}}]"
    );
    let stages: Vec<streamjob_crds::PipelineStage> = serde_yaml::from_str(&stages).expect("pipeline");
    let settings = EngineSettings {
        source_format: SourceFormat::Text,
        sink_format: SinkFormat::Json,
        dead_letter: false,
        repartition: Some((REPARTITION.to_owned(), 1)),
        flush_interval_ms: 200,
        idle_timeout_ms: 10 * SECOND,
        max_partials: 1000,
    };
    let metrics = Arc::new(WorkerMetrics::default());
    let pipeline = CompiledPipeline::compile(&stages).expect("compiles");
    let mut engine = Engine::new(settings, pipeline, metrics.clone(), Arc::default());
    engine.set_pipeline_fingerprint(pipeline_fingerprint);
    engine.expect_sources(vec!["lines/0".to_owned()]);
    (engine, metrics)
}

fn read(engine: &mut Engine, offset: i64, key: Option<&str>, message: &RepartitionMessage, now_ms: i64) {
    let payload = message.encode();
    let input = Input {
        topic: REPARTITION,
        partition: 0,
        offset,
        key: key.map(str::as_bytes),
        payload: Some(&payload),
        timestamp_ms: Some(now_ms),
    };
    engine.on_input(&input, now_ms);
}

fn partial(pipeline: u64, from: i64, window: i64, count: u64) -> RepartitionMessage {
    let accumulator = Accumulator { count, sum: count as f64, min: 1.0, max: 1.0 };
    RepartitionMessage::Partial { src: "lines/0".into(), owner: 1, pipeline, from, to: from + 9, window, accumulator }
}

fn progress(pipeline: u64, watermark: i64) -> RepartitionMessage {
    RepartitionMessage::Progress { src: "lines/0".into(), owner: 1, pipeline, watermark, idle: false, through: -1 }
}

fn sink_counts(outputs: &[Output]) -> Vec<(String, i64)> {
    outputs
        .iter()
        .filter(|o| o.destination == Destination::Sink)
        .map(|o| {
            let value: serde_json::Value = serde_json::from_slice(&o.payload).expect("json result");
            (
                format!("{}@{}", value["key"].as_str().unwrap_or_default(), value["windowStart"]),
                value["count"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

/// The old pipeline (10 s windows) left partials of an open window, its markers and its
/// checkpoint; the new one (20 s windows) reads them first after the drain. They are counted
/// as discarded and never merged: the window comes out with the new pipeline's records only.
#[test]
fn the_new_pipeline_discards_the_old_pipelines_partials_and_checkpoint() {
    let window = 1_000 * 20 * SECOND;
    let old_checkpoint = format!(r#"{{"wm":{},"to":4,"f":{OLD}}}"#, window + 15 * SECOND);
    let (mut engine, metrics) = count_engine("20s", NEW);
    engine.assign(REPARTITION, 0, Some(&old_checkpoint));
    let now = window + 60 * SECOND;
    read(&mut engine, 0, Some("fox"), &partial(OLD, 100, window, 3), now);
    read(&mut engine, 1, Some("fox"), &partial(OLD, 110, window + 10 * SECOND, 4), now);
    read(&mut engine, 2, None, &progress(OLD, window + 30 * SECOND), now);
    engine.on_tick(now);
    assert!(sink_counts(&engine.take_outputs()).is_empty(), "the old pipeline's marker closes nothing");

    read(
        &mut engine,
        3,
        None,
        &RepartitionMessage::Reset { src: "lines/0".into(), owner: 1, pipeline: NEW, from: 120 },
        now,
    );
    read(&mut engine, 4, Some("fox"), &partial(NEW, 120, window, 2), now);
    read(&mut engine, 5, Some("fox"), &partial(OLD, 130, window, 5), now);
    read(&mut engine, 6, None, &progress(NEW, window + 25 * SECOND), now);
    engine.on_tick(now);
    let start = format!("\"{}\"", pipeline::rfc3339(window));
    assert_eq!(sink_counts(&engine.take_outputs()), vec![(format!("fox@{start}"), 2)], "never 2 + 3 + 4 + 5");
    let labels = PartitionLabels::new(REPARTITION, 0);
    assert_eq!(metrics.other_pipeline_partials_discarded.get_or_create(&labels).get(), 3);
    assert_eq!(metrics.other_pipeline_records_discarded.get_or_create(&labels).get(), 12);
    assert_eq!(metrics.replayed_partials_discarded.get_or_create(&labels).get(), 0);
    assert_eq!(
        engine.totals.late.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the old checkpoint's watermark is gone"
    );
}

/// The source side writes its fingerprint into every message it sends.
#[test]
fn every_repartition_message_carries_the_fingerprint() {
    let (mut engine, _) = count_engine("10s", NEW);
    engine.assign("lines", 0, None);
    let input =
        Input { topic: "lines", partition: 0, offset: 0, key: None, payload: Some(b"a b"), timestamp_ms: Some(0) };
    engine.on_input(&input, 0);
    engine.flush_all();
    engine.on_tick(10 * SECOND);
    let messages: Vec<RepartitionMessage> =
        engine.take_outputs().iter().filter_map(|o| serde_json::from_slice(&o.payload).ok()).collect();
    assert!(messages.len() >= 3, "a reset and two partials at least: {messages:?}");
    assert!(messages.iter().all(|m| m.pipeline() == NEW), "{messages:?}");
}
