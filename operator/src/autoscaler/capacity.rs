//! What one worker can process per second, for the catch-up and scale-down arithmetic. The
//! workers' own measure comes first: records per second of busy time, reported with their
//! commits. A worker that keeps up with a slow input consumes at the input's rate, so the
//! group's consume rate says what a worker can do only while it has a backlog: that estimate
//! is the fallback, and the reason says which one a decision used.

use super::policy::{LagSample, PartitionSample};

/// A worker's own measure of its speed, from the metadata of its last commit of a partition.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerRate {
    pub worker: String,
    /// Source records processed per second of busy time.
    pub records_per_busy_second: f64,
    /// Share of its time the worker was busy, 0..=1.
    pub busy_share: f64,
    /// Seconds between the measurement and the lag sample that carried it.
    pub age_seconds: f64,
}

/// A report older than this no longer describes the workers (they were replaced, or stopped
/// committing that partition).
pub const MAX_REPORT_AGE_SECONDS: f64 = 30.0;

/// The figure a decision uses.
#[derive(Clone, Debug, PartialEq)]
pub enum Capacity {
    /// The mean of the fresh reports, one per worker.
    Measured { per_replica: f64, busy_share: f64, workers: usize },
    /// The consume rate per worker while the group had a backlog.
    FromBacklog { per_replica: f64 },
}

impl Capacity {
    /// The workers' reports in `sample` if any is fresh, else `from_backlog`.
    pub fn choose(sample: &LagSample, from_backlog: Option<f64>) -> Option<Self> {
        let reports = fresh_reports(&sample.partitions);
        if !reports.is_empty() {
            let n = reports.len() as f64;
            return Some(Self::Measured {
                per_replica: reports.iter().map(|r| r.records_per_busy_second).sum::<f64>() / n,
                busy_share: reports.iter().map(|r| r.busy_share).sum::<f64>() / n,
                workers: reports.len(),
            });
        }
        from_backlog.filter(|rate| *rate > 0.0).map(|per_replica| Self::FromBacklog { per_replica })
    }

    pub fn per_replica(&self) -> f64 {
        match self {
            Self::Measured { per_replica, .. } | Self::FromBacklog { per_replica } => *per_replica,
        }
    }

    /// For the decision's reason.
    pub fn describe(&self) -> String {
        match self {
            Self::Measured { per_replica, busy_share, workers } => format!(
                "true rate {per_replica:.0}/s per replica (measured by {workers} worker{}, busy {:.0}% of the time)",
                if *workers == 1 { "" } else { "s" },
                busy_share * 100.0
            ),
            Self::FromBacklog { per_replica } => format!(
                "{per_replica:.0}/s per replica from the consume rate under backlog (no fresh true rate from the workers)"
            ),
        }
    }
}

/// The newest fresh report of each worker.
fn fresh_reports(partitions: &[PartitionSample]) -> Vec<&WorkerRate> {
    let mut newest: Vec<&WorkerRate> = Vec::new();
    let fresh =
        partitions.iter().filter_map(|p| p.committed_by.as_ref()).filter(|r| r.age_seconds <= MAX_REPORT_AGE_SECONDS);
    for report in fresh {
        match newest.iter_mut().find(|known| known.worker == report.worker) {
            Some(known) if report.age_seconds < known.age_seconds => *known = report,
            Some(_) => {}
            None => newest.push(report),
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(n: i32, report: Option<(&str, f64, f64, f64)>) -> PartitionSample {
        PartitionSample {
            topic: "in".into(),
            partition: n,
            low: 0,
            high: 100,
            committed: Some(90),
            committed_by: report.map(|(worker, rate, busy, age)| WorkerRate {
                worker: worker.into(),
                records_per_busy_second: rate,
                busy_share: busy,
                age_seconds: age,
            }),
        }
    }

    fn sample(partitions: Vec<PartitionSample>) -> LagSample {
        LagSample { at: 100.0, partitions }
    }

    #[test]
    fn the_workers_reports_are_averaged_one_per_worker_newest_first() {
        let sample = sample(vec![
            partition(0, Some(("w-0", 50_000.0, 0.1, 2.0))),
            partition(1, Some(("w-0", 40_000.0, 0.2, 9.0))),
            partition(2, Some(("w-0", 40_000.0, 0.2, 9.0))),
            partition(3, Some(("w-1", 60_000.0, 0.3, 1.0))),
        ]);
        let capacity = Capacity::choose(&sample, Some(2000.0));
        assert_eq!(capacity, Some(Capacity::Measured { per_replica: 55_000.0, busy_share: 0.2, workers: 2 }));
        let reason = capacity.map(|c| c.describe()).unwrap_or_default();
        assert_eq!(reason, "true rate 55000/s per replica (measured by 2 workers, busy 20% of the time)");
    }

    #[test]
    fn without_a_fresh_report_the_backlog_estimate_is_used_and_the_reason_says_so() {
        let table = [
            ("no report", vec![partition(0, None)], Some(2041.0)),
            ("stale report", vec![partition(0, Some(("w-0", 50_000.0, 0.1, 31.0)))], Some(2041.0)),
        ];
        for (case, partitions, backlog) in table {
            let capacity = Capacity::choose(&sample(partitions), backlog).expect(case);
            assert_eq!(capacity, Capacity::FromBacklog { per_replica: 2041.0 }, "{case}");
            assert!(capacity.describe().contains("no fresh true rate from the workers"), "{case}");
        }
    }

    #[test]
    fn with_neither_there_is_no_figure() {
        assert_eq!(Capacity::choose(&sample(vec![partition(0, None)]), None), None);
        assert_eq!(Capacity::choose(&sample(vec![partition(0, None)]), Some(0.0)), None);
    }
}
