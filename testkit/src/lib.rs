//! Test support for the StreamJob crates, a dev-dependency only: nothing here ships.

pub mod fake_api;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod real;

pub use real::{in_ci, real_broker, unique};
#[cfg(feature = "simulator")]
pub mod simulator;
