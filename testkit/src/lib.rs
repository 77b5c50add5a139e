//! Test support for the StreamJob crates, a dev-dependency only: nothing here ships.

pub mod fake_api;
#[cfg(feature = "fixtures")]
pub mod fixtures;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod paths;
pub mod real;

pub use paths::{repo_root, scale_gap_csv, target_dir};
pub use real::{in_ci, real_broker, unique};
#[cfg(feature = "simulator")]
pub mod simulator;
