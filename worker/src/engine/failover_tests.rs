//! Source partitions changing owners, as in a crash: a window closes only once the live owner
//! of every source partition has reported past its end, and a dead owner's silence holds it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use streamjob_crds::{SinkFormat, SourceFormat};

use super::*;
use crate::metrics::PartitionLabels;
use crate::repartition::RepartitionMessage;

const SECOND: i64 = 1000;
/// The start of the window the records fall in; windows are 10 s long.
const WINDOW: i64 = 1_000 * SECOND;
const REPARTITION: &str = "job-repartition";
const IDLE_TIMEOUT: i64 = 3 * SECOND;

/// A worker of a word count over `lines/0` and `lines/1`.
fn worker() -> Engine {
    let stages: Vec<streamjob_crds::PipelineStage> = serde_yaml::from_str(
        "[{split: {field: value}}, {keyBy: {field: value}}, {window: {size: 10s, aggregate: {function: count}}}]",
    )
    .expect("pipeline");
    let settings = EngineSettings {
        source_format: SourceFormat::Text,
        sink_format: SinkFormat::Json,
        dead_letter: false,
        repartition: Some((REPARTITION.to_owned(), 1)),
        flush_interval_ms: 200,
        idle_timeout_ms: IDLE_TIMEOUT,
        max_partials: 1000,
    };
    let pipeline = CompiledPipeline::compile(&stages).expect("compiles");
    let mut engine = Engine::new(settings, pipeline, Arc::default(), Arc::default());
    engine.expect_sources(vec![source_id("lines", 0), source_id("lines", 1)]);
    engine
}

/// The repartition topic's one partition and the sink, between the workers.
#[derive(Default)]
struct Topics {
    repartition: Vec<(Option<Vec<u8>>, Vec<u8>)>,
    read: usize,
    sink: Vec<Output>,
}

impl Topics {
    /// Sends what `engine` queued, and acknowledges it as the producer would.
    fn deliver(&mut self, engine: &mut Engine, now: i64) {
        for output in engine.take_outputs() {
            if let Some(ticket) = output.ticket {
                engine.on_delivery(ticket, Ok(()), now);
            }
            match output.destination {
                Destination::Repartition { .. } => self.repartition.push((output.key, output.payload)),
                Destination::Sink => self.sink.push(output),
                Destination::DeadLetter => panic!("nothing is dead-lettered here"),
            }
        }
    }

    /// One tick of `engine`'s: it sends what it holds, reads what is new on the repartition
    /// topic when it owns it, and emits what closed.
    fn tick(&mut self, engine: &mut Engine, now: i64) {
        engine.on_tick(now);
        self.deliver(engine, now);
        if engine.assigned().iter().any(|(topic, _)| topic == REPARTITION) {
            while self.read < self.repartition.len() {
                let (key, payload) = &self.repartition[self.read];
                let input = Input {
                    topic: REPARTITION,
                    partition: 0,
                    offset: self.read as i64,
                    key: key.as_deref(),
                    payload: Some(payload),
                    timestamp_ms: Some(now),
                };
                engine.on_input(&input, now);
                self.read += 1;
            }
            engine.on_tick(now);
            self.deliver(engine, now);
        }
    }

    /// (word@window start, count) of every result in the sink.
    fn counts(&self) -> Vec<(String, i64)> {
        let mut counts: Vec<(String, i64)> = self
            .sink
            .iter()
            .map(|output| {
                let value: serde_json::Value = serde_json::from_slice(&output.payload).expect("json result");
                let start = value["windowStart"].as_str().unwrap_or_default().to_owned();
                (
                    format!("{}@{start}", value["key"].as_str().unwrap_or_default()),
                    value["count"].as_i64().unwrap_or(-1),
                )
            })
            .collect();
        counts.sort();
        counts
    }
}

/// Lines of one word, "fox", at `offsets` of `lines/<partition>`, with the event time `event_ms`.
fn read_lines(engine: &mut Engine, partition: i32, offsets: std::ops::Range<i64>, event_ms: i64) {
    for offset in offsets {
        let input =
            Input { topic: "lines", partition, offset, key: None, payload: Some(b"fox"), timestamp_ms: Some(event_ms) };
        engine.on_input(&input, 0);
    }
}

/// The topics, the first owner of `lines/0`, and a worker owning `lines/1` and the repartition
/// topic.
fn two_workers() -> (Topics, Engine, Engine) {
    let mut first = worker();
    first.assign("lines", 0, None);
    let mut other = worker();
    other.assign("lines", 1, None);
    other.assign(REPARTITION, 0, None);
    (Topics::default(), first, other)
}

fn fox_at(window_start: i64) -> String {
    format!("fox@{}", pipeline::rfc3339(window_start))
}

/// The first owner of `lines/0` dies after sending partials for the window. However long its
/// silence, the window waits, though the other source is idle at its end; the new owner
/// replays `lines/0` from its (absent) commit, and the window closes with every record counted
/// once and nothing counted late.
#[test]
fn a_dead_owners_silence_holds_the_window_until_the_new_owner_replays() {
    let (mut topics, mut first, mut other) = two_workers();
    let mut now = WINDOW + 60 * SECOND;
    read_lines(&mut first, 0, 0..3, WINDOW + SECOND);
    read_lines(&mut other, 1, 0..2, WINDOW + 2 * SECOND);
    topics.tick(&mut first, now);
    topics.tick(&mut other, now);
    drop(first);

    for _ in 0..600 {
        now += SECOND;
        other.observe_end("lines", 1, true, now);
        topics.tick(&mut other, now);
    }
    assert_eq!(topics.counts(), Vec::<(String, i64)>::new(), "ten minutes of silence closed the window");

    let mut next = worker();
    next.assign("lines", 0, None);
    read_lines(&mut next, 0, 0..5, WINDOW + SECOND);
    for _ in 0..5 {
        now += SECOND;
        next.observe_end("lines", 0, true, now);
        other.observe_end("lines", 1, true, now);
        topics.tick(&mut next, now);
        topics.tick(&mut other, now);
    }
    assert_eq!(topics.counts(), vec![(fox_at(WINDOW), 7)]);
    for engine in [&next, &other] {
        assert_eq!(engine.totals.late.load(Ordering::Relaxed), 0, "a replay is not late");
        assert_eq!(engine.totals.skipped.load(Ordering::Relaxed), 0);
    }
}

/// A live owner that is not known to be at the end of its partition never declares it idle,
/// whatever the wall clock says; once it has read both partitions to their ends and stayed
/// there for the idle timeout, the window closes.
#[test]
fn a_live_owner_at_the_end_declares_idle_and_the_window_closes() {
    let mut topics = Topics::default();
    let mut engine = worker();
    for partition in [0, 1] {
        engine.assign("lines", partition, None);
    }
    engine.assign(REPARTITION, 0, None);
    let mut now = WINDOW + 60 * SECOND;
    read_lines(&mut engine, 0, 0..3, WINDOW + SECOND);
    for _ in 0..600 {
        now += SECOND;
        topics.tick(&mut engine, now);
    }
    assert!(topics.counts().is_empty(), "silence alone is no sign of idleness");

    let at_end_since = now;
    while topics.counts().is_empty() && now < at_end_since + 10 * IDLE_TIMEOUT {
        now += 100;
        for partition in [0, 1] {
            engine.observe_end("lines", partition, true, now);
        }
        topics.tick(&mut engine, now);
    }
    assert_eq!(topics.counts(), vec![(fox_at(WINDOW), 3)]);
    assert!(now >= at_end_since + IDLE_TIMEOUT, "idle only after the idle timeout at the end");
}

/// A record read after the owner declared its partition idle wakes it: later records count
/// in their windows, and one behind the watermark idleness set is late, at the source.
#[test]
fn a_record_after_idleness_wakes_the_partition() {
    let mut topics = Topics::default();
    let mut engine = worker();
    for partition in [0, 1] {
        engine.assign("lines", partition, None);
    }
    engine.assign(REPARTITION, 0, None);
    let mut now = WINDOW;
    for _ in 0..50 {
        now += 100;
        for partition in [0, 1] {
            engine.observe_end("lines", partition, true, now);
        }
        topics.tick(&mut engine, now);
    }
    read_lines(&mut engine, 0, 0..1, now - 60 * SECOND);
    read_lines(&mut engine, 0, 1..3, now);
    engine.observe_end("lines", 0, false, now);
    topics.tick(&mut engine, now + 100);
    assert_eq!(engine.totals.late.load(Ordering::Relaxed), 1, "the record a minute old is late");
    let window = now - now.rem_euclid(10 * SECOND);
    now += 20 * SECOND;
    for _ in 0..50 {
        now += 100;
        for partition in [0, 1] {
            engine.observe_end("lines", partition, true, now);
        }
        topics.tick(&mut engine, now);
    }
    assert_eq!(topics.counts(), vec![(fox_at(window), 2)]);
}

/// The owner of `lines/0` had declared it idle, then dies; records land on `lines/0` while it
/// has no owner. Its last marker keeps the watermark where that owner saw it: the window of
/// the new records waits for the next owner, which counts them, none late.
#[test]
fn an_idle_partition_whose_owner_died_stops_moving_the_watermark() {
    let (mut topics, mut first, mut other) = two_workers();
    let mut now = WINDOW;
    for _ in 0..100 {
        now += 100;
        first.observe_end("lines", 0, true, now);
        other.observe_end("lines", 1, true, now);
        topics.tick(&mut first, now);
        topics.tick(&mut other, now);
    }
    drop(first);
    let written_at = now + SECOND;
    read_lines(&mut other, 1, 0..2, written_at);
    for _ in 0..600 {
        now += SECOND;
        other.observe_end("lines", 1, true, now);
        topics.tick(&mut other, now);
    }
    assert_eq!(topics.counts(), Vec::<(String, i64)>::new(), "the window closed without lines/0");

    let mut next = worker();
    next.assign("lines", 0, None);
    read_lines(&mut next, 0, 0..3, written_at);
    for _ in 0..50 {
        now += 100;
        next.observe_end("lines", 0, true, now);
        other.observe_end("lines", 1, true, now);
        topics.tick(&mut next, now);
        topics.tick(&mut other, now);
    }
    let window = written_at - written_at.rem_euclid(10 * SECOND);
    assert_eq!(topics.counts(), vec![(fox_at(window), 5)]);
    assert_eq!(next.totals.late.load(Ordering::Relaxed) + other.totals.late.load(Ordering::Relaxed), 0);
}

/// The owner of `lines/1` declares it idle, then dies; later the aggregating worker dies too.
/// A new aggregator starts from the commit, whose metadata holds two numbers: replaying the
/// repartition log from the committed offset, which never passes a source's last marker,
/// rebuilds what it knew of `lines/1`, so the open window closes once `lines/0` passes it.
#[test]
fn a_new_aggregator_rebuilds_each_sources_progress_from_the_log() {
    let mut topics = Topics::default();
    let mut one = worker();
    one.assign("lines", 1, None);
    let mut now = WINDOW + 60 * SECOND;
    read_lines(&mut one, 1, 0..1, WINDOW + 2 * SECOND);
    for _ in 0..5 {
        now += SECOND;
        one.observe_end("lines", 1, true, now);
        topics.tick(&mut one, now);
    }
    drop(one);
    let mut zero = worker();
    zero.assign("lines", 0, None);
    let mut first = worker();
    first.assign(REPARTITION, 0, None);
    read_lines(&mut zero, 0, 0..2, WINDOW + SECOND);
    read_lines(&mut zero, 0, 2..3, WINDOW + 15 * SECOND);
    for _ in 0..3 {
        now += SECOND;
        topics.tick(&mut zero, now);
        topics.tick(&mut first, now);
    }
    assert_eq!(topics.counts(), vec![(fox_at(WINDOW), 3)]);
    let commit = first.commits(true).into_iter().next().expect("a commit");
    assert!(commit.metadata.as_ref().is_some_and(|m| m.len() < 64), "{commit:?}");
    drop(first);

    let mut second = worker();
    second.assign(REPARTITION, 0, commit.metadata.as_deref());
    topics.read = usize::try_from(commit.offset).expect("an offset");
    read_lines(&mut zero, 0, 3..4, WINDOW + 22 * SECOND);
    for _ in 0..3 {
        now += SECOND;
        topics.tick(&mut zero, now);
        topics.tick(&mut second, now);
    }
    assert_eq!(topics.counts(), vec![(fox_at(WINDOW), 3), (fox_at(WINDOW + 10 * SECOND), 1)]);
    assert_eq!(second.totals.late.load(Ordering::Relaxed), 0);
}

/// A new owner replays a window that already closed together with records that are new, in one
/// flush: the closed window's partial covers only replayed offsets, so it is absorbed, not
/// counted late, and the window's result stands once.
#[test]
fn a_replay_of_a_closed_window_flushed_with_new_records_is_not_late() {
    let (mut topics, mut first, mut other) = two_workers();
    let mut now = WINDOW + 60 * SECOND;
    read_lines(&mut first, 0, 0..3, WINDOW + SECOND);
    read_lines(&mut first, 0, 3..4, WINDOW + 11 * SECOND);
    read_lines(&mut other, 1, 0..1, WINDOW + 2 * SECOND);
    read_lines(&mut other, 1, 1..2, WINDOW + 12 * SECOND);
    for _ in 0..3 {
        now += SECOND;
        topics.tick(&mut first, now);
        topics.tick(&mut other, now);
    }
    assert_eq!(topics.counts(), vec![(fox_at(WINDOW), 4)], "the first window closed");
    drop(first);

    let mut next = worker();
    next.assign("lines", 0, None);
    read_lines(&mut next, 0, 0..3, WINDOW + SECOND);
    read_lines(&mut next, 0, 3..6, WINDOW + 11 * SECOND);
    for _ in 0..3 {
        now += SECOND;
        topics.tick(&mut next, now);
        topics.tick(&mut other, now);
    }
    assert_eq!(topics.counts(), vec![(fox_at(WINDOW), 4)], "the closed window is not emitted again");
    for engine in [&next, &other] {
        assert_eq!(engine.totals.late.load(Ordering::Relaxed), 0, "a replay is not late");
        assert_eq!(engine.totals.skipped.load(Ordering::Relaxed), 0);
    }
}

/// At-least-once: the first owner of `lines/0` loses it while its partials are still in its
/// producer's queue; the new owner replays the partition, and only then does the old
/// producer deliver them, after the new owner's reset. They come from a replaced owner: they
/// are discarded, and the window counts each record once, the same value a run without the
/// failover gives.
#[test]
fn an_old_owners_partials_delivered_after_the_new_owners_reset_are_discarded() {
    let (mut topics, mut first, mut other) = two_workers();
    let mut now = WINDOW + 60 * SECOND;
    read_lines(&mut first, 0, 0..3, WINDOW + SECOND);
    first.on_tick(now);
    let (queued, sent): (Vec<Output>, Vec<Output>) = first.take_outputs().into_iter().partition(|output| {
        serde_json::from_slice::<RepartitionMessage>(&output.payload)
            .is_ok_and(|message| matches!(message, RepartitionMessage::Partial { .. }))
    });
    assert_eq!(queued.len(), 1, "one partial, fox in the window, still queued");
    topics.repartition.extend(sent.into_iter().map(|output| (output.key, output.payload)));
    drop(first);

    let mut next = worker();
    next.assign("lines", 0, None);
    read_lines(&mut next, 0, 0..3, WINDOW + SECOND);
    read_lines(&mut other, 1, 0..2, WINDOW + 2 * SECOND);
    now += SECOND;
    topics.tick(&mut next, now);
    topics.repartition.extend(queued.into_iter().map(|output| (output.key, output.payload)));
    for _ in 0..10 {
        now += SECOND;
        next.observe_end("lines", 0, true, now);
        other.observe_end("lines", 1, true, now);
        topics.tick(&mut next, now);
        topics.tick(&mut other, now);
    }
    assert_eq!(topics.counts(), vec![(fox_at(WINDOW), 5)], "3 of lines/0 once, 2 of lines/1");
    let discarded =
        other.metrics.replayed_partials_discarded.get_or_create(&PartitionLabels::new(REPARTITION, 0)).get();
    assert_eq!(discarded, 1, "the stale partial is discarded and counted");
    assert_eq!(other.totals.late.load(Ordering::Relaxed) + next.totals.late.load(Ordering::Relaxed), 0);
}
