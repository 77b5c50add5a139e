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
//! Where it errs, and which way: the schedule changes replicas only every
//! `decision_interval` seconds, and merging the paths in a lag bucket can drop the one that
//! would have been cheapest later. Both make the oracle err high (more replica·s than the best
//! schedule), so ours/oracle errs in ours' favour. The lower bound beside it errs the other way:
//! the same search on the same grid with finer buckets, merging optimistically (least cost,
//! least lag, least lag·s of all paths that reach a state; the model is monotone, so the merged
//! label is no worse than any of them), gives through Lagrangian duality a replica·s that no
//! schedule on that grid within the budget can beat in the reduced model, which itself never
//! lags more than the simulator (see `oracle_model`). Merging rounds lag down by up to a
//! bucket per step, so the bound is loose where a count runs exactly at capacity for long (lag
//! that should stay flat drifts down). The grid itself is not bounded: a schedule off the grid
//! could be cheaper by about the replica difference × the interval per scale event.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use streamjob_operator::autoscaler::policy::efficient_counts;

use super::oracle_model::LagModel;
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
    /// Seconds between the points where the oracle's schedule may change replicas.
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
}

/// Multipliers of lag·s tried: none, then one per decade.
const LAMBDAS: [f64; 10] = [0.0, 1e-10, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2];
/// Refinement around the best multiplier: factors tried on either side, in turn.
const REFINE: [f64; 3] = [3.16, 1.78, 1.33];

/// The oracle for `trace` within `budget`; `None` when no schedule on the decision grid meets
/// the max-lag bound at all.
pub fn oracle(model: &Model, trace: &Trace, budget: Budget, settings: &OracleSettings) -> Option<Oracle> {
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
    // A replay a little over the budget (the reduced model is optimistic, or its floating-point
    // sums differ from the simulator's in the last digits) tightens this target.
    let mut target = budget;
    let mut best: Option<(Schedule, Outcome)> = None;
    let mut best_lambda = 0.0;
    let mut closest_miss: Option<(Schedule, Outcome)> = None;
    for _round in 0..=settings.tightening_rounds {
        let mut try_lambda = |lambda: f64, best: &mut Option<(Schedule, Outcome)>| {
            let Some(schedule) = primal.run(lambda, target, Merge::Cheapest).map(|s| s.schedule) else { return false };
            let replay = simulate(model, trace, &mut Replay::new(&schedule));
            if !budget.admits(&replay) {
                let miss = |o: &Outcome| o.lag_seconds / budget.lag_seconds + o.max_lag / budget.max_lag.max(1.0);
                if closest_miss.as_ref().is_none_or(|(_, o)| miss(&replay) < miss(o)) {
                    closest_miss = Some((schedule, replay));
                }
                return false;
            }
            let better = best.as_ref().is_none_or(|(_, o)| replay.replica_seconds < o.replica_seconds);
            if better {
                *best = Some((schedule, replay));
            }
            better
        };
        for lambda in LAMBDAS {
            if try_lambda(lambda, &mut best) {
                best_lambda = lambda;
            }
        }
        if best.is_some() {
            for factor in REFINE {
                let around = best_lambda.max(1e-11);
                for lambda in [around / factor, around * factor] {
                    if try_lambda(lambda, &mut best) {
                        best_lambda = lambda;
                    }
                }
            }
            break;
        }
        let Some((_, miss)) = &closest_miss else { break };
        target.lag_seconds -= (miss.lag_seconds - budget.lag_seconds).max(0.0) * 1.1;
        target.max_lag -= (miss.max_lag - budget.max_lag).max(0.0) * 1.1;
    }
    let within_budget = best.is_some();
    let (schedule, replay) = best.or(closest_miss)?;
    let bound = search(settings.bound_decision_interval, settings.bound_lag_buckets);
    let mut lambdas = vec![0.0, best_lambda];
    lambdas.dedup();
    let lower_bound = lambdas
        .into_iter()
        .filter_map(|lambda| {
            let solution = bound.run(lambda, budget, Merge::Optimistic)?;
            Some(solution.cost - lambda * budget.lag_seconds)
        })
        .reduce(f64::max);
    Some(Oracle { schedule, replay, within_budget, lower_bound, exact_model: lag_model.exact, lambda: best_lambda })
}

/// How paths that reach the same state are merged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Merge {
    /// Keep the path with the least cost: a real path, replayable.
    Cheapest,
    /// Keep the least of everything: no worse than any merged path, for a lower bound.
    Optimistic,
}

#[derive(Clone, Copy, Debug)]
struct Label {
    /// replica·s + λ·lag·s so far.
    cost: f64,
    lag_seconds: f64,
    replica_seconds: f64,
    lag: [f64; 2],
    /// Index of the previous state in the previous layer.
    parent: u32,
}

/// One search's result.
#[derive(Clone, Debug)]
pub(super) struct Solution {
    /// replica·s + λ·lag·s of the path (with [`Merge::Optimistic`], a lower bound of it).
    pub cost: f64,
    pub schedule: Schedule,
}

/// A multiplicative hash for the packed state keys.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(self.0 ^ u64::from(*byte));
        }
    }

    fn write_u64(&mut self, key: u64) {
        let mixed = (self.0 ^ key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = mixed ^ (mixed >> 29);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One time step's states: their labels, and where each key is.
#[derive(Default)]
struct Layer {
    states: Vec<(u64, Label)>,
    index: HashMap<u64, u32, BuildHasherDefault<KeyHasher>>,
}

impl Layer {
    fn offer(&mut self, key: u64, path: Label, merge: Merge) {
        let Some(&at) = self.index.get(&key) else {
            self.index.insert(key, self.states.len() as u32);
            self.states.push((key, path));
            return;
        };
        let kept = &mut self.states[at as usize].1;
        match merge {
            Merge::Cheapest if path.cost < kept.cost => *kept = path,
            Merge::Cheapest => {}
            Merge::Optimistic => {
                if path.cost < kept.cost {
                    kept.parent = path.parent;
                }
                kept.cost = kept.cost.min(path.cost);
                kept.lag_seconds = kept.lag_seconds.min(path.lag_seconds);
                kept.replica_seconds = kept.replica_seconds.min(path.replica_seconds);
                kept.lag = [kept.lag[0].min(path.lag[0]), kept.lag[1].min(path.lag[1])];
            }
        }
    }

    fn clear(&mut self) {
        self.states.clear();
        self.index.clear();
    }
}

/// The search's fixed parts.
pub(super) struct Search<'a> {
    lag_model: &'a LagModel,
    counts: &'a [i32],
    initial: usize,
    interval: usize,
    /// Seconds without consumption after a change.
    pause: usize,
    /// Records per bucket along each of the model's coordinates.
    bucket_width: [f64; 2],
}

/// The second coordinate (the cold partitions' lag beside a hot one) gets this many times
/// coarser buckets than the first.
const SECOND_COORDINATE_COARSER: f64 = 16.0;

impl<'a> Search<'a> {
    pub(super) fn new(
        model: &Model,
        lag_model: &'a LagModel,
        counts: &'a [i32],
        interval: usize,
        max_lag: f64,
        lag_buckets: usize,
    ) -> Self {
        let width = max_lag.max(1.0) / lag_buckets.max(1) as f64;
        Self {
            lag_model,
            counts,
            initial: counts.iter().position(|&c| c == model.initial_replicas).unwrap_or(0),
            interval,
            pause: (model.rebalance_pause.ceil() as usize).saturating_sub(1),
            bucket_width: [width, width * SECOND_COORDINATE_COARSER],
        }
    }

    /// count (8 bits), pause left (16 bits), the two buckets (20 bits each).
    fn key(&self, count: usize, pause_left: usize, lag: [f64; 2]) -> u64 {
        let coordinates = self.lag_model.coordinates(lag);
        let bucket = |i: usize| ((coordinates[i] / self.bucket_width[i]) as u64).min((1 << 20) - 1);
        (count as u64) << 56 | (pause_left as u64) << 40 | bucket(0) << 20 | bucket(1)
    }

    fn decode(key: u64) -> (usize, usize) {
        ((key >> 56) as usize, ((key >> 40) & 0xFFFF) as usize)
    }

    /// The search with multiplier `lambda` within `target`; `None` when no path stays within it.
    pub(super) fn run(&self, lambda: f64, target: Budget, merge: Merge) -> Option<Solution> {
        let seconds = self.lag_model.seconds();
        let blocks = seconds.div_ceil(self.interval);
        let start = Label { cost: 0.0, lag_seconds: 0.0, replica_seconds: 0.0, lag: [0.0; 2], parent: u32::MAX };
        let mut layer = Layer::default();
        layer.offer(self.key(self.initial, 0, start.lag), start, merge);
        let mut next = Layer::default();
        let mut history: Vec<Vec<(u64, u32)>> = Vec::with_capacity(blocks);
        for block in 0..blocks {
            let (first, end) = (block * self.interval, ((block + 1) * self.interval).min(seconds));
            for (id, (key, label)) in layer.states.iter().enumerate() {
                let (count, pause_left) = Self::decode(*key);
                for choice in 0..self.counts.len() {
                    // The first block runs with the initial replicas: nothing is decided before it.
                    if block == 0 && choice != count {
                        continue;
                    }
                    let mut pause = if choice == count { pause_left } else { self.pause };
                    let replicas = self.counts[choice];
                    let mut path = Label { parent: id as u32, ..*label };
                    let mut within = true;
                    for second in first..end {
                        path.lag = self.lag_model.step(path.lag, second, replicas, pause == 0);
                        pause = pause.saturating_sub(1);
                        let total = self.lag_model.total(path.lag);
                        path.lag_seconds += total;
                        path.replica_seconds += f64::from(replicas);
                        path.cost += f64::from(replicas) + lambda * total;
                        if total > target.max_lag {
                            within = false;
                            break;
                        }
                    }
                    if within && path.lag_seconds <= target.lag_seconds {
                        next.offer(self.key(choice, pause, path.lag), path, merge);
                    }
                }
            }
            std::mem::swap(&mut layer, &mut next);
            next.clear();
            history.push(layer.states.iter().map(|(key, label)| (*key, label.parent)).collect());
            if layer.states.is_empty() {
                return None;
            }
        }
        let chosen = match merge {
            // Every surviving path is within the target: the cheapest in replicas is wanted.
            Merge::Cheapest => {
                layer.states.iter().enumerate().min_by(|a, b| a.1 .1.replica_seconds.total_cmp(&b.1 .1.replica_seconds))
            }
            Merge::Optimistic => layer.states.iter().enumerate().min_by(|a, b| a.1 .1.cost.total_cmp(&b.1 .1.cost)),
        };
        let (mut index, (_, label)) = chosen?;
        let cost = label.cost;
        let mut per_block = vec![0usize; blocks];
        for block in (0..blocks).rev() {
            let (key, parent) = history[block][index];
            per_block[block] = Self::decode(key).0;
            index = parent as usize;
        }
        let changes = (1..blocks)
            .filter(|&b| per_block[b] != per_block[b - 1])
            .map(|b| ((b * self.interval - 1) as f64, self.counts[per_block[b]]))
            .collect();
        Some(Solution { cost, schedule: Schedule { changes } })
    }
}

#[cfg(test)]
#[path = "oracle_tests.rs"]
mod tests;
