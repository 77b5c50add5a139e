//! Records that failed, came late, or whose output no retry can deliver: they go to the
//! dead-letter topic, or are counted and skipped when there is none. None stops its partition.

use std::sync::atomic::Ordering;

use super::{Destination, Input, Outbox, Output};
use crate::pipeline::StageError;
use crate::undeliverable::Poison;

impl Outbox<'_> {
    /// Sends `input` to the dead-letter topic with `error`, or skips it. `records` is how many
    /// input records it stands for (a partial aggregate stands for many); `hold_at` says which
    /// offset its output holds, asked only when there is a dead-letter topic.
    pub fn reject(
        &mut self,
        input: &Input<'_>,
        error: &StageError,
        records: u64,
        late: bool,
        hold_at: impl FnOnce() -> i64,
    ) {
        if late {
            self.metrics.records_late.get_or_create(self.labels).inc_by(records);
            self.totals.late.fetch_add(records, Ordering::Relaxed);
        }
        if !self.job.settings.dead_letter {
            return self.skip(input, error, records);
        }
        let hold_at = hold_at();
        let mut ticket = self.ticket(hold_at, input.timestamp_ms, Destination::DeadLetter);
        ticket.records = records;
        self.progress.hold(hold_at, 1);
        self.push(Output {
            destination: Destination::DeadLetter,
            key: input.key.map(<[u8]>::to_vec),
            payload: input.payload.unwrap_or_default().to_vec(),
            headers: dead_letter_headers(&error.message, &error.stage, input.topic, input.partition, input.offset),
            ticket: Some(ticket),
        });
    }

    pub fn skip(&mut self, input: &Input<'_>, error: &StageError, records: u64) {
        self.metrics.records_skipped.get_or_create(self.labels).inc_by(records);
        self.totals.skipped.fetch_add(records, Ordering::Relaxed);
        tracing::warn!(topic = input.topic, partition = input.partition, offset = input.offset, stage = %error.stage,
            error = %error.message, records, "record skipped: no dead-letter topic is set or can take it");
    }

    /// An input read again after its output could not be delivered for good.
    pub fn read_poisoned(&mut self, input: &Input<'_>, poison: Poison) {
        match poison {
            Poison::DeadLetter(error) => {
                let error = StageError { stage: "sink".into(), message: format!("the sink cannot take it: {error}") };
                self.reject(input, &error, 1, false, || input.offset);
            }
            Poison::Skip(error) => {
                let error = StageError { stage: "sink".into(), message: format!("undeliverable: {error}") };
                self.skip(input, &error, 1);
            }
        }
    }
}

/// The headers that say why a record went to the dead-letter topic, and where it came from.
fn dead_letter_headers(
    error: &str,
    stage: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Vec<(&'static str, String)> {
    vec![
        ("streamjob.error", error.to_owned()),
        ("streamjob.stage", stage.to_owned()),
        ("streamjob.source.topic", topic.to_owned()),
        ("streamjob.source.partition", partition.to_string()),
        ("streamjob.source.offset", offset.to_string()),
    ]
}
