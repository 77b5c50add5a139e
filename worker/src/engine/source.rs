//! The source side of a windowed job: each record's keyed contributions are pre-aggregated per
//! window, and sent on through the repartition topic (see [`crate::repartition`]) as partial
//! aggregates, with markers of how far the partition has got.
//!
//! The partition commits only where a range of partials starts: a reset drops the ranges from
//! its offset on, so a commit inside one would have the replay count its first records twice.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Checkpoint, Destination, Input, Job, Outbox, Output, Stage};
use crate::offsets::PartitionProgress;
use crate::pipeline::{self, Accumulator, Emit, Reason, StageError, WindowOperator};
use crate::record::Record;
use crate::repartition::{new_owner_id, partition_for, RepartitionMessage};

/// How often the owner of an idle source partition repeats that it still is: each marker
/// moves the partition's watermark on, and only a live owner sends them.
const IDLE_HEARTBEAT: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct SourceStage {
    id: String,
    /// This assignment's owner id, in every message it sends.
    owner: u64,
    /// Window start → what the current range added to that window.
    partials: BTreeMap<i64, WindowPartials>,
    /// The keys in `partials`, over all windows.
    partial_count: usize,
    range_start: Option<i64>,
    range_end: i64,
    max_event_ms: Option<i64>,
    reset_sent: bool,
    /// This owner has announced itself (with its `Reset`, or an `Owner` marker before it).
    announced: bool,
    /// The last offset whose partials were sent.
    through: Option<i64>,
    /// Since when this worker has seen the partition read to its end, without a record since.
    at_end_since: Option<i64>,
    /// Where idleness moved the watermark: records behind it are late.
    idle_floor: Option<i64>,
    idle: bool,
    progress_unsent: bool,
    last_progress_ms: i64,
    /// Reused from record to record.
    staged: StagedContributions,
}

impl Stage for SourceStage {
    fn on_record(&mut self, input: &Input<'_>, out: &mut Outbox<'_>) {
        out.count_input();
        let job = out.job;
        let Some(window) = &job.pipeline.window else {
            return;
        };
        self.send_reset_once(input.offset, out);
        self.at_end_since = None;
        self.wake();
        let mut staged = std::mem::take(&mut self.staged);
        staged.clear();
        let result = input.decode(job.settings.source_format, &job.pipeline.input_fields).and_then(|record| {
            let mut stager = Stager { window, staged: &mut staged };
            pipeline::run_stateless_into(&job.pipeline.before_window, record, &mut stager)
        });
        if let Err(error) = result {
            self.staged = staged;
            return self.reject(input, &error, false, out);
        }
        if let Some(error) = self.overflow(window, &staged) {
            self.staged = staged;
            return self.reject(input, &error, false, out);
        }
        let late = self.add_partials(window, &staged, input.offset);
        self.range_start.get_or_insert(input.offset);
        self.range_end = input.offset;
        self.staged = staged;
        if let Some((event_ms, watermark)) = late {
            let error = StageError::new(
                &window.stage,
                Reason::Late,
                format!(
                    "late: event time {} is behind the partition's watermark {} by more than the allowed lateness",
                    pipeline::rfc3339(event_ms),
                    pipeline::rfc3339(watermark)
                ),
            );
            self.reject(input, &error, true, out);
        }
        if self.partial_count >= job.settings.max_partials {
            self.flush(out);
        }
    }

    /// Partial aggregates are sent on, and how far the partition has got.
    fn on_tick(&mut self, now_ms: i64, flush_due: bool, out: &mut Outbox<'_>) {
        if flush_due {
            self.flush(out);
            self.send_progress(now_ms, out);
        }
    }

    /// Sends the partial aggregates on, as one range of the partition's offsets.
    fn flush(&mut self, out: &mut Outbox<'_>) {
        let Some(partitions) = out.job.repartition_partitions() else {
            return;
        };
        let Some(from) = self.range_start.take() else {
            return;
        };
        self.through = Some(self.range_end);
        let partials = std::mem::take(&mut self.partials);
        let partial_count = std::mem::take(&mut self.partial_count);
        let ticket = out.ticket(from, None, Destination::Repartition { partition: 0 });
        out.progress.hold(from, partial_count as u32);
        for (window, to, key, accumulator) in partials.into_iter().flat_map(|(window, partials)| {
            partials.keys.into_iter().map(move |(key, a)| (window, partials.last_offset, key, a))
        }) {
            let payload = RepartitionMessage::Partial {
                src: self.id.clone(),
                owner: self.owner,
                pipeline: out.job.pipeline_fingerprint,
                from,
                to,
                window,
                accumulator,
            }
            .encode();
            out.push(Output {
                destination: Destination::Repartition { partition: partition_for(&key, partitions) },
                key: Some(key.into_bytes()),
                payload,
                headers: Vec::new(),
                ticket: Some(ticket),
            });
        }
    }

    fn observe_end(&mut self, at_end: bool, now_ms: i64) {
        if at_end {
            self.at_end_since.get_or_insert(now_ms);
        } else {
            self.at_end_since = None;
            self.wake();
        }
    }

    fn checkpoint(&self, _progress: &PartitionProgress, _include_unacknowledged: bool, _job: &Job) -> Checkpoint {
        Checkpoint { hold: self.range_start, metadata: None }
    }
}

impl SourceStage {
    pub fn new(id: String) -> Self {
        Self { id, owner: new_owner_id(), ..Self::default() }
    }

    /// A record dead-lettered inside a range holds the range's start: a reset replays whole
    /// ranges.
    fn reject(&mut self, input: &Input<'_>, error: &StageError, late: bool, out: &mut Outbox<'_>) {
        out.reject(input, error, 1, late, || {
            self.range_end = input.offset;
            *self.range_start.get_or_insert(input.offset)
        });
    }

    /// The first record after the partition's assignment: its offset is where the replay
    /// starts, so every aggregating partition forgets what this source sent from there.
    fn send_reset_once(&mut self, offset: i64, out: &mut Outbox<'_>) {
        let Some(partitions) = out.job.repartition_partitions() else {
            return;
        };
        if self.reset_sent {
            return;
        }
        self.reset_sent = true;
        self.announced = true;
        let pipeline = out.job.pipeline_fingerprint;
        let message = RepartitionMessage::Reset { src: self.id.clone(), owner: self.owner, pipeline, from: offset };
        let ticket = out.ticket(offset, None, Destination::Repartition { partition: 0 });
        out.progress.hold(offset, partitions as u32);
        out.broadcast(&message, Some(ticket), partitions);
    }

    /// Tells the aggregators how far this source partition has got. Only while it stays read
    /// to its end does the watermark follow the wall clock, less the idle timeout and the
    /// allowed lateness, so records delayed less than that (by a rebalance, say) are not late.
    fn send_progress(&mut self, now_ms: i64, out: &mut Outbox<'_>) {
        let (Some(window), Some(partitions)) = (&out.job.pipeline.window, out.job.repartition_partitions()) else {
            return;
        };
        let lateness = window.allowed_lateness_ms;
        let idle_timeout = out.job.settings.idle_timeout_ms;
        let quiet_at_end = self.at_end_since.is_some_and(|since| now_ms - since >= idle_timeout);
        let heartbeat_due = now_ms - self.last_progress_ms >= IDLE_HEARTBEAT.as_millis() as i64;
        if quiet_at_end && (!self.idle || heartbeat_due) {
            self.idle = true;
            let floor = now_ms - idle_timeout - lateness;
            self.idle_floor = Some(self.idle_floor.map_or(floor, |f| f.max(floor)));
            self.progress_unsent = true;
        }
        if !self.progress_unsent {
            return;
        }
        self.progress_unsent = false;
        self.last_progress_ms = now_ms;
        if !self.announced {
            // An owner that has read nothing has nothing to replay, but the aggregators must
            // know it is the owner before its first marker.
            self.announced = true;
            let owner = RepartitionMessage::Owner {
                src: self.id.clone(),
                owner: self.owner,
                pipeline: out.job.pipeline_fingerprint,
            };
            out.broadcast(&owner, None, partitions);
        }
        let message = RepartitionMessage::Progress {
            src: self.id.clone(),
            owner: self.owner,
            pipeline: out.job.pipeline_fingerprint,
            watermark: self.watermark(lateness).unwrap_or(i64::MIN),
            idle: self.idle,
            through: self.through.unwrap_or(-1),
        };
        out.broadcast(&message, None, partitions);
    }

    /// Something new arrived: the partition is no longer idle.
    fn wake(&mut self) {
        if self.idle {
            self.idle = false;
            self.progress_unsent = true;
        }
    }

    /// Records behind this are late: the latest event time less the allowed lateness, or
    /// where idleness moved it.
    fn watermark(&self, lateness: i64) -> Option<i64> {
        let from_events = self.max_event_ms.map(|m| m - lateness);
        match (from_events, self.idle_floor) {
            (Some(events), Some(floor)) => Some(events.max(floor)),
            (events, floor) => events.or(floor),
        }
    }

    /// Whether adding a record's contributions would make a partial's sum overflow to an
    /// infinity, which no partial may hold: the record is rejected instead.
    fn overflow(&self, window: &WindowOperator, staged: &StagedContributions) -> Option<StageError> {
        let overflows = (0..staged.entries.len()).any(|index| {
            let entry = &staged.entries[index];
            let held = window.window_starts(entry.event_ms).filter_map(|start| {
                self.partials.get(&start).and_then(|partials| partials.keys.get(staged.key(index)))
            });
            let mut sums = held.map(|partial| partial.sum + entry.accumulator.sum);
            sums.any(|sum| !sum.is_finite())
        });
        overflows.then(|| {
            StageError::new(
                &window.stage,
                Reason::NonFinite,
                "the record makes its key's sum in the window larger than a double holds",
            )
        })
    }

    /// Adds a record's contributions to the open windows; returns the event time and the
    /// watermark when some contribution came too late for every window it falls in.
    fn add_partials(
        &mut self,
        window: &WindowOperator,
        staged: &StagedContributions,
        offset: i64,
    ) -> Option<(i64, i64)> {
        let watermark = self.watermark(window.allowed_lateness_ms);
        let mut late = None;
        let mut run_start = 0;
        // The pieces of one record mostly share its event time: their windows are found once.
        while run_start < staged.entries.len() {
            let run_end = staged.same_time_run_end(run_start);
            let event_ms = staged.entries[run_start].event_ms;
            let mut open = window
                .window_starts(event_ms)
                .filter(|start| watermark.is_none_or(|w| start + window.size_ms > w))
                .peekable();
            if open.peek().is_none() {
                late = Some((event_ms, watermark.unwrap_or_default()));
            } else {
                for start in open {
                    let window_partials = self.partials.entry(start).or_default();
                    window_partials.last_offset = offset;
                    let keys = &mut window_partials.keys;
                    for index in run_start..run_end {
                        let accumulator = &staged.entries[index].accumulator;
                        match keys.get_mut(staged.key(index)) {
                            Some(partial) => partial.merge(accumulator),
                            None => {
                                keys.insert(staged.key(index).to_owned(), *accumulator);
                                self.partial_count += 1;
                            }
                        }
                    }
                }
                self.max_event_ms = Some(self.max_event_ms.map_or(event_ms, |m| m.max(event_ms)));
                self.progress_unsent = true;
            }
            run_start = run_end;
        }
        late
    }
}

/// What one range of the partition's offsets added to one window.
#[derive(Default)]
struct WindowPartials {
    /// The last offset that added to the window: its partials say they cover no more than that,
    /// so a replay of a closed window sent with new records for later windows is known for one.
    last_offset: i64,
    /// Key → partial aggregate. Keys are user data, so hashed with a seeded hasher: fast, and
    /// not open to collision floods.
    keys: foldhash::HashMap<String, Accumulator>,
}

/// One input record's keyed contributions, held back until every piece of it has gone through
/// the stages, so a record that fails part way adds nothing. The keys share one string.
#[derive(Default)]
struct StagedContributions {
    keys: String,
    entries: Vec<StagedContribution>,
}

struct StagedContribution {
    /// Where the key ends in `keys`; it starts where the one before ends.
    key_end: usize,
    event_ms: i64,
    accumulator: Accumulator,
}

impl StagedContributions {
    fn clear(&mut self) {
        self.keys.clear();
        self.entries.clear();
    }

    fn push(&mut self, key: &str, event_ms: i64, accumulator: Accumulator) {
        self.keys.push_str(key);
        self.entries.push(StagedContribution { key_end: self.keys.len(), event_ms, accumulator });
    }

    fn key(&self, index: usize) -> &str {
        let start = index.checked_sub(1).map_or(0, |before| self.entries[before].key_end);
        &self.keys[start..self.entries[index].key_end]
    }

    /// The end of the run of entries from `start` on that share its event time.
    fn same_time_run_end(&self, start: usize) -> usize {
        let event_ms = self.entries[start].event_ms;
        start + self.entries[start..].iter().take_while(|entry| entry.event_ms == event_ms).count()
    }
}

/// Receives what the stateless stages make of a source record, for the window.
struct Stager<'a> {
    window: &'a WindowOperator,
    staged: &'a mut StagedContributions,
}

impl Emit for Stager<'_> {
    fn record(&mut self, record: Record) -> Result<(), StageError> {
        let (event_ms, accumulator) = self.window.contribution(&record)?;
        let key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default());
        self.staged.push(&key, event_ms, accumulator);
        Ok(())
    }

    fn key_only(&mut self, key: &str, timestamp_ms: i64) -> Result<(), StageError> {
        let (event_ms, accumulator) = self.window.key_only_contribution(timestamp_ms)?;
        self.staged.push(key, event_ms, accumulator);
        Ok(())
    }
}
