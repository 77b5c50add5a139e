//! The `StreamJob` custom resource (`streamjob.io/v1alpha1`): API types, the generated CRD, and
//! client-side validation that matches what the API server enforces.

pub mod duration;
mod rules;
mod schema;
pub mod types;
pub mod validate;

use kube::{CustomResourceExt, ResourceExt};

pub use types::*;
pub use validate::{parse_manifest, validate_value, ManifestErrors};

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
            None => format!(
                "streamjob-{}-{}",
                self.namespace().unwrap_or_else(|| "default".to_owned()),
                self.name_any()
            ),
        }
    }

    /// Whether the autoscaler, not `spec.replicas`, decides the worker count.
    pub fn autoscaling_enabled(&self) -> bool {
        self.spec.autoscaling.as_ref().is_some_and(|a| a.enabled)
    }
}
