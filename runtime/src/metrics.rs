//! Registering Prometheus metrics, and the labels both processes put on per-partition metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::registry::{Metric, Registry};

/// Registers `metric` under `name` and hands it back, to be kept where the code updates it.
pub fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// One partition of a Kafka topic.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: String,
}

impl PartitionLabels {
    pub fn new(topic: &str, partition: i32) -> Self {
        Self { topic: topic.to_owned(), partition: partition.to_string() }
    }
}
