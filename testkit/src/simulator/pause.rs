//! The consumption pause the model charges per scale event, taken from a measurement:
//! `cargo bench -p streamjob-e2e --bench scale_gap` writes `scale-gap.csv` (one row per scale
//! event and group protocol, on a real broker), and the simulator charges the longest partition
//! gap of the worker's default protocol, as if the whole job stopped that long.

use streamjob_operator::autoscaler::policy::REBALANCE_PAUSE_SECONDS;

/// The worker's default group protocol (`--group-protocol`).
pub const DEFAULT_PROTOCOL: &str = "classic";

/// Used when no `scale-gap.csv` is at hand: the longest partition gap per scale event measured
/// with `scale_gap` on the test broker under `classic` (README, "Scaling without stopping":
/// 0.2–2.0 s over 1 → 3, 3 → 6 and 6 → 1, four to five runs each), the same figure the policy
/// leaves room for.
pub const MEASURED_PAUSE_SECONDS: f64 = REBALANCE_PAUSE_SECONDS;

/// Where the pause came from, for the bench's header line.
#[derive(Clone, Debug, PartialEq)]
pub enum PauseSource {
    /// `--pause` on the command line.
    Given,
    /// The [`DEFAULT_PROTOCOL`] rows of a scale-gap CSV: the longest of `events` events.
    Measured { events: usize },
    /// [`MEASURED_PAUSE_SECONDS`].
    Recorded,
}

/// The longest partition gap, in seconds, over the `protocol` rows of a CSV written by the
/// `scale_gap` bench, with how many events it covers; `None` without such rows.
pub fn longest_gap(csv: &str, protocol: &str) -> Option<(f64, usize)> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.split(',').collect();
    let protocol_column = header.iter().position(|h| *h == "protocol")?;
    let gap_column = header.iter().position(|h| *h == "longest_partition_gap_s")?;
    let gaps: Vec<f64> = lines
        .map(|line| line.split(',').collect::<Vec<_>>())
        .filter(|row| row.get(protocol_column) == Some(&protocol))
        .filter_map(|row| row.get(gap_column)?.parse::<f64>().ok())
        .filter(|gap| gap.is_finite() && *gap >= 0.0)
        .collect();
    let longest = gaps.iter().copied().reduce(f64::max)?;
    Some((longest, gaps.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "protocol,event,longest_partition_gap_s,min_rate,steady_rate,max_latency_s,time_to_steady_s\n\
        classic,1 -> 3,1.25,0,5000,1.40,1.50\n\
        classic,3 -> 6,0.75,2500,5000,0.90,1.30\n\
        consumer,1 -> 3,4.00,1750,5000,4.10,4.20\n\
        classic,6 -> 1,not-a-number,0,5000,0,0\n";

    #[test]
    fn takes_the_longest_gap_of_the_protocol_asked_for() {
        assert_eq!(longest_gap(CSV, "classic"), Some((1.25, 2)));
        assert_eq!(longest_gap(CSV, "consumer"), Some((4.0, 1)));
    }

    #[test]
    fn none_without_rows_or_columns_to_read() {
        assert_eq!(longest_gap(CSV, "auto"), None);
        assert_eq!(longest_gap("", "classic"), None);
        assert_eq!(longest_gap("protocol,event\nclassic,1 -> 3\n", "classic"), None);
    }
}
