#!/usr/bin/env bash
# The project's test command: formatting, lints, every Rust test, and the Python checks of the
# rendered Kubernetes objects and the Helm chart. Needs the Python packages in
# tests/python/requirements.txt (.ci/run installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo build (binaries the end-to-end tests run)"
cargo build --workspace --bins --locked

echo "== cargo test"
cargo test --workspace --exclude streamjob-e2e --locked

echo "== end-to-end tests (a real API server when KUBEBUILDER_ASSETS or STREAMJOB_E2E_CLUSTER=1 is set)"
cargo test -p streamjob-e2e --locked -- --nocapture --test-threads 1

echo "== python tests (rendered objects, CRD, chart)"
python3 -m pytest -q tests/python
