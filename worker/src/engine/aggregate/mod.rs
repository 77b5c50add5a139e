//! The aggregating side of a windowed job: it reads one repartition partition, merges the
//! partial aggregates the source side sent into their windows (see [`state`]), and emits each
//! window once its watermark passes the window's end.

mod state;

pub(super) use state::{AggregateStage, ExpectedSources};

use std::sync::atomic::Ordering;

use super::{Checkpoint, Destination, Input, Job, Outbox, Stage};
use crate::offsets::PartitionProgress;
use crate::pipeline::{self, Accumulator, StageError, WindowOperator};
use crate::repartition::RepartitionMessage;
use state::{OpenWindow, PartialOutcome};

impl Stage for AggregateStage {
    fn on_record(&mut self, input: &Input<'_>, out: &mut Outbox<'_>) {
        let Some(window) = &out.job.pipeline.window else {
            return;
        };
        let message: RepartitionMessage = match serde_json::from_slice(input.payload.unwrap_or_default()) {
            Ok(message) => message,
            Err(error) => {
                let error =
                    StageError { stage: "repartition".into(), message: format!("not a repartition message: {error}") };
                return out.reject(input, &error, 1, false, || input.offset);
            }
        };
        match message {
            RepartitionMessage::Reset { src, from } => self.reset(&src, from, input.offset),
            RepartitionMessage::Progress { src, watermark, through, .. } => {
                self.progress(src, watermark, through, input.offset)
            }
            RepartitionMessage::Partial { src, from, to, window: start, accumulator } => {
                let key = input.key.map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
                let records = accumulator.count;
                let outcome = self.partial(src, from, to, start, window.size_ms, key, accumulator, input.offset);
                match outcome {
                    PartialOutcome::Applied => {}
                    PartialOutcome::Replayed => {
                        out.metrics.replayed_partials_discarded.get_or_create(out.labels).inc();
                    }
                    PartialOutcome::Late => {
                        let key = input.key.map(String::from_utf8_lossy).unwrap_or_default();
                        let error = StageError {
                            stage: window.stage.clone(),
                            message: format!(
                                "late: {records} records of key {key} for the window starting {} arrived after it was emitted",
                                pipeline::rfc3339(start)
                            ),
                        };
                        out.reject(input, &error, records, true, || input.offset);
                    }
                }
            }
        }
    }

    /// Emits the windows the watermark has passed.
    fn on_tick(&mut self, _now_ms: i64, _flush_due: bool, out: &mut Outbox<'_>) {
        let job = out.job;
        let Some(window) = &job.pipeline.window else {
            return;
        };
        let next_offset = out.progress.next_offset().unwrap_or(i64::MIN);
        self.emitted.retain(|(_, hold)| out.progress.is_held(*hold));
        if next_offset < self.replay_until_offset {
            // Until the replay rebuilds the checkpointed state, the checkpoint's watermark holds.
            return;
        }
        self.advance_watermark(&job.expected);
        let Some(watermark) = self.watermark else {
            return;
        };
        let closed: Vec<i64> =
            self.windows.range(..=watermark.saturating_sub(window.size_ms)).map(|(start, _)| *start).collect();
        for start in closed {
            if let Some(open) = self.windows.remove(&start) {
                self.emit(window, start, open, out);
            }
        }
    }

    fn checkpoint(&self, progress: &PartitionProgress, include_unacknowledged: bool, job: &Job) -> Checkpoint {
        Checkpoint {
            hold: self.oldest_needed_offset(&job.expected),
            metadata: Some(self.commit_metadata(progress, include_unacknowledged)),
        }
    }

    fn open_windows_and_keys(&self) -> (usize, usize) {
        let keys = self.windows.values().flat_map(|w| w.segments.values()).map(|s| s.keys.len()).sum();
        (self.windows.len(), keys)
    }
}

impl AggregateStage {
    /// A window's result per key goes through the stages after the window to the sink; all of
    /// it holds the window's first partial until it is acknowledged.
    fn emit(&mut self, window: &WindowOperator, start: i64, open: OpenWindow, out: &mut Outbox<'_>) {
        let Some(hold) = open.segments.values().map(|s| s.first_input_offset).min() else {
            return;
        };
        let mut per_key: foldhash::HashMap<String, Accumulator> = foldhash::HashMap::default();
        for segment in open.segments.into_values() {
            for (key, accumulator) in segment.keys {
                per_key.entry(key).and_modify(|a| a.merge(&accumulator)).or_insert(accumulator);
            }
        }
        let mut results = Vec::new();
        for (key, accumulator) in per_key {
            match pipeline::run_stateless(
                &out.job.pipeline.after_window,
                pipeline::window_result(window, &key, start, &accumulator),
            ) {
                Ok(records) => results.extend(records),
                Err(error) => {
                    out.metrics.records_skipped.get_or_create(out.labels).inc();
                    out.totals.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(stage = %error.stage, error = %error.message, key, "window result dropped by a later stage's error")
                }
            }
        }
        let ticket = out.ticket(hold, Some(start + window.size_ms), Destination::Sink);
        out.progress.hold(hold, results.len() as u32);
        self.emitted.push((start + window.size_ms, hold));
        for record in results {
            out.send_result(record, ticket);
        }
    }
}
