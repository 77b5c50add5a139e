//! What the operator and the worker processes share, and nothing of either's domain: the admin
//! server ([`http`]), metric registration ([`metrics`]), the shutdown signal ([`shutdown`]), the
//! wall clock ([`clock`]) and the poison-tolerant lock ([`sync`]).

pub mod clock;
pub mod http;
pub mod metrics;
pub mod shutdown;
pub mod sync;
