//! Lag-driven autoscaling: the pure policy, and the simulator that compares it with KEDA's
//! Kafka scaler on an HPA.

pub mod driver;
pub mod policy;
pub mod probe;
pub mod simulator;

#[cfg(test)]
mod policy_tests;
