//! The aggregating stage's state for one repartition partition: the open windows, what is
//! known of each source partition, and the checkpoint kept in the commit metadata.
//!
//! A source partition's watermark comes only from its current owner's progress markers. The
//! stage never reads silence as idleness: a source whose owner died keeps the watermark it
//! last reported, and after a `Reset` (a new owner replays it) its watermark is unknown until
//! the new owner reports. So a window waits, however long, until every source is known past
//! its end.
//!
//! Each source partition has one owner at a time, which announces itself (see
//! [`crate::repartition`]): once this stage has read that announcement, what another owner
//! still sends is stale and discarded, so a partial that an old owner's producer delivers after
//! the new owner's `Reset` never counts next to its replay. (After a restart, until the replay
//! reads an announcement again, every owner's messages count, as they did when first read.)
//!
//! Partials, markers and checkpoints carry the pipeline fingerprint of the worker that wrote
//! them: another pipeline's (left on the topic by the workers a pipeline change stopped) are
//! discarded, and its checkpoint is not restored, so two pipelines' partials never meet in one
//! window. 0 is a worker from before fingerprints, and counts as this pipeline.
//!
//! The checkpoint is two numbers (and the fingerprint), whatever the number of sources: each source's state is
//! rebuilt on a restart by replaying the repartition partition from its committed offset, and
//! the committed offset never passes the last marker a source's state depends on (its pin).
//!
//! Over 400 lines with its tests: the code is under 300, and the tests of its rules (owners,
//! replays, checkpoints) need its private state.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::offsets::PartitionProgress;
use crate::pipeline::Accumulator;

/// The aggregating stage's state for one repartition partition.
#[derive(Default)]
pub struct AggregateStage {
    pub windows: BTreeMap<i64, OpenWindow>,
    sources: HashMap<String, SourceProgress>,
    pub watermark: Option<i64>,
    /// After a restart, windows are not emitted before the replay reaches this offset, where
    /// the state is again what it was when the offset was committed.
    pub replay_until_offset: i64,
    /// Emitted windows as (end, offset holding their results), until the results are
    /// acknowledged: a checkpoint keeps them open, so a restart emits them again.
    pub emitted: Vec<(i64, i64)>,
    /// This worker's pipeline fingerprint (0: none); messages and checkpoints of another are
    /// not this pipeline's.
    pipeline: u64,
}

#[derive(Default)]
pub struct OpenWindow {
    /// (source, first source offset of the partial's range) → the partial aggregates per key.
    pub segments: HashMap<(String, i64), Segment>,
}

pub struct Segment {
    pub first_input_offset: i64,
    pub keys: foldhash::HashMap<String, Accumulator>,
}

/// What the stage knows of one source partition.
#[derive(Debug, Clone, PartialEq)]
struct SourceProgress {
    /// As its current owner last reported; `None` until it reports (and again after a reset).
    watermark: Option<i64>,
    /// The highest source offset this source is known to have sent.
    applied_through: i64,
    /// Partials up to this source offset are replays of what was sent before the last reset.
    replayed_through: i64,
    /// A new owner is replaying what an earlier one sent, up to `replayed_through`.
    replaying: bool,
    /// The repartition offset a replay must start from to rebuild this state.
    pin: Option<i64>,
    /// The owner whose announcement was read last, if one was.
    owner: Option<u64>,
    /// Where that owner's `Reset` restarts the source (`i64::MIN` for an `Owner` marker).
    owner_from: i64,
}

impl Default for SourceProgress {
    fn default() -> Self {
        Self {
            watermark: None,
            applied_through: -1,
            replayed_through: -1,
            replaying: false,
            pin: None,
            owner: None,
            owner_from: i64::MIN,
        }
    }
}

impl SourceProgress {
    /// Whether a message of `owner` counts: it comes from the announced owner, or none is known
    /// (0 is a worker without owner ids).
    fn sent_by_owner(&self, owner: u64) -> bool {
        owner == 0 || self.owner.is_none_or(|current| current == owner)
    }
}

/// Commit metadata of a repartition partition.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct AggregateCheckpoint {
    #[serde(rename = "wm")]
    watermark: Option<i64>,
    #[serde(rename = "to")]
    read_to: i64,
    /// The pipeline that wrote it (0: unknown, a worker from before fingerprints).
    #[serde(rename = "f", default, skip_serializing_if = "is_zero")]
    pipeline: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// Whether something of pipeline `theirs` belongs to another pipeline than `ours`; 0 on either
/// side is unknown, and counts as the same (workers and checkpoints from before fingerprints).
fn other_pipeline(ours: u64, theirs: u64) -> bool {
    ours != 0 && theirs != 0 && ours != theirs
}

/// What became of a partial aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartialOutcome {
    /// Added to its open window.
    Applied,
    /// Its window was emitted, and the partial is a replay of what it already counted.
    Replayed,
    /// Its window was emitted without it.
    Late,
    /// It comes from an owner of its source that another has replaced: the new owner sends
    /// its records again.
    Stale,
}

/// The source partitions a stage waits for: every partition of the job's source topics, and
/// any other partition of those topics that reports (one added later). Empty: every source
/// that has reported.
#[derive(Debug, Default, Clone)]
pub struct ExpectedSources {
    ids: Vec<String>,
    topics: HashSet<String>,
}

impl ExpectedSources {
    pub fn new(ids: Vec<String>) -> Self {
        let topics = ids.iter().filter_map(|id| id.rsplit_once('/')).map(|(topic, _)| topic.to_owned()).collect();
        Self { ids, topics }
    }

    fn counts(&self, id: &str) -> bool {
        self.ids.is_empty() || id.rsplit_once('/').is_some_and(|(topic, _)| self.topics.contains(topic))
    }
}

impl AggregateStage {
    /// The state from a partition's commit metadata, for a worker of pipeline `pipeline`. A
    /// checkpoint another pipeline wrote is not restored: its watermark and replay position
    /// describe windows this pipeline does not have, and what the replay reads of that
    /// pipeline is discarded.
    pub fn restore(metadata: Option<&str>, pipeline: u64) -> Self {
        let checkpoint: AggregateCheckpoint =
            metadata.filter(|m| !m.is_empty()).and_then(|m| serde_json::from_str(m).ok()).unwrap_or_default();
        if other_pipeline(pipeline, checkpoint.pipeline) {
            tracing::info!(
                checkpoint_pipeline = format!("{:016x}", checkpoint.pipeline),
                pipeline = format!("{pipeline:016x}"),
                "the repartition partition's checkpoint is another pipeline's: starting without it"
            );
            return Self { pipeline, ..Self::default() };
        }
        Self { watermark: checkpoint.watermark, replay_until_offset: checkpoint.read_to, pipeline, ..Self::default() }
    }

    /// Whether a message from a worker of pipeline `theirs` is another pipeline's, to be
    /// discarded unread.
    pub fn foreign(&self, theirs: u64) -> bool {
        other_pipeline(self.pipeline, theirs)
    }

    /// The commit metadata. With `unacknowledged` holds (at-least-once), the watermark saved
    /// stays below the end of every window whose results are not all acknowledged.
    pub fn commit_metadata(&self, progress: &PartitionProgress, unacknowledged: bool) -> String {
        let pending_end = self
            .emitted
            .iter()
            .filter(|(_, hold)| unacknowledged && progress.is_held(*hold))
            .map(|(end, _)| end - 1)
            .min();
        let watermark = match (self.watermark, pending_end) {
            (Some(w), Some(cap)) => Some(w.min(cap)),
            (w, _) => w,
        };
        let next_offset = progress.next_offset();
        let checkpoint = AggregateCheckpoint {
            watermark,
            read_to: next_offset.unwrap_or(self.replay_until_offset).max(self.replay_until_offset),
            pipeline: self.pipeline,
        };
        serde_json::to_string(&checkpoint).unwrap_or_default()
    }

    /// The oldest repartition offset a restart must read again: the first partial of an open
    /// window, or the marker some source's state was last rebuilt from.
    pub fn oldest_needed_offset(&self, expected: &ExpectedSources) -> Option<i64> {
        let windows = self.windows.values().flat_map(|w| w.segments.values()).map(|s| s.first_input_offset);
        let pins = self.sources.iter().filter(|(id, _)| expected.counts(id)).filter_map(|(_, s)| s.pin);
        windows.chain(pins).min()
    }

    /// A source partition restarts at `from` (read at `offset`) under `owner`: what it sent
    /// from there will come again, and its watermark is unknown until its new owner reports.
    /// Returns false, changing nothing, for the late `Reset` of an owner that an owner
    /// restarting further on has replaced.
    pub fn reset(&mut self, src: &str, owner: u64, from: i64, offset: i64) -> bool {
        let progress = self.sources.entry(src.to_owned()).or_default();
        if owner != 0 {
            if progress.owner.is_some_and(|current| current != owner) && from < progress.owner_from {
                return false;
            }
            progress.owner = Some(owner);
            progress.owner_from = from;
        }
        for window in self.windows.values_mut() {
            window.segments.retain(|(source, range_start), _| source != src || *range_start < from);
        }
        self.windows.retain(|_, w| !w.segments.is_empty());
        let progress = self.sources.entry(src.to_owned()).or_default();
        progress.replayed_through = progress.replayed_through.max(progress.applied_through);
        progress.replaying = progress.replayed_through >= from;
        progress.watermark = None;
        progress.pin.get_or_insert(offset);
        true
    }

    /// A new owner of `src` that has read nothing (read at `offset`): other owners' messages are
    /// stale from here on. Its watermark comes with its first progress marker.
    pub fn owner(&mut self, src: String, owner: u64, offset: i64) {
        let progress = self.sources.entry(src).or_default();
        progress.owner = Some(owner);
        progress.owner_from = i64::MIN;
        if !progress.replaying {
            progress.pin = Some(offset);
        }
    }

    /// A progress marker of `src`'s owner `owner`, read at `offset`; a stale owner's is ignored.
    pub fn progress(&mut self, src: String, owner: u64, watermark: i64, through: i64, offset: i64) {
        let progress = self.sources.entry(src).or_default();
        if !progress.sent_by_owner(owner) {
            return;
        }
        if watermark > i64::MIN {
            progress.watermark = Some(progress.watermark.map_or(watermark, |w| w.max(watermark)));
        }
        progress.applied_through = progress.applied_through.max(through);
        if progress.replaying && through >= progress.replayed_through {
            progress.replaying = false;
        }
        // While a replay is under way, the marker before the reset keeps what it replays.
        if !progress.replaying {
            progress.pin = Some(offset);
        }
    }

    /// A partial aggregate read at `offset`, for the window starting at `start`.
    #[allow(clippy::too_many_arguments)]
    pub fn partial(
        &mut self,
        src: String,
        owner: u64,
        from: i64,
        to: i64,
        start: i64,
        size_ms: i64,
        key: String,
        accumulator: Accumulator,
        offset: i64,
    ) -> PartialOutcome {
        let progress = self.sources.entry(src.clone()).or_default();
        if !progress.sent_by_owner(owner) {
            return PartialOutcome::Stale;
        }
        progress.applied_through = progress.applied_through.max(to);
        if self.watermark.is_some_and(|w| start + size_ms <= w) {
            // Before `replay_until_offset` this partition's own replay reads what it handled
            // before the checkpoint; after a source's reset, what its old owner sent.
            if offset < self.replay_until_offset || to <= progress.replayed_through {
                return PartialOutcome::Replayed;
            }
            return PartialOutcome::Late;
        }
        let segment = self
            .windows
            .entry(start)
            .or_default()
            .segments
            .entry((src, from))
            .or_insert_with(|| Segment { first_input_offset: offset, keys: foldhash::HashMap::default() });
        segment.keys.entry(key).and_modify(|a| a.merge(&accumulator)).or_insert(accumulator);
        PartialOutcome::Applied
    }

    /// The watermark: the lowest of the expected sources' watermarks, once every one of them
    /// is known. It never goes back.
    pub fn advance_watermark(&mut self, expected: &ExpectedSources) {
        if expected.ids.iter().any(|id| !self.sources.contains_key(id)) {
            return;
        }
        let mut lowest: Option<i64> = None;
        for (_, progress) in self.sources.iter().filter(|(id, _)| expected.counts(id)) {
            let Some(watermark) = progress.watermark else {
                return;
            };
            lowest = Some(lowest.map_or(watermark, |l| l.min(watermark)));
        }
        if let Some(lowest) = lowest {
            self.watermark = Some(self.watermark.map_or(lowest, |w| w.max(lowest)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(count: usize) -> ExpectedSources {
        ExpectedSources::new((0..count).map(|p| format!("lines/{p}")).collect())
    }

    /// Whatever the number of source partitions, the commit metadata stays far below the
    /// broker's `offset.metadata.max.bytes` (4096 by default).
    #[test]
    fn the_checkpoint_stays_small_with_a_thousand_sources() {
        let expected = sources(1000);
        let mut stage = AggregateStage { pipeline: u64::MAX, ..AggregateStage::default() };
        let mut progress = PartitionProgress::default();
        for (offset, id) in expected.ids.iter().enumerate() {
            let offset = offset as i64 + 9_000_000_000;
            stage.progress(id.clone(), 1, 1_700_000_000_000 + offset, 123_456_789_012, offset);
            progress.read(offset);
        }
        stage.advance_watermark(&expected);
        let metadata = stage.commit_metadata(&progress, true);
        assert!(metadata.len() <= 64, "{} bytes: {metadata}", metadata.len());
        let restored = AggregateStage::restore(Some(&metadata), 0);
        assert_eq!(restored.watermark, Some(1_700_000_000_000 + 9_000_000_000));
        assert_eq!(restored.replay_until_offset, 9_000_001_000);
    }

    #[test]
    fn a_window_waits_for_every_expected_source() {
        let expected = sources(2);
        let mut stage = AggregateStage::default();
        stage.progress("lines/0".into(), 1, 50_000, 10, 0);
        stage.advance_watermark(&expected);
        assert_eq!(stage.watermark, None, "lines/1 has not reported");
        stage.progress("lines/1".into(), 1, 40_000, 10, 1);
        stage.progress("other/0".into(), 1, 10, 10, 2);
        stage.advance_watermark(&expected);
        assert_eq!(stage.watermark, Some(40_000), "a topic the job does not read does not count");
    }

    /// A restart replays from the commit, which never passes the marker a source's state
    /// was last rebuilt from; during a replay, the marker from before the reset.
    #[test]
    fn the_commit_keeps_every_sources_last_marker() {
        let expected = sources(2);
        let mut stage = AggregateStage::default();
        stage.progress("lines/0".into(), 1, 10_000, 100, 5);
        stage.progress("lines/1".into(), 1, 10_000, 100, 6);
        assert_eq!(stage.oldest_needed_offset(&expected), Some(5));
        stage.progress("lines/0".into(), 1, 11_000, 130, 10);
        assert!(stage.reset("lines/0", 1, 90, 11));
        stage.progress("lines/1".into(), 1, 11_000, 120, 12);
        stage.progress("lines/0".into(), 1, 9_000, 110, 13);
        assert_eq!(stage.oldest_needed_offset(&expected), Some(10), "lines/0 is replayed up to 130");
        stage.progress("lines/0".into(), 1, 12_000, 130, 14);
        assert_eq!(stage.oldest_needed_offset(&expected), Some(12));
    }

    /// Once a source's owner has announced itself, another owner's partials and markers are
    /// stale; a late `Reset` of an owner that restarted further back is ignored, and a new
    /// owner's (restarting at or after it) takes over.
    #[test]
    fn only_the_announced_owners_messages_count() {
        let expected = sources(1);
        let mut stage = AggregateStage::default();
        let accumulator = Accumulator::one(1.0);
        let partial = |stage: &mut AggregateStage, owner: u64, from: i64, offset: i64| {
            stage.partial("lines/0".into(), owner, from, from, 0, 10_000, "k".into(), accumulator, offset)
        };
        assert_eq!(partial(&mut stage, 7, 0, 0), PartialOutcome::Applied, "no owner known yet: counts");
        assert!(stage.reset("lines/0", 1, 10, 1));
        assert_eq!(partial(&mut stage, 1, 10, 2), PartialOutcome::Applied);
        assert_eq!(partial(&mut stage, 7, 11, 3), PartialOutcome::Stale);
        assert_eq!(partial(&mut stage, 0, 12, 4), PartialOutcome::Applied, "a worker without owner ids");
        stage.progress("lines/0".into(), 7, 50_000, 11, 5);
        stage.advance_watermark(&expected);
        assert_eq!(stage.watermark, None, "a stale owner's marker moves nothing");
        assert!(!stage.reset("lines/0", 7, 5, 6), "a late reset of the replaced owner");
        assert_eq!(partial(&mut stage, 1, 13, 7), PartialOutcome::Applied);
        assert!(stage.reset("lines/0", 9, 10, 8), "a newer owner restarting where the last did");
        assert_eq!(partial(&mut stage, 1, 14, 9), PartialOutcome::Stale);
        stage.owner("lines/0".into(), 11, 10);
        stage.progress("lines/0".into(), 11, 60_000, -1, 11);
        stage.advance_watermark(&expected);
        assert_eq!(stage.watermark, Some(60_000), "an owner that read nothing announced itself");
    }

    /// A checkpoint of another pipeline is not restored; one of the same pipeline, or of a
    /// worker from before fingerprints, is.
    #[test]
    fn only_the_same_pipelines_checkpoint_is_restored() {
        let written = |pipeline: u64| {
            let stage = AggregateStage {
                watermark: Some(5_000),
                replay_until_offset: 40,
                pipeline,
                ..AggregateStage::default()
            };
            stage.commit_metadata(&PartitionProgress::default(), false)
        };
        let cases = [
            ("the same pipeline", written(7), 7, Some(5_000), 40),
            ("another pipeline", written(8), 7, None, 0),
            ("a checkpoint from before fingerprints", written(0), 7, Some(5_000), 40),
            ("a worker without a fingerprint", written(8), 0, Some(5_000), 40),
        ];
        for (what, metadata, pipeline, watermark, replay_until) in cases {
            let restored = AggregateStage::restore(Some(&metadata), pipeline);
            assert_eq!((restored.watermark, restored.replay_until_offset), (watermark, replay_until), "{what}");
            assert!(!restored.foreign(pipeline) && !restored.foreign(0), "{what}");
        }
        assert!(AggregateStage::restore(None, 7).foreign(8));
    }
}
