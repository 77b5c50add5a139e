//! A StreamJob on a real node ([`crate::node::RealNode`]), as `tests/tests/real_node.rs` and
//! `tests/tests/faults_node.rs` drive it: the chart's operator installed as a pod, the job's
//! StatefulSet and pods read with kubectl, and waits on them, each with a deadline.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::chart_rbac::Release;
use crate::node::{Images, RealNode};

/// How long a pod may take to start and a job to change on a busy 2-core machine.
pub const WAIT: Duration = Duration::from_secs(240);

/// Imports the two images into the node's containerd and `helm install`s the chart (real Helm
/// SDK) with them and `imagePullPolicy: Never`; returns once the operator Deployment is
/// available.
pub fn install_operator(node: &RealNode, images: &Images) -> anyhow::Result<Release> {
    node.import(&[&images.operator, &images.worker])?;
    let (repository, tag) = images.operator_ref.rsplit_once(':').context("an image reference with a tag")?;
    let values = json!({
        "replicaCount": 1,
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "workerImage": images.worker_ref,
        "logFormat": "text",
    });
    let release = Release::install(&node.kubeconfig, &values)?;
    let deployment = release.name_of("Deployment")?;
    node.kubectl(&[
        "rollout",
        "status",
        "-n",
        &release.namespace,
        &format!("deployment/{deployment}"),
        "--timeout=240s",
    ])
    .context("the operator Deployment never became available")?;
    Ok(release)
}

/// What a failed real-node test prints: the ends of the kubelet's and containerd's logs, the
/// pods, the jobs and the events.
pub fn print_diagnostics(node: &RealNode) {
    eprintln!("kubelet log ends:\n{}", node.log_tail("kubelet", 40));
    eprintln!("containerd log ends:\n{}", node.log_tail("containerd", 20));
    if let Ok(pods) = node.kubectl(&["get", "pods", "-A", "-o", "wide"]) {
        eprintln!("pods:\n{pods}");
    }
    if let Ok(jobs) = node.kubectl(&["describe", "sj", "-A"]) {
        eprintln!("jobs:\n{jobs}");
    }
    if let Ok(events) = node.kubectl(&["get", "events", "-A", "--sort-by=.lastTimestamp"]) {
        eprintln!("events:\n{events}");
    }
}

/// The StatefulSet's `spec.replicas` once `wanted` holds for it, polled every second.
pub fn wait_for_replicas(
    node: &RealNode,
    namespace: &str,
    name: &str,
    wanted: impl Fn(i64) -> bool,
) -> anyhow::Result<i64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let replicas =
            node.kubectl(&["get", "statefulset", name, "-n", namespace, "-o", "jsonpath={.spec.replicas}"])?;
        if let Ok(replicas) = replicas.trim().parse::<i64>() {
            if wanted(replicas) {
                return Ok(replicas);
            }
        }
        if Instant::now() > deadline {
            bail!("the StatefulSet stayed at {} replicas for {WAIT:?}", replicas.trim());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Sets `spec.suspend`, as a user pauses and resumes a job.
pub fn suspend(node: &RealNode, namespace: &str, name: &str, suspend: bool) -> anyhow::Result<()> {
    let patch = json!({"spec": {"suspend": suspend}}).to_string();
    node.kubectl(&["patch", "sj", name, "-n", namespace, "--type=merge", "-p", &patch])?;
    Ok(())
}

/// Waits until no pod matches `selector` (a suspended job's workers have stopped).
pub fn wait_for_no_pods(node: &RealNode, namespace: &str, selector: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = pods(node, namespace, selector)?.len();
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} worker pods still there {WAIT:?} after the job was suspended");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Waits until `replicas` worker pods are ready (or the job scaled on meanwhile).
pub fn wait_for_ready_replicas(node: &RealNode, namespace: &str, name: &str, replicas: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (ready, desired) = ready_and_desired(node, namespace, name)?;
        if ready >= replicas || desired != replicas {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{ready} of {replicas} worker pods ready after {WAIT:?}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The StatefulSet's `status.readyReplicas` and `spec.replicas`.
pub fn ready_and_desired(node: &RealNode, namespace: &str, name: &str) -> anyhow::Result<(i64, i64)> {
    let status = node.kubectl(&[
        "get",
        "statefulset",
        name,
        "-n",
        namespace,
        "-o",
        "jsonpath={.status.readyReplicas} {.spec.replicas}",
    ])?;
    // No readyReplicas (none ready) prints nothing before the space.
    let (ready, desired) = status.split_once(' ').unwrap_or(("", status.as_str()));
    Ok((ready.trim().parse().unwrap_or(0), desired.trim().parse().unwrap_or(0)))
}

/// `spec.selector.matchLabels` of a Deployment or StatefulSet, as a label selector.
pub fn selector(object: &Value) -> anyhow::Result<String> {
    let labels = object["spec"]["selector"]["matchLabels"].as_object().context("no spec.selector.matchLabels")?;
    Ok(labels
        .iter()
        .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(","))
}

pub fn pods(node: &RealNode, namespace: &str, selector: &str) -> anyhow::Result<Vec<Value>> {
    let list: Value =
        serde_json::from_str(&node.kubectl(&["get", "pods", "-n", namespace, "-l", selector, "-o", "json"])?)?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// A pod whose containers run, are ready, come from `image`, and run under the restricted Pod
/// Security Standard: non-root 65532, read-only root filesystem, no capabilities, no privilege
/// escalation, the runtime's default seccomp profile.
pub fn assert_running_restricted(pod: &Value, image: &str) {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    assert_eq!(pod["status"]["phase"], "Running", "{name} runs");
    let pod_security = &pod["spec"]["securityContext"];
    for container in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let security = &container["securityContext"];
        let either = |field: &str| {
            if security[field].is_null() {
                pod_security[field].clone()
            } else {
                security[field].clone()
            }
        };
        assert_eq!(container["image"], image, "{name} runs the imported image");
        assert_eq!(container["imagePullPolicy"], "Never", "{name}: the image was imported, not pulled");
        assert_eq!(either("runAsNonRoot"), json!(true), "{name}: runAsNonRoot");
        assert_eq!(security["readOnlyRootFilesystem"], json!(true), "{name}: read-only root filesystem");
        assert_eq!(security["allowPrivilegeEscalation"], json!(false), "{name}: no privilege escalation");
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{name}: every capability dropped");
        assert_eq!(either("seccompProfile")["type"], "RuntimeDefault", "{name}: seccomp RuntimeDefault");
    }
    for status in pod["status"]["containerStatuses"].as_array().into_iter().flatten() {
        assert_eq!(status["ready"], json!(true), "{name}: container {} ready", status["name"]);
        assert!(status["state"]["running"].is_object(), "{name}: container {} running", status["name"]);
    }
}
