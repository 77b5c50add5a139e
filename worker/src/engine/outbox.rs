//! What a stage is lent for one call: the job, the partition's progress (where outputs hold
//! its offsets) and the queue the outputs go into, with the counters.

use std::sync::atomic::Ordering;

use super::{Destination, Job, Output, Ticket, Totals};
use crate::metrics::{PartitionLabels, WorkerMetrics};
use crate::offsets::PartitionProgress;
use crate::repartition::RepartitionMessage;
use crate::undeliverable::PoisonedInputs;

pub(super) struct Outbox<'a> {
    pub job: &'a Job,
    pub metrics: &'a WorkerMetrics,
    pub totals: &'a Totals,
    pub poisoned: &'a PoisonedInputs,
    pub outputs: &'a mut Vec<Output>,
    /// The partition's slot and its epoch, for the tickets.
    pub slot: usize,
    pub epoch: u64,
    pub labels: &'a PartitionLabels,
    pub progress: &'a mut PartitionProgress,
}

impl Outbox<'_> {
    /// A record of the job's input (not of the repartition topic) is being processed.
    pub fn count_input(&self) {
        self.totals.records_in.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ticket(&self, offset: i64, input_timestamp_ms: Option<i64>, destination: Destination) -> Ticket {
        Ticket { slot: self.slot, epoch: self.epoch, offset, input_timestamp_ms, destination, records: 1 }
    }

    pub fn push(&mut self, output: Output) {
        self.outputs.push(output);
    }

    /// The same message to every repartition partition.
    pub fn broadcast(&mut self, message: &RepartitionMessage, ticket: Option<Ticket>, partitions: i32) {
        let payload = message.encode();
        for partition in 0..partitions {
            self.outputs.push(Output {
                destination: Destination::Repartition { partition },
                key: None,
                payload: payload.clone(),
                headers: Vec::new(),
                ticket,
            });
        }
    }
}
