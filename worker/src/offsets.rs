//! Which input offset may be committed: the lowest offset of a partition whose outputs are not
//! all acknowledged yet, else the offset after the last record read.
//!
//! Delivery reports arrive in any order, so each record (or group of records) whose outputs are
//! in flight puts a hold on its offset, and each acknowledgement releases one output of it.

use std::collections::VecDeque;

#[derive(Debug, Default, Clone)]
pub struct PartitionProgress {
    /// The offset after the last record read, once one was read.
    next_offset: Option<i64>,
    /// (offset, outputs still unacknowledged), sorted by offset. Records are read in offset
    /// order, so holds are almost always added at the back; released holds stay as zeros until
    /// every older one is released too, so the front is always the oldest live hold.
    holds: VecDeque<(i64, u32)>,
    in_flight: usize,
}

impl PartitionProgress {
    pub fn read(&mut self, offset: i64) {
        self.next_offset = Some(self.next_offset.map_or(offset + 1, |next| next.max(offset + 1)));
    }

    pub fn next_offset(&self) -> Option<i64> {
        self.next_offset
    }

    pub fn hold(&mut self, offset: i64, outputs: u32) {
        if outputs == 0 {
            return;
        }
        self.in_flight += outputs as usize;
        if self.holds.back().is_none_or(|(last, _)| *last < offset) {
            return self.holds.push_back((offset, outputs));
        }
        match self.position(offset) {
            Ok(index) => self.holds[index].1 += outputs,
            Err(index) => self.holds.insert(index, (offset, outputs)),
        }
    }

    /// One output of the record at `offset` was acknowledged.
    pub fn release(&mut self, offset: i64) {
        let Ok(index) = self.position(offset) else {
            return;
        };
        let remaining = &mut self.holds[index].1;
        if *remaining == 0 {
            return;
        }
        *remaining -= 1;
        self.in_flight -= 1;
        while self.holds.front().is_some_and(|(_, remaining)| *remaining == 0) {
            self.holds.pop_front();
        }
    }

    fn position(&self, offset: i64) -> Result<usize, usize> {
        // Holds are usually on consecutive offsets: try the slot that assumes so first.
        let guess = self.holds.front().and_then(|(first, _)| usize::try_from(offset - first).ok());
        if let Some(index) = guess.filter(|i| self.holds.get(*i).is_some_and(|(held, _)| *held == offset)) {
            return Ok(index);
        }
        self.holds.binary_search_by_key(&offset, |(held, _)| *held)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn is_held(&self, offset: i64) -> bool {
        self.position(offset).is_ok_and(|index| self.holds[index].1 > 0)
    }

    pub fn oldest_hold(&self) -> Option<i64> {
        self.holds.front().map(|(offset, _)| *offset)
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

    #[test]
    fn holds_added_out_of_offset_order_are_released_in_any_order() {
        let mut progress = PartitionProgress::default();
        progress.read(20);
        progress.hold(20, 1);
        progress.hold(15, 2);
        progress.hold(20, 1);
        progress.hold(17, 1);
        assert_eq!(progress.in_flight(), 5);
        assert_eq!(progress.oldest_hold(), Some(15));
        progress.release(17);
        progress.release(17);
        assert!(!progress.is_held(17));
        assert_eq!(progress.in_flight(), 4, "a second acknowledgement of 17 releases nothing");
        progress.release(15);
        progress.release(15);
        assert_eq!(progress.oldest_hold(), Some(20), "17 was released earlier, so 20 is next");
        progress.release(20);
        assert!(progress.is_held(20));
        progress.release(20);
        assert_eq!((progress.oldest_hold(), progress.in_flight()), (None, 0));
        assert_eq!(progress.committable(None, true), Some(21));
    }
}
