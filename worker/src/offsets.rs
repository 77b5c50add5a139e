//! Which input offset may be committed: the lowest offset of a partition whose outputs are not
//! all acknowledged yet, else the offset after the last record read.
//!
//! Delivery reports arrive in any order, so each record (or group of records) whose outputs are
//! in flight puts a hold on its offset, and each acknowledgement releases one output of it.

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub struct PartitionProgress {
    /// The offset after the last record read, once one was read.
    next_offset: Option<i64>,
    /// Offset → outputs still unacknowledged.
    holds: BTreeMap<i64, u32>,
}

impl PartitionProgress {
    pub fn read(&mut self, offset: i64) {
        self.next_offset = Some(self.next_offset.map_or(offset + 1, |next| next.max(offset + 1)));
    }

    pub fn next_offset(&self) -> Option<i64> {
        self.next_offset
    }

    pub fn hold(&mut self, offset: i64, outputs: u32) {
        if outputs > 0 {
            *self.holds.entry(offset).or_default() += outputs;
        }
    }

    /// One output of the record at `offset` was acknowledged.
    pub fn release(&mut self, offset: i64) {
        if let Some(remaining) = self.holds.get_mut(&offset) {
            *remaining -= 1;
            if *remaining == 0 {
                self.holds.remove(&offset);
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        self.holds.values().map(|n| *n as usize).sum()
    }

    pub fn is_held(&self, offset: i64) -> bool {
        self.holds.contains_key(&offset)
    }

    pub fn oldest_hold(&self) -> Option<i64> {
        self.holds.keys().next().copied()
    }

    /// The offset to commit: before every unacknowledged record and every `other_holds`.
    pub fn committable(&self, other_holds: Option<i64>, include_unacknowledged: bool) -> Option<i64> {
        let next = self.next_offset?;
        let acks = if include_unacknowledged { self.oldest_hold() } else { None };
        Some([Some(next), acks, other_holds].into_iter().flatten().min().unwrap_or(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_acknowledgements_commit_only_the_contiguous_prefix() {
        let mut progress = PartitionProgress::default();
        for offset in 10..13 {
            progress.read(offset);
            progress.hold(offset, 2);
        }
        assert_eq!(progress.committable(None, true), Some(10));
        progress.release(12);
        progress.release(12);
        assert_eq!(progress.committable(None, true), Some(10), "12 done, but 10 and 11 are not");
        progress.release(10);
        assert_eq!(progress.committable(None, true), Some(10), "10 has one output left");
        progress.release(10);
        assert_eq!(progress.committable(None, true), Some(11));
        progress.release(11);
        progress.release(11);
        assert_eq!(progress.committable(None, true), Some(13));
    }

    #[test]
    fn records_without_outputs_and_other_holds() {
        let mut progress = PartitionProgress::default();
        assert_eq!(progress.committable(None, true), None, "nothing read: nothing to commit");
        progress.read(5);
        progress.hold(5, 0);
        assert_eq!(progress.committable(None, true), Some(6));
        assert_eq!(progress.committable(Some(3), true), Some(3), "an open window still needs offset 3");
        progress.read(6);
        progress.hold(6, 1);
        assert_eq!(progress.committable(None, false), Some(7), "in a transaction every output is sent");
        progress.release(99);
        assert_eq!(progress.in_flight(), 1, "a stray acknowledgement changes nothing");
    }
}
