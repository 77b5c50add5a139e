//! Worker processes, started again whenever they exit by themselves, as a StatefulSet restarts
//! a pod's container, until the row stops them (for good, when it kills one and starts none).

use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use streamjob_runtime::sync::lock;

use crate::{http_get, ChildGuard};

/// A worker process, started again whenever it exits by itself, as a StatefulSet restarts a
/// pod's container (a worker stuck inside librdkafka exits for that: `streamjob_worker::stall`).
pub struct Worker {
    supervised: Arc<Supervised>,
    supervisor: Option<std::thread::JoinHandle<()>>,
    port: u16,
    ordinal: usize,
}

pub struct Supervised {
    process: Mutex<ChildGuard>,
    /// Set once the test stops the worker: it is not restarted any more.
    stopping: AtomicBool,
    /// How each exit the test did not ask for ended.
    exits: Mutex<Vec<String>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.supervised.stopping.store(true, Ordering::SeqCst);
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.join();
        }
    }
}

impl Worker {
    pub fn supervise(
        mut start: impl FnMut() -> anyhow::Result<Child> + Send + 'static,
        port: u16,
        ordinal: usize,
    ) -> anyhow::Result<Self> {
        let supervised = Arc::new(Supervised {
            process: Mutex::new(ChildGuard(start()?)),
            stopping: AtomicBool::new(false),
            exits: Mutex::default(),
        });
        let watched = supervised.clone();
        let supervisor = std::thread::spawn(move || {
            while !watched.stopping.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(250));
                let mut process = lock(&watched.process);
                let Ok(Some(status)) = process.0.try_wait() else { continue };
                if watched.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let restarted = start();
                let mut exits = lock(&watched.exits);
                exits.push(status.to_string());
                match restarted {
                    Ok(child) => *process = ChildGuard(child),
                    Err(error) => return exits.push(format!("could not be started again: {error:#}")),
                }
            }
        });
        Ok(Self { supervised, supervisor: Some(supervisor), port, ordinal })
    }

    pub fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !http_get(self.port, "/readyz").contains("200 OK") {
            if Instant::now() > deadline {
                bail!("worker {} never ready", self.ordinal);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    pub fn kill_9(self) {
        self.supervised.stopping.store(true, Ordering::SeqCst);
        let mut process = lock(&self.supervised.process);
        let _ = process.0.kill();
        let _ = process.0.wait();
    }

    /// SIGTERM, as Kubernetes stops a pod, and the wait for the worker to drain and exit.
    pub fn terminate(self) -> anyhow::Result<()> {
        self.supervised.stopping.store(true, Ordering::SeqCst);
        let mut process = lock(&self.supervised.process);
        if process.0.try_wait()?.is_none() {
            // SAFETY: signals our own child, which has not been waited for, so its pid is live.
            unsafe { libc::kill(process.0.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while process.0.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("worker {} did not stop within 60 s of SIGTERM", self.ordinal);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Says so when the worker exited without being told to (and was started again).
    pub fn exited_on_its_own(&mut self) -> Option<String> {
        let exits = lock(&self.supervised.exits);
        (!exits.is_empty())
            .then(|| format!("worker {} exited by itself, then started again: {}", self.ordinal, exits.join("; ")))
    }

    pub fn records_in(&self) -> u64 {
        http_get(self.port, "/metrics")
            .lines()
            .filter(|line| line.starts_with("streamjob_worker_records_in_total"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}
