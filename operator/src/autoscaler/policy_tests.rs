//! Table tests, one per rule of the policy.

use streamjob_crds::StartFrom;

use super::policy::*;

fn settings() -> Settings {
    Settings {
        min_replicas: 1,
        max_replicas: 12,
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

/// A sample of `partitions` partitions each with `lag_each` lag, committed at `committed`.
fn sample(at: f64, partitions: i32, lag_each: i64, committed: i64) -> LagSample {
    LagSample {
        at,
        partitions: (0..partitions)
            .map(|p| PartitionSample {
                topic: "t".into(),
                partition: p,
                low: 0,
                high: committed + lag_each,
                committed: Some(committed),
                committed_by: None,
            })
            .collect(),
    }
}

fn settled(current: i32) -> Workers {
    Workers::settled(current)
}

/// A decision after two identical samples 10 s apart (one settled interval, no consumption).
fn decide_once(lag_each: i64, partitions: i32, current: i32, settings: &Settings) -> Decision {
    let mut history = History::default();
    observe(&mut history, sample(0.0, partitions, lag_each, 100), settled(current), settings);
    observe(&mut history, sample(10.0, partitions, lag_each, 100), settled(current), settings);
    decide(&mut history, settled(current), partitions, settings, 10.0)
}

#[test]
fn base_rule_is_lag_over_threshold_clamped_to_bounds_and_partitions() {
    // (lag per partition, partitions, current, expected)
    let cases = [
        (0, 12, 1, 1),     // no lag: minReplicas
        (250, 12, 1, 3),   // 3000 / 1000 = 3
        (334, 12, 1, 4),   // 4008 → 5; 4 workers give 4/5 of it (≥ 80%): efficient 4
        (5000, 12, 1, 12), // 60000 → 60, clamped to 12 partitions
        (5000, 4, 1, 4),   // clamped to 4 partitions
    ];
    for (lag, partitions, current, expected) in cases {
        let decision = decide_once(lag, partitions, current, &settings());
        assert_eq!(decision.replicas, expected, "lag {lag} x {partitions}: {}", decision.reason);
    }
    let bounded = Settings { max_replicas: 3, ..settings() };
    assert_eq!(decide_once(5000, 12, 1, &bounded).replicas, 3);
    let idle_allowed = Settings { allow_idle_consumers: true, max_replicas: 20, ..settings() };
    assert_eq!(decide_once(5000, 4, 1, &idle_allowed).replicas, 20, "allowIdleConsumers lifts the partition cap");
}

#[test]
fn partitions_without_commits_count_per_start_from() {
    let uncommitted = LagSample {
        at: 0.0,
        partitions: vec![PartitionSample {
            topic: "t".into(),
            partition: 0,
            low: 100,
            high: 5100,
            committed: None,
            committed_by: None,
        }],
    };
    assert_eq!(uncommitted.total_lag(StartFrom::Earliest), 5000);
    assert_eq!(uncommitted.total_lag(StartFrom::Latest), 0);
    let committed_past_high =
        PartitionSample { topic: "t".into(), partition: 0, low: 0, high: 10, committed: Some(20), committed_by: None };
    assert_eq!(committed_past_high.lag(StartFrom::Earliest), 0, "never negative");

    let s = Settings { start_from: StartFrom::Latest, ..settings() };
    let mut history = History::default();
    let many = LagSample {
        at: 0.0,
        partitions: (0..12)
            .map(|p| PartitionSample {
                topic: "t".into(),
                partition: p,
                low: 0,
                high: 1_000_000,
                committed: None,
                committed_by: None,
            })
            .collect(),
    };
    observe(&mut history, many.clone(), settled(1), &s);
    observe(&mut history, LagSample { at: 10.0, ..many }, settled(1), &s);
    assert_eq!(decide(&mut history, settled(1), 12, &s, 10.0).replicas, 1, "a new group is no reason to jump to max");
}

#[test]
fn only_efficient_counts_are_used() {
    assert_eq!(efficient_counts(12), vec![1, 2, 3, 4, 6, 12]);
    assert_eq!(efficient_counts(10), vec![1, 2, 3, 4, 5, 10]);
    // (wanted via lag, expected): 5 workers for 12 partitions hold 3 at most, like 4; 6 hold 2.
    // (lag per partition of 12, expected): 5004 wants 6; 6504 wants 7, and 6 give 6/7 (≥ 80%);
    // 7008 wants 8, and 6 give only 6/8: 12; 11004 wants 11: 12, never one short; 3996 wants 4.
    for (lag_each, expected) in [(417, 6), (542, 6), (584, 12), (917, 12), (333, 4)] {
        let decision = decide_once(lag_each, 12, 1, &settings());
        assert_eq!(decision.replicas, expected, "{}", decision.reason);
    }
    let capped = Settings { max_replicas: 5, ..settings() };
    assert_eq!(decide_once(600, 12, 1, &capped).replicas, 4, "a cap of 5 uses 4: the fifth takes no load off");
    let one_short = decide_once(917, 12, 6, &settings());
    assert_eq!(one_short.replicas, 12, "11 is never a target for 12 partitions: {}", one_short.reason);
}

#[test]
fn catch_up_uses_measured_capacity_and_input_rate() {
    // A high lagThreshold, so the base rule asks for 1 and the catch-up rule decides.
    let s = Settings { lag_threshold: 100_000, ..settings() };
    let mut history = History::default();
    // 2 workers with a backlog throughout: committed advances 2000/s in all, lag grows.
    observe(&mut history, sample(0.0, 12, 100, 0), settled(2), &s);
    observe(&mut history, sample(10.0, 12, 2000, 20000 / 12), settled(2), &s);
    let capacity = history.capacity_per_replica.expect("capacity measured while saturated");
    assert!((capacity - 999.6).abs() < 1.0, "(20000/12)*12 records in 10 s by 2 workers: {capacity}");
    let decision = decide(&mut history, settled(2), 12, &s, 10.0);
    let rates = rates(&history.samples).expect("rates");
    let needed = ((2400.0 / 60.0 + rates.produce) / capacity).ceil() as i32;
    assert!(needed > 1, "the catch-up rule asks for more than the base rule here");
    assert_eq!(needed, 5);
    assert_eq!(decision.replicas, 4, "5 wanted; 4 workers (3 partitions each) give 4/5 of it: {}", decision.reason);
    assert!(decision.reason.contains("catch-up within 60s needs"), "{}", decision.reason);
}

#[test]
fn a_group_that_keeps_up_is_not_taken_as_saturated() {
    let s = settings();
    let mut history = History::default();
    // 2 workers keep up with 6000/s: 2 s of input in flight (12 × 1000), committed moves 60000
    // in 10 s. That is not a measure of how fast they could go.
    observe(&mut history, sample(0.0, 12, 1000, 0), settled(2), &s);
    observe(&mut history, sample(10.0, 12, 1000, 5000), settled(2), &s);
    assert_eq!(history.capacity_per_replica, None);
    // The same rate with 10 s of input waiting is saturation.
    observe(&mut history, sample(20.0, 12, 5000, 10_000), settled(2), &s);
    let capacity = history.capacity_per_replica.expect("saturated");
    assert!((capacity - 3000.0).abs() < 1.0, "60000 records in 10 s by 2 workers: {capacity}");
}

#[test]
fn scale_up_is_immediate_and_scale_down_waits_for_the_window() {
    let s = settings();
    let mut history = History::default();
    observe(&mut history, sample(0.0, 12, 500, 0), settled(1), &s);
    assert_eq!(decide(&mut history, settled(1), 12, &s, 0.0).kind, "hold", "one sample is no interval");
    observe(&mut history, sample(10.0, 12, 500, 0), settled(1), &s);
    let up = decide(&mut history, settled(1), 12, &s, 10.0);
    assert_eq!((up.replicas, up.kind), (6, "scale-up"), "{}", up.reason);

    let mut t = 20.0;
    let mut replicas = up.replicas;
    while t < 310.0 {
        observe(&mut history, sample(t, 12, 0, 6000 + t as i64), settled(replicas), &s);
        let decision = decide(&mut history, settled(replicas), 12, &s, t);
        assert_eq!(decision.replicas, 6, "at {t}s the window still holds the recommendation of 6");
        let expected_kind = if t == 20.0 { "hold" } else { "stabilizing" };
        assert_eq!(decision.kind, expected_kind, "at {t}s (after the scale-up, one interval to settle)");
        replicas = decision.replicas;
        t += 10.0;
    }
    observe(&mut history, sample(320.0, 12, 0, 7000), settled(replicas), &s);
    let down = decide(&mut history, settled(replicas), 12, &s, 320.0);
    assert_eq!((down.replicas, down.kind), (1, "scale-down"), "{}", down.reason);
}

#[test]
fn max_step_limits_each_decision() {
    let s = Settings {
        scale_up_max_step: Some(2),
        scale_down_max_step: Some(1),
        scale_down_stabilization_seconds: 0.0,
        ..settings()
    };
    assert_eq!(decide_once(5000, 12, 1, &s).replicas, 3);
    assert_eq!(decide_once(0, 12, 6, &s).replicas, 5);
}

#[test]
fn no_decision_while_a_rollout_is_in_progress() {
    let s = settings();
    let mut history = History::default();
    observe(&mut history, sample(0.0, 12, 5000, 0), settled(2), &s);
    let decision = decide(&mut history, Workers { current: 2, ready: 2, settled: false }, 12, &s, 0.0);
    assert_eq!((decision.replicas, decision.kind), (2, "hold"));
    let mut empty = History::default();
    assert_eq!(decide(&mut empty, settled(3), 12, &s, 0.0).kind, "hold", "no sample, no decision");
}

#[test]
fn scale_to_zero_only_after_a_full_window_of_zero_lag_and_wake_on_activation() {
    let s = Settings { min_replicas: 0, activation_lag_threshold: 50, ..settings() };
    let mut history = History::default();
    for step in 0..=30 {
        let t = f64::from(step) * 10.0;
        observe(&mut history, sample(t, 12, 0, 100), settled(1), &s);
        let decision = decide(&mut history, settled(1), 12, &s, t);
        let expected = if t >= 300.0 { 0 } else { 1 };
        if expected == 0 && decision.replicas == 0 {
            break;
        }
        assert_eq!(decision.replicas, expected, "at {t}s: {}", decision.reason);
    }
    let mut asleep = History::default();
    observe(&mut asleep, sample(0.0, 12, 4, 100), Workers::settled(0), &s);
    assert_eq!(decide(&mut asleep, settled(0), 12, &s, 0.0).replicas, 0, "48 ≤ activation threshold 50");
    observe(&mut asleep, sample(10.0, 12, 5, 100), Workers::settled(0), &s);
    let wake = decide(&mut asleep, settled(0), 12, &s, 10.0);
    assert_eq!((wake.replicas, wake.kind), (1, "wake"));
    let s1 = Settings { min_replicas: 1, ..settings() };
    let mut h = History::default();
    for step in 0..40 {
        observe(&mut h, sample(f64::from(step) * 10.0, 12, 0, 100), settled(1), &s1);
        assert_eq!(
            decide(&mut h, settled(1), 12, &s1, f64::from(step) * 10.0).replicas,
            1,
            "minReplicas 1 never scales to zero"
        );
    }
}

#[test]
fn stuck_partitions_do_not_drive_scaling() {
    let s = settings();
    let mut history = History::default();
    for step in 0..5 {
        let t = f64::from(step) * 10.0;
        let mut partitions: Vec<PartitionSample> = (1..12)
            .map(|p| PartitionSample {
                topic: "t".into(),
                partition: p,
                low: 0,
                high: 1000 * i64::from(step),
                committed: Some(1000 * i64::from(step)),
                committed_by: None,
            })
            .collect();
        partitions.push(PartitionSample {
            topic: "t".into(),
            partition: 0,
            low: 0,
            high: 50_000 + 1000 * i64::from(step),
            committed: Some(10),
            committed_by: None,
        });
        observe(&mut history, LagSample { at: t, partitions }, settled(2), &s);
    }
    let decision = decide(&mut history, settled(2), 12, &s, 40.0);
    assert!(decision.reason.contains("stuck partitions t/0"), "{}", decision.reason);
    assert!(decision.replicas <= 2, "more workers would not move a stuck partition: {}", decision.reason);
}

#[test]
fn after_a_scale_change_workers_settle_only_once_commits_move_again() {
    let settings = Settings { scale_down_stabilization_seconds: 0.0, ..settings() };
    let mut history = History::default();
    // 4 workers, no lag: the recommendation is 1, and the scale-down is decided.
    observe(&mut history, sample(0.0, 12, 0, 1000), settled(4), &settings);
    observe(&mut history, sample(10.0, 12, 0, 1000), settled(4), &settings);
    let down = decide(&mut history, settled(4), 12, &settings, 10.0);
    assert_eq!(down.replicas, 1, "{}", down.reason);
    // The StatefulSet is ready at once, but the group's rebalance stalls commits while input
    // keeps coming: the lag over the threshold is the rebalance, not a lack of workers.
    for at in [20.0, 30.0, 40.0] {
        observe(&mut history, sample(at, 12, 200, 1000), settled(1), &settings);
        let held = decide(&mut history, settled(1), 12, &settings, at);
        assert_eq!((held.replicas, held.kind), (1, "hold"), "at {at}: {}", held.reason);
    }
    // Commits move again: the workers count as settled from here, a whole interval later they
    // are judged, and the backlog they drained by then needs no more workers.
    observe(&mut history, sample(50.0, 12, 5, 3400), settled(1), &settings);
    assert_eq!(decide(&mut history, settled(1), 12, &settings, 50.0).kind, "hold", "settled for less than an interval");
    observe(&mut history, sample(60.0, 12, 5, 3450), settled(1), &settings);
    let judged = decide(&mut history, settled(1), 12, &settings, 60.0);
    assert_eq!(judged.replicas, 1, "{}", judged.reason);
    assert_ne!(judged.kind, "hold", "{}", judged.reason);
}

/// `sample`, each partition's commit carrying a report of `rate` records per busy second.
fn reported(mut sample: LagSample, rate: f64, busy_share: f64) -> LagSample {
    for partition in &mut sample.partitions {
        partition.committed_by = Some(WorkerRate {
            worker: format!("w-{}", partition.partition % 2),
            records_per_busy_second: rate,
            busy_share,
            age_seconds: 1.0,
        });
    }
    sample
}

#[test]
fn the_workers_true_rate_decides_the_catch_up_not_the_rate_they_were_fed() {
    let s = Settings { lag_threshold: 1_000_000, scale_down_stabilization_seconds: 0.0, ..settings() };
    // Six workers after a spike, fed 2000/s and keeping up (standing lag of 1 s), each able to
    // do 57 000/s. The consume rate would credit them with 333/s each.
    let mut history = History::default();
    for (i, t) in [0.0, 10.0, 20.0].into_iter().enumerate() {
        let committed = 20_000 * i as i64 / 12;
        observe(&mut history, reported(sample(t, 12, 170, committed), 57_000.0, 0.006), settled(6), &s);
    }
    history.capacity_per_replica = Some(333.0);
    let decision = decide(&mut history, settled(6), 12, &s, 20.0);
    assert_eq!((decision.replicas, decision.kind), (1, "scale-down"), "{}", decision.reason);
    assert!(
        decision.reason.contains("true rate 57000/s per replica (measured by 2 workers, busy 1% of the time)"),
        "{}",
        decision.reason
    );
}

#[test]
fn without_a_report_the_decision_falls_back_to_the_backlog_rate_and_says_so() {
    let s = Settings { lag_threshold: 1_000_000, scale_down_stabilization_seconds: 0.0, ..settings() };
    let mut history = History::default();
    for (i, t) in [0.0, 10.0, 20.0].into_iter().enumerate() {
        observe(&mut history, sample(t, 12, 170, 20_000 * i as i64 / 12), settled(6), &s);
    }
    history.capacity_per_replica = Some(333.0);
    let decision = decide(&mut history, settled(6), 12, &s, 20.0);
    assert!(decision.reason.contains("333/s per replica from the consume rate under backlog"), "{}", decision.reason);
    assert!(decision.reason.contains("no fresh true rate from the workers"), "{}", decision.reason);
    assert_eq!(decision.replicas, 6, "2000/s + 2040 lag over 60 s at 333/s needs 7: {}", decision.reason);

    history.capacity_per_replica = None;
    let decision = decide(&mut history, settled(6), 12, &s, 20.0);
    assert!(decision.reason.contains("no catch-up estimate"), "{}", decision.reason);
}

#[test]
fn a_scale_down_leaves_room_to_drain_what_its_own_rebalance_holds_up() {
    let s = Settings { lag_threshold: 1_000_000, scale_down_stabilization_seconds: 0.0, ..settings() };
    // 4 workers of 1000/s each carry 3000/s with no lag. 3 would carry it too, but not the
    // records the rebalance of a scale-down piles up: they would scale straight back up.
    let mut history = History::default();
    for (i, t) in [0.0, 10.0, 20.0].into_iter().enumerate() {
        let committed = 30_000 * i as i64 / 12;
        observe(&mut history, reported(sample(t, 12, 0, committed), 1000.0, 0.75), settled(4), &s);
    }
    let decision = decide(&mut history, settled(4), 12, &s, 20.0);
    assert_eq!((decision.replicas, decision.kind), (4, "steady"), "{}", decision.reason);
    assert!(decision.reason.contains("a scale-down's rebalance holds up"), "{}", decision.reason);
}

#[test]
fn a_windowed_job_scales_to_zero_only_once_its_open_windows_are_emitted() {
    let pipeline: Vec<streamjob_crds::PipelineStage> = serde_json::from_value(serde_json::json!([
        {"keyBy": {"field": "word"}},
        {"window": {"type": "tumbling", "size": "1m", "allowedLateness": "30s", "aggregate": {"function": "count"}}}
    ]))
    .expect("pipeline");
    let s =
        Settings { min_replicas: 0, scale_down_stabilization_seconds: 30.0, ..settings() }.with_open_windows(&pipeline);
    // 60 s of window, 30 s of lateness, the workers' 10 s idle timeout and 5 s of margin.
    assert_eq!(s.open_windows_seconds, 105.0);
    let mut history = History::default();
    let mut reached_zero_at = None;
    for step in 0..=12 {
        let t = f64::from(step) * 10.0;
        observe(&mut history, sample(t, 12, 0, 100), settled(1), &s);
        let decision = decide(&mut history, settled(1), 12, &s, t);
        if decision.replicas == 0 {
            reached_zero_at = Some(t);
            break;
        }
        if t >= 30.0 {
            assert!(decision.reason.contains("not to zero before every open window is emitted"), "{}", decision.reason);
        }
    }
    assert_eq!(reached_zero_at, Some(110.0), "zero after 105 s of zero lag, at the next 10 s poll");
    let plain =
        Settings { min_replicas: 0, scale_down_stabilization_seconds: 30.0, ..settings() }.with_open_windows(&[]);
    assert_eq!(plain.open_windows_seconds, 0.0, "no window: the scale-down window alone");
}

#[test]
fn after_a_scale_change_on_a_quiet_transactional_input_the_workers_settle() {
    let settings = Settings { scale_down_stabilization_seconds: 0.0, ..settings() };
    let mut history = History::default();
    // Drained, but each partition of a transactional input ends with a commit marker the
    // workers never commit past: lag 1 everywhere, and nothing new is written.
    observe(&mut history, sample(0.0, 12, 1, 1000), settled(4), &settings);
    observe(&mut history, sample(10.0, 12, 1, 1000), settled(4), &settings);
    let down = decide(&mut history, settled(4), 12, &settings, 10.0);
    assert_eq!(down.replicas, 1, "{}", down.reason);
    observe(&mut history, sample(20.0, 12, 1, 1000), settled(1), &settings);
    assert_eq!(decide(&mut history, settled(1), 12, &settings, 20.0).kind, "hold", "settled for less than an interval");
    observe(&mut history, sample(30.0, 12, 1, 1000), settled(1), &settings);
    let judged = decide(&mut history, settled(1), 12, &settings, 30.0);
    assert_ne!(judged.kind, "hold", "a quiet input does not hold decisions forever: {}", judged.reason);
}
