//! Records that failed, came late, or whose output no retry can deliver: they go to the
//! dead-letter topic, or are counted and skipped when there is none. None stops its partition.
//!
//! A dead-lettered record is the input as it came, with headers saying why. When the input
//! itself is larger than the dead-letter topic takes, its value is left out (the header
//! `streamjob.value.omitted` gives its size, the source headers where to find it), so the
//! dead-letter topic can always take the record and account for it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::{record_size, Destination, Input, Outbox, Output};
use crate::metrics::SkipLabels;
use crate::pipeline::{Reason, StageError};
use crate::undeliverable::Poison;

/// Skipped records are logged at most this often (each line says how many were not logged).
const SKIP_LOG_INTERVAL_MS: i64 = 1000;
static LAST_SKIP_LOG_MS: AtomicI64 = AtomicI64::new(i64::MIN);
static SKIPS_NOT_LOGGED: AtomicU64 = AtomicU64::new(0);

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
        let payload = input.payload.unwrap_or_default();
        let mut headers =
            dead_letter_headers(&error.message, &error.stage, error.reason, input.topic, input.partition, input.offset);
        let payload = if record_size(input.key, payload, &headers) > self.job.limits.dead_letter {
            headers.push(("streamjob.value.omitted", payload.len().to_string()));
            headers[0].1 = format!(
                "{}; the value ({} bytes) is left out: the dead-letter topic takes at most {} bytes",
                error.message,
                payload.len(),
                self.job.limits.dead_letter
            );
            Vec::new()
        } else {
            payload.to_vec()
        };
        self.push(Output {
            destination: Destination::DeadLetter,
            key: input.key.map(<[u8]>::to_vec),
            payload,
            headers,
            ticket: Some(ticket),
        });
    }

    /// Counts `records` as skipped by stage and reason, and logs it (at most once a second,
    /// saying how many were not logged since).
    pub fn skip(&mut self, input: &Input<'_>, error: &StageError, records: u64) {
        let labels = SkipLabels::new(self.labels, &error.stage, error.reason.label());
        self.metrics.records_skipped.get_or_create(&labels).inc_by(records);
        self.totals.skipped.fetch_add(records, Ordering::Relaxed);
        let now = streamjob_runtime::clock::now_ms();
        let last = LAST_SKIP_LOG_MS.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SKIP_LOG_INTERVAL_MS
            || LAST_SKIP_LOG_MS.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            SKIPS_NOT_LOGGED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let not_logged = SKIPS_NOT_LOGGED.swap(0, Ordering::Relaxed);
        tracing::warn!(topic = input.topic, partition = input.partition, offset = input.offset, stage = %error.stage,
            reason = error.reason.label(), error = %error.message, records, skips_not_logged_since_last_line = not_logged,
            "record skipped: no dead-letter topic is set or can take it (counted in streamjob_worker_records_skipped_total)");
    }

    /// An input read again after its output could not be delivered for good.
    pub fn read_poisoned(&mut self, input: &Input<'_>, poison: Poison) {
        match poison {
            Poison::DeadLetter(error) => {
                let reason = reason_of_refusal(&error);
                let error = StageError::new("sink", reason, format!("the sink cannot take it: {error}"));
                self.reject(input, &error, 1, false, || input.offset);
            }
            Poison::Skip(error) => {
                if self.poisoned.count_skip_once(input.topic, input.partition, input.offset) {
                    let reason = reason_of_refusal(&error);
                    let error = StageError::new("sink", reason, format!("undeliverable: {error}"));
                    self.skip(input, &error, 1);
                }
            }
        }
    }
}

/// A broker's refusal as a reason: too large, or undeliverable for another cause.
fn reason_of_refusal(error: &str) -> Reason {
    if error.to_ascii_lowercase().contains("too large") {
        Reason::TooLarge
    } else {
        Reason::Undeliverable
    }
}

/// The headers that say why a record went to the dead-letter topic, and where it came from.
/// `streamjob.error` comes first.
fn dead_letter_headers(
    error: &str,
    stage: &str,
    reason: Reason,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Vec<(&'static str, String)> {
    vec![
        ("streamjob.error", error.to_owned()),
        ("streamjob.stage", stage.to_owned()),
        ("streamjob.reason", reason.label().to_owned()),
        ("streamjob.source.topic", topic.to_owned()),
        ("streamjob.source.partition", partition.to_string()),
        ("streamjob.source.offset", offset.to_string()),
    ]
}
