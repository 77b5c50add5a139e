//! Topics, records and committed offsets on the real Kafka broker.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use streamjob_worker::topic_io::{producer, send_waiting};

/// Creates `topics` with the admin API, waiting until the broker shows them.
pub fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    if let Err(error) = streamjob_worker::topic_io::create_topics(bootstrap, topics) {
        panic!("creating {topics:?} on {bootstrap}: {error}");
    }
}

/// Writes `counts[p]` records to partition `p`.
pub fn fill(bootstrap: &str, topic: &str, counts: &[i64]) {
    let producer = producer(bootstrap).expect("producer");
    for (partition, count) in counts.iter().enumerate() {
        for n in 0..*count {
            let payload = format!("record {n}");
            let record =
                BaseRecord::to(topic).partition(partition as i32).payload(payload.as_bytes()).key(&[] as &[u8]);
            send_waiting(&producer, record).expect("send");
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Commits `offsets` (partition, offset) for `group`, as a worker would.
pub fn commit(bootstrap: &str, group: &str, topic: &str, offsets: &[(i32, i64)]) {
    commit_with_metadata(bootstrap, group, topic, offsets, "");
}

/// [`commit`], every offset with `metadata`.
pub fn commit_with_metadata(bootstrap: &str, group: &str, topic: &str, offsets: &[(i32, i64)], metadata: &str) {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create().expect("consumer");
    let mut list = TopicPartitionList::new();
    for (partition, offset) in offsets {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset)).expect("offset");
        if let Some(mut element) = list.find_partition(topic, *partition) {
            element.set_metadata(metadata);
        }
    }
    consumer.commit(&list, CommitMode::Sync).expect("commit");
}
