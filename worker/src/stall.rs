//! Whether the worker still moves. Before each step that may block inside librdkafka the
//! worker says which step it is and how long the step may take; a step that outlasts that by
//! [`GRACE`] is stuck. librdkafka can wait forever, whatever timeout it was given, for a group
//! coordinator that left the cluster (confluentinc/librdkafka#5456 and #5511: after a broker
//! is killed, `send_offsets_to_transaction` never returns). The worker binary's watchdog ends
//! such a process, so that a fresh one takes over: nothing is lost, since what was not
//! committed is read again and an open transaction is aborted by the next instance.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use streamjob_runtime::sync::lock;

/// How much longer than its own bound a step may run before it counts as stuck: covers the
/// work around the call and a loaded machine.
pub const GRACE: Duration = Duration::from_secs(15);

/// The step the worker is in, and by when it should be out of it.
#[derive(Debug, Default)]
pub struct StallWatch {
    current: Mutex<Option<Step>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Step {
    name: &'static str,
    started: Instant,
    bound: Duration,
}

/// A step that did not end in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    pub step: &'static str,
    pub for_: Duration,
    pub bound: Duration,
}

impl StallWatch {
    /// The worker enters `step`, which should end within `bound`.
    pub fn enter(&self, step: &'static str, bound: Duration) {
        self.enter_at(step, bound, Instant::now());
    }

    fn enter_at(&self, name: &'static str, bound: Duration, now: Instant) {
        *lock(&self.current) = Some(Step { name, started: now, bound });
    }

    /// The step the worker has been in for longer than its bound and [`GRACE`], if any.
    pub fn stalled(&self) -> Option<Stall> {
        self.stalled_at(Instant::now())
    }

    fn stalled_at(&self, now: Instant) -> Option<Stall> {
        let step = (*lock(&self.current))?;
        let for_ = now.saturating_duration_since(step.started);
        (for_ > step.bound + GRACE).then_some(Stall { step: step.name, for_, bound: step.bound })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_stuck_only_once_it_outlasts_its_bound_and_the_grace() {
        let watch = StallWatch::default();
        let start = Instant::now();
        assert_eq!(watch.stalled_at(start + Duration::from_secs(3600)), None, "no step entered yet");
        watch.enter_at("send_offsets_to_transaction", Duration::from_secs(30), start);
        assert_eq!(watch.stalled_at(start + Duration::from_secs(44)), None);
        let stall = watch.stalled_at(start + Duration::from_secs(46));
        assert_eq!(stall.map(|s| s.step), Some("send_offsets_to_transaction"));
    }

    #[test]
    fn entering_the_next_step_starts_its_own_clock() {
        let watch = StallWatch::default();
        let start = Instant::now();
        watch.enter_at("commit_transaction", Duration::from_secs(30), start);
        watch.enter_at("reading", Duration::from_secs(1), start + Duration::from_secs(40));
        assert_eq!(watch.stalled_at(start + Duration::from_secs(50)), None);
        let stall = watch.stalled_at(start + Duration::from_secs(57)).expect("stuck in reading");
        assert_eq!((stall.step, stall.bound), ("reading", Duration::from_secs(1)));
    }
}
