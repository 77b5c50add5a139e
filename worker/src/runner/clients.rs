//! The Kafka clients' configuration, and the engine's settings from the job.

use super::*;
use crate::group_protocol::{self, GroupProtocol, WorkerGroupSettings};

/// A client of `cluster`, with that cluster's auth only.
pub(super) fn client_config(config: &WorkerConfig, cluster: Cluster) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in config.access(cluster).properties(config.bootstrap(cluster)) {
        client.set(key, value);
    }
    client.set("client.id", format!("streamjob-worker-{}", config.instance_id));
    // A producer would otherwise create a deleted sink (or a misspelt one) with the broker's
    // defaults, where the brokers allow it; a missing sink is waited for instead, loudly.
    client.set("allow.auto.create.topics", "false");
    client.set_log_level(RDKafkaLogLevel::Warning);
    if let Ok(contexts) = std::env::var("STREAMJOB_LIBRDKAFKA_DEBUG") {
        client.set("debug", contexts).set_log_level(RDKafkaLogLevel::Debug);
    }
    client
}

/// How often the consumer refreshes the metadata of its topics: new partitions are seen within it.
pub(super) const METADATA_REFRESH: Duration = Duration::from_secs(2);

/// The shortest `transaction.timeout.ms` the worker sets.
const TRANSACTION_TIMEOUT_FLOOR: Duration = Duration::from_secs(30);

/// `transaction.timeout.ms` of the exactly-once producer: how long the broker lets a transaction
/// stay open before it aborts it and fences the producer, and so how long a partition of a
/// worker that died with a transaction open stays held by its next owner (the broker answers
/// UNSTABLE_OFFSET_COMMIT until then; its abort check runs every 10 s by default, so up to
/// that much later). A worker's transaction lasts one commit interval (1 s by default) and its
/// commit, a few round trips; a step stuck past 45 s ends the process anyway (`stall`). So 30 s,
/// or three commit intervals when those are longer: librdkafka's 60 s would double every
/// takeover, and much less would fence a live worker whose commit waits out a broker failover.
pub(super) fn transaction_timeout(config: &WorkerConfig) -> Duration {
    TRANSACTION_TIMEOUT_FLOOR.max(config.timings.commit_interval * 3)
}

/// A producer for `cluster`, which writes topics taking records of at most `topic_limits`
/// bytes each (their `max.message.bytes`): it sends records as large as the largest takes, in
/// batches no larger than the smallest takes (a record larger than that goes in a batch of its
/// own).
pub(super) fn create_producer(
    config: &WorkerConfig,
    cluster: Cluster,
    transactional: bool,
    topic_limits: &[usize],
) -> Result<WorkerProducer, WorkerError> {
    let mut client = client_config(config, cluster);
    client.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5");
    if let (Some(largest), Some(smallest)) = (topic_limits.iter().max(), topic_limits.iter().min()) {
        client
            .set("message.max.bytes", (*largest).clamp(1000, 1_000_000_000).to_string())
            .set("batch.size", (*smallest).clamp(1000, super::limits::PRODUCER_DEFAULT_MAX_BYTES).to_string());
    }
    if transactional {
        client.set("transactional.id", config.transactional_id());
        client.set("transaction.timeout.ms", transaction_timeout(config).as_millis().to_string());
    }
    client
        .create_with_context(DeliveryContext::default())
        .map_err(|source| WorkerError::Client { client: "producer", source })
}

pub(super) fn create_consumer(config: &WorkerConfig, shared: Arc<Shared>) -> Result<WorkerConsumer, WorkerError> {
    let worker = WorkerGroupSettings {
        session_timeout: config.timings.session_timeout,
        static_membership: config.job.spec.source.static_membership,
    };
    let protocol = group_protocol::choose(config.group_protocol, worker, &client_config(config, Cluster::Source));
    let mut client = client_config(config, Cluster::Source);
    client
        .set("group.id", &config.consumer_group)
        .set("group.protocol", protocol.name())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Also how soon a partition whose leader went away stops counting as read to its end.
        .set("statistics.interval.ms", "1000")
        // librdkafka pauses a partition's fetching for a second once its local queue is above
        // queued.min.messages; a worker that drains that queue would then wait idle.
        .set("fetch.queue.backoff.ms", "10")
        // Every job, at-least-once too: its input is often another job's exactly-once sink,
        // whose aborted records must not be processed (measured cost in the README).
        .set("isolation.level", "read_committed")
        // A source topic given more partitions is noticed within this (librdkafka's default is
        // 5 minutes); the group then rebalances and the new partitions start at their
        // beginning (see `partition_start`).
        .set("topic.metadata.refresh.interval.ms", METADATA_REFRESH.as_millis().to_string())
        // Where a committed offset the broker no longer has resumes (without it librdkafka
        // jumps to the end and skips what is left).
        .set(
            "auto.offset.reset",
            match config.job.spec.source.start_from {
                StartFrom::Earliest => "earliest",
                StartFrom::Latest => "latest",
            },
        );
    if protocol == GroupProtocol::Classic {
        // The consumer protocol has these on the brokers (group.consumer.*) and refuses them.
        // Members learn of a rebalance on a heartbeat, and a cooperative one has two rounds:
        // at most 250 ms each instead of a sixth of the session timeout (1.7 s at 10 s).
        client
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", config.timings.session_timeout.as_millis().to_string())
            .set("heartbeat.interval.ms", (config.timings.session_timeout.as_millis() / 6).clamp(100, 250).to_string());
    }
    if config.job.spec.source.static_membership {
        client.set("group.instance.id", &config.instance_id);
    }
    client
        .create_with_context(GroupContext { shared })
        .map_err(|source| WorkerError::Client { client: "consumer", source })
}

/// The engine's settings for `config`'s job; `repartition` is the repartition topic and its
/// partition count, for windowed jobs.
pub fn engine_settings(config: &WorkerConfig, repartition: Option<(String, i32)>) -> EngineSettings {
    EngineSettings {
        source_format: config.job.spec.source.format,
        sink_format: config.job.spec.sink.format,
        dead_letter: config.job.spec.sink.dead_letter_topic.is_some(),
        repartition,
        flush_interval_ms: config.timings.flush_interval.as_millis() as i64,
        idle_timeout_ms: config.timings.idle_timeout.as_millis() as i64,
        max_partials: 100_000,
    }
}
