//! Plain producing and reading of whole topics, and creating them: `streamjob-operator dev`
//! feeds its jobs and shows their output with these, as do the tests and the benchmark.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

/// A record as read back from a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: String,
    pub headers: HashMap<String, String>,
}

pub fn producer(bootstrap: &str) -> Result<BaseProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
}

/// Sends one record, waiting while the producer's queue is full.
pub fn send_waiting<'a>(producer: &BaseProducer, mut record: BaseRecord<'a, [u8], [u8]>) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => {
                producer.poll(Duration::ZERO);
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                producer.poll(Duration::from_millis(10));
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// Assigns every partition of `topic` to `consumer`, from the beginning.
pub fn assign_from_beginning(consumer: &BaseConsumer, topic: &str) -> Result<(), KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        assignment.add_partition_offset(topic, partition.id(), Offset::Beginning)?;
    }
    consumer.assign(&assignment)
}

/// A consumer that reads every partition of `topic` from the beginning, outside any group.
pub struct TopicReader {
    consumer: BaseConsumer,
    pub records: Vec<ReadRecord>,
}

impl TopicReader {
    pub fn new(bootstrap: &str, topic: &str, read_committed: bool) -> Result<Self, KafkaError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "streamjob-topic-reader")
            .set("enable.auto.commit", "false")
            .set("isolation.level", if read_committed { "read_committed" } else { "read_uncommitted" })
            .create()?;
        assign_from_beginning(&consumer, topic)?;
        Ok(Self { consumer, records: Vec::new() })
    }

    /// Reads what arrives within `wait`; returns how many records were new.
    pub fn poll_for(&mut self, wait: Duration) -> usize {
        let deadline = Instant::now() + wait;
        let before = self.records.len();
        while Instant::now() < deadline {
            if let Some(Ok(message)) = self.consumer.poll(Duration::from_millis(50)) {
                self.records.push(read_record(&message));
            }
        }
        self.records.len() - before
    }

    /// Reads until `done` holds for what was read, or `limit` passes.
    pub fn read_until(&mut self, limit: Duration, done: impl Fn(&[ReadRecord]) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            self.poll_for(Duration::from_millis(200));
            if done(&self.records) {
                return true;
            }
        }
        false
    }
}

fn read_record(message: &rdkafka::message::BorrowedMessage<'_>) -> ReadRecord {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                .collect()
        })
        .unwrap_or_default();
    ReadRecord {
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        value: String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
        headers,
    }
}

/// Why [`create_topics`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateTopicsError {
    #[error("Kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("creating topic {topic}: {code}")]
    Create { topic: String, code: RDKafkaErrorCode },
    #[error("topic {topic} was not ready with {wanted} within {waited:?} (last seen: {seen})")]
    NotReady { topic: String, wanted: String, waited: Duration, seen: String },
}

/// How long [`create_topics`] waits for the broker's metadata to show the topics.
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Creates topics with the admin API and waits until the broker's metadata shows each one
/// with a leader for every partition. A topic that already exists is kept as it is (with the
/// partitions it has); it is only waited for.
pub fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) -> Result<(), CreateTopicsError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let new_topics: Vec<NewTopic<'_>> =
        topics.iter().map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(-1))).collect();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(15)));
    let results = futures::executor::block_on(admin.create_topics(&new_topics, &options))?;
    let mut expected = Vec::with_capacity(topics.len());
    for (result, (name, partitions)) in results.into_iter().zip(topics) {
        match result {
            Ok(_) => expected.push((*name, Some(*partitions))),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => expected.push((*name, None)),
            Err((topic, code)) => return Err(CreateTopicsError::Create { topic, code }),
        }
    }
    // The controller has created them; the broker's metadata follows asynchronously.
    let checker: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("allow.auto.create.topics", "false").create()?;
    for (topic, partitions) in expected {
        wait_until_ready(&checker, topic, partitions)?;
    }
    Ok(())
}

/// Waits until `topic` has `partitions` partitions (any number when `None`), each with a leader.
fn wait_until_ready(checker: &BaseConsumer, topic: &str, partitions: Option<i32>) -> Result<(), CreateTopicsError> {
    let deadline = Instant::now() + TOPIC_READY_TIMEOUT;
    loop {
        let Some(seen) = not_ready_because(checker, topic, partitions) else { return Ok(()) };
        if Instant::now() >= deadline {
            let wanted = partitions.map_or("a leader for each partition".to_owned(), |n| format!("{n} led partitions"));
            return Err(CreateTopicsError::NotReady {
                topic: topic.to_owned(),
                wanted,
                waited: TOPIC_READY_TIMEOUT,
                seen,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the broker's metadata shows that keeps `topic` from being ready; `None` once it is.
fn not_ready_because(checker: &BaseConsumer, topic: &str, partitions: Option<i32>) -> Option<String> {
    let metadata = match checker.fetch_metadata(Some(topic), Duration::from_secs(5)) {
        Ok(metadata) => metadata,
        Err(error) => return Some(error.to_string()),
    };
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Some("not in the metadata".to_owned());
    };
    if let Some(error) = found.error() {
        return Some(RDKafkaErrorCode::from(error).to_string());
    }
    let count = found.partitions().len() as i32;
    let led = found.partitions().iter().all(|p| p.error().is_none() && p.leader() >= 0);
    let ready = led && count > 0 && partitions.is_none_or(|wanted| wanted == count);
    (!ready).then(|| format!("{count} partitions, all with a leader: {led}"))
}
