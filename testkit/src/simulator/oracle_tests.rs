use super::*;
use crate::simulator::oracle_model::LagModel;
use crate::simulator::{traces, Ours};

/// Two partitions, 10 records/s per worker, 15 records/s arriving: one worker falls behind by
/// 5/s, two catch up by 5/s.
fn tiny(rebalance_pause: f64) -> (Model, Trace) {
    let model = Model {
        partitions: 2,
        capacity_per_replica: 10.0,
        rebalance_pause,
        min_replicas: 1,
        max_replicas: 2,
        lag_threshold: 10,
        initial_replicas: 1,
        ours: serde_json::json!({}),
    };
    let trace = Trace { name: "tiny", duration: 10.0, rate: |_, _, _| 7.5, stuck_partition: None, spike_end: None };
    (model, trace)
}

fn every_second() -> OracleSettings {
    OracleSettings {
        decision_interval: 1,
        lag_buckets: 400,
        bound_decision_interval: 1,
        bound_lag_buckets: 400,
        tightening_rounds: 2,
    }
}

fn found(oracle: Option<Oracle>) -> Oracle {
    match oracle {
        Some(oracle) => oracle,
        None => unreachable!("the oracle finds a schedule"),
    }
}

#[test]
fn with_a_max_lag_of_one_seconds_shortfall_it_never_runs_one_worker_twice_in_a_row() {
    // One worker leaves 5 behind in a second, two catch up 5: with no pause and a max lag of 5,
    // the cheapest schedule alternates 1 and 2 from the initial 1: five seconds each,
    // 15 replica·s, lag 5 in every other second.
    let (model, trace) = tiny(0.0);
    let oracle = found(oracle(&model, &trace, Budget { lag_seconds: 1e9, max_lag: 5.0 }, &[], &every_second()));
    assert!(oracle.within_budget && oracle.exact_model);
    assert_eq!((oracle.replay.replica_seconds, oracle.replay.max_lag, oracle.replay.lag_seconds), (15.0, 5.0, 25.0));
    assert!(oracle.lower_bound.is_some_and(|b| b <= 15.0 + 1e-9), "{:?}", oracle.lower_bound);
}

/// The least replica·s of all schedules on a one-second grid within `budget`, by trying each.
fn brute_force(model: &Model, trace: &Trace, budget: Budget) -> f64 {
    let seconds = trace.duration as usize;
    let mut best = f64::INFINITY;
    for mask in 0u32..(1 << (seconds - 1)) {
        // Bit s: two replicas from second s + 1.
        let mut changes = Vec::new();
        let mut current = model.initial_replicas;
        for s in 0..seconds - 1 {
            let wanted = if mask & (1 << s) != 0 { 2 } else { 1 };
            if wanted != current {
                changes.push((s as f64, wanted));
                current = wanted;
            }
        }
        let outcome = simulate(model, trace, &mut Replay::new(&Schedule { changes }));
        if budget.admits(&outcome) {
            best = best.min(outcome.replica_seconds);
        }
    }
    best
}

#[test]
fn on_a_tiny_trace_it_finds_what_trying_every_schedule_finds() {
    let cases = [
        ("no pause, lag·s binding", 0.0, Budget { lag_seconds: 60.0, max_lag: 50.0 }),
        ("no pause, both binding", 0.0, Budget { lag_seconds: 40.0, max_lag: 10.0 }),
        ("2 s pause, lag·s binding", 2.0, Budget { lag_seconds: 200.0, max_lag: 100.0 }),
        ("2 s pause, loose", 2.0, Budget { lag_seconds: 400.0, max_lag: 100.0 }),
    ];
    for (case, pause, budget) in cases {
        let (model, trace) = tiny(pause);
        let best = brute_force(&model, &trace, budget);
        let oracle = found(oracle(&model, &trace, budget, &[], &every_second()));
        assert!(oracle.within_budget && budget.admits(&oracle.replay), "{case}: {:?}", oracle.replay);
        assert_eq!(oracle.replay.replica_seconds, best, "{case}");
        assert!(
            oracle.lower_bound.is_some_and(|b| b <= best + 1e-9),
            "{case}: bound {:?} over {best}",
            oracle.lower_bound
        );
    }
}

fn shortened(trace: &Trace, duration: f64) -> Trace {
    Trace { duration, ..trace.clone() }
}

fn counts() -> Vec<i32> {
    efficient_counts(12)
}

#[test]
fn a_searched_schedule_replays_within_the_bounds_it_was_searched_for() {
    let model = Model::default();
    let counts = counts();
    for trace in traces().iter().map(|t| shortened(t, 400.0)) {
        let lag_model = LagModel::new(&model, &trace, &counts);
        if !lag_model.exact {
            continue;
        }
        let ours = simulate(&model, &trace, &mut Ours::new(&model));
        let search = Search::new(&model, &lag_model, &counts, 5, ours.max_lag, 100);
        for lambda in [0.0, 1e-7, 1e-5, 1e-3] {
            let Some(solution) = search.run(lambda, Budget::of(&ours), Merge::Cheapest) else { continue };
            let replay = simulate(&model, &trace, &mut Replay::new(&solution.schedule));
            let slack = 1.0 + 1e-9;
            assert!(
                replay.lag_seconds <= ours.lag_seconds * slack && replay.max_lag <= ours.max_lag * slack,
                "{} λ {lambda}: {} / {} over {} / {}",
                trace.name,
                replay.lag_seconds,
                replay.max_lag,
                ours.lag_seconds,
                ours.max_lag
            );
        }
    }
}

#[test]
fn on_every_trace_the_oracle_is_within_ours_and_the_bound_below_both() {
    let model = Model::default();
    let settings = OracleSettings { lag_buckets: 100, bound_lag_buckets: 100, ..OracleSettings::default() };
    for trace in traces().iter().map(|t| shortened(t, 300.0)) {
        let ours = simulate(&model, &trace, &mut Ours::new(&model));
        let budget = Budget::of(&ours);
        // Where the reduced model is optimistic (a stuck partition), the search alone may find
        // nothing within the budget; the bench gives it ours' schedule, and so does this test.
        let counts = efficient_counts(model.partitions as i32);
        let exact = LagModel::new(&model, &trace, &counts).exact;
        let known = if exact { vec![] } else { vec![Schedule::of(&ours)] };
        let oracle = found(oracle(&model, &trace, budget, &known, &settings));
        assert!(oracle.within_budget && budget.admits(&oracle.replay), "{}: {:?}", trace.name, oracle.replay);
        // Ours changes replicas at multiples of 10 s, on the bound's 5 s grid, within its own
        // budget: no bound is above it.
        let bound = oracle.lower_bound.unwrap_or(f64::INFINITY);
        let (replay, ours_cost) = (oracle.replay.replica_seconds, ours.replica_seconds);
        assert!(
            bound <= replay + 1e-6 && bound <= ours_cost + 1e-6,
            "{}: bound {bound}, oracle {replay}, ours {ours_cost}",
            trace.name
        );
    }
}

#[test]
fn a_known_schedule_is_the_oracle_when_the_search_finds_none_cheaper() {
    // With decision points every 100 s the search can change replicas only at second 0 (two
    // workers from second 1: 19 replica·s); the known schedule changes at second 1 (18).
    let (model, trace) = tiny(0.0);
    let known = Schedule { changes: vec![(1.0, 2)] };
    let budget = Budget::of(&simulate(&model, &trace, &mut Replay::new(&known)));
    let coarse = OracleSettings { decision_interval: 100, ..every_second() };
    let alone = found(oracle(&model, &trace, budget, &[], &coarse));
    assert!(alone.within_budget && alone.from_search);
    assert_eq!((alone.schedule.changes.as_slice(), alone.replay.replica_seconds), (&[(0.0, 2)][..], 19.0));
    let seeded = found(oracle(&model, &trace, budget, std::slice::from_ref(&known), &coarse));
    assert!(seeded.within_budget && !seeded.from_search);
    assert_eq!((seeded.schedule, seeded.replay.replica_seconds), (known, 18.0));
}
