//! Runs a file's rows, a bounded number at once: the machine has two cores.

use std::sync::{Arc, Condvar, Mutex};

use streamjob_runtime::sync::lock;

use super::Row;

/// Rows whose workers run at once.
pub const CONCURRENT_ROWS: usize = 8;

/// A scenario to run and how many rows' worth of workers it runs at once.
pub struct Task {
    pub weight: usize,
    pub run: Box<dyn FnOnce() -> Vec<Row> + Send>,
}

/// A counting semaphore over rows' worth of workers.
#[derive(Default)]
struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    fn run(&self, task: Task) -> Vec<Row> {
        let mut used = lock(&self.used);
        while *used + task.weight > CONCURRENT_ROWS {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += task.weight;
        drop(used);
        let rows = (task.run)();
        *lock(&self.used) -= task.weight;
        self.freed.notify_all();
        rows
    }
}

/// Runs the tasks, at most [`CONCURRENT_ROWS`] rows at once, in the order given.
pub fn run_all(tasks: Vec<Task>) -> Vec<Row> {
    let slots = Arc::new(Slots::default());
    let queue = Arc::new(Mutex::new(tasks.into_iter().collect::<std::collections::VecDeque<_>>()));
    let runners: Vec<_> = (0..CONCURRENT_ROWS)
        .map(|_| {
            let (slots, queue) = (slots.clone(), queue.clone());
            std::thread::spawn(move || {
                let mut rows = Vec::new();
                loop {
                    // Its own statement: the queue's lock is not held while the task runs.
                    let next = lock(&queue).pop_front();
                    let Some(task) = next else { break };
                    rows.extend(slots.run(task));
                }
                rows
            })
        })
        .collect();
    let mut rows: Vec<Row> = runners.into_iter().flat_map(|r| r.join().unwrap_or_default()).collect();
    rows.sort_by_key(|row| (row.scenario.clone(), format!("{:?}{:?}", row.job, row.delivery)));
    rows
}
