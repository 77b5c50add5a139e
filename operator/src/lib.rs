//! The StreamJob operator: builds and reconciles each job's workers, measures lag and scales.

pub mod autoscaler;
pub mod build;
pub mod controller;
#[cfg(feature = "dev")]
pub mod dev;
pub mod kafka;
pub mod leader;
pub mod metrics;
pub mod render;
pub mod replicas;
pub mod run;
pub mod secrets;
pub mod status;
#[cfg(test)]
mod status_tests;

/// Worker image used for jobs that name none, unless `--worker-image` says otherwise.
pub const DEFAULT_WORKER_IMAGE: &str = concat!("ghcr.io/streamjob/streamjob-worker:", env!("CARGO_PKG_VERSION"));

/// Annotation that makes the operator leave a job and its children untouched.
pub const PAUSE_ANNOTATION: &str = "streamjob.io/pause-reconciliation";
