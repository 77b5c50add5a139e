//! In-process workers for `dev`: each one `streamjob_worker::run` on its own thread, a real
//! member of the job's consumer group.

use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use streamjob_worker::config::WorkerConfig;
use streamjob_worker::runner::{Control, WorkerError};

struct RunningWorker {
    ordinal: i32,
    control: Control,
    thread: JoinHandle<Result<(), WorkerError>>,
}

/// Records counted by all workers, those stopped included.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PoolTotals {
    pub records_in: u64,
    pub records_out: u64,
    pub dead_lettered: u64,
    pub skipped: u64,
    /// Input the broker deleted before a worker read it (seen from offset resets).
    pub lost_before_read: u64,
}

/// The workers of one job.
pub struct WorkerPool {
    template: WorkerConfig,
    running: Vec<RunningWorker>,
    /// Asked to stop: draining, committing and leaving the group.
    stopping: Vec<RunningWorker>,
    /// Controls of every worker ever started, for the totals.
    all: Vec<Control>,
}

impl WorkerPool {
    /// `template` is the configuration every worker shares; each gets `<job>-<ordinal>` as its
    /// instance id, like the pods of a StatefulSet.
    pub fn new(template: WorkerConfig) -> Self {
        Self { template, running: Vec::new(), stopping: Vec::new(), all: Vec::new() }
    }

    pub fn len(&self) -> i32 {
        self.running.len() as i32
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Starts or stops workers (highest ordinals first) until `replicas` run.
    pub fn scale_to(&mut self, replicas: i32) -> std::io::Result<()> {
        while self.len() < replicas {
            let ordinal = self.len();
            // Like a StatefulSet, an ordinal is reused only once its previous holder has gone
            // (same transactional and static member id).
            if let Some(index) = self.stopping.iter().position(|w| w.ordinal == ordinal) {
                let previous = self.stopping.remove(index);
                if let Ok(Err(error)) = previous.thread.join() {
                    tracing::warn!(worker = ordinal, %error, "worker failed while stopping");
                }
            }
            let mut config = self.template.clone();
            config.instance_id = format!("{}-{ordinal}", self.template.job_name());
            let control = Control::default();
            let worker_control = control.clone();
            let thread = std::thread::Builder::new()
                .name(format!("worker-{ordinal}"))
                .spawn(move || streamjob_worker::run(config, worker_control))?;
            self.all.push(control.clone());
            self.running.push(RunningWorker { ordinal, control, thread });
        }
        while self.len() > replicas {
            if let Some(worker) = self.running.pop() {
                worker.control.shutdown.store(true, Ordering::SeqCst);
                self.stopping.push(worker);
            }
        }
        Ok(())
    }

    /// Workers that are in the group and consuming.
    pub fn ready(&self) -> i32 {
        self.running.iter().filter(|w| w.control.ready.load(Ordering::SeqCst)).count() as i32
    }

    /// Whether the group is settled: every running worker ready, none still leaving, and the
    /// partitions all assigned (`expected` counts source and repartition partitions).
    pub fn settled(&mut self, expected_assignments: i64) -> bool {
        self.reap_stopped();
        let assigned: i64 = self.running.iter().map(|w| w.control.metrics.assigned_partitions.get()).sum();
        self.stopping.is_empty() && self.ready() == self.len() && assigned == expected_assignments
    }

    /// A worker that stopped on its own, with its error: the run cannot go on.
    pub fn failure(&mut self) -> Option<(i32, String)> {
        let index = self.running.iter().position(|w| w.thread.is_finished())?;
        let worker = self.running.remove(index);
        let outcome = match worker.thread.join() {
            Ok(Ok(())) => "stopped unexpectedly".to_owned(),
            Ok(Err(error)) => error.to_string(),
            Err(_) => "panicked".to_owned(),
        };
        Some((worker.ordinal, outcome))
    }

    fn reap_stopped(&mut self) {
        let (finished, still): (Vec<_>, Vec<_>) = self.stopping.drain(..).partition(|w| w.thread.is_finished());
        self.stopping = still;
        for worker in finished {
            if let Ok(Err(error)) = worker.thread.join() {
                tracing::warn!(worker = worker.ordinal, %error, "worker failed while stopping");
            }
        }
    }

    pub fn totals(&self) -> PoolTotals {
        let mut totals = PoolTotals::default();
        for control in &self.all {
            let t = &control.totals;
            totals.records_in += t.records_in.load(Ordering::Relaxed);
            totals.records_out += t.records_out.load(Ordering::Relaxed);
            totals.dead_lettered += t.dead_lettered.load(Ordering::Relaxed);
            totals.skipped += t.skipped.load(Ordering::Relaxed);
            totals.lost_before_read += t.passed_over_by_resets.load(Ordering::Relaxed);
        }
        totals
    }

    /// Stops every worker cleanly (drain, flush, commit, leave), waits for them, and returns
    /// what they did and how those that failed failed.
    pub fn shutdown(mut self) -> (PoolTotals, Vec<(i32, String)>) {
        let _ = self.scale_to(0);
        let mut errors = Vec::new();
        for worker in self.stopping.drain(..) {
            match worker.thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => errors.push((worker.ordinal, error.to_string())),
                Err(_) => errors.push((worker.ordinal, "panicked".to_owned())),
            }
        }
        (self.totals(), errors)
    }
}
