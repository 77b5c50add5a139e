//! Everything on one trace: ours, every KEDA configuration of the sweep, the oracle; and the
//! rows of all of it as CSV.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::frontier::{dominating, goals, nearest_by_replica_seconds, Goals};
use super::keda::{sweep, KedaConfig, KedaHpa};
use super::oracle::{oracle, Budget, Oracle, OracleSettings};
use super::ours::Ours;
use super::traces::{traces, Trace};
use super::{simulate, Model, Outcome, Schedule};

/// The runs on one trace.
#[derive(Clone, Debug)]
pub struct TraceReport {
    pub trace: Trace,
    pub ours: Outcome,
    /// Every configuration of the sweep, in [`sweep`] order.
    pub keda: Vec<(KedaConfig, Outcome)>,
    /// With ours' lag·s and max lag as the budget.
    pub oracle: Option<Oracle>,
    /// The model's lagThreshold with the HPA's default window: the reference of the old table.
    pub keda_default: KedaConfig,
    /// How long the runs took (the oracle's search, mostly).
    pub elapsed: Duration,
}

impl TraceReport {
    /// The KEDA configuration better than ours on both lag·s and replica·s, if any.
    pub fn dominated_by(&self) -> Option<&(KedaConfig, Outcome)> {
        dominating(&self.ours, &self.keda)
    }

    /// The KEDA configuration whose replica·s is nearest to ours.
    pub fn nearest(&self) -> Option<&(KedaConfig, Outcome)> {
        nearest_by_replica_seconds(&self.ours, &self.keda)
    }

    pub fn default_keda(&self) -> Option<&(KedaConfig, Outcome)> {
        self.keda.iter().find(|(config, _)| *config == self.keda_default)
    }

    /// The oracle's replica·s, replayed and within the budget.
    pub fn oracle_replica_seconds(&self) -> Option<f64> {
        self.oracle.as_ref().filter(|o| o.within_budget).map(|o| o.replay.replica_seconds)
    }

    pub fn goals(&self) -> Goals {
        let nearest = self.nearest().map(|(_, o)| o.clone()).unwrap_or_default();
        let oracle = self.oracle_replica_seconds().unwrap_or(0.0);
        goals(&self.ours, self.dominated_by().is_some(), &nearest, oracle)
    }
}

/// Ours, the sweep and the oracle on `trace`.
pub fn report(model: &Model, trace: &Trace, settings: &OracleSettings) -> TraceReport {
    let ours = simulate(model, trace, &mut Ours::new(model));
    let keda = sweep()
        .into_iter()
        .map(|config| (config, simulate(model, trace, &mut KedaHpa::with_config(model, config))))
        .collect();
    let oracle = oracle(model, trace, Budget::of(&ours), &[Schedule::of(&ours)], settings);
    TraceReport {
        trace: trace.clone(),
        ours,
        keda,
        oracle,
        keda_default: KedaConfig::default_for(model),
        elapsed: Duration::ZERO,
    }
}

/// [`report`] on every trace, the traces spread over the available cores.
pub fn compare(model: &Model, settings: &OracleSettings) -> Vec<TraceReport> {
    let traces = traces();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(traces.len());
    let next = AtomicUsize::new(0);
    let (done, reports) = mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let done = done.clone();
            let (traces, next) = (&traces, &next);
            scope.spawn(move || {
                while let Some(trace) = traces.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let started = Instant::now();
                    let mut report = report(model, trace, settings);
                    report.elapsed = started.elapsed();
                    if done.send(report).is_err() {
                        break;
                    }
                }
            });
        }
    });
    drop(done);
    let mut reports: Vec<TraceReport> = reports.into_iter().collect();
    reports.sort_by_key(|r| traces.iter().position(|t| t.name == r.trace.name));
    reports
}

/// Every row of `reports`: ours, each KEDA configuration, the oracle's replay and its lower bound.
pub fn csv(reports: &[TraceReport]) -> String {
    let mut out = String::from(
        "trace,policy,lag_threshold,scale_down_stabilization_seconds,lag_seconds,max_lag,drain_seconds,replica_seconds,scale_events,nearest_to_ours\n",
    );
    for report in reports {
        let nearest = report.nearest().map(|(config, _)| *config);
        let mut row = |policy: &str, config: Option<KedaConfig>, outcome: Option<&Outcome>, replica_seconds: f64| {
            let (threshold, window) = config.map_or((String::new(), String::new()), |c| {
                (c.lag_threshold.to_string(), format!("{:.0}", c.scale_down_stabilization_seconds))
            });
            let number = |value: Option<f64>| value.map_or(String::new(), |v| format!("{v:.0}"));
            let _ = writeln!(
                out,
                "{},{policy},{threshold},{window},{},{},{},{replica_seconds:.0},{},{}",
                report.trace.name,
                number(outcome.map(|o| o.lag_seconds)),
                number(outcome.map(|o| o.max_lag)),
                number(outcome.and_then(|o| o.drain_seconds)),
                outcome.map_or(String::new(), |o| o.scale_events().to_string()),
                config.is_some() && config == nearest,
            );
        };
        row("streamjob", None, Some(&report.ours), report.ours.replica_seconds);
        for (config, outcome) in &report.keda {
            row(&config.label(), Some(*config), Some(outcome), outcome.replica_seconds);
        }
        if let Some(oracle) = &report.oracle {
            let policy = if oracle.within_budget { "oracle" } else { "oracle (over budget)" };
            row(policy, None, Some(&oracle.replay), oracle.replay.replica_seconds);
            if let Some(bound) = oracle.lower_bound {
                row("oracle lower bound", None, None, bound);
            }
        }
    }
    out
}
