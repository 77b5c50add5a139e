//! Acknowledgements release the offsets outputs hold; what no output holds, and no stage
//! still needs, is committed; a failure rewinds every partition to its last commit.

use std::sync::atomic::Ordering;

use super::{Checkpoint, Commit, Destination, Engine, Role, Ticket};
use crate::metrics::SkipLabels;
use crate::pipeline::Reason;
use crate::undeliverable::{DeliveryFailure, FailureKind, Poison};

/// The stage an output left from, for the skipped-records metric.
fn stage_of(destination: Destination) -> &'static str {
    match destination {
        Destination::Sink => "sink",
        Destination::Repartition { .. } => "repartition",
        Destination::DeadLetter => "dead-letter",
    }
}

impl Engine {
    /// An output was acknowledged (`Ok`) or failed for good (`Err`).
    pub fn on_delivery(&mut self, ticket: Ticket, result: Result<(), DeliveryFailure>, now_ms: i64) {
        let Some(slot) = self.slots.get_mut(ticket.slot) else {
            return;
        };
        if slot.epoch != ticket.epoch {
            return;
        }
        match result {
            Ok(()) => {
                slot.progress.release(ticket.offset);
                match ticket.destination {
                    Destination::Sink => {
                        slot.records_out.inc();
                        self.totals.records_out.fetch_add(1, Ordering::Relaxed);
                        if let Some(input_ms) = ticket.input_timestamp_ms {
                            self.metrics.processing_latency.observe(((now_ms - input_ms).max(0) as f64) / 1000.0);
                        }
                    }
                    Destination::DeadLetter => {
                        self.metrics.records_dead_lettered.get_or_create(&slot.labels).inc_by(ticket.records);
                        self.totals.dead_lettered.fetch_add(ticket.records, Ordering::Relaxed);
                    }
                    Destination::Repartition { .. } => {}
                }
            }
            Err(failure) => {
                self.metrics.delivery_errors.inc();
                if failure.is_permanent_for(ticket.destination) {
                    return self.undeliverable(ticket, failure);
                }
                if failure.kind == FailureKind::Topic && ticket.destination == Destination::Sink {
                    self.refused.get_or_insert_with(|| failure.error.clone());
                }
                if self.failure.is_none() {
                    self.failure = Some(failure.error);
                }
            }
        }
    }

    /// No retry can deliver the output of `ticket`. The input of a record-by-record job is
    /// read again (see [`crate::undeliverable`]); a window result or a partial aggregate has
    /// no input to dead-letter, so it is counted as skipped and its partition moves on.
    fn undeliverable(&mut self, ticket: Ticket, failure: DeliveryFailure) {
        let slot = &mut self.slots[ticket.slot];
        self.metrics.records_undeliverable.get_or_create(&slot.labels).inc();
        tracing::error!(topic = %slot.topic, partition = slot.partition, offset = ticket.offset,
            destination = ?ticket.destination, error = %failure.error, "a record no retry can deliver");
        if !matches!(slot.role, Role::Direct(_)) {
            slot.progress.release(ticket.offset);
            let labels = SkipLabels::new(&slot.labels, stage_of(ticket.destination), Reason::Undeliverable.label());
            self.metrics.records_skipped.get_or_create(&labels).inc_by(ticket.records);
            self.totals.skipped.fetch_add(ticket.records, Ordering::Relaxed);
            return;
        }
        let poison = if ticket.destination == Destination::Sink && self.job.settings.dead_letter {
            Poison::DeadLetter(failure.error.clone())
        } else {
            Poison::Skip(failure.error.clone())
        };
        self.poisoned.mark(&slot.topic, slot.partition, ticket.offset, poison);
        if self.failure.is_none() {
            self.failure = Some(format!("{} (the record is read again to be dead-lettered or skipped)", failure.error));
        }
    }

    /// The sink refused the output whose failure needs a rewind (a deleted topic, no write
    /// permission): the broker's reason.
    pub fn sink_refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// The consumer's position in a partition is `position`: every offset before it was either
    /// handed to [`Engine::on_input`] or is one the consumer never returns (a transaction's
    /// commit or abort marker, an aborted record under `read_committed`); librdkafka forgets
    /// the position at every seek, so it is never one from before a start or rewind. The
    /// offsets up to the position count as read with nothing to send, so a drained partition of a transactional topic commits past its last marker and shows a lag
    /// of 0. Holds of unacknowledged outputs and open windows still keep the commit back.
    pub fn passed_to(&mut self, topic: &str, partition: i32, position: i64) {
        let Some(index) = self.slots.find_assigned(topic, partition) else {
            return;
        };
        let progress = &mut self.slots[index].progress;
        if progress.next_offset().is_none_or(|next| next < position) {
            progress.read(position - 1);
        }
    }

    /// The partition starts at `offset` (a concrete offset its start was resolved to): until a
    /// record is read, that is what a commit keeps, so the next owner starts there too and does
    /// not take it for a partition without a commit.
    pub fn started_at(&mut self, topic: &str, partition: i32, offset: i64) {
        let Some(index) = self.slots.find_assigned(topic, partition) else {
            return;
        };
        let slot = &mut self.slots[index];
        if slot.progress.next_offset().is_none() {
            slot.progress.read(offset - 1);
        }
    }

    /// The offsets safe to commit now. In a transaction (`include_unacknowledged = false`)
    /// every queued output is part of the commit, so only open windows hold offsets back.
    pub fn commits(&self, include_unacknowledged: bool) -> Vec<Commit> {
        self.slots
            .assigned()
            .filter_map(|slot| {
                let Checkpoint { hold, metadata } =
                    slot.role.stage().checkpoint(&slot.progress, include_unacknowledged, &self.job);
                let offset = slot.progress.committable(hold, include_unacknowledged)?;
                Some(Commit { topic: slot.topic.clone(), partition: slot.partition, offset, metadata })
            })
            .collect()
    }

    pub fn committed(&mut self, commits: &[Commit]) {
        for commit in commits {
            if let Some(index) = self.slots.find(&commit.topic, commit.partition) {
                self.slots[index].rewind_to = Some(commit.offset);
                self.slots[index].rewind_metadata = commit.metadata.clone();
            }
            if !self.poisoned.is_empty() {
                self.poisoned.forget_before(&commit.topic, commit.partition, commit.offset);
            }
        }
    }

    /// Drops all state and returns where each assigned partition must be read again from: its
    /// last committed offset. Used after a failed delivery or an aborted transaction.
    pub fn rewind(&mut self) -> Vec<(String, i32, i64)> {
        self.metrics.rewinds.inc();
        self.failure = None;
        self.refused = None;
        self.outbox.clear();
        let mut targets = Vec::new();
        let assigned: Vec<(String, i32, Option<i64>, Option<String>)> = self
            .slots
            .assigned()
            .map(|s| (s.topic.clone(), s.partition, s.rewind_to, s.rewind_metadata.clone()))
            .collect();
        for (topic, partition, rewind_to, metadata) in assigned {
            self.assign(&topic, partition, metadata.as_deref());
            if let Some(offset) = rewind_to {
                if let Some(index) = self.slots.find(&topic, partition) {
                    self.slots[index].rewind_to = Some(offset);
                }
                targets.push((topic, partition, offset));
            }
        }
        targets
    }
}
