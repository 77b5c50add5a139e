//! Outputs that no retry can deliver, and the input records they came from.
//!
//! A failed delivery normally rewinds the worker to its last commit, to try again. That is
//! right for a broker that is away, and wrong for a record the topic will never take (larger
//! than its `max.message.bytes`) or a dead-letter topic that cannot exist: the worker would
//! rewind forever. Such an input is remembered here; when the rewind reads it again, it goes to
//! the dead-letter topic with the error instead (or, when that is what failed or there is none,
//! it is counted and skipped), so its partition moves on. Rewinding to read it again, rather
//! than dead-lettering the failed output, puts the input in the dead-letter topic as for every
//! other failure, and keeps the failing output out of the replay, which a transaction needs.

use std::collections::HashMap;

use crate::engine::Destination;

/// Why an output was not delivered, as the producer reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFailure {
    pub error: String,
    pub kind: FailureKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The broker may take it later (unreachable, timed out, a leader moving).
    Retriable,
    /// No topic takes this record: too large, or invalid.
    Record,
    /// The topic does not exist and cannot be created, or may not be written.
    Topic,
}

impl DeliveryFailure {
    /// Whether retrying cannot help an output bound for `destination`. A sink topic that is
    /// missing is waited for (it may be created); a missing dead-letter topic is not.
    pub fn is_permanent_for(&self, destination: Destination) -> bool {
        match self.kind {
            FailureKind::Retriable => false,
            FailureKind::Record => true,
            FailureKind::Topic => destination == Destination::DeadLetter,
        }
    }
}

/// What becomes of a poisoned input when it is read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poison {
    /// Its output cannot reach the sink: the input goes to the dead-letter topic.
    DeadLetter(String),
    /// Nothing can take it (no dead-letter topic, or that failed too): counted and skipped.
    Skip(String),
}

/// Input records whose outputs no retry can deliver, by topic, then (partition, offset).
#[derive(Debug, Default)]
pub struct PoisonedInputs {
    by_topic: HashMap<String, HashMap<(i32, i64), Poison>>,
    /// The skipped ones already counted: a later rewind reads them again before the commit
    /// passes them, and skips them again, but they are one record each.
    counted: std::cell::RefCell<std::collections::HashSet<(String, i32, i64)>>,
}

impl PoisonedInputs {
    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }

    pub fn mark(&mut self, topic: &str, partition: i32, offset: i64, poison: Poison) {
        self.by_topic.entry(topic.to_owned()).or_default().insert((partition, offset), poison);
    }

    pub fn get(&self, topic: &str, partition: i32, offset: i64) -> Option<&Poison> {
        self.by_topic.get(topic)?.get(&(partition, offset))
    }

    /// Whether the skip of this input is to be counted: only the first time it is read again.
    pub fn count_skip_once(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.counted.borrow_mut().insert((topic.to_owned(), partition, offset))
    }

    /// The partition was committed at `offset`: what lies before is never read again.
    pub fn forget_before(&mut self, topic: &str, partition: i32, offset: i64) {
        self.counted.get_mut().retain(|(t, p, o)| t != topic || *p != partition || *o >= offset);
        if let Some(inputs) = self.by_topic.get_mut(topic) {
            inputs.retain(|(p, o), _| *p != partition || *o >= offset);
            if inputs.is_empty() {
                self.by_topic.remove(topic);
            }
        }
    }
}
