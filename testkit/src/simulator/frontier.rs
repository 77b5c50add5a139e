//! How ours compares with the KEDA sweep and the oracle: pure functions of the outcomes.

use super::Outcome;

/// Among `others`, the one that beats `ours` strictly on both lag·s and replica·s (the one with
/// the least lag·s if several do); `None` when ours is on the frontier.
pub fn dominating<'a, C>(ours: &Outcome, others: &'a [(C, Outcome)]) -> Option<&'a (C, Outcome)> {
    others
        .iter()
        .filter(|(_, o)| o.lag_seconds < ours.lag_seconds && o.replica_seconds < ours.replica_seconds)
        .min_by(|(_, a), (_, b)| a.lag_seconds.total_cmp(&b.lag_seconds))
}

/// Among `others`, the one whose replica·s is nearest to ours (the lower lag·s on a tie).
pub fn nearest_by_replica_seconds<'a, C>(ours: &Outcome, others: &'a [(C, Outcome)]) -> Option<&'a (C, Outcome)> {
    let distance = |o: &Outcome| (o.replica_seconds - ours.replica_seconds).abs();
    others
        .iter()
        .min_by(|(_, a), (_, b)| distance(a).total_cmp(&distance(b)).then(a.lag_seconds.total_cmp(&b.lag_seconds)))
}

/// Ours must use this share of the nearest KEDA configuration's lag·s at most.
pub const LAG_SHARE_GOAL: f64 = 1.0 / 3.0;
/// Ours may use this many times the oracle's replica·s at most.
pub const ORACLE_COST_GOAL: f64 = 1.10;

/// The per-trace goals.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Goals {
    /// No KEDA configuration is better on both lag·s and replica·s.
    pub not_dominated: bool,
    /// lag·s at most a third of the nearest KEDA configuration's.
    pub lag_share: bool,
    /// replica·s at most 1.10 × the oracle's.
    pub near_oracle: bool,
    /// Fewer scale events than the nearest KEDA configuration.
    pub fewer_events: bool,
}

impl Goals {
    pub fn all(&self) -> bool {
        self.not_dominated && self.lag_share && self.near_oracle && self.fewer_events
    }
}

/// The goals for ours against the nearest KEDA configuration and the oracle's replica·s.
pub fn goals(ours: &Outcome, dominated: bool, nearest: &Outcome, oracle_replica_seconds: f64) -> Goals {
    Goals {
        not_dominated: !dominated,
        lag_share: ours.lag_seconds <= LAG_SHARE_GOAL * nearest.lag_seconds,
        near_oracle: ours.replica_seconds <= ORACLE_COST_GOAL * oracle_replica_seconds,
        fewer_events: ours.scale_events() < nearest.scale_events(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(lag_seconds: f64, replica_seconds: f64, events: usize) -> Outcome {
        Outcome { lag_seconds, replica_seconds, scales: vec![(0.0, 1, 2); events], ..Outcome::default() }
    }

    /// (case, others, the one expected to dominate).
    type Case = (&'static str, Vec<(&'static str, Outcome)>, Option<&'static str>);

    #[test]
    fn a_configuration_better_on_both_axes_dominates() {
        let ours = outcome(100.0, 50.0, 1);
        let cases: [Case; 5] = [
            ("better on both", vec![("a", outcome(99.0, 49.0, 9))], Some("a")),
            ("better on lag only", vec![("a", outcome(10.0, 60.0, 1))], None),
            ("better on cost only", vec![("a", outcome(200.0, 10.0, 1))], None),
            ("equal on one axis", vec![("a", outcome(100.0, 10.0, 1)), ("b", outcome(10.0, 50.0, 1))], None),
            ("the least lag of several", vec![("a", outcome(90.0, 40.0, 1)), ("b", outcome(80.0, 45.0, 1))], Some("b")),
        ];
        for (case, others, expected) in cases {
            assert_eq!(dominating(&ours, &others).map(|(name, _)| *name), expected, "{case}");
        }
    }

    #[test]
    fn the_nearest_configuration_is_nearest_in_replica_seconds() {
        let ours = outcome(100.0, 50.0, 1);
        let others =
            vec![("far", outcome(1.0, 80.0, 1)), ("near", outcome(500.0, 47.0, 1)), ("tie", outcome(400.0, 53.0, 1))];
        assert_eq!(nearest_by_replica_seconds(&ours, &others).map(|(name, _)| *name), Some("tie"));
        assert_eq!(nearest_by_replica_seconds::<&str>(&ours, &[]), None);
    }

    #[test]
    fn goals_compare_with_the_nearest_configuration_and_the_oracle() {
        let ours = outcome(100.0, 110.0, 2);
        let met = goals(&ours, false, &outcome(301.0, 110.0, 3), 100.0);
        assert!(met.all(), "{met:?}");
        let cases = [
            ("dominated", goals(&ours, true, &outcome(301.0, 110.0, 3), 100.0), "not_dominated"),
            ("lag over a third", goals(&ours, false, &outcome(299.0, 110.0, 3), 100.0), "lag_share"),
            ("over 1.10 x oracle", goals(&ours, false, &outcome(301.0, 110.0, 3), 99.0), "near_oracle"),
            ("as many events", goals(&ours, false, &outcome(301.0, 110.0, 2), 100.0), "fewer_events"),
        ];
        for (case, goals, failed) in cases {
            let flags = [
                ("not_dominated", goals.not_dominated),
                ("lag_share", goals.lag_share),
                ("near_oracle", goals.near_oracle),
                ("fewer_events", goals.fewer_events),
            ];
            for (name, met) in flags {
                assert_eq!(met, name != failed, "{case}: {name}");
            }
            assert!(!goals.all(), "{case}");
        }
    }
}
