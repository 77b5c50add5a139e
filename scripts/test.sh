#!/usr/bin/env bash
# The project's test command: formatting, lints, every Rust test, and the Python checks of the
# rendered Kubernetes objects and the Helm chart, against real parts: a real Apache Kafka broker
# (started here, jars from Maven Central) and a real Kubernetes control plane (etcd,
# kube-apiserver, kube-controller-manager, built from the pinned Go modules; each test starts its
# own). Both are cached outside the clone. Needs the Python packages in
# tests/python/requirements.txt, Java 17 with Maven and Go (.ci/run installs what is missing).
#
# STREAMJOB_TEST_BOOTSTRAP=host:port uses that Kafka instead; KUBEBUILDER_ASSETS=DIR that
# control plane; STREAMJOB_E2E_CLUSTER=1 with KUBECONFIG a whole cluster. Under CI=true a real
# part that cannot be had fails the run; elsewhere the tests that need it skip, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."

real_part_missing() {
  if [ "${CI:-}" = "true" ]; then
    echo "FAILED: $1 (CI=true: the tests that need it may not skip)" >&2
    exit 1
  fi
  echo "warning: $1; the tests that need it will skip" >&2
}

echo "== $(date +%T) cargo fmt --check"
cargo fmt --all -- --check

echo "== $(date +%T) cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== $(date +%T) real Kafka broker"
broker_dir=""
if [ -z "${STREAMJOB_TEST_BOOTSTRAP:-}" ]; then
  broker_dir="$(mktemp -d -t streamjob-kafka.XXXXXX)"
  trap 'scripts/kafka-broker.sh stop "$broker_dir"; rm -rf "$broker_dir"' EXIT
  if line=$(scripts/kafka-broker.sh start "$broker_dir" 1); then
    export "${line?}"
  else
    real_part_missing "the Kafka broker did not start"
  fi
fi
echo "STREAMJOB_TEST_BOOTSTRAP=${STREAMJOB_TEST_BOOTSTRAP:-<none>}"

echo "== $(date +%T) real Kubernetes control plane"
if [ -z "${KUBEBUILDER_ASSETS:-}" ] && [ "${STREAMJOB_E2E_CLUSTER:-}" != "1" ]; then
  if assets=$(scripts/controlplane.sh); then
    export KUBEBUILDER_ASSETS="$assets"
  else
    real_part_missing "the control plane could not be built"
  fi
fi
echo "KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS:-<none>}"

echo "== $(date +%T) cargo build (binaries the end-to-end tests run; the operator also as shipped, for its memory benchmark)"
cargo build --workspace --bins --locked
# STREAMJOB_OPERATOR_BIN, when set, is that build already made (.ci/run keeps it per source).
if [ -z "${STREAMJOB_OPERATOR_BIN:-}" ]; then
  cargo build --profile dist --locked -p streamjob-operator --no-default-features --bin streamjob-operator
  export STREAMJOB_OPERATOR_BIN="${CARGO_TARGET_DIR:-target}/dist/streamjob-operator"
fi
echo "STREAMJOB_OPERATOR_BIN=$STREAMJOB_OPERATOR_BIN"

echo "== $(date +%T) cargo test"
cargo test --workspace --exclude streamjob-e2e --locked

echo "== $(date +%T) end-to-end tests (real API server, real Kafka, worker processes)"
e2e_log="$(mktemp -t streamjob-e2e.XXXXXX)"
cargo test -p streamjob-e2e --locked -- --nocapture --test-threads 1 2>&1 | tee "$e2e_log"
# Passed tests per test file, then the files that need each real part.
awk '/Running tests\// { file = $2 } /^test result: ok\. [0-9]+ passed/ { passed[file] += $4 }
  END { for (f in passed) print f, passed[f] }' "$e2e_log" | sort >"$e2e_log.counts"
count_passed() { grep -E "tests/($1)\.rs" "$e2e_log.counts" | awk '{ n += $2 } END { print n + 0 }'; }
echo "real API server: $(count_passed 'api_server|api_restart|autoscaling|chart_install|crd_validation|scale_1000_jobs|faults_lifecycle') tests passed against a real kube-apiserver"
echo "real Kafka broker: $(count_passed 'autoscaling|dev_mode|worker_processes|fault_suite|faults_[a-z_]+') end-to-end tests passed against a real Kafka broker"
# A real-node test prints its "ran on a real node:" line last, once everything it checks held
# (a test that skipped, outside CI, prints none).
echo "real node: $(grep -c 'ran on a real node:' "$e2e_log" || true) tests passed on a real kubelet (the chart's operator and the workers as pods)"
# Where the end-to-end phase's time goes, longest first (the run's budget is watched: .ci/run).
echo "end-to-end seconds per test file:"
awk '/Running tests\// { file = $2 } /^test result: / { sub(/s$/, "", $NF); secs[file] += $NF }
  END { for (f in secs) printf "  %7.1f  %s\n", secs[f], f }' "$e2e_log" | sort -rn
rm -f "$e2e_log" "$e2e_log.counts"

echo "== $(date +%T) python tests (rendered objects, CRD, chart)"
python3 -m pytest -q tests/python
