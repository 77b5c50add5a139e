//! StreamJobs for tests: an example manifest from `examples/`, then adjusted in one expression,
//! e.g. `example("wordcount.yaml").named("a").in_namespace(ns).autoscaled(1, 8).suspended()`.

use streamjob_crds::{parse_manifest, AutoscalingSpec, StreamJob};

use crate::paths::repo_root;

/// The manifest `examples/FILE`, parsed and validated as `kubectl apply` input would be.
pub fn example(file: &str) -> StreamJob {
    let path = repo_root().join("examples").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_manifest(&text).unwrap_or_else(|e| panic!("{} is not a valid StreamJob: {e}", path.display()))
}

/// Adjustments a test makes to a job before it creates it.
pub trait JobFixture: Sized {
    fn named(self, name: &str) -> Self;
    fn in_namespace(self, namespace: &str) -> Self;
    fn suspended(self) -> Self;
    /// `replicas` workers, autoscaling off.
    fn fixed(self, replicas: i32) -> Self;
    /// Autoscaled between `min` and `max` workers, the other settings at their defaults.
    fn autoscaled(self, min: i32, max: i32) -> Self;
    /// Autoscaled with these `spec.autoscaling` fields (camelCase JSON, as in a manifest).
    fn autoscaling(self, fields: serde_json::Value) -> Self;
}

impl JobFixture for StreamJob {
    fn named(mut self, name: &str) -> Self {
        self.metadata.name = Some(name.to_owned());
        self
    }

    fn in_namespace(mut self, namespace: &str) -> Self {
        self.metadata.namespace = Some(namespace.to_owned());
        self
    }

    fn suspended(mut self) -> Self {
        self.spec.suspend = true;
        self
    }

    fn fixed(mut self, replicas: i32) -> Self {
        self.spec.autoscaling = None;
        self.spec.replicas = replicas;
        self
    }

    fn autoscaled(self, min: i32, max: i32) -> Self {
        self.autoscaling(serde_json::json!({ "minReplicas": min, "maxReplicas": max }))
    }

    fn autoscaling(mut self, fields: serde_json::Value) -> Self {
        let settings: AutoscalingSpec =
            serde_json::from_value(fields).unwrap_or_else(|e| panic!("not a spec.autoscaling: {e}"));
        self.spec.autoscaling = Some(settings);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjustments_land_where_a_manifest_would_put_them() {
        let job = example("wordcount.yaml").named("a").in_namespace("ns").autoscaled(2, 5).suspended();
        assert_eq!(job.metadata.name.as_deref(), Some("a"));
        assert_eq!(job.metadata.namespace.as_deref(), Some("ns"));
        assert!(job.spec.suspend);
        let autoscaling = job.spec.autoscaling.expect("autoscaling set");
        assert_eq!((autoscaling.min_replicas, autoscaling.max_replicas), (2, 5));
        assert!(autoscaling.enabled, "an autoscaling block without `enabled` is on");

        let fixed = example("wordcount.yaml").autoscaled(1, 8).fixed(3);
        assert_eq!((fixed.spec.autoscaling.is_none(), fixed.spec.replicas), (true, 3));
    }
}
