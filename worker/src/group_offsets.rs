//! A consumer group's committed offsets, read and written from outside its members: for tools
//! and tests that set a group up or look at what its workers committed.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::engine::Commit;

const TIMEOUT: Duration = Duration::from_secs(30);

fn group_client(bootstrap: &str, group: &str) -> Result<BaseConsumer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
}

/// Commits `commits` (offsets and metadata) for `group`, as the worker commits them.
pub fn commit(bootstrap: &str, group: &str, commits: &[Commit]) -> Result<(), KafkaError> {
    let consumer = group_client(bootstrap, group)?;
    consumer.commit(&crate::runner::commit_list(commits)?, CommitMode::Sync)
}

/// What `group` has committed for `partitions` of `topic`; a partition without a commit is
/// left out. Offsets a transaction still open commits are waited for (`read_committed`: the
/// broker answers UNSTABLE_OFFSET_COMMIT until the transaction ends), up to 30 s.
pub fn committed(bootstrap: &str, group: &str, topic: &str, partitions: &[i32]) -> Result<Vec<Commit>, KafkaError> {
    read_committed(group_client(bootstrap, group)?, topic, partitions)
}

/// As [`committed`], but at once: an open transaction's offsets are not waited for, the
/// commits before it are answered.
pub fn committed_without_waiting(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<Vec<Commit>, KafkaError> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted");
    read_committed(client.create()?, topic, partitions)
}

fn read_committed(consumer: BaseConsumer, topic: &str, partitions: &[i32]) -> Result<Vec<Commit>, KafkaError> {
    let mut list = TopicPartitionList::new();
    for partition in partitions {
        list.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(list, TIMEOUT)?;
    Ok(committed
        .elements()
        .into_iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(offset) => Some(Commit {
                topic: element.topic().to_owned(),
                partition: element.partition(),
                offset,
                metadata: Some(element.metadata().to_owned()).filter(|m| !m.is_empty()),
            }),
            _ => None,
        })
        .collect())
}
