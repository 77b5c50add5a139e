//! The fault suite: `streamjob-worker` processes against real Kafka, each scenario over an input
//! of known content, and a checker in the style of Jepsen's queue checker that counts, per
//! scenario, what the sink lost, duplicated and holds unexpectedly, and what went to the
//! dead-letter topic. One test prints one table and fails when a row lost a record, holds an
//! unexpected one, or, with exactly-once delivery, a duplicate (read with `read_committed`).
//!
//! Scenarios: `kill -9` of one of two workers (restarted at once, as a StatefulSet would) with
//! session timeouts of 6, 10 and 45 s; SIGTERM under load; scaling 1 → 3 → 1 under load; a
//! `kill -9` and restart of one node of a 3-node cluster (started here with
//! `scripts/kafka-broker.sh`); poison records, which must reach the dead-letter topic. Injected
//! request errors and a whole-broker outage are in `worker/tests/broker_faults.rs` (librdkafka's
//! mock cluster, the only one that fails requests on cue).
//!
//! The jobs: a passthrough (JSON records with a unique `seq`, keyed by it) checked record by
//! record; the word count, checked result by result: each (window, word, count) the input makes
//! is one element, so a wrong count is one lost and one unexpected element.
//!
//! The checker, the rows' workers and the 3-node cluster are in `streamjob_e2e::faults`, shared
//! with the `faults_*.rs` files (the faults production brings).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use streamjob_e2e::faults::{
    failed_row, records_for, report, run_all, sleep_until, wait_busy, Case, Cluster, Delivery, Feed, Job, Row, Task,
    Worker, DELIVERIES,
};
use streamjob_e2e::{in_ci, real_broker, require_real_part};

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// Two workers; `kill -9` of one under load, and at once a new process in its place.
fn kill_9(case: &Case) -> Row {
    replace_a_worker_under_load(case, |victim| {
        victim.kill_9();
        Ok(())
    })
}

/// Two workers; SIGTERM to one under load, it drains and leaves, and a new process replaces it.
fn sigterm(case: &Case) -> Row {
    replace_a_worker_under_load(case, Worker::terminate)
}

/// Two workers under load; `stop` ends the second one, and a new process takes its place.
fn replace_a_worker_under_load(case: &Case, stop: impl FnOnce(Worker) -> anyhow::Result<()>) -> Row {
    let started = Instant::now();
    let mut workers = Vec::new();
    let outcome = (|| {
        workers = case.workers(2)?;
        let feed = case.feed(records_for(case.job), Duration::from_secs(16));
        std::thread::sleep(Duration::from_secs(6));
        wait_busy(&workers[1]);
        workers.pop().map(stop).transpose()?;
        workers.push(case.worker(1)?);
        case.check(feed.join()?)
    })();
    case.row(outcome, &mut workers, started)
}

/// One worker, then three, then one (the two added stopped with SIGTERM), all under load.
fn scale(case: &Case) -> Row {
    let started = Instant::now();
    let mut workers = Vec::new();
    let outcome = (|| {
        workers = case.workers(1)?;
        let start = Instant::now();
        let feed = case.feed(records_for(case.job), Duration::from_secs(24));
        sleep_until(start + Duration::from_secs(5));
        workers.extend([case.worker(1)?, case.worker(2)?]);
        sleep_until(start + Duration::from_secs(14));
        let removed: Vec<Worker> = workers.drain(1..).collect();
        let stopping: Vec<_> = removed.into_iter().map(|w| std::thread::spawn(move || w.terminate())).collect();
        for stopped in stopping {
            stopped.join().map_err(|_| anyhow::anyhow!("stopping a worker panicked"))??;
        }
        case.check(feed.join()?)
    })();
    case.row(outcome, &mut workers, started)
}

/// One worker over input with poison records mixed in, and no other fault.
fn poison(case: &Case) -> Row {
    let started = Instant::now();
    let mut workers = Vec::new();
    let outcome = (|| {
        workers = case.workers(1)?;
        let feed = case.feed(records_for(case.job) / 2, Duration::from_secs(10));
        case.check(feed.join()?)
    })();
    case.row(outcome, &mut workers, started)
}

/// On a 3-node cluster of its own: one worker per row, and under load a `kill -9` of the node
/// that coordinates the exactly-once word count's group (it leads that group's partition of
/// `__consumer_offsets`), restarted 10 s later with its command line.
fn broker_restart() -> Vec<Row> {
    let started = Instant::now();
    let cluster = match Cluster::start() {
        Ok(cluster) => cluster,
        Err(error) if in_ci() => return vec![failed_row("broker restart", format!("{error:#}"))],
        Err(error) => {
            let _ = require_real_part::<()>(&format!("a 3-node Kafka cluster for the broker-restart rows: {error:#}"));
            return Vec::new();
        }
    };
    let mut cases = Vec::new();
    for job in [Job::Passthrough, Job::WordCount] {
        for delivery in DELIVERIES {
            match Case::new("broker kill -9 + restart", job, delivery, &cluster.bootstrap) {
                Ok(case) => cases.push(case),
                Err(error) => return vec![failed_row("broker restart", format!("{error:#}"))],
            }
        }
    }
    let mut workers: Vec<Vec<Worker>> = cases.iter().map(|_| Vec::new()).collect();
    let outcome = (|| {
        for (case, slot) in cases.iter().zip(&mut workers) {
            *slot = case.workers(1)?;
        }
        let start = Instant::now();
        let feeds: Vec<Feed> = cases.iter().map(|c| c.feed(records_for(c.job), Duration::from_secs(24))).collect();
        sleep_until(start + Duration::from_secs(7));
        let target = cases.iter().find(|c| c.job == Job::WordCount && c.delivery == Delivery::ExactlyOnce);
        let node = cluster.group_coordinator(&target.context("the exactly-once word count")?.group)?;
        let command = cluster.kill_9(node)?;
        eprintln!("fault suite: killed Kafka node {node} of 3 (a group coordinator); restarting it in 10 s");
        sleep_until(start + Duration::from_secs(17));
        cluster.restart(node, &command)?;
        feeds.into_iter().map(Feed::join).collect::<anyhow::Result<Vec<_>>>()
    })();
    match outcome {
        Ok(written) => std::thread::scope(|scope| {
            let checks: Vec<_> =
                cases.iter().zip(written).map(|(case, written)| scope.spawn(move || case.check(written))).collect();
            let checked =
                checks.into_iter().map(|check| check.join().unwrap_or_else(|_| Err(anyhow::anyhow!("panicked"))));
            cases.iter().zip(checked).zip(&mut workers).map(|((case, c), w)| case.row(c, w, started)).collect()
        }),
        Err(error) => {
            let text = format!("{error:#}");
            let failed = |(case, w): (&Case, &mut Vec<Worker>)| case.row(Err(anyhow::anyhow!("{text}")), w, started);
            cases.iter().zip(&mut workers).map(failed).collect()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The suite.

/// One row on the shared broker: its scenario, job, delivery, session timeout and whether its
/// input has poison records.
struct Spec {
    scenario: &'static str,
    job: Job,
    delivery: Delivery,
    session_timeout: &'static str,
    poison: bool,
    run: fn(&Case) -> Row,
}

impl Spec {
    fn task(self, bootstrap: &str) -> Task {
        let bootstrap = bootstrap.to_owned();
        let run = move || match Case::new(self.scenario, self.job, self.delivery, &bootstrap) {
            Ok(case) => {
                let case = case.with_session_timeout(self.session_timeout);
                vec![(self.run)(&if self.poison { case.with_poison() } else { case })]
            }
            Err(error) => {
                let (scenario, job, delivery) = (self.scenario.to_owned(), self.job, self.delivery);
                let outcome = Err(format!("{error:#}"));
                vec![Row { scenario, job, delivery, outcome, notes: Vec::new(), elapsed: Duration::ZERO }]
            }
        };
        Task { weight: 1, run: Box::new(run) }
    }
}

/// Every scenario, the longest first.
fn plan(bootstrap: &str) -> Vec<Task> {
    let spec = |scenario, job, delivery, session_timeout, run| Spec {
        scenario,
        job,
        delivery,
        session_timeout,
        poison: false,
        run,
    };
    let mut specs = Vec::new();
    for delivery in DELIVERIES {
        specs.push(spec("kill -9, session 45s", Job::WordCount, delivery, "45s", kill_9 as fn(&Case) -> Row));
        specs.push(spec("kill -9, session 45s", Job::Passthrough, delivery, "45s", kill_9));
    }
    for job in [Job::Passthrough, Job::WordCount] {
        for delivery in DELIVERIES {
            specs.push(spec("scale 1 → 3 → 1", job, delivery, "10s", scale));
            specs.push(spec("SIGTERM under load", job, delivery, "10s", sigterm));
        }
    }
    for delivery in DELIVERIES {
        specs.push(spec("kill -9, session 10s", Job::Passthrough, delivery, "10s", kill_9));
        specs.push(spec("kill -9, session 6s", Job::Passthrough, delivery, "6s", kill_9));
    }
    for job in [Job::Passthrough, Job::WordCount] {
        for delivery in DELIVERIES {
            specs.push(Spec { poison: true, ..spec("poison records", job, delivery, "10s", poison) });
        }
    }
    // STREAMJOB_FAULT_SUITE_ONLY=<text> runs only the scenarios whose name contains it.
    let only = std::env::var("STREAMJOB_FAULT_SUITE_ONLY").unwrap_or_default();
    let mut tasks = Vec::new();
    if "broker kill -9 + restart".contains(&only) {
        tasks.push(Task { weight: 4, run: Box::new(broker_restart) });
    }
    tasks.extend(specs.into_iter().filter(|spec| spec.scenario.contains(&only)).map(|spec| spec.task(bootstrap)));
    tasks
}

/// Every scenario against the real broker of `STREAMJOB_TEST_BOOTSTRAP` (the broker-restart
/// rows on a 3-node cluster of their own), one table, and no lost, unexpected or (exactly
/// once) duplicated record.
#[test]
fn fault_suite() {
    let Some(bootstrap) = real_broker() else { return };
    let started = Instant::now();
    let rows = run_all(plan(&bootstrap));
    report("fault suite", &rows, started);
}
