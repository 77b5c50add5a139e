//! The input patterns the scalers are compared on.

/// Produce rate (records/s) of one partition at a time.
pub type RateFn = fn(t: f64, partition: usize, partitions: usize) -> f64;

/// An input pattern.
#[derive(Clone, Debug)]
pub struct Trace {
    pub name: &'static str,
    pub duration: f64,
    pub rate: RateFn,
    /// A partition whose consumer never advances.
    pub stuck_partition: Option<usize>,
    /// When a spike ends, to measure the time to drain after it.
    pub spike_end: Option<f64>,
}

fn even(total: f64, partitions: usize) -> f64 {
    total / partitions as f64
}

/// The traces of the comparison.
pub fn traces() -> Vec<Trace> {
    vec![
        Trace {
            name: "steady",
            duration: 1200.0,
            rate: |_, _, n| even(3000.0, n),
            stuck_partition: None,
            spike_end: None,
        },
        Trace {
            name: "spike-5x",
            duration: 1500.0,
            rate: |t, _, n| even(if (300.0..600.0).contains(&t) { 10_000.0 } else { 2000.0 }, n),
            stuck_partition: None,
            spike_end: Some(600.0),
        },
        Trace {
            name: "diurnal",
            duration: 3600.0,
            rate: |t, _, n| even(3000.0 + 2500.0 * (2.0 * std::f64::consts::PI * t / 1800.0).sin(), n),
            stuck_partition: None,
            spike_end: None,
        },
        Trace {
            name: "bursty",
            duration: 1800.0,
            rate: |t, _, n| even(if t % 180.0 < 60.0 { 6000.0 } else { 500.0 }, n),
            stuck_partition: None,
            spike_end: None,
        },
        Trace {
            name: "hot-partition",
            duration: 1200.0,
            rate: |_, p, n| if p == 0 { 1200.0 } else { 1200.0 / (n - 1) as f64 },
            stuck_partition: None,
            spike_end: None,
        },
        Trace {
            name: "slow-ramp",
            duration: 2400.0,
            rate: |t, _, n| even(500.0 + 8500.0 * (t / 1800.0).min(1.0), n),
            stuck_partition: None,
            spike_end: None,
        },
        Trace {
            name: "stuck-partition",
            duration: 1200.0,
            rate: |_, _, n| even(3000.0, n),
            stuck_partition: Some(0),
            spike_end: None,
        },
    ]
}
