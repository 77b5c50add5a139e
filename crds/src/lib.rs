//! The `StreamJob` custom resource (`streamjob.io/v1alpha1`): API types, the generated CRD, and
//! client-side validation that matches what the API server enforces.

pub mod capacity_report;
pub mod cel_fields;
pub mod duration;
pub mod fingerprint;
pub mod kafka;
pub mod names;
mod rules;
mod schema;
pub mod types;
pub mod validate;

use kube::{CustomResourceExt, ResourceExt};

pub use types::*;
pub use validate::{parse_manifest, runtime_problems, validate_value, ManifestErrors};

/// The CRD as the YAML committed in `crds/streamjob.yaml`.
pub fn crd_yaml() -> String {
    let crd = StreamJob::crd();
    match serde_yaml::to_string(&crd) {
        Ok(yaml) => yaml,
        Err(error) => unreachable!("a CustomResourceDefinition always serializes to YAML: {error}"),
    }
}

impl StreamJob {
    /// The Kafka consumer group: `spec.source.consumerGroup`; else, for a job whose status
    /// records the legacy default `streamjob-<namespace>-<name>` (it ran under an operator before
    /// the unambiguous encoding, which recorded the group from its first version on), that group,
    /// so its offsets and windows stay; else `streamjob.<namespace>.<name>` (see [`names`]).
    pub fn consumer_group(&self) -> String {
        if let Some(group) = &self.spec.source.consumer_group {
            return group.clone();
        }
        let namespace = self.namespace().unwrap_or_else(|| "default".to_owned());
        let name = self.name_any();
        let legacy = names::legacy_consumer_group(&namespace, &name);
        let recorded = self.status.as_ref().and_then(|status| status.consumer_group.as_deref());
        if recorded == Some(legacy.as_str()) {
            legacy
        } else {
            names::default_consumer_group(&namespace, &name)
        }
    }

    /// The repartition topic of windowed jobs: `<consumer group>-repartition`.
    pub fn repartition_topic(&self) -> String {
        names::repartition_topic(&self.consumer_group())
    }

    /// Whether the autoscaler, not `spec.replicas`, decides the worker count.
    pub fn autoscaling_enabled(&self) -> bool {
        self.spec.autoscaling.as_ref().is_some_and(|a| a.enabled)
    }
}

/// Where a worker pod finds its configuration and credentials: the contract between the
/// operator's pod template and the worker.
pub mod worker_paths {
    /// Directory the ConfigMap is mounted at.
    pub const CONFIG_DIR: &str = "/etc/streamjob";
    /// The configuration file's name in the ConfigMap.
    pub const CONFIG_FILE_NAME: &str = "job.yaml";
    /// Directory the CA Secret is mounted at; the worker reads `ca.crt` in it.
    pub const CA_DIR: &str = "/etc/streamjob/kafka-ca";
    /// Key of the CA bundle in the CA Secret.
    pub const CA_FILE_NAME: &str = "ca.crt";
    /// The pod's name (downward API): the static member id and the transactional id suffix.
    pub const POD_NAME_ENV: &str = "POD_NAME";
    /// The pod's namespace (downward API).
    pub const POD_NAMESPACE_ENV: &str = "POD_NAMESPACE";
    /// SASL username, from the Secret named in `spec.source.auth.secretRef`.
    pub const USERNAME_ENV: &str = "STREAMJOB_KAFKA_USERNAME";
    /// SASL password, from the Secret named in `spec.source.auth.secretRef`.
    pub const PASSWORD_ENV: &str = "STREAMJOB_KAFKA_PASSWORD";
    /// Directory the sink cluster's CA Secret (`spec.sink.auth.tls.caSecretRef`) is mounted at.
    pub const SINK_CA_DIR: &str = "/etc/streamjob/sink-kafka-ca";
    /// SASL username for another sink cluster, from `spec.sink.auth.secretRef`.
    pub const SINK_USERNAME_ENV: &str = "STREAMJOB_SINK_KAFKA_USERNAME";
    /// SASL password for another sink cluster, from `spec.sink.auth.secretRef`.
    pub const SINK_PASSWORD_ENV: &str = "STREAMJOB_SINK_KAFKA_PASSWORD";

    /// The environment variables holding the username and password for `cluster`.
    pub fn credential_env(cluster: crate::kafka::Cluster) -> (&'static str, &'static str) {
        match cluster {
            crate::kafka::Cluster::Source => (USERNAME_ENV, PASSWORD_ENV),
            crate::kafka::Cluster::Sink => (SINK_USERNAME_ENV, SINK_PASSWORD_ENV),
        }
    }

    /// The directory the CA Secret of `cluster` is mounted at.
    pub fn ca_dir(cluster: crate::kafka::Cluster) -> &'static str {
        match cluster {
            crate::kafka::Cluster::Source => CA_DIR,
            crate::kafka::Cluster::Sink => SINK_CA_DIR,
        }
    }

    /// Full path of the configuration file.
    pub fn config_file() -> String {
        format!("{CONFIG_DIR}/{CONFIG_FILE_NAME}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(namespace: &str, name: &str, group: Option<&str>, recorded: Option<&str>) -> StreamJob {
        let yaml = format!(
            "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
             spec:\n  source: {{bootstrapServers: 'k:9092', topics: [in]}}\n  sink: {{topic: out}}\n"
        );
        let mut job = parse_manifest(&yaml).expect("valid test job");
        job.spec.source.consumer_group = group.map(str::to_owned);
        if let Some(recorded) = recorded {
            job.status =
                Some(StreamJobStatus { consumer_group: Some(recorded.to_owned()), ..StreamJobStatus::default() });
        }
        job
    }

    /// (namespace, name, spec group, group recorded in status) → the group in use.
    #[test]
    fn the_group_in_use_and_its_migration() {
        let cases = [
            // A new job: the unambiguous encoding.
            ("team-a", "orders", None, None, "streamjob.team-a.orders"),
            ("team", "a-orders", None, None, "streamjob.team.a-orders"),
            // A job that ran before the encoding changed keeps its group.
            ("team-a", "orders", None, Some("streamjob-team-a-orders"), "streamjob-team-a-orders"),
            // A recorded group that is not this job's legacy default (a removed spec group).
            ("team-a", "orders", None, Some("custom"), "streamjob.team-a.orders"),
            // A status written by this version.
            ("team-a", "orders", None, Some("streamjob.team-a.orders"), "streamjob.team-a.orders"),
            // The user's group wins.
            ("team-a", "orders", Some("mine"), Some("streamjob-team-a-orders"), "mine"),
        ];
        for (namespace, name, group, recorded, expected) in cases {
            let job = job(namespace, name, group, recorded);
            assert_eq!(job.consumer_group(), expected, "{namespace}/{name} {group:?} {recorded:?}");
            assert_eq!(job.repartition_topic(), format!("{expected}-repartition"));
        }
    }
}
