//! A deterministic, discrete-time model of one job: partitions fed by a produce-rate trace,
//! workers of fixed capacity, a consumption pause on every scale event (the rebalance), and a
//! scaler polled at its interval. It runs our policy, a sweep of configurations of a model of
//! KEDA's Kafka scaler behind an HPA, and an oracle (the cheapest schedule that does as well as
//! ours, the trace known ahead) on the same traces.
//!
//! Files: `traces` (the inputs), `ours` and `keda` (the scalers), `oracle`, `oracle_model` and
//! `oracle_search` (the cheapest schedule), `pause` (the measured pause per scale event),
//! `frontier` (how ours compares), `report` (everything on every trace, as rows), `plot` (the
//! timelines as PNG).

mod frontier;
mod keda;
mod oracle;
mod oracle_model;
mod oracle_search;
mod ours;
mod pause;
mod plot;
mod report;
mod traces;

pub use frontier::{dominating, goals, nearest_by_replica_seconds, Goals};
pub use keda::{sweep, KedaConfig, KedaHpa, SWEEP_LAG_THRESHOLDS, SWEEP_STABILIZATION_SECONDS};
pub use oracle::{oracle, Budget, Oracle, OracleSettings};
pub use ours::{ours_spec, Ours};
pub use pause::{longest_gap, PauseSource, DEFAULT_PROTOCOL, MEASURED_PAUSE_SECONDS};
pub use plot::{draw_timelines, PlotError};
pub use report::{compare, csv, report, TraceReport};
pub use traces::{traces, RateFn, Trace};

use streamjob_operator::autoscaler::policy::{PartitionSample, WorkerRate};

/// The job and cluster being modelled.
#[derive(Clone, Debug)]
pub struct Model {
    pub partitions: usize,
    /// Records per second one worker processes.
    pub capacity_per_replica: f64,
    /// Seconds of no consumption after every scale event (by default the measured one, see
    /// [`pause`]); the model runs in whole seconds and rounds it up (0.5 s stops one second).
    pub rebalance_pause: f64,
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub lag_threshold: i64,
    pub initial_replicas: i32,
    /// More fields of the autoscaling spec our policy runs with (camelCase, as in a manifest;
    /// `{"scaleDown": {"stabilizationSeconds": 120}}`), over the defaults and the fields above.
    pub ours: serde_json::Value,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            partitions: 12,
            capacity_per_replica: 1000.0,
            rebalance_pause: MEASURED_PAUSE_SECONDS,
            min_replicas: 1,
            max_replicas: 12,
            lag_threshold: 10_000,
            initial_replicas: 1,
            ours: serde_json::json!({}),
        }
    }
}

impl Model {
    /// The whole seconds a scale event stops consumption: the pause rounded up.
    pub fn paused_seconds(&self) -> usize {
        self.rebalance_pause.max(0.0).ceil() as usize
    }

    /// When consumption resumes after a scale event decided at second `t`: it counts from
    /// `t + 1`, and the seconds from there on are paused.
    pub fn resumes_after_scale_at(&self, t: f64) -> f64 {
        t + 1.0 + self.paused_seconds() as f64
    }
}

/// A scaler under test: polled every second, returns the replicas it wants.
pub trait Scaler {
    fn name(&self) -> &'static str;
    fn poll(&mut self, t: f64, partitions: &[PartitionSample], current: i32, settled: bool) -> i32;
}

/// One second of a run, after that second's consumption.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Second {
    pub lag: f64,
    pub replicas: i32,
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
    /// Every second of the run, in order.
    pub timeline: Vec<Second>,
}

impl Outcome {
    pub fn scale_events(&self) -> usize {
        self.scales.len()
    }
}

/// Runs `scaler` on `trace`, one-second steps. A scale decided at second `t` counts from
/// `t + 1`; consumption stops for the [`Model::paused_seconds`] from there.
pub fn simulate(model: &Model, trace: &Trace, scaler: &mut dyn Scaler) -> Outcome {
    let n = model.partitions;
    let mut high = vec![0.0f64; n];
    let mut committed = vec![0.0f64; n];
    let mut replicas = model.initial_replicas;
    let mut paused_until = 0.0;
    // Each worker's last measurement of itself: (when, busy share). Its true rate is the model's
    // capacity: the workers know what they can do, the policy only what they report.
    let mut reports: Vec<Option<(f64, f64)>> = vec![None; model.max_replicas.max(1) as usize];
    let mut outcome = Outcome::default();
    let mut t = 0.0;
    while t < trace.duration {
        for (p, h) in high.iter_mut().enumerate() {
            *h += (trace.rate)(t, p, n);
        }
        if t >= paused_until && replicas > 0 {
            let consumed = consume(model, trace, replicas, &high, &mut committed);
            for (worker, records) in consumed.into_iter().enumerate() {
                if let Some(report) = reports.get_mut(worker) {
                    *report = Some((t, records / model.capacity_per_replica));
                }
            }
        }
        let total_lag: f64 = high.iter().zip(&committed).map(|(h, c)| h - c).sum();
        outcome.lag_seconds += total_lag;
        outcome.max_lag = outcome.max_lag.max(total_lag);
        outcome.replica_seconds += f64::from(replicas);
        outcome.timeline.push(Second { lag: total_lag, replicas });
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
                committed_by: worker_rate(model, &reports, p, replicas, t),
            })
            .collect();
        let wanted = scaler.poll(t, &samples, replicas, t >= paused_until).clamp(0, model.max_replicas);
        if wanted != replicas {
            outcome.scales.push((t, replicas, wanted));
            replicas = wanted;
            paused_until = model.resumes_after_scale_at(t);
        }
        t += 1.0;
    }
    outcome
}

/// The report partition `p`'s last commit carries: its owner's, while it has one.
fn worker_rate(model: &Model, reports: &[Option<(f64, f64)>], p: usize, replicas: i32, t: f64) -> Option<WorkerRate> {
    let worker = p % usize::try_from(replicas).ok().filter(|r| *r > 0)?;
    let (at, busy_share) = (*reports.get(worker)?)?;
    Some(WorkerRate {
        worker: format!("worker-{worker}"),
        records_per_busy_second: model.capacity_per_replica,
        busy_share,
        age_seconds: t - at,
    })
}

/// One second of consumption: partitions are spread round-robin over the workers; each worker
/// shares its capacity among its partitions with a backlog (water-filling). Returns what each
/// worker consumed.
fn consume(model: &Model, trace: &Trace, replicas: i32, high: &[f64], committed: &mut [f64]) -> Vec<f64> {
    let workers = replicas as usize;
    let mut consumed = vec![0.0; workers];
    for (worker, worker_consumed) in consumed.iter_mut().enumerate() {
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
        *worker_consumed = model.capacity_per_replica - budget;
    }
    consumed
}

/// A schedule fixed ahead: at each listed second it asks for the listed replicas. Replaying a
/// schedule through [`simulate`] is how the oracle's numbers are checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule {
    /// (second, replicas), in time order.
    pub changes: Vec<(f64, i32)>,
}

impl Schedule {
    /// The changes a run made.
    pub fn of(outcome: &Outcome) -> Self {
        Self { changes: outcome.scales.iter().map(|&(at, _, to)| (at, to)).collect() }
    }
}

/// A [`Schedule`] being replayed.
pub struct Replay<'a> {
    schedule: &'a Schedule,
    next: usize,
}

impl<'a> Replay<'a> {
    pub fn new(schedule: &'a Schedule) -> Self {
        Self { schedule, next: 0 }
    }
}

impl Scaler for Replay<'_> {
    fn name(&self) -> &'static str {
        "oracle"
    }

    fn poll(&mut self, t: f64, _partitions: &[PartitionSample], current: i32, _settled: bool) -> i32 {
        let mut wanted = current;
        while let Some(&(at, replicas)) = self.schedule.changes.get(self.next).filter(|(at, _)| *at <= t) {
            if at == t {
                wanted = replicas;
            }
            self.next += 1;
        }
        wanted
    }
}
