//! The whole path a user takes, on a real node (`scripts/node.sh`: containerd, runc, the CNI
//! bridge, the kubelet, kube-scheduler and kube-proxy beside the control plane): the images that
//! `scripts/images.sh` builds from this repository imported into containerd; the chart installed
//! with the real Helm SDK (`imagePullPolicy: Never`), so the operator runs as a pod under the
//! chart's ServiceAccount and its restricted security context, reaching the API server through
//! the `kubernetes` Service; the wordcount example applied against a real Kafka broker the pods
//! reach; its workers run as pods from the worker image; `kubectl wait --for=condition=Ready`;
//! the word counts are exact.

use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use streamjob_e2e::chart_rbac::Release;
use streamjob_e2e::node::{images, RealNode};
use streamjob_e2e::unique;
use streamjob_testkit::fixtures::{example, JobFixture as _};
use streamjob_testkit::kafka::{
    expected_word_counts, final_word_counts, produce_all, word_count_differences, NewRecord,
};
use streamjob_worker::topic_io::{create_topics, TopicReader};

/// How long a pod may take to start and a job to produce its counts on a busy 2-core machine.
const WAIT: Duration = Duration::from_secs(240);
/// The wordcount example's window size.
const WINDOW_MS: i64 = 10_000;
const PARTITIONS: i32 = 6;

#[test]
fn chart_operator_and_workers_run_as_pods_on_a_real_node_and_count_words_exactly() -> anyhow::Result<()> {
    let Some(node) = RealNode::start()? else { return Ok(()) };
    let result = whole_path(&node);
    if result.is_err() {
        eprintln!("kubelet log ends:\n{}", node.log_tail("kubelet", 40));
        eprintln!("containerd log ends:\n{}", node.log_tail("containerd", 20));
        if let Ok(pods) = node.kubectl(&["get", "pods", "-A", "-o", "wide"]) {
            eprintln!("pods:\n{pods}");
        }
        if let Ok(events) = node.kubectl(&["get", "events", "-A", "--sort-by=.lastTimestamp"]) {
            eprintln!("events:\n{events}");
        }
    }
    result
}

fn whole_path(node: &RealNode) -> anyhow::Result<()> {
    let images = images()?;
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
    let operator_pods = pods(node, &release.namespace, &selector(release.object("Deployment")?)?)?;
    assert_eq!(operator_pods.len(), 1, "one operator pod");
    let operator = &operator_pods[0];
    assert_eq!(operator["spec"]["serviceAccountName"], release.name_of("ServiceAccount")?.as_str());
    assert_running_restricted(operator, &images.operator_ref);

    let namespace = unique("sj-node");
    node.kubectl(&["create", "namespace", &namespace])?;
    let (lines_topic, counts_topic) = (unique("lines"), unique("word-counts"));
    let name = "wordcount";
    let group = format!("streamjob-{namespace}-{name}");
    let repartition = format!("{group}-repartition");
    create_topics(
        &node.bootstrap,
        &[(lines_topic.as_str(), PARTITIONS), (counts_topic.as_str(), PARTITIONS), (repartition.as_str(), PARTITIONS)],
    )?;
    let lines = lines(0..600, streamjob_worker::runner::now_ms());
    produce_all(&node.bootstrap, &lines_topic, &lines)?;

    node.kubectl(&["wait", "--for=condition=Established", "crd/streamjobs.streamjob.io", "--timeout=90s"])?;
    let manifest = manifest(node, &namespace, name, &lines_topic, &counts_topic)?;
    node.kubectl(&["apply", "-f", &manifest.display().to_string()])?;
    node.kubectl(&["wait", "--for=condition=Ready", &format!("sj/{name}"), "-n", &namespace, "--timeout=240s"])
        .context("the StreamJob never became Ready")?;
    let statefulset: Value =
        serde_json::from_str(&node.kubectl(&["get", "statefulset", name, "-n", &namespace, "-o", "json"])?)?;
    let workers = pods(node, &namespace, &selector(&statefulset)?)?;
    assert!(!workers.is_empty(), "the Ready job has worker pods");
    for worker in &workers {
        assert_running_restricted(worker, &images.worker_ref);
    }

    let want = expected_word_counts(&lines, WINDOW_MS);
    let mut sink = TopicReader::new(&node.bootstrap, &counts_topic, false)?;
    let complete = sink.read_until(WAIT, |records| final_word_counts(records).is_ok_and(|counts| counts == want));
    let got = final_word_counts(&sink.records).map_err(anyhow::Error::msg)?;
    if !complete {
        let logs =
            node.kubectl(&["logs", "-n", &namespace, &format!("statefulset/{name}"), "--tail=30"]).unwrap_or_default();
        bail!("the workers' counts differ: {:?}\nworker log ends:\n{logs}", word_count_differences(&want, &got));
    }
    let summary = format!(
        "operator pod {} and {} worker pod(s) counted {} lines exactly ({} (window, word) counts)",
        operator["metadata"]["name"].as_str().unwrap_or_default(),
        workers.len(),
        lines.len(),
        want.len()
    );

    node.kubectl(&["delete", "sj", name, "-n", &namespace, "--timeout=120s"])?;
    release.uninstall(&node.kubeconfig)?;
    // Last, once everything held: scripts/test.sh counts these lines.
    println!("ran on a real node: {summary}");
    Ok(())
}

/// The wordcount example as a user adapts it: its name and namespace, the node's broker, fresh
/// topics, and `imagePullPolicy: Never` (the image was imported, not pulled).
fn manifest(
    node: &RealNode,
    namespace: &str,
    name: &str,
    lines: &str,
    counts: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let mut job = example("wordcount.yaml").named(name).in_namespace(namespace);
    job.spec.source.bootstrap_servers = node.bootstrap.clone();
    job.spec.source.topics = vec![lines.to_owned()];
    job.spec.sink.topic = counts.to_owned();
    let mut manifest = serde_json::to_value(&job)?;
    manifest["spec"]["imagePullPolicy"] = json!("Never");
    let path = node.dir.join(format!("{name}.yaml"));
    std::fs::write(&path, serde_yaml::to_string(&manifest)?)?;
    Ok(path)
}

/// `spec.selector.matchLabels` of a Deployment or StatefulSet, as a label selector.
fn selector(object: &Value) -> anyhow::Result<String> {
    let labels = object["spec"]["selector"]["matchLabels"].as_object().context("no spec.selector.matchLabels")?;
    Ok(labels
        .iter()
        .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(","))
}

fn pods(node: &RealNode, namespace: &str, selector: &str) -> anyhow::Result<Vec<Value>> {
    let list: Value =
        serde_json::from_str(&node.kubectl(&["get", "pods", "-n", namespace, "-l", selector, "-o", "json"])?)?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// A pod whose containers run, are ready, come from `image`, and run under the restricted Pod
/// Security Standard: non-root 65532, read-only root filesystem, no capabilities, no privilege
/// escalation, the runtime's default seccomp profile.
fn assert_running_restricted(pod: &Value, image: &str) {
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

fn lines(range: std::ops::Range<usize>, start_ms: i64) -> Vec<NewRecord> {
    const WORDS: [&str; 9] = ["alpha", "beta", "gamma", "delta", "Alpha", "epsilon", "zeta", "eta", "theta"];
    range
        .map(|i| NewRecord {
            key: Some(format!("line-{i}")),
            value: (0..(2 + i % 4))
                .map(|j| WORDS[(i * 7 + j * 3) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
                .into_bytes(),
            // In order, as a live source writes them: nothing is late for the window.
            timestamp_ms: Some(start_ms + i as i64 * 3),
        })
        .collect()
}
