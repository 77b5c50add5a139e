//! Our autoscaler vs a sweep of KEDA's Kafka scaler on an HPA and vs an oracle, simulated on the
//! same traces. Run: `cargo bench -p streamjob-operator --bench autoscaler`; the table is
//! printed, the rows written to `target/autoscaler-simulation.csv` (under `CARGO_TARGET_DIR`
//! when set) and each trace's lag and replicas over time drawn to
//! `target/autoscaler-simulation/TRACE.png`. `-- --timeline TRACE` also prints the scale
//! events of one trace; `-- --pause SECONDS` sets the pause per scale event, otherwise taken
//! from the `scale_gap` bench's `target/scale-gap.csv` or the README's measurement;
//! `-- --ours '{"scaleDown":{"stabilizationSeconds":120}}'` runs our policy with other settings.

use std::time::Instant;

use streamjob_testkit::simulator::{
    compare, csv, draw_timelines, longest_gap, ours_spec, sweep, Model, OracleSettings, Outcome, PauseSource,
    TraceReport, DEFAULT_PROTOCOL, MEASURED_PAUSE_SECONDS, SWEEP_LAG_THRESHOLDS, SWEEP_STABILIZATION_SECONDS,
};
use streamjob_testkit::{scale_gap_csv, target_dir};

fn drain(outcome: &Outcome) -> String {
    outcome.drain_seconds.map_or("-".to_owned(), |s| format!("{s:.0}"))
}

fn mark(met: bool) -> &'static str {
    if met {
        "✓"
    } else {
        "✗"
    }
}

fn usage_error(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(2)
}

/// The value after `flag` on the command line.
fn argument(flag: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != flag).nth(1)
}

/// The pause per scale event: `--pause SECONDS`, else the longest gap of the default protocol in
/// the `scale_gap` bench's CSV (`measured`), else the one recorded in the README.
fn pause(measured: &std::path::Path) -> (f64, PauseSource) {
    if let Some(seconds) = argument("--pause").and_then(|s| s.parse::<f64>().ok()).filter(|s| *s >= 0.0) {
        return (seconds, PauseSource::Given);
    }
    let csv = std::fs::read_to_string(measured).ok();
    match csv.as_deref().and_then(|csv| longest_gap(csv, DEFAULT_PROTOCOL)) {
        Some((seconds, events)) => (seconds, PauseSource::Measured { events }),
        None => (MEASURED_PAUSE_SECONDS, PauseSource::Recorded),
    }
}

fn describe(source: &PauseSource, measured: &std::path::Path) -> String {
    match source {
        PauseSource::Given => "given with --pause".to_owned(),
        PauseSource::Measured { events } => {
            format!("the longest partition gap of {events} {DEFAULT_PROTOCOL} scale events in {}", measured.display())
        }
        PauseSource::Recorded => format!(
            "the longest {DEFAULT_PROTOCOL} partition gap recorded in the README (no {} from the scale_gap bench)",
            measured.display()
        ),
    }
}

fn print_row(trace: &str, policy: &str, outcome: &Outcome) {
    println!(
        "{trace:<16} {policy:<22} {:>14.0} {:>10.0} {:>8} {:>10.0} {:>7}",
        outcome.lag_seconds,
        outcome.max_lag,
        drain(outcome),
        outcome.replica_seconds,
        outcome.scale_events()
    );
}

fn print_trace(report: &TraceReport) {
    let name = report.trace.name;
    print_row(name, "streamjob", &report.ours);
    if let Some((config, outcome)) = report.default_keda() {
        print_row(name, &format!("{} (default)", config.label()), outcome);
    }
    let nearest = report.nearest();
    if let Some((config, outcome)) = nearest {
        print_row(name, &format!("{} (nearest)", config.label()), outcome);
    }
    if let Some(oracle) = &report.oracle {
        print_row(name, if oracle.within_budget { "oracle" } else { "oracle (OVER BUDGET)" }, &oracle.replay);
    }
    match report.dominated_by() {
        Some((config, outcome)) => println!(
            "    frontier: dominated by: {} (lag·s {:.0}, replica·s {:.0})",
            config.label(),
            outcome.lag_seconds,
            outcome.replica_seconds
        ),
        None => println!("    frontier: not dominated by any of the {} KEDA configurations", report.keda.len()),
    }
    if let Some((config, outcome)) = nearest {
        println!(
            "    vs nearest {}: lag·s ours/theirs {:.3}, replica·s ours/theirs {:.3}, scale events {} vs {}",
            config.label(),
            report.ours.lag_seconds / outcome.lag_seconds,
            report.ours.replica_seconds / outcome.replica_seconds,
            report.ours.scale_events(),
            outcome.scale_events()
        );
    }
    match &report.oracle {
        Some(oracle) => println!(
            "    oracle: replica·s {:.0} replayed ({}; {}), lower bound {} ({} model); ours/oracle replica·s {:.3}",
            oracle.replay.replica_seconds,
            if oracle.within_budget { "within ours' lag·s and max lag" } else { "OVER ours' lag·s or max lag" },
            if oracle.from_search {
                format!("searched, λ {:.0e}", oracle.lambda)
            } else {
                "ours' own schedule: the search found none cheaper".to_owned()
            },
            oracle.lower_bound.map_or("-".to_owned(), |b| format!("{b:.0}")),
            if oracle.exact_model { "exact" } else { "optimistic" },
            report.ours.replica_seconds / oracle.replay.replica_seconds
        ),
        None => println!("    oracle: no schedule meets ours' max lag"),
    }
    let goals = report.goals();
    println!(
        "    goals: not dominated {}  lag·s ≤ 1/3 nearest {}  replica·s ≤ 1.10 × oracle {}  fewer scale events than nearest {}",
        mark(goals.not_dominated),
        mark(goals.lag_share),
        mark(goals.near_oracle),
        mark(goals.fewer_events)
    );
}

fn main() {
    let target = target_dir();
    let measured = scale_gap_csv();
    let (rebalance_pause, source) = pause(&measured);
    let ours = match argument("--ours").map(|text| serde_json::from_str::<serde_json::Value>(&text)) {
        None => serde_json::json!({}),
        Some(Ok(fields)) => fields,
        Some(Err(error)) => usage_error(&format!("--ours is not JSON: {error}")),
    };
    let model = Model { rebalance_pause, ours, ..Model::default() };
    if let Err(error) = ours_spec(&model) {
        usage_error(&format!("--ours is not an autoscaling spec: {error}"));
    }
    let settings = OracleSettings::default();
    println!(
        "model: {} partitions, {:.0} records/s per worker, {:.1} s pause per scale event ({}), lagThreshold {}, replicas {}..{}",
        model.partitions,
        model.capacity_per_replica,
        model.rebalance_pause,
        describe(&source, &measured),
        model.lag_threshold,
        model.min_replicas,
        model.max_replicas
    );
    if model.ours.as_object().is_some_and(|fields| !fields.is_empty()) {
        println!("ours runs with {} over its defaults", model.ours);
    }
    println!(
        "KEDA sweep: {} configurations, lagThreshold {:?} × scale-down stabilisation {:?} s; oracle decides every {} s, bound every {} s",
        sweep().len(),
        SWEEP_LAG_THRESHOLDS,
        SWEEP_STABILIZATION_SECONDS,
        settings.decision_interval,
        settings.bound_decision_interval
    );
    println!(
        "{:<16} {:<22} {:>14} {:>10} {:>8} {:>10} {:>7}",
        "trace", "policy", "lag·s", "max lag", "drain s", "replica·s", "scales"
    );
    let started = Instant::now();
    let reports = compare(&model, &settings);
    let elapsed = started.elapsed();
    for report in &reports {
        print_trace(report);
    }
    let all_met = reports.iter().all(|r| r.goals().all());

    let csv_path = target.join("autoscaler-simulation.csv");
    match std::fs::write(&csv_path, csv(&reports)) {
        Ok(()) => println!("wrote {}", csv_path.display()),
        Err(error) => println!("could not write {}: {error}", csv_path.display()),
    }
    let png_dir = target.join("autoscaler-simulation");
    if let Err(error) = std::fs::create_dir_all(&png_dir) {
        println!("could not create {}: {error}", png_dir.display());
    }
    for report in &reports {
        let mut series: Vec<(String, &Outcome)> = vec![("streamjob".to_owned(), &report.ours)];
        if let Some((config, outcome)) = report.nearest() {
            series.push((format!("{} (nearest replica·s)", config.label()), outcome));
        }
        if let Some(oracle) = &report.oracle {
            series.push(("oracle".to_owned(), &oracle.replay));
        }
        let named: Vec<(&str, &Outcome)> = series.iter().map(|(name, outcome)| (name.as_str(), *outcome)).collect();
        let path = png_dir.join(format!("{}.png", report.trace.name));
        let title = format!("{}: lag and replicas over time", report.trace.name);
        match draw_timelines(&path, &title, &named) {
            Ok(()) => println!("wrote {}", path.display()),
            Err(error) => println!("could not draw {}: {error}", path.display()),
        }
    }

    if let Some(name) = argument("--timeline") {
        for report in reports.iter().filter(|r| r.trace.name == name) {
            let mut runs = vec![("streamjob".to_owned(), &report.ours)];
            runs.extend(report.nearest().map(|(config, outcome)| (config.label(), outcome)));
            runs.extend(report.oracle.as_ref().map(|oracle| ("oracle".to_owned(), &oracle.replay)));
            for (policy, outcome) in runs {
                let steps: Vec<String> =
                    outcome.scales.iter().map(|(t, from, to)| format!("{t:.0}s {from}→{to}")).collect();
                println!("{name} {policy}: {}", steps.join(", "));
            }
        }
    }
    let per_trace: Vec<String> =
        reports.iter().map(|r| format!("{} {:.1}s", r.trace.name, r.elapsed.as_secs_f64())).collect();
    println!(
        "timings: {:.1}s for all traces on {} threads (per trace: {})",
        elapsed.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get()).min(reports.len()),
        per_trace.join(", ")
    );
    println!("all goals met on every trace: {}", if all_met { "yes" } else { "no" });
}
