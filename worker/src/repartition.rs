//! Messages on the internal `<consumerGroup>-repartition` topic.
//!
//! The source stage aggregates each source partition's records for a short interval and sends the
//! partial aggregates, keyed by the `keyBy` value, so all of a key's records meet in one worker.
//! Each partial names the range of source offsets it covers. When a source partition is replayed
//! (after a crash or a rebalance), its new owner first sends `Reset` to every repartition
//! partition, so the aggregating stage drops what the replay will send again: replays never
//! count twice. `Progress` carries each source partition's watermark, as its current owner
//! knows it: only a live owner that has read its partition to the end declares it idle, so a
//! partition whose owner died holds windows back until a new owner reports.
//!
//! Every message carries the sender's pipeline fingerprint (`f`, see
//! `streamjob_crds::fingerprint`): an aggregating worker discards whatever a worker of another
//! pipeline sent (left in the topic when the job's window, aggregate or the stages feeding them
//! changed), so partials of two pipelines are never merged.

use serde::{Deserialize, Serialize};

use crate::pipeline::Accumulator;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t")]
pub enum RepartitionMessage {
    /// A partial aggregate of one key in one window, from source offsets `from..=to`.
    #[serde(rename = "p")]
    Partial {
        src: String,
        #[serde(rename = "o", default)]
        owner: u64,
        /// The pipeline fingerprint of the sender (0: a worker from before fingerprints).
        #[serde(rename = "f", default, skip_serializing_if = "is_zero")]
        pipeline: u64,
        from: i64,
        to: i64,
        window: i64,
        #[serde(flatten)]
        accumulator: Accumulator,
    },
    /// The source partition restarts at `from`: forget what it sent from there on.
    #[serde(rename = "r")]
    Reset {
        src: String,
        #[serde(rename = "o", default)]
        owner: u64,
        /// The pipeline fingerprint of the sender (0: a worker from before fingerprints).
        #[serde(rename = "f", default, skip_serializing_if = "is_zero")]
        pipeline: u64,
        from: i64,
    },
    /// A new owner of the source partition that has read nothing yet (so has nothing to
    /// replay): what other owners still send is stale from here on.
    #[serde(rename = "o")]
    Owner {
        src: String,
        #[serde(rename = "o")]
        owner: u64,
        /// The pipeline fingerprint of the sender (0: a worker from before fingerprints).
        #[serde(rename = "f", default, skip_serializing_if = "is_zero")]
        pipeline: u64,
    },
    /// The source partition's watermark (`i64::MIN`: not known yet), whether its owner has
    /// read it to the end and found nothing new for the idle timeout, and the highest source
    /// offset whose partials this owner has sent (-1: none yet).
    #[serde(rename = "w")]
    Progress {
        src: String,
        #[serde(rename = "o", default)]
        owner: u64,
        /// The pipeline fingerprint of the sender (0: a worker from before fingerprints).
        #[serde(rename = "f", default, skip_serializing_if = "is_zero")]
        pipeline: u64,
        watermark: i64,
        idle: bool,
        #[serde(rename = "a", default = "nothing_sent")]
        through: i64,
    },
}

fn nothing_sent() -> i64 {
    -1
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl RepartitionMessage {
    /// The pipeline fingerprint of the worker that sent it (0: unknown).
    pub fn pipeline(&self) -> u64 {
        match self {
            Self::Partial { pipeline, .. }
            | Self::Reset { pipeline, .. }
            | Self::Owner { pipeline, .. }
            | Self::Progress { pipeline, .. } => *pipeline,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match serde_json::to_vec(self) {
            Ok(payload) => payload,
            Err(error) => unreachable!("repartition messages always serialize: {error}"),
        }
    }
}

/// A stable partition for a key (FNV-1a), the same in every worker and every run.
pub fn partition_for(key: &str, partitions: i32) -> i32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % partitions.max(1) as u64) as i32
}

/// A fresh owner id for one assignment of a source partition: random, never 0.
pub fn new_owner_id() -> u64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static ASSIGNMENTS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let id = std::collections::hash_map::RandomState::new().hash_one((
        nanos,
        std::process::id(),
        ASSIGNMENTS.fetch_add(1, Ordering::Relaxed),
    ));
    id.max(1)
}

/// The name of a source partition in repartition messages.
pub fn source_id(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_compactly() {
        let message = RepartitionMessage::Partial {
            src: "lines/0".into(),
            owner: u64::MAX,
            pipeline: 0x1234_5678_9abc_def0,
            from: 10,
            to: 20,
            window: 1_000,
            accumulator: Accumulator::one(2.5),
        };
        let bytes = serde_json::to_vec(&message).expect("serializes");
        assert_eq!(serde_json::from_slice::<RepartitionMessage>(&bytes).expect("parses"), message);
        // The largest owner id and fingerprint: 138 bytes.
        assert!(bytes.len() < 140, "{}", String::from_utf8_lossy(&bytes));
        let legacy: RepartitionMessage = serde_json::from_str(r#"{"t":"r","src":"lines/0","from":3}"#).expect("parses");
        assert_eq!(
            legacy,
            RepartitionMessage::Reset { src: "lines/0".into(), owner: 0, pipeline: 0, from: 3 },
            "no owner, no fingerprint: 0"
        );
    }

    #[test]
    fn owner_ids_differ_and_are_never_zero() {
        let ids: std::collections::HashSet<u64> = (0..1000).map(|_| new_owner_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(!ids.contains(&0));
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        assert_eq!(partition_for("the", 6), partition_for("the", 6));
        assert!((0..6).contains(&partition_for("anything", 6)));
        let spread: std::collections::HashSet<i32> = (0..100).map(|i| partition_for(&i.to_string(), 6)).collect();
        assert_eq!(spread.len(), 6);
    }
}
