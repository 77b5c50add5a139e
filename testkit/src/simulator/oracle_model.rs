//! The oracle's consumption model: the simulator's per-partition water-filling reduced to two
//! numbers per state, so that a search over schedules stays small.
//!
//! - [`Shape::Pooled`]: the lag of all consumable partitions as one pool that the workers
//!   holding any of them drain at their whole capacity, plus the lag of a stuck partition (which
//!   no schedule changes). Exact when every partition has the same rate, none is stuck and every
//!   replica count divides the partition count (each worker then holds as many partitions, all
//!   with the same lag). Otherwise optimistic: the pool drains at least as fast as any split of
//!   it over workers does, so the oracle's lag is never above the simulator's for the same
//!   schedule and its replica·s errs low (a lower bound).
//! - [`Shape::HotAndRest`]: one partition with a higher rate, the others all equal: the lag of
//!   the hot partition and of each other partition. Exact when every replica count divides the
//!   partition count: every cold partition then has the same lag, on the hot partition's worker
//!   too (water-filling serves the colds first there, since the hot lag never falls below a
//!   cold one), so the state is the simulator's.
//!
//! Both are monotone (more lag in never means less lag out), which the oracle's lower bound
//! relies on.

use super::{Model, Trace};

/// Which reduction of the partitions a trace allows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shape {
    /// State: [lag of the consumable partitions, lag of the stuck partition].
    Pooled { stuck: Option<usize> },
    /// State: [lag of each cold partition, lag of the hot partition].
    HotAndRest { hot: usize },
}

/// The reduced model of one trace.
#[derive(Clone, Debug)]
pub struct LagModel {
    pub shape: Shape,
    /// Whether the reduction is exact (else optimistic).
    pub exact: bool,
    partitions: usize,
    capacity: f64,
    /// Records arriving in each second, per state component.
    arrivals: Vec<[f64; 2]>,
    /// For [`Shape::Pooled`], by replica count: records per second the workers holding a
    /// consumable partition drain.
    pool_capacity: Vec<f64>,
}

/// Rates of every partition in every second of `trace`.
fn rate_table(model: &Model, trace: &Trace) -> Vec<Vec<f64>> {
    let seconds = trace.duration.max(0.0).ceil() as usize;
    (0..seconds).map(|s| (0..model.partitions).map(|p| (trace.rate)(s as f64, p, model.partitions)).collect()).collect()
}

/// The one partition whose rate differs from the others' (all equal) and is never below theirs.
fn hot_partition(rates: &[Vec<f64>], partitions: usize) -> Option<usize> {
    if partitions < 3 {
        return None;
    }
    let mut hot = None;
    for row in rates {
        // The cold rate is the one shared by at least two of the first three partitions.
        let cold = if row[0] == row[1] || row[0] == row[2] { row[0] } else { row[1] };
        for (p, &rate) in row.iter().enumerate() {
            if rate == cold {
                continue;
            }
            if rate < cold || hot.is_some_and(|h| h != p) {
                return None;
            }
            hot = Some(p);
        }
    }
    hot
}

impl LagModel {
    pub fn new(model: &Model, trace: &Trace, counts: &[i32]) -> Self {
        let n = model.partitions;
        let rates = rate_table(model, trace);
        let all_divide = counts.iter().all(|&c| c > 0 && n.is_multiple_of(c as usize));
        let all_equal = rates.iter().all(|row| row.iter().all(|&r| r == row[0]));
        let (shape, exact) = match (trace.stuck_partition, hot_partition(&rates, n)) {
            (None, _) if all_equal => (Shape::Pooled { stuck: None }, all_divide),
            (None, Some(hot)) if all_divide => (Shape::HotAndRest { hot }, true),
            (stuck, _) => (Shape::Pooled { stuck }, false),
        };
        let arrivals = rates
            .iter()
            .map(|row| match shape {
                Shape::Pooled { stuck } => {
                    let stuck_rate = stuck.map_or(0.0, |p| row[p]);
                    [row.iter().sum::<f64>() - stuck_rate, stuck_rate]
                }
                Shape::HotAndRest { hot } => [row[(hot + 1) % n], row[hot]],
            })
            .collect();
        let stuck = match shape {
            Shape::Pooled { stuck } => stuck,
            Shape::HotAndRest { .. } => None,
        };
        let most = counts.iter().copied().max().unwrap_or(0).max(0) as usize;
        let pool_capacity = (0..=most)
            .map(|workers| {
                let draining = (0..workers).filter(|w| (0..n).any(|p| p % workers == *w && Some(p) != stuck)).count();
                draining as f64 * model.capacity_per_replica
            })
            .collect();
        Self { shape, exact, partitions: n, capacity: model.capacity_per_replica, arrivals, pool_capacity }
    }

    pub fn seconds(&self) -> usize {
        self.arrivals.len()
    }

    /// The state after `second` with `replicas` workers, consuming or paused.
    pub fn step(&self, lag: [f64; 2], second: usize, replicas: i32, consuming: bool) -> [f64; 2] {
        let arriving = self.arrivals[second];
        let mut next = [lag[0] + arriving[0], lag[1] + arriving[1]];
        if !consuming || replicas <= 0 {
            return next;
        }
        let workers = replicas as usize;
        match self.shape {
            Shape::Pooled { .. } => {
                let capacity =
                    self.pool_capacity.get(workers).copied().unwrap_or(self.partitions as f64 * self.capacity);
                next[0] = (next[0] - capacity).max(0.0);
            }
            Shape::HotAndRest { .. } => {
                let per_worker = self.partitions.div_ceil(workers);
                let [cold, hot_lag] = next;
                let hot_worker = water_fill(self.capacity, &[(cold, per_worker - 1), (hot_lag, 1)]);
                next[1] = hot_worker[1];
                next[0] = if workers > 1 { (cold - self.capacity / per_worker as f64).max(0.0) } else { hot_worker[0] };
            }
        }
        next
    }

    /// The total lag of a state, as the simulator counts it.
    pub fn total(&self, lag: [f64; 2]) -> f64 {
        match self.shape {
            Shape::Pooled { .. } => lag[0] + lag[1],
            Shape::HotAndRest { .. } => lag[0] * (self.partitions - 1) as f64 + lag[1],
        }
    }

    /// How many of [`LagModel::coordinates`] vary.
    pub fn coordinates_used(&self) -> usize {
        match self.shape {
            Shape::Pooled { .. } => 1,
            Shape::HotAndRest { .. } => 2,
        }
    }

    /// Where a state lies for merging paths: the parts of the lag that schedules change (the
    /// stuck partition's lag is the same under all of them), in records.
    pub fn coordinates(&self, lag: [f64; 2]) -> [f64; 2] {
        match self.shape {
            Shape::Pooled { .. } => [lag[0], 0.0],
            Shape::HotAndRest { .. } => [lag[1], lag[0] * (self.partitions - 1) as f64],
        }
    }
}

/// One worker's second: `budget` shared among groups of (lag per partition, partitions), the
/// least lagging first, each partition taking at most an equal share of what is left. Returns
/// each group's lag per partition afterwards. This is the simulator's loop for equal partitions.
fn water_fill(budget: f64, groups: &[(f64, usize); 2]) -> [f64; 2] {
    let mut order = [0, 1];
    if groups[1].0 < groups[0].0 {
        order = [1, 0];
    }
    let mut left = budget;
    let mut remaining: usize = groups.iter().map(|g| g.1).sum();
    let mut after = [groups[0].0, groups[1].0];
    for i in order {
        let (lag, count) = groups[i];
        if count == 0 {
            continue;
        }
        let take = lag.min(left / remaining as f64).max(0.0);
        after[i] = lag - take;
        left -= take * count as f64;
        remaining -= count;
    }
    after
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::{simulate, traces, Replay, Schedule};

    fn trace(name: &str) -> Trace {
        match traces().into_iter().find(|t| t.name == name) {
            Some(trace) => trace,
            None => unreachable!("no trace {name}"),
        }
    }

    #[test]
    fn each_trace_gets_the_reduction_its_partitions_allow() {
        let model = Model::default();
        let counts = [1, 2, 3, 4, 6, 12];
        let cases = [
            ("steady", Shape::Pooled { stuck: None }, true),
            ("bursty", Shape::Pooled { stuck: None }, true),
            ("hot-partition", Shape::HotAndRest { hot: 0 }, true),
            ("stuck-partition", Shape::Pooled { stuck: Some(0) }, false),
        ];
        for (name, shape, exact) in cases {
            let lag_model = LagModel::new(&model, &trace(name), &counts);
            assert_eq!((lag_model.shape, lag_model.exact), (shape, exact), "{name}");
        }
        let uneven = LagModel::new(&model, &trace("steady"), &[5]);
        assert!(!uneven.exact, "5 workers hold 3 or 2 of 12 partitions");
    }

    #[test]
    fn a_group_takes_its_share_and_leaves_the_rest() {
        let cases = [
            ("both drain", 1000.0, [(100.0, 2), (300.0, 1)], [0.0, 0.0]),
            ("colds drain, hot takes the rest", 1000.0, [(100.0, 3), (2000.0, 1)], [0.0, 1300.0]),
            ("all over the share", 1000.0, [(500.0, 3), (900.0, 1)], [250.0, 650.0]),
            ("no colds", 1000.0, [(0.0, 0), (1500.0, 1)], [0.0, 500.0]),
        ];
        for (case, budget, groups, expected) in cases {
            assert_eq!(water_fill(budget, &groups), expected, "{case}");
        }
    }

    /// Replays `schedule` in the reduced model, second by second as the simulator does.
    fn replay_reduced(model: &Model, lag_model: &LagModel, schedule: &Schedule) -> (f64, f64) {
        let (mut lag, mut replicas, mut paused_until) = ([0.0, 0.0], model.initial_replicas, 0.0);
        let (mut lag_seconds, mut max_lag) = (0.0, 0.0f64);
        for s in 0..lag_model.seconds() {
            let t = s as f64;
            lag = lag_model.step(lag, s, replicas, t >= paused_until);
            lag_seconds += lag_model.total(lag);
            max_lag = max_lag.max(lag_model.total(lag));
            if let Some(&(_, to)) = schedule.changes.iter().find(|(at, _)| *at == t) {
                if to != replicas {
                    replicas = to;
                    paused_until = model.resumes_after_scale_at(t);
                }
            }
        }
        (lag_seconds, max_lag)
    }

    #[test]
    fn exact_reductions_match_the_simulator_and_the_pool_never_lags_more() {
        let model = Model::default();
        let counts = [1, 2, 3, 4, 6, 12];
        let schedule =
            Schedule { changes: vec![(29.0, 4), (99.0, 12), (199.0, 2), (399.0, 6), (599.0, 3), (899.0, 1)] };
        for trace in traces() {
            let lag_model = LagModel::new(&model, &trace, &counts);
            let reduced = replay_reduced(&model, &lag_model, &schedule);
            let real = simulate(&model, &trace, &mut Replay::new(&schedule));
            if lag_model.exact {
                let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
                assert!(
                    close(reduced.0, real.lag_seconds) && close(reduced.1, real.max_lag),
                    "{}: {reduced:?} vs {real:?}",
                    trace.name
                );
            } else {
                assert!(
                    reduced.0 <= real.lag_seconds && reduced.1 <= real.max_lag,
                    "{}: {reduced:?} vs {real:?}",
                    trace.name
                );
            }
        }
    }
}
