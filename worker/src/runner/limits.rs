//! The largest record each topic the worker writes takes (its `max.message.bytes`), read once
//! at start with the admin client: the producers are set to send records that large, and the
//! engine sends a result larger than the sink takes to the dead-letter topic instead.

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

use super::clients::client_config;
use super::*;
use crate::engine::RecordLimits;

/// What librdkafka's producer sends at most without a setting (`message.max.bytes`), also the
/// limit taken for a topic whose configuration cannot be read.
pub(super) const PRODUCER_DEFAULT_MAX_BYTES: usize = 1_000_000;

/// How long reading a topic's configuration may take before the default is assumed.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The sink's and the dead-letter topic's `max.message.bytes`, each read on the brokers its
/// producer writes to.
pub(super) fn read_record_limits(config: &WorkerConfig) -> RecordLimits {
    let sink = topic_max_bytes(config, Cluster::Sink, &config.job.spec.sink.topic);
    let dead_letter = match &config.job.spec.sink.dead_letter_topic {
        Some(topic) => topic_max_bytes(config, Cluster::Source, topic),
        None => PRODUCER_DEFAULT_MAX_BYTES,
    };
    tracing::info!(sink, dead_letter, "the largest records the sink and dead-letter topics take (max.message.bytes)");
    RecordLimits { sink, dead_letter }
}

fn topic_max_bytes(config: &WorkerConfig, cluster: Cluster, topic: &str) -> usize {
    match describe_max_bytes(config, cluster, topic) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(topic, %error, default = PRODUCER_DEFAULT_MAX_BYTES,
                "cannot read the topic's max.message.bytes; records larger than the default are dead-lettered");
            PRODUCER_DEFAULT_MAX_BYTES
        }
    }
}

fn describe_max_bytes(config: &WorkerConfig, cluster: Cluster, topic: &str) -> Result<usize, String> {
    let mut client = client_config(config, cluster);
    client.set("allow.auto.create.topics", "false");
    let admin: AdminClient<DefaultClientContext> = client.create().map_err(|e| e.to_string())?;
    let options = AdminOptions::new().request_timeout(Some(DESCRIBE_TIMEOUT));
    let resources = [ResourceSpecifier::Topic(topic)];
    let results =
        futures::executor::block_on(admin.describe_configs(&resources, &options)).map_err(|e| e.to_string())?;
    let resource = results.into_iter().next().ok_or("no answer")?.map_err(|code| code.to_string())?;
    let value = resource.get("max.message.bytes").and_then(|entry| entry.value.clone()).ok_or("not in the answer")?;
    value.parse().map_err(|e| format!("max.message.bytes {value:?}: {e}"))
}
