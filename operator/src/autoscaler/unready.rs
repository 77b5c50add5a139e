//! Deciding while the workers are not settled (starting, rebalancing, or some of them cannot
//! run: a quota, no node, a crash loop). The rates and lag of such an interval do not describe
//! the group, so the catch-up and scale-down rules wait; but lag that keeps growing while
//! workers are missing still scales up, by the base rule (lag over `lagThreshold`), up to
//! `maxReplicas`, as KEDA's and the HPA's would. Only ready workers carry load: a decision
//! never counts a blocked pod's capacity.

use super::policy::{
    ceil_div_i64, efficient_for, hold, lag_excluding, start_rebalance, stuck_partitions, Decision, History, Settings,
    Workers,
};

/// The decision while `workers` are not settled: scale up when some workers are not ready and
/// the lag grew over the last interval to more than the current size can take; else hold,
/// saying why.
pub fn decide_unsettled(
    history: &mut History,
    workers: Workers,
    partitions: i32,
    settings: &Settings,
    now: f64,
) -> Decision {
    let current = workers.current;
    let ready = workers.ready.clamp(0, current);
    let n = history.samples.len();
    let waiting = format!("{ready}/{current} workers ready");
    if ready >= current || n < 2 {
        return hold(
            current,
            format!("workers are starting or rebalancing ({waiting}); lag is not representative yet"),
        );
    }
    let stuck = stuck_partitions(&history.samples, settings.start_from, 3);
    let (before, latest) = (&history.samples[n - 2], &history.samples[n - 1]);
    let (lag_before, lag) =
        (lag_excluding(before, settings.start_from, &stuck), lag_excluding(latest, settings.start_from, &stuck));
    let upper = if settings.allow_idle_consumers {
        settings.max_replicas
    } else {
        settings.max_replicas.min(partitions.max(1))
    };
    let floor = settings.min_replicas.max(1).min(upper);
    let mut wanted = ceil_div_i64(lag, settings.lag_threshold).clamp(floor, upper.max(floor));
    if !settings.allow_idle_consumers {
        wanted = efficient_for(wanted, partitions.max(1), upper.max(floor)).max(floor);
    }
    if lag <= lag_before || wanted <= current {
        return hold(
            current,
            format!(
                "{waiting}; lag {lag} (was {lag_before}) over a target of {} per replica wants {wanted}: waiting for the workers",
                settings.lag_threshold
            ),
        );
    }
    history.recommendations.push_back((now, wanted));
    let since = now - settings.scale_up_stabilization_seconds;
    let stable = history.recommendations.iter().filter(|(t, _)| *t >= since).map(|(_, r)| *r).min().unwrap_or(wanted);
    let mut target = stable.max(current);
    if let Some(step) = settings.scale_up_max_step {
        target = target.min(current + step);
    }
    if target == current {
        return hold(current, format!("{waiting}; lag {lag} grows but scale-up waits out its stabilization window"));
    }
    start_rebalance(history);
    Decision {
        replicas: target,
        reason: format!(
            "lag {lag} grew from {lag_before} while only {waiting}; target {} per replica wants {wanted}: {current} → {target}",
            settings.lag_threshold
        ),
        kind: "scale-up",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::policy::{observe, LagSample, PartitionSample};
    use streamjob_crds::StartFrom;

    fn settings() -> Settings {
        Settings {
            min_replicas: 1,
            max_replicas: 6,
            lag_threshold: 1000,
            activation_lag_threshold: 0,
            target_catch_up_seconds: 60.0,
            scale_up_stabilization_seconds: 0.0,
            scale_up_max_step: None,
            scale_down_stabilization_seconds: 300.0,
            scale_down_max_step: None,
            allow_idle_consumers: false,
            start_from: StartFrom::Earliest,
            open_windows_seconds: 0.0,
        }
    }

    fn sample(at: f64, lag_each: i64) -> LagSample {
        let partition = |p| PartitionSample {
            topic: "t".into(),
            partition: p,
            low: 0,
            high: 100 + lag_each,
            committed: Some(100),
            committed_by: None,
        };
        LagSample { at, partitions: (0..6).map(partition).collect() }
    }

    /// The decision at the second of two samples with `lags` per partition, `workers` as given.
    fn decide_after(lags: [i64; 2], workers: Workers, settings: &Settings) -> Decision {
        let mut history = History::default();
        observe(&mut history, sample(0.0, lags[0]), workers, settings);
        observe(&mut history, sample(10.0, lags[1]), workers, settings);
        decide_unsettled(&mut history, workers, 6, settings, 10.0)
    }

    #[test]
    fn lag_growing_while_workers_are_blocked_scales_up_to_max_replicas() {
        let blocked = |current, ready| Workers { current, ready, settled: false };
        // (lags per partition, workers, expected replicas, kind)
        let table = [
            ("grows, 2 of 3 ready: base 5 → efficient 6", [500, 700], blocked(3, 2), 6, "scale-up"),
            ("grows, but 3 replicas already take it", [100, 400], blocked(3, 2), 3, "hold"),
            ("does not grow", [700, 700], blocked(3, 2), 3, "hold"),
            ("shrinks", [900, 700], blocked(3, 1), 3, "hold"),
            ("grows, every worker ready (a rebalance)", [500, 700], blocked(3, 3), 3, "hold"),
            ("grows past maxReplicas", [5000, 9000], blocked(4, 3), 6, "scale-up"),
        ];
        for (case, lags, workers, replicas, kind) in table {
            let decision = decide_after(lags, workers, &settings());
            assert_eq!((decision.replicas, decision.kind), (replicas, kind), "{case}: {}", decision.reason);
            assert!(
                decision.reason.contains(&format!("{}/{} workers ready", workers.ready, workers.current)),
                "{case}"
            );
        }
        let stepped = Settings { scale_up_max_step: Some(1), ..settings() };
        assert_eq!(decide_after([500, 700], blocked(3, 2), &stepped).replicas, 4, "maxStep limits the step");
    }
}
