//! Resets of out-of-range offsets, and how many records each passed over.
//!
//! When the broker no longer has the offset a consumer asks for (retention deleted it while the
//! job was behind or suspended), librdkafka resets the position to where `startFrom` says and
//! logs where it was. The records between that position and the first one read afterwards were
//! never processed: that count is what a user needs to know about the loss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use streamjob_runtime::sync::lock;

/// librdkafka's warning, without its thread prefix: `<topic> [<partition>]: offset reset (at
/// offset <n> (leader epoch <e>), broker <b>) to offset BEGINNING ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetReset {
    pub topic: String,
    pub partition: i32,
    /// The position the consumer asked for, when librdkafka names one.
    pub at_offset: Option<i64>,
}

impl OffsetReset {
    pub fn parse(message: &str) -> Option<Self> {
        let without_thread =
            message.strip_prefix("[thrd:").and_then(|rest| rest.split_once("]: ")).map_or(message, |(_, rest)| rest);
        let (topic, rest) = without_thread.split_once(" [")?;
        let (partition, rest) = rest.split_once(']')?;
        let (_, after) = rest.split_once("offset reset (at ")?;
        let at_offset = after.strip_prefix("offset ").and_then(|text| {
            let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        });
        Some(Self { topic: topic.to_owned(), partition: partition.parse().ok()?, at_offset })
    }
}

/// Resets waiting for the first record read after them, shared between librdkafka's log
/// callback and the loop that reads records.
#[derive(Debug, Default)]
pub struct PendingResets {
    any: AtomicBool,
    at: Mutex<HashMap<(String, i32), i64>>,
}

impl PendingResets {
    pub fn record(&self, reset: &OffsetReset) {
        if let Some(at) = reset.at_offset {
            let mut pending = lock(&self.at);
            pending.insert((reset.topic.clone(), reset.partition), at);
            self.any.store(true, Ordering::SeqCst);
        }
    }

    /// For a record read at `offset`: how many records the partition's last reset passed over,
    /// once (later records of the partition answer `None`). Cheap while no reset waits.
    pub fn passed_over(&self, topic: &str, partition: i32, offset: i64) -> Option<u64> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let mut pending = lock(&self.at);
        let at = pending.remove(&(topic.to_owned(), partition))?;
        self.any.store(!pending.is_empty(), Ordering::SeqCst);
        u64::try_from(offset - at).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WARNING: &str = "[thrd:127.0.0.1:9092/1]: lines [3]: offset reset (at offset 120 (leader epoch 0), \
        broker 1) to offset BEGINNING (leader epoch -1): fetch failed due to requested offset not available on \
        the broker: Broker: Offset out of range";

    #[test]
    fn the_warning_names_the_partition_and_the_position_it_left() {
        let reset = OffsetReset::parse(WARNING);
        assert_eq!(reset, Some(OffsetReset { topic: "lines".into(), partition: 3, at_offset: Some(120) }));
        let logical = "lines [0]: offset reset (at offset INVALID, broker 1) to offset END: no commit";
        assert_eq!(OffsetReset::parse(logical).and_then(|r| r.at_offset), None, "nothing was passed over");
        assert_eq!(OffsetReset::parse("some other warning"), None);
    }

    #[test]
    fn the_first_record_after_a_reset_says_how_many_were_passed_over_once() {
        let pending = PendingResets::default();
        assert_eq!(pending.passed_over("lines", 3, 500), None, "no reset");
        pending.record(&OffsetReset { topic: "lines".into(), partition: 3, at_offset: Some(120) });
        assert_eq!(pending.passed_over("lines", 2, 900), None, "another partition");
        assert_eq!(pending.passed_over("lines", 3, 500), Some(380));
        assert_eq!(pending.passed_over("lines", 3, 501), None, "counted once");
    }
}
