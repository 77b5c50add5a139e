//! The scaling policy: a pure function from lag samples and decision history to a replica count
//! and the reason for it, with the numbers. Over 400 lines because it is one rule: [`observe`]
//! and [`decide`] keep the history's invariants together; its tests are in `policy_tests.rs`.

use std::collections::VecDeque;

use streamjob_crds::duration::parse_duration;
use streamjob_crds::{AutoscalingSpec, PipelineStage, StartFrom};

pub use super::capacity::{Capacity, WorkerRate};

/// One partition at one measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionSample {
    pub topic: String,
    pub partition: i32,
    /// Low watermark (oldest retained offset).
    pub low: i64,
    /// High watermark (next offset to be written).
    pub high: i64,
    /// The group's committed offset; `None` when the group has none for this partition.
    pub committed: Option<i64>,
    /// The committing worker's report of its own speed, carried by that commit.
    pub committed_by: Option<WorkerRate>,
}

impl PartitionSample {
    /// Records the group has yet to process: high − committed, never negative; without a
    /// commit, what `startFrom` would make it read (earliest: everything retained; latest: 0).
    pub fn lag(&self, start_from: StartFrom) -> i64 {
        match (self.committed, start_from) {
            (Some(committed), _) => (self.high - committed).max(0),
            (None, StartFrom::Earliest) => (self.high - self.low).max(0),
            (None, StartFrom::Latest) => 0,
        }
    }
}

/// One lag measurement of all partitions of a job's source topics.
#[derive(Clone, Debug, PartialEq)]
pub struct LagSample {
    /// Seconds on a monotonic clock.
    pub at: f64,
    pub partitions: Vec<PartitionSample>,
}

impl LagSample {
    /// The same partition as `other` in this sample.
    pub fn same_partition(&self, other: &PartitionSample) -> Option<&PartitionSample> {
        self.partitions.iter().find(|p| p.topic == other.topic && p.partition == other.partition)
    }

    pub fn total_lag(&self, start_from: StartFrom) -> i64 {
        self.partitions.iter().map(|p| p.lag(start_from)).sum()
    }
}

/// The autoscaling settings with defaults resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub lag_threshold: i64,
    pub activation_lag_threshold: i64,
    pub target_catch_up_seconds: f64,
    pub scale_up_stabilization_seconds: f64,
    pub scale_up_max_step: Option<i32>,
    pub scale_down_stabilization_seconds: f64,
    pub scale_down_max_step: Option<i32>,
    pub allow_idle_consumers: bool,
    pub start_from: StartFrom,
    /// For a windowed job, seconds after its input went quiet by which every open window has
    /// been emitted (see [`Settings::with_open_windows`]); 0 without a window.
    pub open_windows_seconds: f64,
}

/// The workers' `--idle-timeout` default (the worker's `Timings`): a quiet source partition's
/// watermark follows the wall clock after it, which closes the windows without new input.
pub const WORKER_IDLE_TIMEOUT_SECONDS: f64 = 10.0;

/// Heartbeats, commits and the emit itself after a window's close.
const WINDOW_EMIT_MARGIN_SECONDS: f64 = 5.0;

impl Settings {
    pub fn from_spec(spec: &AutoscalingSpec, start_from: StartFrom) -> Self {
        Self {
            min_replicas: spec.min_replicas,
            max_replicas: spec.max_replicas,
            lag_threshold: spec.lag_threshold.max(1),
            activation_lag_threshold: spec.activation_lag_threshold,
            target_catch_up_seconds: f64::from(spec.target_catch_up_seconds.max(1)),
            scale_up_stabilization_seconds: f64::from(spec.scale_up.stabilization_seconds),
            scale_up_max_step: spec.scale_up.max_step,
            scale_down_stabilization_seconds: f64::from(spec.scale_down.stabilization_seconds),
            scale_down_max_step: spec.scale_down.max_step,
            allow_idle_consumers: spec.allow_idle_consumers,
            start_from,
            open_windows_seconds: 0.0,
        }
    }

    /// For a job with a window stage: scale to zero only once every open window has been
    /// emitted. The window holding the last record ends at most `size` after it and closes
    /// `allowedLateness` later; with the input quiet, the workers' watermark passes it after
    /// their idle timeout. So after `size + allowedLateness + idle timeout` (+ a margin) of zero
    /// lag every window is out, for records whose event time is not ahead of the wall clock. A
    /// duration that cannot be read keeps the job from scaling to zero.
    pub fn with_open_windows(mut self, pipeline: &[PipelineStage]) -> Self {
        let seconds = |text: &str| parse_duration(text).map(|d| d.as_secs_f64()).unwrap_or(f64::INFINITY);
        self.open_windows_seconds = pipeline
            .iter()
            .filter_map(|stage| stage.window.as_ref())
            .map(|w| {
                seconds(&w.size)
                    + seconds(&w.allowed_lateness)
                    + WORKER_IDLE_TIMEOUT_SECONDS
                    + WINDOW_EMIT_MARGIN_SECONDS
            })
            .fold(0.0, f64::max);
        self
    }
}

/// What the policy remembers between decisions.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Recent samples, oldest first.
    pub samples: VecDeque<LagSample>,
    /// Recent recommendations (time, replicas), oldest first.
    pub recommendations: VecDeque<(f64, i32)>,
    /// Records per second one worker processes, measured from the consume rate while the group
    /// had a backlog: the fallback when the workers report no true rate.
    pub capacity_per_replica: Option<f64>,
    /// Since when the total lag has been 0.
    pub zero_lag_since: Option<f64>,
    /// Since when the workers have been settled (ready, no rollout, no rebalance); `None` while
    /// they are not.
    pub settled_since: Option<f64>,
    /// After a scale change, each partition's committed offset when it was decided: the workers
    /// count as settled only once the group has finished rebalancing and commits move again,
    /// not as soon as the StatefulSet is ready. `None` when no change awaits that.
    pub commits_at_change: Option<Vec<PartitionSample>>,
}

impl History {
    /// Whether a whole sampling interval has passed with settled workers: only then do lag and
    /// rates describe the group rather than the last rebalance.
    fn settled_interval(&self) -> bool {
        let Some(since) = self.settled_since else { return false };
        let n = self.samples.len();
        n >= 2 && self.samples[n - 2].at >= since
    }
}

/// Rates derived from the last two samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    /// Records produced per second, all partitions.
    pub produce: f64,
    /// Records committed per second, all partitions.
    pub consume: f64,
}

/// A decision and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub replicas: i32,
    pub reason: String,
    /// A short label for metrics: `hold`, `scale-up`, `scale-down`, `steady`, `wake`, `to-zero`.
    pub kind: &'static str,
}

/// The observed state of the workers when deciding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Workers {
    pub current: i32,
    /// Workers ready: only their capacity counts (a pod blocked by a quota, unschedulable or
    /// crash-looping is not).
    pub ready: i32,
    /// All current workers ready and no rollout under way.
    pub settled: bool,
}

impl Workers {
    /// `current` workers, all ready and settled.
    pub fn settled(current: i32) -> Self {
        Self { current, ready: current, settled: true }
    }
}

/// How many samples and recommendations are kept at most.
const MAX_HISTORY: usize = 720;

/// Partitions whose committed offset did not move over the last `window` samples while they had
/// lag and others moved: a stuck consumer (poison record, hung processing). More workers do
/// not help them, so their lag is left out of the scaling arithmetic (and named in the reason).
pub fn stuck_partitions(samples: &VecDeque<LagSample>, start_from: StartFrom, window: usize) -> Vec<(String, i32)> {
    if samples.len() < window + 1 {
        return Vec::new();
    }
    let recent: Vec<&LagSample> = samples.iter().rev().take(window + 1).collect();
    let (latest, oldest) = (recent[0], recent[window]);
    let mut stuck = Vec::new();
    let mut any_moved = false;
    for partition in &latest.partitions {
        let Some(before) = oldest.same_partition(partition) else { continue };
        let moved = partition.committed != before.committed;
        any_moved |= moved;
        let always_lagging = recent.iter().all(|s| s.same_partition(partition).is_some_and(|p| p.lag(start_from) > 0));
        if !moved && partition.committed.is_some() && always_lagging {
            stuck.push((partition.topic.clone(), partition.partition));
        }
    }
    if any_moved {
        stuck
    } else {
        Vec::new()
    }
}

/// Produce and consume rates between the last two samples.
pub fn rates(samples: &VecDeque<LagSample>) -> Option<Rates> {
    let (previous, latest) = match samples.len() {
        0 | 1 => return None,
        n => (&samples[n - 2], &samples[n - 1]),
    };
    let seconds = latest.at - previous.at;
    if seconds <= 0.0 {
        return None;
    }
    let mut produced = 0i64;
    let mut consumed = 0i64;
    for partition in &latest.partitions {
        let Some(before) = previous.same_partition(partition) else {
            continue;
        };
        produced += (partition.high - before.high).max(0);
        if let (Some(now), Some(then)) = (partition.committed, before.committed) {
            consumed += (now - then).max(0);
        }
    }
    Some(Rates { produce: produced as f64 / seconds, consume: consumed as f64 / seconds })
}

/// With `partitions` partitions, the replica counts that lower the most partitions any one
/// worker holds: `ceil(P / L)` for each load `L`. For 12: 1, 2, 3, 4, 6, 12.
pub fn efficient_counts(partitions: i32) -> Vec<i32> {
    let mut counts: Vec<i32> = (1..=partitions.max(1)).map(|load| ceil_div(partitions.max(1), load)).collect();
    counts.sort_unstable();
    counts.dedup();
    counts
}

fn ceil_div(a: i32, b: i32) -> i32 {
    (a + b - 1) / b
}

/// Share of the wanted throughput an efficient count below `wanted` must still deliver to be
/// chosen instead of the next one up.
const ROUND_DOWN_SHARE: f64 = 0.8;

/// The efficient count for `wanted`: the next one up, unless the one below still gives at least
/// 80% of the wanted throughput (busiest worker load considered); never above `limit`.
pub(super) fn efficient_for(wanted: i32, partitions: i32, limit: i32) -> i32 {
    let counts: Vec<i32> = efficient_counts(partitions).into_iter().filter(|&c| c <= limit).collect();
    let below = counts.iter().copied().filter(|&c| c <= wanted).max();
    let above = counts.iter().copied().find(|&c| c >= wanted);
    // Throughput of r workers in worker-equivalents: P / (partitions on the busiest worker).
    let throughput = |r: i32| f64::from(partitions) / f64::from(ceil_div(partitions, r));
    let down_is_enough = |down: i32| throughput(down) >= ROUND_DOWN_SHARE * f64::from(wanted);
    match (below, above) {
        (_, Some(up)) if up == wanted => up,
        (Some(down), Some(_)) if down_is_enough(down) => down,
        (_, Some(up)) => up,
        (Some(down), None) => down,
        (None, None) => limit,
    }
}

/// Lag of a sample, leaving out the partitions in `excluded`.
pub(super) fn lag_excluding(sample: &LagSample, start_from: StartFrom, excluded: &[(String, i32)]) -> i64 {
    sample
        .partitions
        .iter()
        .filter(|p| !excluded.iter().any(|(t, n)| *t == p.topic && *n == p.partition))
        .map(|p| p.lag(start_from))
        .sum()
}

/// How long a rebalance stops consumption, about: a smaller group must also drain what piles up
/// meanwhile, or it scales down into a backlog it cannot clear and scales straight back up. The
/// longest partition gap per scale event measured on a real broker (`scale_gap` bench, README
/// "Scaling without stopping").
pub const REBALANCE_PAUSE_SECONDS: f64 = 2.0;

/// Seconds of consumption a group that keeps up may hold uncommitted.
const IN_FLIGHT_SECONDS: f64 = 5.0;

/// Whether the group consumes again since `at_change`: every partition that has lag in `sample`
/// has committed past where it was then, is stuck (its commit stands while others move), or is
/// quiet (nothing was written to it since the change, so there is nothing a consumer could
/// commit: a transactional input's trailing commit marker or aborted records read as lag the
/// workers never commit past; waiting for them to move would hold every decision forever).
fn consumption_resumed(
    at_change: &[PartitionSample],
    sample: &LagSample,
    stuck: &[(String, i32)],
    start_from: StartFrom,
) -> bool {
    sample.partitions.iter().filter(|p| p.lag(start_from) > 0).all(|p| {
        let before = at_change.iter().find(|b| b.topic == p.topic && b.partition == p.partition);
        let advanced = match (before.and_then(|b| b.committed), p.committed) {
            (Some(then), Some(now)) => now > then,
            (None, now) => now.is_some(),
            (Some(_), None) => false,
        };
        let quiet = before.is_some_and(|b| b.high == p.high && b.committed == p.committed);
        advanced || quiet || stuck.iter().any(|(t, n)| *t == p.topic && *n == p.partition)
    })
}

/// A scale change was decided: the group rebalances, and the next intervals do not describe it
/// until its commits move again.
pub(super) fn start_rebalance(history: &mut History) {
    history.settled_since = None;
    history.commits_at_change = history.samples.back().map(|latest| latest.partitions.clone());
}

/// Records a sample into the history and updates the capacity estimate.
pub fn observe(history: &mut History, sample: LagSample, workers: Workers, settings: &Settings) {
    history.samples.push_back(sample);
    while history.samples.len() > MAX_HISTORY {
        history.samples.pop_front();
    }
    let Some(sample) = history.samples.back().cloned() else { return };
    if let Some(at_change) = &history.commits_at_change {
        let stuck = stuck_partitions(&history.samples, settings.start_from, 3);
        if workers.settled && consumption_resumed(at_change, &sample, &stuck, settings.start_from) {
            history.commits_at_change = None;
        }
    }
    let settled = workers.settled && history.commits_at_change.is_none();
    history.settled_since = match (settled, history.settled_since) {
        (false, _) => None,
        (true, Some(since)) => Some(since),
        (true, None) => Some(sample.at),
    };
    history.zero_lag_since = match (sample.total_lag(settings.start_from), history.zero_lag_since) {
        (0, Some(since)) => Some(since),
        (0, None) => Some(sample.at),
        _ => None,
    };
    // A group whose consuming partitions had a backlog through a whole settled interval worked
    // at full speed: its consume rate per worker is its capacity. Partitions whose offsets did
    // not move (idle or stuck) say nothing about speed. A backlog of less than a few seconds of
    // consumption is what a group that keeps up has in flight (fetches, the commit interval,
    // partial aggregates not yet flushed), not saturation.
    if !(history.settled_interval() && workers.current > 0) {
        return;
    }
    let Some(rates) = rates(&history.samples).filter(|r| r.consume > 0.0) else { return };
    let n = history.samples.len();
    let (before, after) = (&history.samples[n - 2], &history.samples[n - 1]);
    let not_moving: Vec<(String, i32)> = after
        .partitions
        .iter()
        .filter(|p| before.same_partition(p).is_none_or(|b| b.committed == p.committed))
        .map(|p| (p.topic.clone(), p.partition))
        .collect();
    let saturated = lag_excluding(before, settings.start_from, &not_moving) > 0
        && lag_excluding(after, settings.start_from, &not_moving) as f64 >= rates.consume * IN_FLIGHT_SECONDS;
    if !saturated {
        return;
    }
    let measured = rates.consume / f64::from(workers.ready.clamp(1, workers.current));
    history.capacity_per_replica = Some(match history.capacity_per_replica {
        Some(previous) => 0.5 * previous + 0.5 * measured,
        None => measured,
    });
}

/// One poll at `now`: records the measurement and decides. The operator's driver and
/// `streamjob-operator dev` both scale through this.
pub fn poll(
    history: &mut History,
    samples: Vec<PartitionSample>,
    workers: Workers,
    settings: &Settings,
    now: f64,
) -> Decision {
    let partitions = i32::try_from(samples.len()).unwrap_or(i32::MAX);
    observe(history, LagSample { at: now, partitions: samples }, workers, settings);
    decide(history, workers, partitions, settings, now)
}

/// The decision for now. Call [`observe`] with the newest sample first; the recommendation is
/// recorded in `history` for stabilisation.
pub fn decide(history: &mut History, workers: Workers, partitions: i32, settings: &Settings, now: f64) -> Decision {
    let current = workers.current;
    let Some(latest) = history.samples.back() else {
        return hold(current, "no lag measurement yet".to_owned());
    };
    let start_from = settings.start_from;
    if current > 0 && !(workers.settled && history.settled_interval()) {
        return super::unready::decide_unsettled(history, workers, partitions, settings, now);
    }
    let stuck = stuck_partitions(&history.samples, start_from, 3);
    let total_lag = lag_excluding(latest, start_from, &stuck);
    let all_lag = latest.total_lag(start_from);

    if current == 0 {
        if all_lag > settings.activation_lag_threshold {
            let wake = settings.min_replicas.max(1);
            return Decision {
                replicas: wake,
                reason: format!(
                    "lag {all_lag} exceeds activationLagThreshold {}; waking from zero: 0 → {wake}",
                    settings.activation_lag_threshold
                ),
                kind: "wake",
            };
        }
        return Decision {
            replicas: 0,
            reason: format!(
                "lag {all_lag} within activationLagThreshold {}; staying at zero",
                settings.activation_lag_threshold
            ),
            kind: "steady",
        };
    }

    let base = ceil_div_i64(total_lag, settings.lag_threshold);
    let mut explanation =
        format!("lag {total_lag} over {current} replicas, target {} per replica: base {base}", settings.lag_threshold);
    let rates = rates(&history.samples);
    let mut catch_up = 0;
    match (rates, Capacity::choose(latest, history.capacity_per_replica)) {
        (Some(rates), Some(capacity)) => {
            let needed = |lag: f64| {
                let rate = lag / settings.target_catch_up_seconds + rates.produce;
                (rate / capacity.per_replica()).ceil() as i32
            };
            catch_up = needed(total_lag as f64);
            explanation.push_str(&format!(
                "; input {:.0}/s, {}: catch-up within {}s needs {catch_up}",
                rates.produce,
                capacity.describe(),
                settings.target_catch_up_seconds
            ));
            if catch_up < current {
                let with_pause = needed(total_lag as f64 + rates.produce * REBALANCE_PAUSE_SECONDS);
                if with_pause > catch_up {
                    catch_up = with_pause;
                    explanation.push_str(&format!(
                        ", {catch_up} to also drain the {REBALANCE_PAUSE_SECONDS:.0}s of input a scale-down's rebalance holds up"
                    ));
                }
            }
        }
        (Some(_), None) => {
            explanation.push_str("; no catch-up estimate: no true rate from the workers and no backlog measured yet")
        }
        (None, _) => {}
    }
    if !stuck.is_empty() {
        let names: Vec<String> = stuck.iter().map(|(t, p)| format!("{t}/{p}")).collect();
        explanation.push_str(&format!("; left out stuck partitions {} (their offsets do not move)", names.join(", ")));
    }
    let mut wanted = base.max(catch_up).max(1);

    let upper = if settings.allow_idle_consumers {
        settings.max_replicas
    } else {
        settings.max_replicas.min(partitions.max(1))
    };
    let floor = settings.min_replicas.max(1).min(upper);
    wanted = wanted.clamp(floor, upper.max(floor));
    if !settings.allow_idle_consumers {
        let efficient = efficient_for(wanted, partitions.max(1), upper.max(floor));
        if efficient != wanted {
            explanation.push_str(&format!("; {wanted} → {efficient} (efficient count for {partitions} partitions)"));
        }
        wanted = efficient.max(floor);
    }

    // Scale to zero only after the lag has been 0 for the whole scale-down window, and for a
    // windowed job until its open windows have been emitted.
    let zero_for = history.zero_lag_since.map(|since| now - since).unwrap_or(0.0);
    let zero_needed = settings.scale_down_stabilization_seconds.max(settings.open_windows_seconds);
    let zero_lag = settings.min_replicas == 0 && all_lag == 0;
    if zero_lag && zero_for >= settings.scale_down_stabilization_seconds && zero_for < zero_needed {
        explanation.push_str(&format!(
            "; not to zero before every open window is emitted: {:.0}s of zero lag of {:.0}s (window size + allowedLateness + the workers' idle timeout)",
            zero_for, settings.open_windows_seconds
        ));
    }
    if zero_lag && zero_for >= zero_needed {
        history.recommendations.push_back((now, 0));
        start_rebalance(history);
        let target = settings.scale_down_max_step.map_or(0, |step| (current - step).max(0));
        return Decision {
            replicas: target,
            reason: format!(
                "lag has been 0 for {zero_for:.0}s, the whole scale-down window ({}s): {current} → {target}",
                settings.scale_down_stabilization_seconds
            ),
            kind: if target == 0 { "to-zero" } else { "scale-down" },
        };
    }

    history.recommendations.push_back((now, wanted));
    while history.recommendations.len() > MAX_HISTORY {
        history.recommendations.pop_front();
    }
    let window_start = |seconds: f64| now - seconds;
    let recent_max = |since: f64| history.recommendations.iter().filter(|(t, _)| *t >= since).map(|(_, r)| *r).max();
    let recent_min = |since: f64| history.recommendations.iter().filter(|(t, _)| *t >= since).map(|(_, r)| *r).min();

    let mut target = current;
    if wanted > current {
        let stable = recent_min(window_start(settings.scale_up_stabilization_seconds)).unwrap_or(wanted);
        target = stable.max(current);
        if let Some(step) = settings.scale_up_max_step {
            target = target.min(current + step);
        }
    } else if wanted < current {
        let stable = recent_max(window_start(settings.scale_down_stabilization_seconds)).unwrap_or(current);
        target = stable.min(current);
        if let Some(step) = settings.scale_down_max_step {
            target = target.max(current - step);
        }
    }

    if target != current {
        start_rebalance(history);
    }
    let kind = match target.cmp(&current) {
        std::cmp::Ordering::Greater => "scale-up",
        std::cmp::Ordering::Less if target == 0 => "to-zero",
        std::cmp::Ordering::Less => "scale-down",
        std::cmp::Ordering::Equal if wanted < current => "stabilizing",
        std::cmp::Ordering::Equal => "steady",
    };
    let reason = match kind {
        "stabilizing" => format!(
            "{explanation}; holding {current}: scale-down waits until every recommendation over {}s allows it",
            settings.scale_down_stabilization_seconds
        ),
        _ => format!("{explanation}; {current} → {target}"),
    };
    Decision { replicas: target, reason, kind }
}

pub(super) fn ceil_div_i64(a: i64, b: i64) -> i32 {
    let value = (a + b - 1) / b;
    i32::try_from(value).unwrap_or(i32::MAX)
}

pub(super) fn hold(current: i32, why: String) -> Decision {
    Decision { replicas: current, reason: format!("holding {current}: {why}"), kind: "hold" }
}
