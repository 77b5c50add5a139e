//! A sink the broker refuses: the topic was deleted (UNKNOWN_TOPIC_OR_PARTITION), the worker
//! may not write it (TOPIC_AUTHORIZATION_FAILED), or its name is invalid.
//!
//! No retry helps until someone fixes the topic, so the worker does not rewind and resend at
//! once, turn after turn: it pauses its partitions, waits (1 s, doubling up to 30 s), then
//! rewinds to its last commit and tries again; nothing is lost, the records are sent again.
//! While it lasts, `/readyz` fails with the broker's reason and the metric
//! `streamjob_worker_sink_refused{reason}` is 1. It ends when the sink acknowledges a record,
//! or when a whole quiet period passes after a resume without another refusal.
//!
//! Pure: the runner pauses, resumes and rewinds (`runner/run_loop.rs`).

pub const FIRST_BACKOFF_MS: i64 = 1_000;
pub const MAX_BACKOFF_MS: i64 = 30_000;
/// After a resume, this long without a refusal ends it even if nothing was written.
pub const QUIET_MS: i64 = 10_000;

#[derive(Debug, Default)]
pub struct SinkRefusal {
    state: Option<Refused>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Refused {
    reason: String,
    since_ms: i64,
    backoff_ms: i64,
    /// When the partitions are resumed and the records sent again.
    resume_at_ms: i64,
    resumed: bool,
}

/// What the runner does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do.
    None,
    /// Pause every partition for `backoff_ms` (a new refusal, or the same again).
    Pause { backoff_ms: i64, first: bool },
    /// The back-off is over: rewind to the last commit and resume.
    Resume,
}

impl SinkRefusal {
    /// The sink refused a record with `reason`.
    pub fn refused(&mut self, reason: &str, now_ms: i64) -> Step {
        let (backoff_ms, since_ms, first) = match &self.state {
            Some(state) if state.resumed => ((state.backoff_ms * 2).min(MAX_BACKOFF_MS), state.since_ms, false),
            // Refusals of records already in flight while backing off add nothing.
            Some(_) => return Step::None,
            None => (FIRST_BACKOFF_MS, now_ms, true),
        };
        self.state = Some(Refused {
            reason: reason.to_owned(),
            since_ms,
            backoff_ms,
            resume_at_ms: now_ms + backoff_ms,
            resumed: false,
        });
        Step::Pause { backoff_ms, first }
    }

    /// Called every turn of the loop.
    pub fn tick(&mut self, now_ms: i64) -> Step {
        match &mut self.state {
            Some(state) if !state.resumed && now_ms >= state.resume_at_ms => {
                state.resumed = true;
                state.resume_at_ms = now_ms;
                Step::Resume
            }
            Some(state) if state.resumed && now_ms - state.resume_at_ms >= QUIET_MS => {
                self.state = None;
                Step::None
            }
            _ => Step::None,
        }
    }

    /// The sink acknowledged a record after a resume: it takes writes again.
    pub fn accepted(&mut self) {
        if self.state.as_ref().is_some_and(|state| state.resumed) {
            self.state = None;
        }
    }

    /// Whether the worker is waiting out a back-off (its partitions paused).
    pub fn backing_off(&self) -> bool {
        self.state.as_ref().is_some_and(|state| !state.resumed)
    }

    /// The broker's reason, while the sink refuses.
    pub fn reason(&self) -> Option<&str> {
        self.state.as_ref().map(|state| state.reason.as_str())
    }

    /// Since when, while the sink refuses.
    pub fn since_ms(&self) -> Option<i64> {
        self.state.as_ref().map(|state| state.since_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_after_a_resume_doubles_the_back_off_up_to_thirty_seconds() {
        let mut refusal = SinkRefusal::default();
        assert_eq!(refusal.refused("deleted", 0), Step::Pause { backoff_ms: 1_000, first: true });
        assert_eq!(refusal.refused("deleted", 10), Step::None, "a record in flight when it paused");
        assert!(refusal.backing_off());
        assert_eq!(refusal.tick(999), Step::None);
        assert_eq!(refusal.tick(1_000), Step::Resume);
        assert!(!refusal.backing_off());
        let mut now = 1_000;
        let mut backoffs = Vec::new();
        for _ in 0..7 {
            now += 100;
            match refusal.refused("deleted", now) {
                Step::Pause { backoff_ms, first: false } => backoffs.push(backoff_ms),
                other => panic!("{other:?}"),
            }
            now += backoffs.last().copied().unwrap_or_default();
            assert_eq!(refusal.tick(now), Step::Resume);
        }
        assert_eq!(backoffs, [2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]);
        assert_eq!((refusal.reason(), refusal.since_ms()), (Some("deleted"), Some(0)));
    }

    #[test]
    fn it_ends_when_the_sink_takes_a_record_or_stays_quiet_after_a_resume() {
        let mut refusal = SinkRefusal::default();
        refusal.refused("not authorized", 0);
        refusal.accepted();
        assert!(refusal.reason().is_some(), "an acknowledgement from before the pause proves nothing");
        assert_eq!(refusal.tick(1_000), Step::Resume);
        refusal.accepted();
        assert_eq!(refusal.reason(), None);

        refusal.refused("not authorized", 2_000);
        assert_eq!(refusal.refused("not authorized", 2_000), Step::None);
        assert_eq!(refusal.tick(3_000), Step::Resume);
        assert_eq!(refusal.tick(3_000 + QUIET_MS - 1), Step::None);
        assert!(refusal.reason().is_some());
        refusal.tick(3_000 + QUIET_MS);
        assert_eq!(refusal.reason(), None);
        assert_eq!(refusal.refused("again", 20_000), Step::Pause { backoff_ms: 1_000, first: true }, "afresh");
    }
}
