//! The ConfigMap that holds the worker configuration.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use streamjob_crds::{worker_paths, StreamJob};

use super::child_meta;

/// Name of the ConfigMap holding the worker configuration.
pub fn config_map_name(job_name: &str) -> String {
    format!("{job_name}-config")
}

/// The ConfigMap with `config_yaml` (see [`super::worker_config_yaml`]) as the worker's file.
pub fn build_config_map(job: &StreamJob, config_yaml: &str) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(job, config_map_name(&job.name_any())),
        data: Some(BTreeMap::from([(worker_paths::CONFIG_FILE_NAME.to_owned(), config_yaml.to_owned())])),
        ..ConfigMap::default()
    }
}
