//! The partitions the engine was given, one slot each, found fast by topic and partition.
//!
//! A slot outlives its assignment: each assignment and revocation starts a new epoch, so an
//! acknowledgement of an output from an earlier epoch is recognised and ignored.

use std::cell::Cell;
use std::collections::HashMap;
use std::ops::{Index, IndexMut};

use prometheus_client::metrics::counter::Counter;

use super::Role;
use crate::metrics::{PartitionLabels, WorkerMetrics};
use crate::offsets::PartitionProgress;

pub(super) struct Slot {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) labels: PartitionLabels,
    pub(super) records_in: Counter,
    pub(super) records_out: Counter,
    pub(super) epoch: u64,
    pub(super) assigned: bool,
    pub(super) progress: PartitionProgress,
    /// The offset last committed (or the first read, before any commit): where a rewind goes.
    pub(super) rewind_to: Option<i64>,
    /// The commit metadata that went with `rewind_to`.
    pub(super) rewind_metadata: Option<String>,
    pub(super) role: Role,
}

#[derive(Default)]
pub(super) struct Slots {
    slots: Vec<Slot>,
    by_topic: HashMap<String, HashMap<i32, usize>>,
    /// The slot found last: records come in runs from one partition.
    last: Cell<usize>,
}

impl Slots {
    pub fn find(&self, topic: &str, partition: i32) -> Option<usize> {
        let last = self.last.get();
        if self.slots.get(last).is_some_and(|slot| slot.partition == partition && slot.topic == topic) {
            return Some(last);
        }
        let index = self.by_topic.get(topic)?.get(&partition).copied()?;
        self.last.set(index);
        Some(index)
    }

    pub fn find_assigned(&self, topic: &str, partition: i32) -> Option<usize> {
        self.find(topic, partition).filter(|index| self.slots[*index].assigned)
    }

    /// Starts a new epoch of the partition's slot with `role`, making the slot on the first
    /// assignment. `metadata` is the partition's committed metadata, if any.
    pub fn assign(
        &mut self,
        topic: &str,
        partition: i32,
        metadata: Option<&str>,
        role: Role,
        metrics: &WorkerMetrics,
    ) -> usize {
        if let Some(index) = self.find(topic, partition) {
            let slot = &mut self.slots[index];
            slot.epoch += 1;
            slot.assigned = true;
            slot.progress = PartitionProgress::default();
            slot.rewind_to = None;
            slot.rewind_metadata = metadata.map(str::to_owned);
            slot.role = role;
            return index;
        }
        let labels = PartitionLabels::new(topic, partition);
        self.slots.push(Slot {
            topic: topic.to_owned(),
            partition,
            records_in: metrics.records_in.get_or_create(&labels).clone(),
            records_out: metrics.records_out.get_or_create(&labels).clone(),
            labels,
            epoch: 0,
            assigned: true,
            progress: PartitionProgress::default(),
            rewind_to: None,
            rewind_metadata: metadata.map(str::to_owned),
            role,
        });
        let index = self.slots.len() - 1;
        self.by_topic.entry(topic.to_owned()).or_default().insert(partition, index);
        index
    }

    /// The partition is gone: its state is dropped, and its epoch moves on.
    pub fn revoke(&mut self, index: usize, role: Role) {
        let slot = &mut self.slots[index];
        slot.assigned = false;
        slot.epoch += 1;
        slot.progress = PartitionProgress::default();
        slot.role = role;
    }

    pub fn get_mut(&mut self, index: usize) -> Option<&mut Slot> {
        self.slots.get_mut(index)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn assigned(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(|slot| slot.assigned)
    }
}

impl Index<usize> for Slots {
    type Output = Slot;

    fn index(&self, index: usize) -> &Slot {
        &self.slots[index]
    }
}

impl IndexMut<usize> for Slots {
    fn index_mut(&mut self, index: usize) -> &mut Slot {
        &mut self.slots[index]
    }
}
