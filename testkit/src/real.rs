//! Reaching the real parts the tests run against. Under `CI=true` a test that needs one it
//! cannot have fails; elsewhere it is skipped with one line saying why. Never a silent pass.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Whether the tests run in CI, where a missing real part is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|ci| ci.eq_ignore_ascii_case("true") || ci == "1")
}

/// The real Kafka broker named by `STREAMJOB_TEST_BOOTSTRAP` (host:port; the test command
/// starts one). Unset: a panic under CI, else one `skipping:` line and `None`.
pub fn real_broker() -> Option<String> {
    if let Some(bootstrap) = std::env::var("STREAMJOB_TEST_BOOTSTRAP").ok().filter(|b| !b.is_empty()) {
        return Some(bootstrap);
    }
    assert!(
        !in_ci(),
        "CI=true but STREAMJOB_TEST_BOOTSTRAP is unset: this test needs a real Kafka broker (scripts/test.sh starts one)"
    );
    eprintln!("skipping: no real Kafka broker (set STREAMJOB_TEST_BOOTSTRAP)");
    None
}

/// `name` made unique to this test run (process id, time, sequence): brokers and API servers
/// are shared and keep topics, groups, transactional ids and namespaces across runs.
pub fn unique(name: &str) -> String {
    static SEQUENCE: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{name}-{}-{nanos}-{}", std::process::id(), SEQUENCE.fetch_add(1, Ordering::Relaxed))
}
