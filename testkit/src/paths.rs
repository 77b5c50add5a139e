//! Where the workspace's build output is, and the files one bench leaves there for another.

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the repository root) or `target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), |dir| repo_root().join(dir))
}

/// The CSV the `scale_gap` bench writes (one row per scale event and group protocol) and the
/// autoscaler bench reads its measured pause from.
pub fn scale_gap_csv() -> PathBuf {
    target_dir().join("scale-gap.csv")
}
