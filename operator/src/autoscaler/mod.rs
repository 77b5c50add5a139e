//! Lag-driven autoscaling: the pure policy, the lag probe, and the driver that applies its
//! decisions. The simulator that compares the policy with KEDA's is in `streamjob-testkit`.

pub mod blocked;
pub mod capacity;
pub mod driver;
pub mod kafka_admin;
pub mod policy;
pub mod probe;
pub mod sink_check;
pub mod unready;
pub mod view;

#[cfg(test)]
mod policy_tests;
