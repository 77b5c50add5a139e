//! Our policy as a [`Scaler`].

use streamjob_crds::StartFrom;
use streamjob_operator::autoscaler::policy::{decide, observe, History, LagSample, PartitionSample, Settings, Workers};

use super::{Model, Scaler};

/// Our policy, polled every `poll_interval` seconds with default settings.
pub struct Ours {
    settings: Settings,
    history: History,
    poll_interval: f64,
    partitions: i32,
    wanted: Option<i32>,
}

impl Ours {
    pub fn new(model: &Model) -> Self {
        let spec: streamjob_crds::AutoscalingSpec = match serde_json::from_value(serde_json::json!({
            "minReplicas": model.min_replicas, "maxReplicas": model.max_replicas, "lagThreshold": model.lag_threshold
        })) {
            Ok(spec) => spec,
            Err(error) => unreachable!("a literal autoscaling spec decodes: {error}"),
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
        let workers = Workers { current, settled };
        observe(&mut self.history, LagSample { at: t, partitions: partitions.to_vec() }, workers, &self.settings);
        let decision = decide(&mut self.history, workers, self.partitions, &self.settings, t);
        self.wanted = Some(decision.replicas);
        decision.replicas
    }
}
