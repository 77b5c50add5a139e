//! The lag probe: per partition of a job's source topics, the group's committed offset (with the
//! capacity report the committing worker put in its metadata) and the low and high watermarks,
//! read with librdkafka off the async runtime.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use streamjob_crds::capacity_report::CapacityReport;
use streamjob_runtime::clock::now_ms;
use streamjob_runtime::sync::lock;

use super::policy::{PartitionSample, WorkerRate};

/// How long one probe request (metadata, committed offsets, watermarks) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("creating the Kafka client: {0}")]
    Client(rdkafka::error::KafkaError),
    #[error("reading metadata of topic {topic}: {source}")]
    Metadata { topic: String, source: rdkafka::error::KafkaError },
    #[error("topic {topic}: {message}")]
    Topic { topic: String, message: String },
    #[error("reading committed offsets of group {group}: {source}")]
    Committed { group: String, source: rdkafka::error::KafkaError },
    #[error("reading watermarks of {topic}/{partition}: {source}")]
    Watermarks { topic: String, partition: i32, source: rdkafka::error::KafkaError },
    #[error("the probe task failed: {0}")]
    Task(String),
}

/// What to measure: a consumer group's position on some topics of one cluster.
#[derive(Clone, Debug)]
pub struct ProbeTarget {
    /// librdkafka properties that reach the cluster (bootstrap servers, security).
    pub connection: ClientConfig,
    pub group: String,
    pub topics: Vec<String>,
}

impl ProbeTarget {
    /// Identifies the client that can measure this target: same cluster, same credentials,
    /// same group.
    fn client_key(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        // config_map() is sorted but masks secrets; get() has the real values.
        for key in self.connection.config_map().keys() {
            key.hash(&mut hasher);
            self.connection.get(key).hash(&mut hasher);
        }
        self.group.hash(&mut hasher);
        hasher.finish()
    }
}

/// Measures consumer-group lag. librdkafka reads committed offsets only for the consumer's own
/// `group.id` (rust-rdkafka has no ListConsumerGroupOffsets), so there is one non-subscribed
/// consumer per cluster and group; it never joins the group, so it triggers no rebalance. The
/// clients are kept and reused across polls.
#[derive(Default)]
pub struct LagProbe {
    clients: Mutex<HashMap<u64, Arc<BaseConsumer>>>,
}

impl LagProbe {
    /// One measurement of every partition of the target's topics.
    pub async fn measure(&self, target: &ProbeTarget) -> Result<Vec<PartitionSample>, ProbeError> {
        let consumer = self.client_for(target)?;
        let (group, topics) = (target.group.clone(), target.topics.clone());
        tokio::task::spawn_blocking(move || measure_blocking(&consumer, &group, &topics, PROBE_TIMEOUT))
            .await
            .map_err(|e| ProbeError::Task(e.to_string()))?
    }

    /// Drops clients no target in `keep` uses (jobs deleted, credentials rotated).
    pub fn retain(&self, keep: &[ProbeTarget]) {
        let keys: Vec<u64> = keep.iter().map(ProbeTarget::client_key).collect();
        lock(&self.clients).retain(|key, _| keys.contains(key));
    }

    fn client_for(&self, target: &ProbeTarget) -> Result<Arc<BaseConsumer>, ProbeError> {
        let key = target.client_key();
        let mut clients = lock(&self.clients);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let mut config = target.connection.clone();
        config
            .set("group.id", &target.group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("allow.auto.create.topics", "false")
            .set("client.id", "streamjob-operator-lag-probe");
        let client: Arc<BaseConsumer> = Arc::new(config.create().map_err(ProbeError::Client)?);
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// The blocking part: metadata for the partition list, the group's committed offsets in one
/// request, then each partition's watermarks.
pub fn measure_blocking(
    consumer: &BaseConsumer,
    group: &str,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<PartitionSample>, ProbeError> {
    let mut partitions = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|source| ProbeError::Metadata { topic: topic.clone(), source })?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(ProbeError::Topic { topic: topic.clone(), message: "not in the broker's metadata".to_owned() });
        };
        if let Some(error) = found.error() {
            let message = rdkafka::types::RDKafkaErrorCode::from(error).to_string();
            return Err(ProbeError::Topic { topic: topic.clone(), message });
        }
        if found.partitions().is_empty() {
            return Err(ProbeError::Topic { topic: topic.clone(), message: "has no partitions".to_owned() });
        }
        for partition in found.partitions() {
            partitions.add_partition(topic, partition.id());
        }
    }
    let committed = consumer
        .committed_offsets(partitions, timeout)
        .map_err(|source| ProbeError::Committed { group: group.to_owned(), source })?;
    let mut samples = Vec::with_capacity(committed.count());
    for element in committed.elements() {
        let (topic, partition) = (element.topic().to_owned(), element.partition());
        let (low, high) = consumer
            .fetch_watermarks(&topic, partition, timeout)
            .map_err(|source| ProbeError::Watermarks { topic: topic.clone(), partition, source })?;
        let committed = match element.offset() {
            Offset::Offset(offset) if offset >= 0 => Some(offset),
            _ => None,
        };
        let committed_by = CapacityReport::decode(element.metadata()).map(|report| WorkerRate {
            age_seconds: (now_ms() - report.at_ms).max(0) as f64 / 1000.0,
            worker: report.worker,
            records_per_busy_second: report.records_per_busy_second,
            busy_share: report.busy_share,
        });
        samples.push(PartitionSample { topic, partition, low, high, committed, committed_by });
    }
    samples.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(properties: &[(&str, &str)], group: &str) -> ProbeTarget {
        let mut connection = ClientConfig::new();
        for (key, value) in properties {
            connection.set(*key, *value);
        }
        ProbeTarget { connection, group: group.to_owned(), topics: vec!["in".to_owned()] }
    }

    #[test]
    fn the_same_connection_built_in_any_order_reuses_one_client() {
        let many: Vec<(String, String)> = (0..32).map(|i| (format!("p{i}"), format!("v{i}"))).collect();
        let forward: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let backward: Vec<(&str, &str)> = forward.iter().rev().copied().collect();
        assert_eq!(target(&forward, "g").client_key(), target(&backward, "g").client_key());
        assert_ne!(target(&forward, "g").client_key(), target(&forward, "other").client_key());
        let rotated = [("bootstrap.servers", "k:9092"), ("sasl.password", "new")];
        assert_ne!(
            target(&[("bootstrap.servers", "k:9092"), ("sasl.password", "old")], "g").client_key(),
            target(&rotated, "g").client_key()
        );
    }

    #[test]
    fn retain_drops_the_clients_no_job_uses() {
        let probe = LagProbe::default();
        let (kept, dropped) =
            (target(&[("bootstrap.servers", "a:9092")], "g"), target(&[("bootstrap.servers", "b:9092")], "g"));
        probe.client_for(&kept).expect("client");
        probe.client_for(&dropped).expect("client");
        probe.retain(std::slice::from_ref(&kept));
        let clients = probe.clients.lock().expect("lock");
        assert_eq!(clients.keys().copied().collect::<Vec<_>>(), vec![kept.client_key()]);
    }
}
