//! `streamjob-operator render`: the children of a manifest, without a cluster.

use std::fmt::Write as _;

use serde::Serialize;
use streamjob_crds::{parse_manifest, ManifestErrors};

use crate::builders::{build_children, desired_replicas, BuildContext};

/// Renders every StreamJob document in `manifests` (YAML, `---` separated) into its children,
/// as a multi-document YAML stream.
pub fn render_manifests(manifests: &str, default_worker_image: &str) -> Result<String, ManifestErrors> {
    let mut output = String::new();
    for document in split_documents(manifests) {
        let job = parse_manifest(document)?;
        let context = BuildContext {
            default_worker_image: default_worker_image.to_owned(),
            replicas: desired_replicas(&job, None),
        };
        let children = build_children(&job, &context);
        push_document(&mut output, "v1", "ConfigMap", &children.config_map);
        push_document(&mut output, "v1", "Service", &children.service);
        push_document(&mut output, "apps/v1", "StatefulSet", &children.stateful_set);
        push_document(&mut output, "policy/v1", "PodDisruptionBudget", &children.pod_disruption_budget);
    }
    Ok(output)
}

fn split_documents(stream: &str) -> impl Iterator<Item = &str> {
    stream
        .split("\n---")
        .filter(|doc| doc.lines().any(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#')))
}

/// k8s-openapi types serialize without `apiVersion`/`kind` when built by hand; add them.
fn push_document<T: Serialize>(output: &mut String, api_version: &str, kind: &str, object: &T) {
    let mut value = match serde_json::to_value(object) {
        Ok(value) => value,
        Err(error) => unreachable!("Kubernetes objects serialize to JSON: {error}"),
    };
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".to_owned(), api_version.into());
        map.insert("kind".to_owned(), kind.into());
    }
    let yaml = serde_yaml::to_string(&value).unwrap_or_default();
    let _ = write!(output, "---\n{yaml}");
}
