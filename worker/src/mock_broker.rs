//! librdkafka's mock cluster on real TCP ports: a Kafka-protocol broker for tests and
//! `streamjob-operator dev`. It keeps everything in memory and supports consumer groups,
//! committed offsets, transactions and fault injection.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

pub struct MockBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

#[derive(Debug, thiserror::Error)]
#[error("mock broker: {0}")]
pub struct MockBrokerError(#[from] rdkafka::error::KafkaError);

impl MockBroker {
    pub fn start(brokers: i32) -> Result<Self, MockBrokerError> {
        Ok(Self { cluster: MockCluster::new(brokers)? })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), MockBrokerError> {
        Ok(self.cluster.create_topic(topic, partitions, 1)?)
    }

    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}

/// Parses `name:partitions` (partitions default to 6).
pub fn parse_topic(spec: &str) -> Result<(String, i32), String> {
    match spec.split_once(':') {
        None if !spec.is_empty() => Ok((spec.to_owned(), 6)),
        Some((name, count)) if !name.is_empty() => count
            .parse::<i32>()
            .ok()
            .filter(|n| *n > 0)
            .map(|n| (name.to_owned(), n))
            .ok_or_else(|| format!("{spec}: the partition count must be a positive number")),
        _ => Err(format!("{spec}: expected name[:partitions]")),
    }
}
