//! The `StreamJob` custom resource (`streamjob.io/v1alpha1`): API types, the generated CRD, and
//! client-side validation that matches what the API server enforces.

pub mod capacity_report;
pub mod cel_fields;
pub mod duration;
pub mod kafka;
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
    /// The Kafka consumer group: `spec.source.consumerGroup`, else `streamjob-<namespace>-<name>`.
    pub fn consumer_group(&self) -> String {
        match &self.spec.source.consumer_group {
            Some(group) => group.clone(),
            None => {
                format!("streamjob-{}-{}", self.namespace().unwrap_or_else(|| "default".to_owned()), self.name_any())
            }
        }
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

    /// Full path of the configuration file.
    pub fn config_file() -> String {
        format!("{CONFIG_DIR}/{CONFIG_FILE_NAME}")
    }
}
