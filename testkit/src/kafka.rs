//! Feeding a job's input topic and checking what the job wrote, for the tests and the worker's
//! benchmark; reading and producing themselves are the worker's (`streamjob_worker::topic_io`),
//! which `streamjob-operator dev` uses too.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer};
use streamjob_worker::topic_io::{producer, send_waiting, ReadRecord};

/// A record to produce; `timestamp_ms` sets the Kafka timestamp.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub timestamp_ms: Option<i64>,
}

/// Produces `records` and waits until all are acknowledged.
pub fn produce_all(bootstrap: &str, topic: &str, records: &[NewRecord]) -> Result<(), KafkaError> {
    let producer = producer(bootstrap)?;
    for record in records {
        let mut base = BaseRecord::<[u8], [u8]>::to(topic).payload(record.value.as_slice());
        if let Some(key) = &record.key {
            base = base.key(key.as_bytes());
        }
        if let Some(timestamp) = record.timestamp_ms {
            base = base.timestamp(timestamp);
        }
        send_waiting(&producer, base)?;
    }
    producer.flush(Duration::from_secs(30))
}

/// Word counts per (window start, lower-cased word), as a word-count job emits them.
pub type WordCounts = BTreeMap<(i64, String), i64>;

/// An independent word count of text `lines`: each word counted in the `window_ms` tumbling
/// window of its line's timestamp.
pub fn expected_word_counts(lines: &[NewRecord], window_ms: i64) -> WordCounts {
    let mut counts = BTreeMap::new();
    for line in lines {
        let timestamp = line.timestamp_ms.unwrap_or_default();
        let window = timestamp - timestamp.rem_euclid(window_ms);
        for word in String::from_utf8_lossy(&line.value).split_whitespace() {
            *counts.entry((window, word.to_lowercase())).or_insert(0) += 1;
        }
    }
    counts
}

/// The last count a word-count sink holds for each (window, word); a record that is not JSON
/// is an error naming it.
pub fn final_word_counts(records: &[ReadRecord]) -> Result<WordCounts, String> {
    let mut counts = BTreeMap::new();
    for record in records {
        let value: serde_json::Value = serde_json::from_str(&record.value)
            .map_err(|error| format!("sink record is not JSON ({error}): {}", record.value))?;
        let start = value["windowStart"].as_str().unwrap_or_default();
        let start = chrono::DateTime::parse_from_rfc3339(start).map(|t| t.timestamp_millis()).unwrap_or(-1);
        let word = value["key"].as_str().unwrap_or_default().to_owned();
        counts.insert((start, word), value["count"].as_i64().unwrap_or(-1));
    }
    Ok(counts)
}

/// Up to ten (window, word) counts that `actual` misses or gets wrong, for a failure message.
pub fn word_count_differences(expected: &WordCounts, actual: &WordCounts) -> Vec<String> {
    expected
        .iter()
        .filter(|(key, count)| actual.get(*key) != Some(*count))
        .map(|((window, word), count)| {
            format!("{window}/{word}: want {count}, got {:?}", actual.get(&(*window, word.clone())))
        })
        .take(10)
        .collect()
}
