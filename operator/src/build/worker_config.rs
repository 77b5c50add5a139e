//! The worker configuration: what of the job a worker reads, and its checksum, whose change
//! rolls the workers.

use std::collections::BTreeMap;

use kube::ResourceExt;
use sha2::{Digest, Sha256};
use streamjob_crds::{StreamJob, StreamJobSpec};

/// The configuration the worker reads: the job itself, reduced to what a worker needs (no pod
/// settings, no autoscaling, never a credential) and with the consumer group resolved.
pub fn worker_config(job: &StreamJob) -> StreamJob {
    let mut source = job.spec.source.clone();
    source.consumer_group = Some(job.consumer_group());
    let spec = StreamJobSpec {
        image: None,
        image_pull_policy: None,
        replicas: 1,
        suspend: false,
        source,
        pipeline: job.spec.pipeline.clone(),
        sink: job.spec.sink.clone(),
        delivery: job.spec.delivery,
        autoscaling: None,
        resources: None,
        env: Vec::new(),
        node_selector: BTreeMap::new(),
        tolerations: Vec::new(),
        affinity: None,
        service_account_name: None,
        pod_labels: BTreeMap::new(),
        pod_annotations: BTreeMap::new(),
        deletion_policy: job.spec.deletion_policy,
    };
    let mut config = StreamJob::new(&job.name_any(), spec);
    config.metadata.namespace = job.namespace();
    config
}

/// The worker configuration as the YAML file in the ConfigMap.
pub fn worker_config_yaml(job: &StreamJob) -> String {
    match serde_yaml::to_string(&worker_config(job)) {
        Ok(yaml) => yaml,
        Err(error) => unreachable!("a StreamJob always serializes to YAML: {error}"),
    }
}

/// SHA-256 of the worker configuration, hex encoded.
pub fn config_checksum(config_yaml: &str) -> String {
    Sha256::digest(config_yaml.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::job;
    use streamjob_crds::parse_manifest;

    #[test]
    fn worker_config_is_the_job_with_the_group_resolved() {
        let config = worker_config(&job("  replicas: 7\n  podLabels: {a: b}\n"));
        assert_eq!(config.spec.source.consumer_group.as_deref(), Some("streamjob.ns.j"));
        assert!(config.spec.pod_labels.is_empty());
        let yaml = worker_config_yaml(&job(""));
        let reparsed = parse_manifest(&yaml).expect("the worker config is itself a valid StreamJob");
        assert_eq!(reparsed.spec.sink.topic, "out");
    }
}
