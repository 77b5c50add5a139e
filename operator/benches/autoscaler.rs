//! Our autoscaler vs KEDA's Kafka scaler on an HPA, simulated on the same traces.
//! Run: `cargo bench -p streamjob-operator --bench autoscaler`; the table is printed and the
//! rows written to `target/autoscaler-simulation.csv`.

use std::fmt::Write as _;

use streamjob_testkit::simulator::{compare, Model, Outcome};

fn drain(outcome: &Outcome) -> String {
    outcome.drain_seconds.map_or("-".to_owned(), |s| format!("{s:.0}"))
}

fn main() {
    let model = Model::default();
    println!(
        "model: {} partitions, {:.0} records/s per worker, {:.0} s pause per scale event, lagThreshold {}, replicas {}..{}",
        model.partitions, model.capacity_per_replica, model.rebalance_pause, model.lag_threshold, model.min_replicas, model.max_replicas
    );
    println!(
        "{:<16} {:<10} {:>14} {:>10} {:>9} {:>12} {:>7}   goals",
        "trace", "policy", "lag·s", "max lag", "drain s", "replica·s", "scales"
    );
    let mut csv = String::from("trace,policy,lag_seconds,max_lag,drain_seconds,replica_seconds,scale_events\n");
    let mut all_met = true;
    let comparison = compare(&model);
    for (trace, ours, reference) in &comparison {
        let less_lag = ours.lag_seconds < reference.lag_seconds;
        let cost_ok = ours.replica_seconds <= reference.replica_seconds * 1.05;
        let fewer_events = ours.scale_events() < reference.scale_events();
        all_met &= less_lag && cost_ok && fewer_events;
        for (policy, outcome) in [("streamjob", ours), ("keda+hpa", reference)] {
            let goals = if policy == "streamjob" {
                format!(
                    "lag {} cost {:+.1}% {} events {}",
                    if less_lag { "✓" } else { "✗" },
                    (ours.replica_seconds / reference.replica_seconds - 1.0) * 100.0,
                    if cost_ok { "✓" } else { "✗" },
                    if fewer_events { "✓" } else { "✗" }
                )
            } else {
                String::new()
            };
            println!(
                "{trace:<16} {policy:<10} {:>14.0} {:>10.0} {:>9} {:>12.0} {:>7}   {goals}",
                outcome.lag_seconds,
                outcome.max_lag,
                drain(outcome),
                outcome.replica_seconds,
                outcome.scale_events()
            );
            let _ = writeln!(
                csv,
                "{trace},{policy},{:.0},{:.0},{},{:.0},{}",
                outcome.lag_seconds,
                outcome.max_lag,
                outcome.drain_seconds.map_or(String::new(), |s| format!("{s:.0}")),
                outcome.replica_seconds,
                outcome.scale_events()
            );
        }
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/autoscaler-simulation.csv");
    match std::fs::write(path, csv) {
        Ok(()) => println!("wrote {path}"),
        Err(error) => println!("could not write {path}: {error}"),
    }
    if let Some(name) = std::env::args().skip_while(|a| a != "--timeline").nth(1) {
        for (trace, ours, reference) in comparison.iter().filter(|(t, _, _)| *t == name) {
            for (policy, outcome) in [("streamjob", ours), ("keda+hpa", reference)] {
                let steps: Vec<String> =
                    outcome.scales.iter().map(|(t, from, to)| format!("{t:.0}s {from}→{to}")).collect();
                println!("{trace} {policy}: {}", steps.join(", "));
            }
        }
    }
    println!("all goals met on every trace: {}", if all_met { "yes" } else { "no" });
}
