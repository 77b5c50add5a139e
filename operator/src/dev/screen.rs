//! What `dev` shows: a status frame redrawn in place on a terminal, or plain lines otherwise.

use std::fmt::Write as _;
use std::time::Duration;

/// A scale event as the status and events report it.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleLine {
    pub at: Duration,
    pub from: i32,
    pub to: i32,
    pub reason: String,
}

impl ScaleLine {
    /// `ScaledUp: <reason>`, as `kubectl describe` shows the event.
    pub fn event(&self) -> String {
        let kind = if self.to > self.from { "ScaledUp" } else { "ScaledDown" };
        format!("{kind}: {}", self.reason)
    }
}

/// Everything one frame shows.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub job: String,
    pub bootstrap: String,
    pub elapsed: Duration,
    pub phase: String,
    pub desired: i32,
    pub ready: i32,
    /// (topic, partition, lag), in partition order.
    pub partition_lags: Vec<(String, i32, i64)>,
    pub total_lag: Option<i64>,
    pub produced_per_second: f64,
    pub in_per_second: f64,
    pub out_per_second: f64,
    pub dead_lettered: u64,
    /// Input the broker deleted before a worker read it.
    pub lost_before_read: u64,
    pub last_scale: Option<ScaleLine>,
    /// The autoscaler's latest reasoning.
    pub decision: String,
    pub recent_sink_records: Vec<String>,
}

const BAR_WIDTH: usize = 30;

fn bar(value: i64, max: i64) -> String {
    let filled = if max <= 0 { 0 } else { ((value.max(0) as f64 / max as f64) * BAR_WIDTH as f64).round() as usize };
    format!("{}{}", "█".repeat(filled.min(BAR_WIDTH)), "·".repeat(BAR_WIDTH - filled.min(BAR_WIDTH)))
}

fn seconds(duration: Duration) -> String {
    format!("{:.0}s", duration.as_secs_f64())
}

/// The full frame for a terminal.
pub fn render_frame(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let s = snapshot;
    let _ = writeln!(out, "StreamJob {}   broker {}   {} elapsed", s.job, s.bootstrap, seconds(s.elapsed));
    let _ = writeln!(out, "Phase:      {}", s.phase);
    let _ = writeln!(out, "Replicas:   {} desired, {} ready", s.desired, s.ready);
    let _ = writeln!(out, "Partitions: {}", s.partition_lags.len());
    let lag = s.total_lag.map_or("not measured yet".to_owned(), |lag| lag.to_string());
    let _ = writeln!(out, "Lag:        {lag}");
    let max = s.partition_lags.iter().map(|(_, _, lag)| *lag).max().unwrap_or(0);
    for (topic, partition, lag) in &s.partition_lags {
        let _ = writeln!(out, "  {topic:>12}/{partition:<3} {} {lag}", bar(*lag, max));
    }
    let _ = writeln!(
        out,
        "Records/s:  produced {:.0}   in {:.0}   out {:.0}   dead-lettered {} total",
        s.produced_per_second, s.in_per_second, s.out_per_second, s.dead_lettered
    );
    if s.lost_before_read > 0 {
        let _ = writeln!(out, "LOST:       {} input records {LOST_BEFORE_READ}", s.lost_before_read);
    }
    match &s.last_scale {
        Some(scale) => {
            let _ = writeln!(out, "Last scale: {} → {} at {}", scale.from, scale.to, seconds(scale.at));
            let _ = writeln!(out, "  {}", scale.event());
        }
        None => {
            let _ = writeln!(out, "Last scale: none");
        }
    }
    let _ = writeln!(out, "Autoscaler: {}", s.decision);
    let _ = writeln!(out, "Sink (latest):");
    for record in &s.recent_sink_records {
        let _ = writeln!(out, "  {record}");
    }
    out
}

/// One plain status line, for logs and pipes.
pub fn render_line(snapshot: &Snapshot) -> String {
    let s = snapshot;
    let lag = s.total_lag.map_or("-".to_owned(), |lag| lag.to_string());
    format!(
        "[{:>4}] phase={} replicas={}/{} partitions={} lag={lag} produced/s={:.0} in/s={:.0} out/s={:.0} dead-lettered={}",
        seconds(s.elapsed),
        s.phase,
        s.ready,
        s.desired,
        s.partition_lags.len(),
        s.produced_per_second,
        s.in_per_second,
        s.out_per_second,
        s.dead_lettered
    ) + &lost_note(s.lost_before_read)
}

/// Why records can be lost before they are read: the broker deleted them.
pub const LOST_BEFORE_READ: &str = "deleted by the broker before a worker read them (the embedded broker keeps 5 MiB per partition: use --bootstrap with a real Kafka for larger backlogs)";

fn lost_note(lost: u64) -> String {
    if lost == 0 {
        return String::new();
    }
    format!(" LOST={lost} ({LOST_BEFORE_READ})")
}

/// Clears the terminal and moves the cursor home, so the next frame replaces the last.
pub const CLEAR: &str = "\x1b[2J\x1b[H";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_shows_lag_bars_and_the_scale_reason() {
        let snapshot = Snapshot {
            job: "wordcount".into(),
            bootstrap: "127.0.0.1:9092".into(),
            elapsed: Duration::from_secs(42),
            phase: "Scaling".into(),
            desired: 3,
            ready: 1,
            partition_lags: vec![("lines".into(), 0, 3000), ("lines".into(), 1, 1500)],
            total_lag: Some(4500),
            last_scale: Some(ScaleLine { at: Duration::from_secs(40), from: 1, to: 3, reason: "lag 4500 …".into() }),
            ..Snapshot::default()
        };
        let frame = render_frame(&snapshot);
        assert!(frame.contains(&format!("lines/0   {} 3000", "█".repeat(30))), "{frame}");
        assert!(frame.contains(&format!("{}{} 1500", "█".repeat(15), "·".repeat(15))), "{frame}");
        assert!(frame.contains("ScaledUp: lag 4500 …"), "{frame}");
        assert!(render_line(&snapshot).contains("phase=Scaling replicas=1/3 partitions=2 lag=4500"));
        assert!(!render_line(&snapshot).contains("LOST") && !frame.contains("LOST"), "nothing lost");
    }

    #[test]
    fn input_deleted_before_it_was_read_is_said_on_every_line() {
        let snapshot = Snapshot { lost_before_read: 1200, ..Snapshot::default() };
        assert!(render_line(&snapshot).contains("LOST=1200 (deleted by the broker"), "{}", render_line(&snapshot));
        assert!(render_frame(&snapshot).contains("LOST:       1200 input records deleted by the broker"));
    }
}
