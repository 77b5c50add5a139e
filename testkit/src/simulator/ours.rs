//! Our policy as a [`Scaler`].

use streamjob_crds::{AutoscalingSpec, StartFrom};
use streamjob_operator::autoscaler::policy::{decide, observe, History, LagSample, PartitionSample, Settings, Workers};

use super::{Model, Scaler};

/// Our policy, polled every `poll_interval` seconds with the default settings and `Model::ours`.
pub struct Ours {
    settings: Settings,
    history: History,
    poll_interval: f64,
    partitions: i32,
    wanted: Option<i32>,
}

/// The autoscaling spec our policy runs with on `model`.
pub fn ours_spec(model: &Model) -> Result<AutoscalingSpec, serde_json::Error> {
    let mut fields = serde_json::json!({
        "minReplicas": model.min_replicas, "maxReplicas": model.max_replicas, "lagThreshold": model.lag_threshold
    });
    if let (Some(fields), Some(more)) = (fields.as_object_mut(), model.ours.as_object()) {
        fields.extend(more.clone());
    }
    serde_json::from_value(fields)
}

impl Ours {
    pub fn new(model: &Model) -> Self {
        let spec = match ours_spec(model) {
            Ok(spec) => spec,
            Err(error) => panic!("Model::ours is not an autoscaling spec (check it with ours_spec first): {error}"),
        };
        Self {
            settings: Settings::from_spec(&spec, StartFrom::Earliest),
            history: History::default(),
            poll_interval: f64::from(spec.poll_interval_seconds),
            partitions: model.partitions as i32,
            wanted: None,
        }
    }
}

impl Scaler for Ours {
    fn name(&self) -> &'static str {
        "streamjob"
    }

    fn poll(&mut self, t: f64, partitions: &[PartitionSample], current: i32, settled: bool) -> i32 {
        if t % self.poll_interval != 0.0 {
            return self.wanted.unwrap_or(current);
        }
        // The simulator models rebalance pauses, not pods that cannot run: every worker is ready.
        let workers = Workers { current, ready: current, settled };
        observe(&mut self.history, LagSample { at: t, partitions: partitions.to_vec() }, workers, &self.settings);
        let decision = decide(&mut self.history, workers, self.partitions, &self.settings, t);
        self.wanted = Some(decision.replicas);
        decision.replicas
    }
}
