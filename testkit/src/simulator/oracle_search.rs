//! The oracle's search: a shortest path over time blocks with state (replica count, pause left,
//! lag bucket), each state keeping one label (the cheapest path, or the least of everything
//! for a lower bound). See `oracle` for how it is used and where it errs.

use super::oracle::Budget;
use super::oracle_model::LagModel;
use super::{Model, Schedule};

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

/// One time step's states: their labels, and for every possible key where its state is.
struct Layer {
    states: Vec<(usize, Label)>,
    /// By key: the index into `states`, or `EMPTY`.
    slots: Vec<u32>,
}

const EMPTY: u32 = u32::MAX;

impl Layer {
    fn new(keys: usize) -> Self {
        Self { states: Vec::new(), slots: vec![EMPTY; keys] }
    }

    fn offer(&mut self, key: usize, path: Label, merge: Merge) {
        let at = self.slots[key];
        if at == EMPTY {
            self.slots[key] = self.states.len() as u32;
            self.states.push((key, path));
            return;
        }
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
        for (key, _) in &self.states {
            self.slots[*key] = EMPTY;
        }
        self.states.clear();
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
    /// Buckets along each coordinate.
    buckets: [usize; 2],
}

/// Buckets along the second coordinate (the cold partitions' lag beside a hot one, which
/// matters only while one worker holds them all): few, whatever the first's.
const SECOND_COORDINATE_BUCKETS: usize = 25;

impl<'a> Search<'a> {
    pub(super) fn new(
        model: &Model,
        lag_model: &'a LagModel,
        counts: &'a [i32],
        interval: usize,
        max_lag: f64,
        lag_buckets: usize,
    ) -> Self {
        let second = if lag_model.coordinates_used() > 1 { SECOND_COORDINATE_BUCKETS } else { 0 };
        let max_lag = max_lag.max(1.0);
        Self {
            lag_model,
            counts,
            initial: counts.iter().position(|&c| c == model.initial_replicas).unwrap_or(0),
            interval,
            pause: model.paused_seconds(),
            bucket_width: [max_lag / lag_buckets.max(1) as f64, max_lag / second.max(1) as f64],
            buckets: [lag_buckets.max(1) + 1, second + 1],
        }
    }

    fn keys(&self) -> usize {
        self.counts.len() * (self.pause + 1) * self.buckets[0] * self.buckets[1]
    }

    /// Count, pause left, then the two buckets, row-major.
    fn key(&self, count: usize, pause_left: usize, lag: [f64; 2]) -> usize {
        let coordinates = self.lag_model.coordinates(lag);
        let bucket = |i: usize| ((coordinates[i] / self.bucket_width[i]) as usize).min(self.buckets[i] - 1);
        ((count * (self.pause + 1) + pause_left) * self.buckets[0] + bucket(0)) * self.buckets[1] + bucket(1)
    }

    fn decode(&self, key: usize) -> (usize, usize) {
        let state = key / (self.buckets[0] * self.buckets[1]);
        (state / (self.pause + 1), state % (self.pause + 1))
    }

    /// The search with multiplier `lambda` within `target`; `None` when no path stays within it.
    pub(super) fn run(&self, lambda: f64, target: Budget, merge: Merge) -> Option<Solution> {
        let seconds = self.lag_model.seconds();
        // A change decided at the end of second t counts from t + 1: the decision points are the
        // multiples of the interval (where our policy polls), so the blocks start one later.
        let starts: Vec<usize> = std::iter::once(0).chain((1..seconds).step_by(self.interval)).collect();
        let blocks = starts.len();
        let start = Label { cost: 0.0, lag_seconds: 0.0, replica_seconds: 0.0, lag: [0.0; 2], parent: u32::MAX };
        let mut layer = Layer::new(self.keys());
        layer.offer(self.key(self.initial, 0, start.lag), start, merge);
        let mut next = Layer::new(self.keys());
        let mut history: Vec<Vec<(usize, u32)>> = Vec::with_capacity(blocks);
        for block in 0..blocks {
            let (first, end) = (starts[block], starts.get(block + 1).copied().unwrap_or(seconds));
            for (id, (key, label)) in layer.states.iter().enumerate() {
                let (count, pause_left) = self.decode(*key);
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
            per_block[block] = self.decode(key).0;
            index = parent as usize;
        }
        let changes = (1..blocks)
            .filter(|&b| per_block[b] != per_block[b - 1])
            .map(|b| ((starts[b] - 1) as f64, self.counts[per_block[b]]))
            .collect();
        Some(Solution { cost, schedule: Schedule { changes } })
    }
}
