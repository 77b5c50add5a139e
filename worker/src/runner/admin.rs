//! The repartition topic: made to exist with as many partitions as the largest source topic.

use super::clients::client_config;
use super::*;

/// Makes sure `<consumerGroup>-repartition` exists with as many partitions as the source's
/// largest topic, and returns its partition count and the source partitions.
pub(super) fn ensure_repartition_topic(
    config: &WorkerConfig,
    control: &Control,
) -> Result<(i32, Vec<String>), WorkerError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;

    let topic = config.repartition_topic();
    let mut client = client_config(config, Cluster::Source);
    // Else asking for the topic's metadata creates it, with the broker's default partitions.
    client.set("allow.auto.create.topics", "false");
    let admin: AdminClient<DefaultClientContext> =
        client.create().map_err(|source| WorkerError::Client { client: "admin client", source })?;
    let mut backoff = Duration::from_millis(200);
    loop {
        if control.shutdown.load(Ordering::Relaxed) || control.abandon.load(Ordering::Relaxed) {
            return Err(WorkerError::Unreachable(config.source_bootstrap.clone()));
        }
        match partition_counts(admin.inner(), config, &topic) {
            Ok((sources, Some(existing))) => return Ok((existing, sources)),
            Ok((sources, None)) => {
                let source_partitions = largest_topic(&sources);
                tracing::info!(topic, partitions = source_partitions, "creating the repartition topic");
                let new_topic = NewTopic::new(&topic, source_partitions, TopicReplication::Fixed(-1));
                let created = futures::executor::block_on(admin.create_topics([&new_topic], &AdminOptions::new()));
                if let Err(error) = created.map_err(|e| e.to_string()).and_then(|results| {
                    results.into_iter().try_for_each(|r| match r {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => Ok(()),
                        Err((_, code)) => Err(code.to_string()),
                    })
                }) {
                    tracing::warn!(topic, %error, "could not create the repartition topic; relying on the broker's automatic creation");
                    produce_to_create(config, &topic)?;
                }
            }
            Err(error) => {
                tracing::warn!(%error, bootstrap = %config.source_bootstrap, "brokers not reachable yet; retrying")
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// The source partitions (as [`source_id`]s), and the repartition topic's partition count if
/// it exists.
fn partition_counts<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    config: &WorkerConfig,
    repartition_topic: &str,
) -> Result<(Vec<String>, Option<i32>), KafkaError> {
    let mut sources = Vec::new();
    for topic in &config.job.spec.source.topics {
        let metadata = client.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
        let before = sources.len();
        for found in metadata.topics().iter().filter(|t| t.error().is_none()) {
            sources.extend(found.partitions().iter().map(|p| source_id(topic, p.id())));
        }
        if sources.len() == before {
            return Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition));
        }
    }
    let metadata = client.fetch_metadata(Some(repartition_topic), REQUEST_TIMEOUT)?;
    let existing = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32)
        .next();
    Ok((sources, existing))
}

/// The partition count of the largest topic among `sources`.
fn largest_topic(sources: &[String]) -> i32 {
    let mut counts: HashMap<&str, i32> = HashMap::new();
    for topic in sources.iter().filter_map(|id| id.rsplit_once('/')).map(|(topic, _)| topic) {
        *counts.entry(topic).or_default() += 1;
    }
    counts.into_values().max().unwrap_or(1)
}

/// Brokers without the CreateTopics API (librdkafka's mock cluster) create a topic on first use.
fn produce_to_create(config: &WorkerConfig, topic: &str) -> Result<(), WorkerError> {
    let mut client = client_config(config, Cluster::Source);
    client.set("allow.auto.create.topics", "true");
    let consumer: BaseConsumer = client
        .set("group.id", "streamjob-topic-probe")
        .create()
        .map_err(|source| WorkerError::Client { client: "consumer", source })?;
    let _ = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT);
    Ok(())
}
