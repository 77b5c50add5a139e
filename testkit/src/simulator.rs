//! A deterministic, discrete-time model of one job: partitions fed by a produce-rate trace,
//! workers of fixed capacity, a consumption pause on every scale event (the rebalance), and a
//! scaler polled at its interval. It runs our policy and a model of KEDA's Kafka scaler behind
//! an HPA on the same traces.

use std::collections::VecDeque;

use streamjob_crds::StartFrom;
use streamjob_operator::autoscaler::policy::{decide, observe, History, LagSample, PartitionSample, Settings, Workers};

/// The job and cluster being modelled.
#[derive(Clone, Debug)]
pub struct Model {
    pub partitions: usize,
    /// Records per second one worker processes.
    pub capacity_per_replica: f64,
    /// Seconds of no consumption after every scale event.
    pub rebalance_pause: f64,
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub lag_threshold: i64,
    pub initial_replicas: i32,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            partitions: 12,
            capacity_per_replica: 1000.0,
            rebalance_pause: 10.0,
            min_replicas: 1,
            max_replicas: 12,
            lag_threshold: 10_000,
            initial_replicas: 1,
        }
    }
}

/// Produce rate (records/s) of one partition at a time.
pub type RateFn = fn(t: f64, partition: usize, partitions: usize) -> f64;

/// An input pattern.
#[derive(Clone, Debug)]
pub struct Trace {
    pub name: &'static str,
    pub duration: f64,
    pub rate: RateFn,
    /// A partition whose consumer never advances.
    pub stuck_partition: Option<usize>,
    /// When a spike ends, to measure the time to drain after it.
    pub spike_end: Option<f64>,
}

fn even(total: f64, partitions: usize) -> f64 {
    total / partitions as f64
}

/// The traces of the comparison.
pub fn traces() -> Vec<Trace> {
    vec![
        Trace {
            name: "steady",
            duration: 1200.0,
            rate: |_, _, n| even(3000.0, n),
            stuck_partition: None,
            spike_end: None,
        },
        Trace {
            name: "spike-5x",
            duration: 1500.0,
            rate: |t, _, n| even(if (300.0..600.0).contains(&t) { 10_000.0 } else { 2000.0 }, n),
            stuck_partition: None,
            spike_end: Some(600.0),
        },
        Trace {
            name: "diurnal",
            duration: 3600.0,
            rate: |t, _, n| even(3000.0 + 2500.0 * (2.0 * std::f64::consts::PI * t / 1800.0).sin(), n),
            stuck_partition: None,
            spike_end: None,
        },
        Trace {
            name: "bursty",
            duration: 1800.0,
            rate: |t, _, n| even(if t % 180.0 < 60.0 { 6000.0 } else { 500.0 }, n),
            stuck_partition: None,
            spike_end: None,
        },
        Trace {
            name: "hot-partition",
            duration: 1200.0,
            rate: |_, p, n| if p == 0 { 1200.0 } else { 1200.0 / (n - 1) as f64 },
            stuck_partition: None,
            spike_end: None,
        },
        Trace {
            name: "slow-ramp",
            duration: 2400.0,
            rate: |t, _, n| even(500.0 + 8500.0 * (t / 1800.0).min(1.0), n),
            stuck_partition: None,
            spike_end: None,
        },
        Trace {
            name: "stuck-partition",
            duration: 1200.0,
            rate: |_, _, n| even(3000.0, n),
            stuck_partition: Some(0),
            spike_end: None,
        },
    ]
}

/// A scaler under test: polled every second, returns the replicas it wants.
pub trait Scaler {
    fn name(&self) -> &'static str;
    fn poll(&mut self, t: f64, partitions: &[PartitionSample], current: i32, settled: bool) -> i32;
}

/// Results of one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub lag_seconds: f64,
    pub max_lag: f64,
    /// Seconds from the end of the spike until the lag is back under one lagThreshold.
    pub drain_seconds: Option<f64>,
    pub replica_seconds: f64,
    /// Every scale event as (second, from, to).
    pub scales: Vec<(f64, i32, i32)>,
}

impl Outcome {
    pub fn scale_events(&self) -> usize {
        self.scales.len()
    }
}

/// Runs `scaler` on `trace`, one-second steps.
pub fn simulate(model: &Model, trace: &Trace, scaler: &mut dyn Scaler) -> Outcome {
    let n = model.partitions;
    let mut high = vec![0.0f64; n];
    let mut committed = vec![0.0f64; n];
    let mut replicas = model.initial_replicas;
    let mut paused_until = 0.0;
    let mut outcome = Outcome::default();
    let mut t = 0.0;
    while t < trace.duration {
        for (p, h) in high.iter_mut().enumerate() {
            *h += (trace.rate)(t, p, n);
        }
        if t >= paused_until && replicas > 0 {
            consume(model, trace, replicas, &high, &mut committed);
        }
        let total_lag: f64 = high.iter().zip(&committed).map(|(h, c)| h - c).sum();
        outcome.lag_seconds += total_lag;
        outcome.max_lag = outcome.max_lag.max(total_lag);
        outcome.replica_seconds += f64::from(replicas);
        if let (Some(end), None) = (trace.spike_end, outcome.drain_seconds) {
            if t >= end && total_lag <= model.lag_threshold as f64 {
                outcome.drain_seconds = Some(t - end);
            }
        }
        let samples: Vec<PartitionSample> = (0..n)
            .map(|p| PartitionSample {
                topic: "input".into(),
                partition: p as i32,
                low: 0,
                high: high[p] as i64,
                committed: Some(committed[p] as i64),
                committed_by: None,
            })
            .collect();
        let wanted = scaler.poll(t, &samples, replicas, t >= paused_until).clamp(0, model.max_replicas);
        if wanted != replicas {
            outcome.scales.push((t, replicas, wanted));
            replicas = wanted;
            paused_until = t + model.rebalance_pause;
        }
        t += 1.0;
    }
    outcome
}

/// One second of consumption: partitions are spread round-robin over the workers; each worker
/// shares its capacity among its partitions with a backlog (water-filling).
fn consume(model: &Model, trace: &Trace, replicas: i32, high: &[f64], committed: &mut [f64]) {
    let workers = replicas as usize;
    for worker in 0..workers {
        let mut mine: Vec<usize> =
            (0..model.partitions).filter(|p| p % workers == worker && Some(*p) != trace.stuck_partition).collect();
        mine.sort_by(|a, b| (high[*a] - committed[*a]).total_cmp(&(high[*b] - committed[*b])));
        let mut budget = model.capacity_per_replica;
        let mut remaining = mine.len();
        for p in mine {
            let share = budget / remaining as f64;
            let take = (high[p] - committed[p]).min(share).max(0.0);
            committed[p] += take;
            budget -= take;
            remaining -= 1;
        }
    }
}

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

/// KEDA's Kafka scaler (30 s polling, `ceil(totalLag / lagThreshold)` capped at the partition
/// count) feeding an HPA as documented: 15 s sync, 10% tolerance, scale-up at most
/// max(+100%, +4 pods) per 15 s, scale-down stabilisation 300 s.
pub struct KedaHpa {
    partitions: i64,
    lag_threshold: i64,
    min_replicas: i32,
    max_replicas: i32,
    metric: Option<i64>,
    recommendations: VecDeque<(f64, i32)>,
}

impl KedaHpa {
    pub fn new(model: &Model) -> Self {
        Self {
            partitions: model.partitions as i64,
            lag_threshold: model.lag_threshold,
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
        if t % 30.0 == 0.0 {
            let total: i64 = partitions.iter().map(|p| p.lag(StartFrom::Earliest)).sum();
            self.metric = Some(total.min(self.partitions * self.lag_threshold));
        }
        if t % 15.0 != 0.0 {
            return current;
        }
        let Some(metric) = self.metric else { return current };
        let current_f = f64::from(current.max(1));
        let ratio = metric as f64 / (self.lag_threshold as f64 * current_f);
        let mut desired = if (ratio - 1.0).abs() <= 0.1 { current } else { (ratio * current_f).ceil() as i32 };
        desired = desired.clamp(self.min_replicas, self.max_replicas);
        self.recommendations.push_back((t, desired));
        while self.recommendations.front().is_some_and(|(at, _)| *at < t - 300.0) {
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

/// Both policies on every trace: (trace, ours, reference).
pub fn compare(model: &Model) -> Vec<(&'static str, Outcome, Outcome)> {
    traces()
        .iter()
        .map(|trace| {
            let ours = simulate(model, trace, &mut Ours::new(model));
            let reference = simulate(model, trace, &mut KedaHpa::new(model));
            (trace.name, ours, reference)
        })
        .collect()
}
