//! The aggregating side of a windowed job: it reads one repartition partition, merges the
//! partial aggregates the source side sent into their windows (see [`state`]), and emits each
//! window once its watermark passes the window's end.

mod state;

pub(super) use state::{AggregateStage, ExpectedSources};

use super::{record_size, Checkpoint, Destination, Input, Job, Outbox, Output, Stage};
use crate::offsets::PartitionProgress;
use crate::pipeline::{self, Accumulator, Reason, StageError, WindowOperator};
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
                    StageError::new("repartition", Reason::Internal, format!("not a repartition message: {error}"));
                return out.reject(input, &error, 1, false, || input.offset);
            }
        };
        if self.foreign(message.pipeline()) {
            if let RepartitionMessage::Partial { accumulator, .. } = &message {
                out.metrics.other_pipeline_partials_discarded.get_or_create(out.labels).inc();
                out.metrics.other_pipeline_records_discarded.get_or_create(out.labels).inc_by(accumulator.count);
            }
            return;
        }
        match message {
            RepartitionMessage::Reset { src, owner, from, .. } => {
                if !self.reset(&src, owner, from, input.offset) {
                    tracing::info!(src, from, "ignored the late reset of a replaced owner of a source partition");
                }
            }
            RepartitionMessage::Owner { src, owner, .. } => self.owner(src, owner, input.offset),
            RepartitionMessage::Progress { src, owner, watermark, through, .. } => {
                self.progress(src, owner, watermark, through, input.offset)
            }
            RepartitionMessage::Partial { src, owner, from, to, window: start, accumulator, .. } => {
                let key = input.key.map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
                let records = accumulator.count;
                let outcome = self.partial(src, owner, from, to, start, window.size_ms, key, accumulator, input.offset);
                match outcome {
                    PartialOutcome::Applied => {}
                    PartialOutcome::Replayed | PartialOutcome::Stale => {
                        out.metrics.replayed_partials_discarded.get_or_create(out.labels).inc();
                    }
                    PartialOutcome::Late => {
                        let key = input.key.map(String::from_utf8_lossy).unwrap_or_default();
                        let error = StageError::new(
                            &window.stage,
                            Reason::Late,
                            format!(
                                "late: {records} records of key {key} for the window starting {} arrived after it was emitted",
                                pipeline::rfc3339(start)
                            ),
                        );
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
        let sink_format = out.job.settings.sink_format;
        let mut results = Vec::new();
        for (key, accumulator) in per_key {
            let result = pipeline::window_result(window, &key, start, &accumulator);
            let finite = if accumulator.sum.is_finite() {
                Ok(result.clone())
            } else {
                Err(StageError::new(
                    &window.stage,
                    Reason::NonFinite,
                    format!("the sum of key {key}'s {} records overflows a double", accumulator.count),
                ))
            };
            let encoded = finite.and_then(|result| pipeline::run_stateless(&out.job.pipeline.after_window, result)).and_then(|records| {
                let encoded: Vec<(Option<Vec<u8>>, Vec<u8>)> =
                    records.iter().map(|r| (r.key.clone(), pipeline::encode(sink_format, r))).collect();
                match encoded.iter().map(|(k, p)| record_size(k.as_deref(), p, &[])).max() {
                    Some(size) if size > out.job.limits.sink => Err(StageError::new(
                        "sink",
                        Reason::TooLarge,
                        format!(
                            "the window result takes {size} bytes, more than the sink topic takes (max.message.bytes {})",
                            out.job.limits.sink
                        ),
                    )),
                    _ => Ok(encoded),
                }
            });
            match encoded {
                Ok(encoded) => results.extend(encoded),
                Err(error) => {
                    // No input record to send: the window's result goes to the dead-letter
                    // topic in its place, as JSON, standing for the records it counts.
                    let payload = pipeline::encode(streamjob_crds::SinkFormat::Json, &result);
                    let topic = out.labels.topic.clone();
                    let input = Input {
                        topic: &topic,
                        partition: out.labels.partition.parse().unwrap_or(-1),
                        offset: hold,
                        key: Some(key.as_bytes()),
                        payload: Some(&payload),
                        timestamp_ms: Some(start + window.size_ms),
                    };
                    out.reject(&input, &error, accumulator.count, false, || hold);
                }
            }
        }
        let ticket = out.ticket(hold, Some(start + window.size_ms), Destination::Sink);
        out.progress.hold(hold, results.len() as u32);
        self.emitted.push((start + window.size_ms, hold));
        for (key, payload) in results {
            out.push(Output::to_sink(key, payload, ticket));
        }
    }
}
