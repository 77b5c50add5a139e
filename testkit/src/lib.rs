//! Test support for the StreamJob crates, a dev-dependency only: nothing here ships.

pub mod fake_api;
#[cfg(feature = "simulator")]
pub mod simulator;
