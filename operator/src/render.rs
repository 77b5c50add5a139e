//! `streamjob-operator render`: the children of a manifest, without a cluster.

use std::fmt::Write as _;

use serde::Serialize;
use streamjob_crds::{parse_manifest, ManifestErrors};

use crate::build::{build_children, BuildContext};
use crate::replicas::desired_replicas;

/// Renders every StreamJob document in `manifests` (YAML, `---` separated) into its children,
/// as a multi-document YAML stream.
pub fn render_manifests(manifests: &str, default_worker_image: &str) -> Result<String, ManifestErrors> {
    let mut output = String::new();
    for document in split_documents(manifests) {
        let job = parse_manifest(document)?;
        let context = BuildContext {
            default_worker_image: default_worker_image.to_owned(),
            replicas: desired_replicas(&job, None),
            credentials_checksum: None,
        };
        let children = build_children(&job, &context);
        push_document(&mut output, &children.config_map);
        push_document(&mut output, &children.service);
        push_document(&mut output, &children.stateful_set);
        push_document(&mut output, &children.pod_disruption_budget);
    }
    Ok(output)
}

fn split_documents(stream: &str) -> impl Iterator<Item = &str> {
    stream
        .split("\n---")
        .filter(|doc| doc.lines().any(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#')))
}

/// Appends one object as a YAML document (k8s-openapi writes `apiVersion` and `kind` itself).
fn push_document<T: Serialize>(output: &mut String, object: &T) {
    match serde_yaml::to_string(object) {
        Ok(yaml) => {
            let _ = write!(output, "---\n{yaml}");
        }
        Err(error) => unreachable!("Kubernetes objects serialize to YAML: {error}"),
    }
}
