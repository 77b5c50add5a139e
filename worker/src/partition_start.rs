//! Where a newly assigned partition starts, and the partitions held until that is known.
//!
//! A start is never invented. A partition starts at its group's committed offset; when that
//! cannot be read yet (the read timed out, the broker answers UNSTABLE_OFFSET_COMMIT because a
//! dead worker's transaction is still open, a per-partition error), the partition is held:
//! assigned but paused, and the read is tried again with back-off until it answers. Only a
//! partition that truly has no commit starts elsewhere: where `startFrom` says when the group
//! never committed on the topic, at its beginning when it did (a partition added later, whose
//! records are all new to the job). The repartition topic always starts at its beginning
//! without a commit: partials are never skipped.
//!
//! Pure: the runner does the reads and the seeks (`runner/starts.rs`).

use std::collections::HashMap;

use streamjob_crds::StartFrom;

/// What the group's committed-offset read said for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommittedRead {
    At {
        offset: i64,
        metadata: Option<String>,
    },
    /// The broker answered: no commit for this partition.
    Nothing,
}

/// Where to start, before the logical ends are looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    Committed { offset: i64, metadata: Option<String> },
    Beginning,
    End,
}

impl StartAt {
    /// How the start was chosen, for the log.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Committed { .. } => "committed offset",
            Self::Beginning => "beginning (no commit)",
            Self::End => "end (startFrom: latest, the group never committed on the topic)",
        }
    }
}

/// The start of a partition whose committed read answered `read`. `topic_has_commits`: the
/// group has a commit on some partition of the same topic.
pub fn start_at(read: CommittedRead, topic_has_commits: bool, repartition: bool, start_from: StartFrom) -> StartAt {
    match read {
        CommittedRead::At { offset, metadata } => StartAt::Committed { offset, metadata },
        CommittedRead::Nothing if repartition || topic_has_commits => StartAt::Beginning,
        CommittedRead::Nothing => match start_from {
            StartFrom::Earliest => StartAt::Beginning,
            StartFrom::Latest => StartAt::End,
        },
    }
}

/// The first retry comes after this; each failure doubles it, up to [`MAX_RETRY_DELAY_MS`].
pub const FIRST_RETRY_DELAY_MS: i64 = 250;
pub const MAX_RETRY_DELAY_MS: i64 = 5_000;

/// The wait before retry number `attempt` (1 after the first failure).
pub fn retry_delay_ms(attempt: u32) -> i64 {
    let doublings = attempt.saturating_sub(1).min(16);
    (FIRST_RETRY_DELAY_MS << doublings).min(MAX_RETRY_DELAY_MS)
}

/// The partitions assigned to this worker whose start is not known yet.
#[derive(Debug, Default)]
pub struct HeldPartitions {
    partitions: HashMap<(String, i32), Held>,
    next_generation: u64,
}

#[derive(Debug)]
struct Held {
    /// Tells an answer for this holding from one for an earlier assignment of the partition.
    generation: u64,
    since_ms: i64,
    failures: u32,
    next_try_ms: i64,
    /// A read is under way.
    asked: bool,
    last_error: Option<String>,
}

/// A partition whose start is to be read: its topic, partition and holding's generation.
pub type Ask = (String, i32, u64);

/// A failed read, as the log reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StillHeld {
    pub failures: u32,
    pub held_for_ms: i64,
    pub retry_in_ms: i64,
}

impl HeldPartitions {
    /// The partition was assigned: it is held until its start is known, read at once.
    pub fn hold(&mut self, topic: &str, partition: i32, now_ms: i64) {
        self.next_generation += 1;
        let held = Held {
            generation: self.next_generation,
            since_ms: now_ms,
            failures: 0,
            next_try_ms: now_ms,
            asked: false,
            last_error: None,
        };
        self.partitions.insert((topic.to_owned(), partition), held);
    }

    /// The partition was revoked: an answer for it is ignored.
    pub fn forget(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_owned(), partition));
    }

    pub fn len(&self) -> usize {
        self.partitions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    pub fn contains(&self, topic: &str, partition: i32) -> bool {
        self.partitions.contains_key(&(topic.to_owned(), partition))
    }

    /// The partitions whose read is due now (none while one is under way); they are marked
    /// as asked.
    pub fn due(&mut self, now_ms: i64) -> Vec<Ask> {
        if self.partitions.values().any(|held| held.asked) {
            return Vec::new();
        }
        let mut due = Vec::new();
        for ((topic, partition), held) in &mut self.partitions {
            if held.next_try_ms <= now_ms {
                held.asked = true;
                due.push((topic.clone(), *partition, held.generation));
            }
        }
        due.sort();
        due
    }

    /// The start is known: the partition is no longer held. `None` for an answer about an
    /// earlier holding; else how long it was held.
    pub fn release(&mut self, topic: &str, partition: i32, generation: u64, now_ms: i64) -> Option<i64> {
        let key = (topic.to_owned(), partition);
        let held = self.partitions.get(&key).filter(|held| held.generation == generation)?;
        let held_for = now_ms - held.since_ms;
        self.partitions.remove(&key);
        Some(held_for)
    }

    /// The read failed: retried after a back-off. `None` for an answer about an earlier holding.
    pub fn failed(
        &mut self,
        topic: &str,
        partition: i32,
        generation: u64,
        error: &str,
        now_ms: i64,
    ) -> Option<StillHeld> {
        let held = self.partitions.get_mut(&(topic.to_owned(), partition)).filter(|h| h.generation == generation)?;
        held.failures += 1;
        held.asked = false;
        let retry_in_ms = retry_delay_ms(held.failures);
        held.next_try_ms = now_ms + retry_in_ms;
        held.last_error = Some(error.to_owned());
        Some(StillHeld { failures: held.failures, held_for_ms: now_ms - held.since_ms, retry_in_ms })
    }

    /// The start is known but could not be applied yet (the seek failed): asked again soon.
    pub fn retry_soon(&mut self, topic: &str, partition: i32, generation: u64, error: &str, now_ms: i64) {
        let _ = self.failed(topic, partition, generation, error, now_ms);
    }

    /// Each held partition's last error, for the log and `/readyz`.
    pub fn errors(&self) -> Vec<(String, i32, String)> {
        let mut errors: Vec<(String, i32, String)> = self
            .partitions
            .iter()
            .filter_map(|((topic, partition), held)| {
                held.last_error.as_ref().map(|error| (topic.clone(), *partition, error.clone()))
            })
            .collect();
        errors.sort();
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_partition_without_any_commit_on_its_topic_starts_where_start_from_says() {
        let at = |offset| CommittedRead::At { offset, metadata: None };
        let committed = |offset| StartAt::Committed { offset, metadata: None };
        let cases = [
            // (read, topic has commits, repartition, startFrom, start)
            (at(42), true, false, StartFrom::Latest, committed(42)),
            (at(0), true, true, StartFrom::Latest, committed(0)),
            (CommittedRead::Nothing, false, false, StartFrom::Latest, StartAt::End),
            (CommittedRead::Nothing, false, false, StartFrom::Earliest, StartAt::Beginning),
            (CommittedRead::Nothing, true, false, StartFrom::Latest, StartAt::Beginning),
            (CommittedRead::Nothing, false, true, StartFrom::Latest, StartAt::Beginning),
        ];
        for (read, has_commits, repartition, start_from, want) in cases {
            let case = format!("{read:?} {has_commits} {repartition} {start_from:?}");
            assert_eq!(start_at(read, has_commits, repartition, start_from), want, "{case}");
        }
        let with_metadata = CommittedRead::At { offset: 7, metadata: Some("{\"wm\":5}".into()) };
        assert_eq!(
            start_at(with_metadata, true, true, StartFrom::Earliest),
            StartAt::Committed { offset: 7, metadata: Some("{\"wm\":5}".into()) },
            "the aggregating stage's checkpoint comes with the offset"
        );
    }

    #[test]
    fn retries_back_off_exponentially_up_to_five_seconds() {
        let delays: Vec<i64> = (1..=7).map(retry_delay_ms).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(retry_delay_ms(u32::MAX), 5000);
    }

    #[test]
    fn a_held_partition_is_read_again_after_its_back_off_until_it_answers() {
        let mut held = HeldPartitions::default();
        held.hold("in", 0, 1_000);
        held.hold("in", 1, 1_000);
        let asked = held.due(1_000);
        assert_eq!(asked.iter().map(|(_, p, _)| *p).collect::<Vec<_>>(), [0, 1]);
        assert!(held.due(1_000).is_empty(), "one read at a time");
        let (_, _, generation0) = asked[0].clone();
        let (_, _, generation1) = asked[1].clone();
        let still = held.failed("in", 0, generation0, "UNSTABLE_OFFSET_COMMIT", 1_100);
        assert_eq!(still, Some(StillHeld { failures: 1, held_for_ms: 100, retry_in_ms: 250 }));
        assert_eq!(held.release("in", 1, generation1, 1_100), Some(100));
        assert!(held.due(1_200).is_empty(), "partition 0 waits for its back-off");
        assert_eq!(held.due(1_350).len(), 1);
        assert_eq!(held.errors(), [("in".to_owned(), 0, "UNSTABLE_OFFSET_COMMIT".to_owned())]);
        let still = held.failed("in", 0, generation0, "timed out", 1_400);
        assert_eq!(still.map(|s| s.retry_in_ms), Some(500));
        assert_eq!(held.len(), 1);
    }

    #[test]
    fn an_answer_about_an_earlier_assignment_is_ignored() {
        let mut held = HeldPartitions::default();
        held.hold("in", 0, 0);
        let (_, _, old) = held.due(0)[0].clone();
        held.forget("in", 0);
        assert_eq!(held.release("in", 0, old, 5), None, "revoked");
        held.hold("in", 0, 10);
        assert_eq!(held.release("in", 0, old, 15), None, "assigned again since");
        assert_eq!(held.failed("in", 0, old, "x", 15), None);
        let (_, _, new) = held.due(20)[0].clone();
        assert_eq!(held.release("in", 0, new, 30), Some(20));
        assert!(held.is_empty());
    }
}
