//! The oracle: the least replica·s a schedule known ahead needs to do as well as ours (total
//! lag·s and maximum lag no higher), in the same model: the same capacity per replica, the same
//! pause per scale event, replica counts restricted to the efficient counts within
//! min..max replicas.
//!
//! A shortest-path search over time with state (replica count, pause left, lag bucket), where a
//! state's label carries its exact lag in the reduced model of `oracle_model`. The max-lag
//! bound is hard (a path that exceeds it is dropped), and so is the lag·s budget (a path over it
//! is dropped); among the paths that reach a state the search keeps the one with the least
//! replica·s + λ·lag·s, so λ steers which paths survive the merging. The search runs for a range
//! of λ; every schedule it returns is replayed through the real [`simulate`], and the cheapest
//! replay within the budget is the oracle: the printed numbers are those of an achievable
//! schedule. Where the reduced model is optimistic (a stuck partition) and no replay is within
//! the budget, the budget is tightened by the excess and the search runs again.
//!
//! Where it errs, and which way: the schedule changes replicas only at multiples of
//! `decision_interval` seconds (as our policy, polling every 10 s, does), and merging the paths
//! in a lag bucket can drop the one that would have been cheapest later. Both make the oracle
//! err high (more replica·s than the best schedule), so ours/oracle errs in ours' favour. The
//! lower bound beside it errs the other way: the same search merging optimistically (least
//! cost, least lag, least lag·s of all paths that reach a state; the model is monotone, so the
//! merged label is no worse than any of them) gives, for each λ, `V(λ) − λ·budget`, a
//! replica·s that no schedule on the grid within the budget can beat in the reduced model,
//! which itself never lags more than the simulator (see `oracle_model`). The bound is loose
//! where the reduced model is (a stuck partition) and where two lag coordinates share coarse
//! buckets (a hot partition); the grid itself is not bounded: a schedule off it could save
//! about the replica difference × the interval per scale event. The trace ends where it ends:
//! the oracle may let lag build up just before the end, which a job that goes on would pay for
//! later.

use streamjob_operator::autoscaler::policy::efficient_counts;

use super::oracle_model::LagModel;
use super::oracle_search::{Merge, Search};
use super::{simulate, Model, Outcome, Replay, Schedule, Trace};

/// What the oracle's schedule must not exceed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    pub lag_seconds: f64,
    pub max_lag: f64,
}

impl Budget {
    /// Ours: the lag·s and max lag of its outcome.
    pub fn of(outcome: &Outcome) -> Self {
        Self { lag_seconds: outcome.lag_seconds, max_lag: outcome.max_lag }
    }

    pub fn admits(&self, outcome: &Outcome) -> bool {
        outcome.lag_seconds <= self.lag_seconds && outcome.max_lag <= self.max_lag
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OracleSettings {
    /// The oracle's schedule may change replicas at the multiples of this many seconds.
    pub decision_interval: usize,
    /// Lag buckets between 0 and the max-lag budget; paths in one bucket are merged.
    pub lag_buckets: usize,
    /// Seconds between the decision points of the lower bound's search.
    pub bound_decision_interval: usize,
    /// Lag buckets of the lower bound's search.
    pub bound_lag_buckets: usize,
    /// Rounds of tightening the budget when no replay is within it.
    pub tightening_rounds: usize,
}

impl Default for OracleSettings {
    fn default() -> Self {
        Self {
            decision_interval: 5,
            lag_buckets: 400,
            bound_decision_interval: 5,
            bound_lag_buckets: 1600,
            tightening_rounds: 4,
        }
    }
}

/// The cheapest schedule found, replayed.
#[derive(Clone, Debug, PartialEq)]
pub struct Oracle {
    pub schedule: Schedule,
    /// The schedule run through [`simulate`]: these are the oracle's numbers.
    pub replay: Outcome,
    /// Whether the replay is within the budget.
    pub within_budget: bool,
    /// No schedule within the budget needs fewer replica·s than this (in the reduced model,
    /// which never lags more than the simulator); `None` when the bound's search found none.
    pub lower_bound: Option<f64>,
    /// Whether the reduced model is the simulator's (else optimistic).
    pub exact_model: bool,
    /// The multiplier of lag·s whose search found the schedule.
    pub lambda: f64,
    /// Whether the search found it (else it is one of the known schedules: the search found
    /// none cheaper).
    pub from_search: bool,
}

/// Multipliers of lag·s tried: none, then one per decade (replica·s per lag·s: about 1/(1000 ×
/// the seconds a record waits) is where one more replica pays).
const LAMBDAS: [f64; 7] = [0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3];
/// Refinement around the best multiplier: factors tried on either side, in turn.
const REFINE: [f64; 3] = [3.16, 1.78, 1.33];

/// The oracle for `trace` within `budget`; `None` when no schedule on the decision grid meets
/// the max-lag bound at all. `known` schedules (ours, which meets its own budget) are
/// candidates beside the search's, so the oracle never costs more than they do.
pub fn oracle(
    model: &Model,
    trace: &Trace,
    budget: Budget,
    known: &[Schedule],
    settings: &OracleSettings,
) -> Option<Oracle> {
    let mut counts: Vec<i32> = efficient_counts(model.partitions as i32)
        .into_iter()
        .filter(|c| (model.min_replicas.max(1)..=model.max_replicas).contains(c))
        .collect();
    if !counts.contains(&model.initial_replicas) {
        counts.push(model.initial_replicas);
        counts.sort_unstable();
    }
    let lag_model = LagModel::new(model, trace, &counts);
    let search = |interval: usize, buckets: usize| {
        Search::new(model, &lag_model, &counts, interval.max(1), budget.max_lag, buckets)
    };
    let primal = search(settings.decision_interval, settings.lag_buckets);
    let mut found = Candidates::default();
    found.sweep(&primal, model, trace, budget, budget);
    // A replay over the budget (the reduced model is optimistic, or its floating-point sums differ
    // from the simulator's in the last digits): search again within a target lowered by a
    // multiple of the closest miss's excess, doubling it until a replay fits, then bisecting
    // between the last multiple that did not fit and the first that did.
    if let Some((_, miss)) = found.closest_miss.clone().filter(|_| found.best.is_none()) {
        let excess = [(miss.lag_seconds - budget.lag_seconds).max(0.0), (miss.max_lag - budget.max_lag).max(0.0)];
        let target = |multiple: f64| Budget {
            lag_seconds: budget.lag_seconds - multiple * excess[0],
            max_lag: budget.max_lag - multiple * excess[1],
        };
        let (mut misses, mut fits) = (0.0, 1.0);
        for _ in 0..settings.tightening_rounds {
            if found.sweep(&primal, model, trace, budget, target(fits)) {
                break;
            }
            (misses, fits) = (fits, fits * 2.0);
        }
        if found.best.is_some() {
            for _ in 0..settings.tightening_rounds {
                let middle = (misses + fits) / 2.0;
                if found.sweep(&primal, model, trace, budget, target(middle)) {
                    fits = middle;
                } else {
                    misses = middle;
                }
            }
        }
    }
    let searched = found.best.as_ref().map(|(_, o, _)| o.replica_seconds);
    for schedule in known.iter().filter(|k| k.changes.iter().all(|(_, r)| counts.contains(r))) {
        let replay = simulate(model, trace, &mut Replay::new(schedule));
        if budget.admits(&replay)
            && found.best.as_ref().is_none_or(|(_, o, _)| replay.replica_seconds < o.replica_seconds)
        {
            found.best = Some((schedule.clone(), replay, f64::NAN));
        }
    }
    let from_search = found.best.as_ref().is_some_and(|(_, o, _)| Some(o.replica_seconds) == searched);
    let within_budget = found.best.is_some();
    let best_lambda = found.best.as_ref().map_or(0.0, |(_, _, lambda)| *lambda);
    let (schedule, replay) = found.best.map(|(s, o, _)| (s, o)).or(found.closest_miss)?;
    let lower_bound = lower_bound(&search(settings.bound_decision_interval, settings.bound_lag_buckets), budget);
    Some(Oracle {
        schedule,
        replay,
        within_budget,
        lower_bound,
        exact_model: lag_model.exact,
        lambda: best_lambda,
        from_search,
    })
}

/// The schedules the searches found, replayed.
#[derive(Default)]
struct Candidates {
    /// The cheapest replay within the budget, and its λ.
    best: Option<(Schedule, Outcome, f64)>,
    /// The replay over the budget that is nearest to it.
    closest_miss: Option<(Schedule, Outcome)>,
}

impl Candidates {
    /// Searches within `target` over the λ grid, refined around the λ of this sweep's cheapest
    /// fitting replay, replaying each schedule against `budget`. Whether any replay fitted.
    fn sweep(&mut self, primal: &Search<'_>, model: &Model, trace: &Trace, budget: Budget, target: Budget) -> bool {
        let mut cheapest: Option<(f64, f64)> = None;
        let consider = |candidates: &mut Self, lambda: f64, cheapest: &mut Option<(f64, f64)>| {
            let Some(replica_seconds) = candidates.replay(primal, model, trace, budget, target, lambda) else { return };
            if cheapest.is_none_or(|(r, _)| replica_seconds < r) {
                *cheapest = Some((replica_seconds, lambda));
            }
        };
        for lambda in LAMBDAS {
            consider(self, lambda, &mut cheapest);
        }
        for factor in REFINE {
            let Some((_, around)) = cheapest else { break };
            for lambda in [around.max(1e-11) / factor, around.max(1e-11) * factor] {
                consider(self, lambda, &mut cheapest);
            }
        }
        cheapest.is_some()
    }

    /// Searches with `lambda` within `target` and replays the schedule: its replica·s when the
    /// replay is within `budget` (kept if the cheapest yet), else `None` (kept if the nearest
    /// miss yet).
    fn replay(
        &mut self,
        primal: &Search<'_>,
        model: &Model,
        trace: &Trace,
        budget: Budget,
        target: Budget,
        lambda: f64,
    ) -> Option<f64> {
        let schedule = primal.run(lambda, target, Merge::Cheapest)?.schedule;
        let replay = simulate(model, trace, &mut Replay::new(&schedule));
        if !budget.admits(&replay) {
            let miss = |o: &Outcome| o.lag_seconds / budget.lag_seconds + o.max_lag / budget.max_lag.max(1.0);
            if self.closest_miss.as_ref().is_none_or(|(_, o)| miss(&replay) < miss(o)) {
                self.closest_miss = Some((schedule, replay));
            }
            return None;
        }
        let replica_seconds = replay.replica_seconds;
        if self.best.as_ref().is_none_or(|(_, o, _)| replica_seconds < o.replica_seconds) {
            self.best = Some((schedule, replay, lambda));
        }
        Some(replica_seconds)
    }
}

/// The best of the Lagrangian bounds `V(λ) − λ·budget` over a grid of λ refined around the
/// best: each is a valid bound, since a schedule within the budget costs at least
/// replica·s + λ·(lag·s − budget) ≥ V(λ) − λ·budget.
fn lower_bound(search: &Search<'_>, budget: Budget) -> Option<f64> {
    let bound_at =
        |lambda: f64| search.run(lambda, budget, Merge::Optimistic).map(|s| s.cost - lambda * budget.lag_seconds);
    let mut best: Option<(f64, f64)> = None;
    let consider = |lambda: f64, best: &mut Option<(f64, f64)>| {
        if let Some(bound) = bound_at(lambda) {
            if best.is_none_or(|(b, _)| bound > b) {
                *best = Some((bound, lambda));
            }
        }
    };
    for lambda in LAMBDAS {
        consider(lambda, &mut best);
    }
    for factor in &REFINE[..2] {
        let Some((_, around)) = best else { break };
        let around = around.max(1e-11);
        for lambda in [around / factor, around * factor] {
            consider(lambda, &mut best);
        }
    }
    best.map(|(bound, _)| bound)
}

#[cfg(test)]
#[path = "oracle_tests.rs"]
mod tests;
