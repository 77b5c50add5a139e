//! The lag probe: per partition of a job's source topics, the group's committed offset (with the
//! capacity report the committing worker put in its metadata) and the low and high watermarks.
//! One client per cluster and credentials serves every job on it (`kafka_admin.rs`), a metadata
//! request per topic and three asynchronous requests whatever the partition count, under one deadline, so a
//! slow or unreachable cluster delays only its own jobs.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use streamjob_crds::capacity_report::CapacityReport;
use streamjob_runtime::clock::now_ms;
use streamjob_runtime::sync::lock;

use super::kafka_admin::{AdminError, ClusterAdmin, LogEnd, PartitionOffset, TopicPartitions};
use super::policy::{PartitionSample, WorkerRate};

/// How long one measurement (its four requests) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Client(AdminError),
    #[error("reading the partitions of topics {topics:?}: {source}")]
    Metadata { topics: Vec<String>, source: AdminError },
    #[error("topic {topic}: {message}")]
    Topic { topic: String, message: String },
    #[error("reading committed offsets of group {group}: {source}")]
    Committed { group: String, source: AdminError },
    #[error("reading the log offsets of the source partitions: {0}")]
    Watermarks(AdminError),
    #[error("partition {topic}/{partition}: {message}")]
    Partition { topic: String, partition: i32, message: String },
    #[error("no answer from the cluster within {0:?}")]
    Deadline(Duration),
}

/// What to measure: a consumer group's position on some topics of one cluster.
#[derive(Clone, Debug)]
pub struct ProbeTarget {
    /// librdkafka properties that reach the cluster (bootstrap servers, security).
    pub connection: ClientConfig,
    pub group: String,
    pub topics: Vec<String>,
}

/// Identifies a client: same cluster, same credentials.
fn client_key(connection: &ClientConfig) -> u64 {
    let mut hasher = DefaultHasher::new();
    // config_map() is sorted but masks secrets; get() has the real values.
    for key in connection.config_map().keys() {
        key.hash(&mut hasher);
        connection.get(key).hash(&mut hasher);
    }
    hasher.finish()
}

/// Measures consumer-group lag with one admin client per cluster and credentials, shared by the
/// jobs on it and kept across polls; it never joins a group, so it triggers no rebalance.
#[derive(Default)]
pub struct LagProbe {
    clients: Mutex<HashMap<u64, Arc<ClusterAdmin>>>,
}

impl LagProbe {
    /// One measurement of every partition of the target's topics, within `PROBE_TIMEOUT`.
    pub async fn measure(&self, target: &ProbeTarget) -> Result<Vec<PartitionSample>, ProbeError> {
        let admin = self.client_for(&target.connection)?;
        tokio::time::timeout(PROBE_TIMEOUT, measure_with(&admin, &target.group, &target.topics, PROBE_TIMEOUT))
            .await
            .map_err(|_| ProbeError::Deadline(PROBE_TIMEOUT))?
    }

    /// The partitions of `topics` (or each topic's error) on the cluster `connection` reaches,
    /// within `PROBE_TIMEOUT`: whether a job's output topics exist and its credentials see them.
    pub async fn describe(
        &self,
        connection: &ClientConfig,
        topics: &[String],
    ) -> Result<Vec<(String, TopicPartitions)>, ProbeError> {
        let admin = self.client_for(connection)?;
        tokio::time::timeout(PROBE_TIMEOUT, admin.describe_topics(topics, PROBE_TIMEOUT))
            .await
            .map_err(|_| ProbeError::Deadline(PROBE_TIMEOUT))?
            .map_err(|source| ProbeError::Metadata { topics: topics.to_vec(), source })
    }

    /// Drops clients no connection in `keep` uses (jobs deleted, credentials rotated).
    pub fn retain(&self, keep: &[&ClientConfig]) {
        let keys: Vec<u64> = keep.iter().map(|connection| client_key(connection)).collect();
        lock(&self.clients).retain(|key, _| keys.contains(key));
    }

    /// How many clusters (with their credentials) the probe holds a client for.
    pub fn clients(&self) -> usize {
        lock(&self.clients).len()
    }

    fn client_for(&self, connection: &ClientConfig) -> Result<Arc<ClusterAdmin>, ProbeError> {
        let key = client_key(connection);
        let mut clients = lock(&self.clients);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let mut config = connection.clone();
        config.set("client.id", "streamjob-operator-lag-probe");
        let client = Arc::new(ClusterAdmin::new(&config).map_err(ProbeError::Client)?);
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// The partitions of the topics, then the group's committed offsets and the partitions'
/// log-start and end offsets, each one request.
pub async fn measure_with(
    admin: &Arc<ClusterAdmin>,
    group: &str,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<PartitionSample>, ProbeError> {
    let described = admin
        .describe_topics(topics, timeout)
        .await
        .map_err(|source| ProbeError::Metadata { topics: topics.to_vec(), source })?;
    let mut partitions = Vec::new();
    for topic in topics {
        let found = described.iter().find(|(name, _)| name == topic);
        let ids = match found {
            None => return Err(ProbeError::Topic { topic: topic.clone(), message: "not in the answer".to_owned() }),
            Some((_, Err(message))) => {
                return Err(ProbeError::Topic { topic: topic.clone(), message: message.clone() })
            }
            Some((_, Ok(ids))) if ids.is_empty() => {
                return Err(ProbeError::Topic { topic: topic.clone(), message: "has no partitions".to_owned() })
            }
            Some((_, Ok(ids))) => ids,
        };
        partitions.extend(ids.iter().map(|id| (topic.clone(), *id)));
    }
    let (committed, low, high) = tokio::join!(
        admin.committed_offsets(group, &partitions, timeout),
        admin.log_offsets(&partitions, LogEnd::Start, timeout),
        admin.log_offsets(&partitions, LogEnd::End, timeout),
    );
    let committed = committed.map_err(|source| ProbeError::Committed { group: group.to_owned(), source })?;
    let (low, high) = (low.map_err(ProbeError::Watermarks)?, high.map_err(ProbeError::Watermarks)?);
    samples(&partitions, &committed, &low, &high, now_ms())
}

/// One sample per partition from the three answers; a partition missing from an answer, or
/// with an error in it, fails the measurement (a partial one would misstate the lag).
pub fn samples(
    partitions: &[(String, i32)],
    committed: &[PartitionOffset],
    low: &[PartitionOffset],
    high: &[PartitionOffset],
    now_ms: i64,
) -> Result<Vec<PartitionSample>, ProbeError> {
    let find = |answer: &[PartitionOffset], topic: &str, partition: i32| -> Result<(i64, Option<String>), ProbeError> {
        let found = answer.iter().find(|offset| offset.topic == topic && offset.partition == partition);
        match found {
            None => Err(ProbeError::Partition {
                topic: topic.to_owned(),
                partition,
                message: "missing from the broker's answer".to_owned(),
            }),
            Some(PartitionOffset { offset: Err(message), .. }) => {
                Err(ProbeError::Partition { topic: topic.to_owned(), partition, message: message.clone() })
            }
            Some(PartitionOffset { offset: Ok(offset), metadata, .. }) => Ok((*offset, metadata.clone())),
        }
    };
    let mut samples = Vec::with_capacity(partitions.len());
    for (topic, partition) in partitions {
        let (committed, metadata) = find(committed, topic, *partition)?;
        let (low, _) = find(low, topic, *partition)?;
        let (high, _) = find(high, topic, *partition)?;
        let committed_by = metadata.as_deref().and_then(CapacityReport::decode).map(|report| WorkerRate {
            age_seconds: (now_ms - report.at_ms).max(0) as f64 / 1000.0,
            worker: report.worker,
            records_per_busy_second: report.records_per_busy_second,
            busy_share: report.busy_share,
        });
        samples.push(PartitionSample {
            topic: topic.clone(),
            partition: *partition,
            low,
            high,
            committed: (committed >= 0).then_some(committed),
            committed_by,
        });
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
        assert_eq!(client_key(&target(&forward, "g").connection), client_key(&target(&backward, "g").connection));
        assert_eq!(
            client_key(&target(&forward, "g").connection),
            client_key(&target(&forward, "other").connection),
            "one client per cluster and credentials, whatever the group"
        );
        let rotated = [("bootstrap.servers", "k:9092"), ("sasl.password", "new")];
        assert_ne!(
            client_key(&target(&[("bootstrap.servers", "k:9092"), ("sasl.password", "old")], "g").connection),
            client_key(&target(&rotated, "g").connection)
        );
    }

    #[test]
    fn retain_drops_the_clients_no_job_uses() {
        let probe = LagProbe::default();
        let (kept, dropped) =
            (target(&[("bootstrap.servers", "a:9092")], "g"), target(&[("bootstrap.servers", "b:9092")], "g"));
        probe.client_for(&kept.connection).expect("client");
        probe.client_for(&dropped.connection).expect("client");
        probe.retain(&[&kept.connection]);
        let clients = probe.clients.lock().expect("lock");
        assert_eq!(clients.keys().copied().collect::<Vec<_>>(), vec![client_key(&kept.connection)]);
    }
}
