//! The StreamJob operator: builds and reconciles each job's workers, measures lag and scales.

pub mod builders;
pub mod render;

/// Worker image used for jobs that name none, unless `--worker-image` says otherwise.
pub const DEFAULT_WORKER_IMAGE: &str = concat!("ghcr.io/streamjob/streamjob-worker:", env!("CARGO_PKG_VERSION"));
