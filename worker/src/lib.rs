//! The streamjob worker: one consumer-group member that runs a StreamJob's pipeline.
//!
//! [`engine`] is the processing core without Kafka, [`runner`] connects it to the brokers;
//! health and metrics are served by `streamjob-runtime`. Behind the `dev-broker` feature,
//! `mock_broker` hosts librdkafka's mock cluster and `topic_io` produces and reads whole topics,
//! for `streamjob-operator dev` and the tests.

pub mod busy_time;
pub mod config;
pub mod engine;
pub mod group_offsets;
pub mod group_protocol;
pub mod liveness;
pub mod metrics;
#[cfg(feature = "dev-broker")]
pub mod mock_broker;
pub mod offset_reset;
pub mod offsets;
pub mod partition_end;
pub mod partition_start;
pub mod pipeline;
pub mod record;
pub mod repartition;
pub mod runner;
pub mod sink_refusal;
pub mod stall;
#[cfg(feature = "dev-broker")]
pub mod topic_io;
pub mod undeliverable;

pub use config::{Overrides, Timings, WorkerConfig};
pub use runner::{run, Control, WorkerError};
