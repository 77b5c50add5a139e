//! A model of KEDA's Kafka scaler behind an HPA, with the two settings that trade lag for
//! replicas configurable, and the sweep of them that the comparison runs.

use std::collections::VecDeque;

use streamjob_crds::StartFrom;
use streamjob_operator::autoscaler::policy::PartitionSample;

use super::{Model, Scaler};

/// The lagThresholds of the sweep.
pub const SWEEP_LAG_THRESHOLDS: [i64; 6] = [1_000, 2_000, 5_000, 10_000, 20_000, 50_000];
/// The HPA scale-down stabilisation windows of the sweep, seconds.
pub const SWEEP_STABILIZATION_SECONDS: [f64; 4] = [60.0, 150.0, 300.0, 600.0];

/// The KEDA/HPA settings that are swept.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KedaConfig {
    pub lag_threshold: i64,
    pub scale_down_stabilization_seconds: f64,
}

impl KedaConfig {
    /// The model's lagThreshold and the HPA's default 300 s stabilisation.
    pub fn default_for(model: &Model) -> Self {
        Self { lag_threshold: model.lag_threshold, scale_down_stabilization_seconds: 300.0 }
    }

    /// `keda 5k/150s`.
    pub fn label(&self) -> String {
        let threshold = if self.lag_threshold % 1000 == 0 {
            format!("{}k", self.lag_threshold / 1000)
        } else {
            self.lag_threshold.to_string()
        };
        format!("keda {threshold}/{:.0}s", self.scale_down_stabilization_seconds)
    }
}

/// Every combination of [`SWEEP_LAG_THRESHOLDS`] and [`SWEEP_STABILIZATION_SECONDS`].
pub fn sweep() -> Vec<KedaConfig> {
    SWEEP_LAG_THRESHOLDS
        .iter()
        .flat_map(|&lag_threshold| {
            SWEEP_STABILIZATION_SECONDS.iter().map(move |&scale_down_stabilization_seconds| KedaConfig {
                lag_threshold,
                scale_down_stabilization_seconds,
            })
        })
        .collect()
}

/// KEDA's Kafka scaler (30 s polling, `ceil(totalLag / lagThreshold)` capped at the partition
/// count) feeding an HPA as documented: 15 s sync, 10% tolerance, scale-up at most
/// max(+100%, +4 pods) per 15 s, scale-down stabilisation as configured (300 s by default).
pub struct KedaHpa {
    partitions: i64,
    config: KedaConfig,
    min_replicas: i32,
    max_replicas: i32,
    metric: Option<i64>,
    recommendations: VecDeque<(f64, i32)>,
}

impl KedaHpa {
    /// With [`KedaConfig::default_for`] the model.
    pub fn new(model: &Model) -> Self {
        Self::with_config(model, KedaConfig::default_for(model))
    }

    pub fn with_config(model: &Model, config: KedaConfig) -> Self {
        Self {
            partitions: model.partitions as i64,
            config: KedaConfig { lag_threshold: config.lag_threshold.max(1), ..config },
            min_replicas: model.min_replicas,
            max_replicas: model.max_replicas,
            metric: None,
            recommendations: VecDeque::new(),
        }
    }
}

impl Scaler for KedaHpa {
    fn name(&self) -> &'static str {
        "keda+hpa"
    }

    fn poll(&mut self, t: f64, partitions: &[PartitionSample], current: i32, _settled: bool) -> i32 {
        let lag_threshold = self.config.lag_threshold;
        if t % 30.0 == 0.0 {
            let total: i64 = partitions.iter().map(|p| p.lag(StartFrom::Earliest)).sum();
            self.metric = Some(total.min(self.partitions * lag_threshold));
        }
        if t % 15.0 != 0.0 {
            return current;
        }
        let Some(metric) = self.metric else { return current };
        let current_f = f64::from(current.max(1));
        let ratio = metric as f64 / (lag_threshold as f64 * current_f);
        let mut desired = if (ratio - 1.0).abs() <= 0.1 { current } else { (ratio * current_f).ceil() as i32 };
        desired = desired.clamp(self.min_replicas, self.max_replicas);
        self.recommendations.push_back((t, desired));
        let window = self.config.scale_down_stabilization_seconds;
        while self.recommendations.front().is_some_and(|(at, _)| *at < t - window) {
            self.recommendations.pop_front();
        }
        if desired > current {
            let limit = (current * 2).max(current + 4);
            desired.min(limit)
        } else {
            let stabilized = self.recommendations.iter().map(|(_, r)| *r).max().unwrap_or(current);
            stabilized.min(current)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_is_every_threshold_with_every_window() {
        let configs = sweep();
        assert_eq!(configs.len(), SWEEP_LAG_THRESHOLDS.len() * SWEEP_STABILIZATION_SECONDS.len());
        assert!(configs.contains(&KedaConfig { lag_threshold: 50_000, scale_down_stabilization_seconds: 60.0 }));
        assert!(configs.contains(&KedaConfig::default_for(&Model::default())));
    }

    #[test]
    fn labels_name_both_settings() {
        let cases = [(5_000, 150.0, "keda 5k/150s"), (1_500, 60.0, "keda 1500/60s")];
        for (lag_threshold, window, label) in cases {
            let config = KedaConfig { lag_threshold, scale_down_stabilization_seconds: window };
            assert_eq!(config.label(), label);
        }
    }
}
