//! The worker's true rate: source records processed per second of processing time, over a
//! sliding window. Busy time is what the loop spends on records, windows and outputs; waiting
//! for a fetch, for the producer's queue to drain, or for a commit's acknowledgements is not.
//! A worker kept waiting by a slow input still reports what it could do, which the rate it
//! consumes at cannot tell (Flink's autoscaler measures the same way). A worker that is behind
//! (records wait for it on the broker) waits for its own fetches and producer, which are part
//! of what it can do: then all its time counts as busy.

use std::collections::VecDeque;
use std::time::Duration;

use rdkafka::statistics::Statistics;

/// How far back the measurement looks.
const WINDOW_MS: i64 = 10_000;
const BUCKET_MS: i64 = 1_000;
/// Less than this says more about the loop's fixed costs than about the records' cost.
const MIN_BUSY: Duration = Duration::from_millis(20);
const MIN_RECORDS: u64 = 100;
/// Fewer unread records than this are what a worker that keeps up has in flight.
const BEHIND_MIN_RECORDS: i64 = 1_000;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrueRate {
    pub records_per_busy_second: f64,
    /// Busy time ÷ the wall time the window covers.
    pub busy_share: f64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    start_ms: i64,
    busy: Duration,
    records: u64,
}

struct Window {
    busy: Duration,
    records: u64,
    covered_ms: i64,
}

#[derive(Debug)]
pub struct BusyMeter {
    buckets: VecDeque<Bucket>,
    /// When measuring started: the window never reaches before it.
    since_ms: i64,
    /// The last rate measured, and when.
    last: Option<(i64, TrueRate)>,
}

impl BusyMeter {
    /// A meter of a worker that started at `started_ms`.
    pub fn new(started_ms: i64) -> Self {
        Self { buckets: VecDeque::new(), since_ms: started_ms, last: None }
    }

    /// `busy` spent at `now_ms` (its end), on `records` source records.
    pub fn add(&mut self, now_ms: i64, busy: Duration, records: u64) {
        let start_ms = now_ms - now_ms.rem_euclid(BUCKET_MS);
        match self.buckets.back_mut() {
            Some(bucket) if bucket.start_ms == start_ms => {
                bucket.busy += busy;
                bucket.records += records;
            }
            _ => self.buckets.push_back(Bucket { start_ms, busy, records }),
        }
        while self.buckets.front().is_some_and(|b| b.start_ms + BUCKET_MS <= now_ms - WINDOW_MS) {
            self.buckets.pop_front();
        }
    }

    /// The rate now if there is one, else the last one measured, with when it was measured: an
    /// idle worker still says what it could do, and the reader judges how old that is.
    pub fn latest(&mut self, now_ms: i64) -> Option<(i64, TrueRate)> {
        if let Some(rate) = self.true_rate(now_ms) {
            self.last = Some((now_ms, rate));
        }
        self.last
    }

    /// Whether `unread` records waiting on the broker are a backlog: more than a second of what
    /// this worker consumed lately.
    pub fn behind(&self, unread: i64, now_ms: i64) -> bool {
        let window = self.window(now_ms);
        let seconds = (window.covered_ms as f64 / 1000.0).max(1.0);
        unread >= BEHIND_MIN_RECORDS && unread as f64 >= window.records as f64 / seconds
    }

    /// The rate over the last [`WINDOW_MS`], or `None` when too little was processed to tell.
    pub fn true_rate(&self, now_ms: i64) -> Option<TrueRate> {
        let Window { busy, records, covered_ms } = self.window(now_ms);
        if busy < MIN_BUSY || records < MIN_RECORDS {
            return None;
        }
        Some(TrueRate {
            records_per_busy_second: records as f64 / busy.as_secs_f64(),
            busy_share: (busy.as_secs_f64() * 1000.0 / covered_ms.max(1) as f64).min(1.0),
        })
    }

    /// The busy time and records of the last [`WINDOW_MS`], and how much of it the worker ran.
    fn window(&self, now_ms: i64) -> Window {
        let window_start = now_ms - WINDOW_MS;
        let in_window = self.buckets.iter().filter(|b| b.start_ms + BUCKET_MS > window_start);
        let (busy, records) =
            in_window.fold((Duration::ZERO, 0u64), |(busy, records), b| (busy + b.busy, records + b.records));
        Window { busy, records, covered_ms: now_ms - window_start.max(self.since_ms) }
    }
}

/// Records on the broker the consumer has not yet returned, over the partitions it fetches
/// (librdkafka's statistics: each partition's high watermark minus the application's offset).
pub fn unread_records(statistics: &Statistics) -> i64 {
    let fetching = statistics.topics.values().flat_map(|topic| topic.partitions.iter());
    fetching
        .filter(|(partition, stats)| **partition >= 0 && stats.fetch_state == "active" && stats.app_offset >= 0)
        .map(|(_, stats)| (stats.hi_offset - stats.app_offset).max(0))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds one second at a time: `busy_ms` of work on `records` records each second.
    fn steady(meter: &mut BusyMeter, from_s: i64, seconds: i64, busy_ms: u64, records: u64) {
        for s in from_s..from_s + seconds {
            meter.add(s * 1000 + 999, Duration::from_millis(busy_ms), records);
        }
    }

    #[test]
    fn an_unsaturated_worker_reports_what_it_could_do_not_what_it_was_given() {
        let mut meter = BusyMeter::new(0);
        // 2000 records a second, each costing 1/50 000 s: busy 40 ms a second.
        steady(&mut meter, 0, 20, 40, 2000);
        let rate = meter.true_rate(20_000).expect("measured");
        assert!((rate.records_per_busy_second - 50_000.0).abs() < 1.0, "{rate:?}");
        assert!((rate.busy_share - 0.04).abs() < 0.001, "{rate:?}");
    }

    #[test]
    fn a_saturated_worker_is_busy_all_the_time_at_its_rate() {
        let mut meter = BusyMeter::new(0);
        steady(&mut meter, 0, 20, 1000, 30_000);
        let rate = meter.true_rate(20_000).expect("measured");
        assert_eq!((rate.records_per_busy_second.round(), rate.busy_share), (30_000.0, 1.0));
    }

    #[test]
    fn only_the_last_ten_seconds_count() {
        let mut meter = BusyMeter::new(0);
        steady(&mut meter, 0, 30, 500, 1000);
        steady(&mut meter, 30, 10, 500, 4000);
        let rate = meter.true_rate(40_000).expect("measured");
        assert_eq!(rate.records_per_busy_second.round(), 8000.0);
    }

    #[test]
    fn a_young_worker_is_measured_over_the_time_it_has_run() {
        let mut meter = BusyMeter::new(100_000);
        steady(&mut meter, 100, 2, 250, 1000);
        let rate = meter.true_rate(102_000).expect("measured");
        assert!((rate.busy_share - 0.25).abs() < 0.01, "{rate:?}");
    }

    #[test]
    fn too_little_work_to_tell_gives_no_rate() {
        let mut meter = BusyMeter::new(0);
        assert_eq!(meter.true_rate(0), None);
        steady(&mut meter, 0, 10, 1, 5);
        assert_eq!(meter.true_rate(10_000), None, "10 ms busy and 50 records");
        steady(&mut meter, 10, 5, 100, 1000);
        assert!(meter.true_rate(15_000).is_some());
        assert_eq!(meter.true_rate(40_000), None, "nothing in the last ten seconds");
    }

    #[test]
    fn a_backlog_is_more_than_a_second_of_what_the_worker_consumes() {
        let mut meter = BusyMeter::new(0);
        steady(&mut meter, 0, 10, 100, 5000);
        for (unread, behind) in [(0, false), (999, false), (4_000, false), (5_000, true), (200_000, true)] {
            assert_eq!(meter.behind(unread, 10_000), behind, "{unread} unread at 5000/s");
        }
        let idle = BusyMeter::new(0);
        assert!(!idle.behind(999, 10_000) && idle.behind(1_000, 10_000));
    }

    #[test]
    fn an_idle_worker_repeats_its_last_rate_with_when_it_was_measured() {
        let mut meter = BusyMeter::new(0);
        assert_eq!(meter.latest(0), None);
        steady(&mut meter, 0, 10, 100, 1000);
        let (at, rate) = meter.latest(10_000).expect("measured");
        assert_eq!((at, rate.records_per_busy_second.round()), (10_000, 10_000.0));
        assert_eq!(meter.latest(60_000), Some((10_000, rate)));
    }
}
