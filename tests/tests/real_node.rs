//! The whole path a user takes, on a real node (`scripts/node.sh`: containerd, runc, the CNI
//! bridge, the kubelet, kube-scheduler and kube-proxy beside the control plane): the images that
//! `scripts/images.sh` builds from this repository imported into containerd; the chart installed
//! with the real Helm SDK (`imagePullPolicy: Never`), so the operator runs as a pod under the
//! chart's ServiceAccount and its restricted security context, reaching the API server through
//! the `kubernetes` Service; the wordcount example applied against a real Kafka broker the pods
//! reach; its workers run as pods from the worker image; `kubectl wait --for=condition=Ready`;
//! the word counts are exact; a backlog written while the job is suspended scales the resumed
//! workers up (new pods, same checks) and, once the lag is gone, back to one, and the counts of everything are still exact.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use streamjob_crds::names;
use streamjob_e2e::node::{images, RealNode};
use streamjob_e2e::node_job::{
    assert_running_restricted, install_operator, pods, print_diagnostics, selector, suspend, wait_for_no_pods,
    wait_for_ready_replicas, wait_for_replicas,
};
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
/// Each worker pod's CPU request and limit (see `manifest`).
const WORKER_CPU: &str = "20m";

#[test]
fn chart_operator_and_workers_run_as_pods_on_a_real_node_and_count_words_exactly() -> anyhow::Result<()> {
    let Some(node) = RealNode::start()? else { return Ok(()) };
    let result = whole_path(&node);
    if result.is_err() {
        print_diagnostics(&node);
    }
    result
}

fn whole_path(node: &RealNode) -> anyhow::Result<()> {
    let images = images()?;
    let release = install_operator(node, &images)?;
    let operator_pods = pods(node, &release.namespace, &selector(release.object("Deployment")?)?)?;
    assert_eq!(operator_pods.len(), 1, "one operator pod");
    let operator = &operator_pods[0];
    assert_eq!(operator["spec"]["serviceAccountName"], release.name_of("ServiceAccount")?.as_str());
    assert_running_restricted(operator, &images.operator_ref);

    let namespace = unique("sj-node");
    node.kubectl(&["create", "namespace", &namespace])?;
    let (lines_topic, counts_topic) = (unique("lines"), unique("word-counts"));
    let name = "wordcount";
    let repartition = names::repartition_topic(&names::default_consumer_group(&namespace, name));
    create_topics(
        &node.bootstrap,
        &[(lines_topic.as_str(), PARTITIONS), (counts_topic.as_str(), PARTITIONS), (repartition.as_str(), PARTITIONS)],
    )?;
    let lines = lines_from(0..600, streamjob_worker::runner::now_ms());
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

    let mut sink = TopicReader::new(&node.bootstrap, &counts_topic, false)?;
    exact_counts(node, &namespace, name, &mut sink, &lines)?;

    // A backlog far above lagThreshold (2 000 per replica), written while the job is suspended,
    // as after a pause or an outage, and drained by workers held to WORKER_CPU. More worker
    // pods, then back to one once the lag is gone and the scale-down stabilisation (30 s) has
    // passed.
    suspend(node, &namespace, name, true)?;
    wait_for_replicas(node, &namespace, name, |replicas| replicas == 0).context("the suspended job kept workers")?;
    wait_for_no_pods(node, &namespace, &selector(&statefulset)?)?;
    let spike = lines_from(lines.len()..lines.len() + SPIKE_LINES, streamjob_worker::runner::now_ms());
    produce_all(&node.bootstrap, &lines_topic, &spike)?;
    suspend(node, &namespace, name, false)?;
    let started = Instant::now();
    let peak = wait_for_replicas(node, &namespace, name, |replicas| replicas > 1)
        .context("the job never scaled up on the backlog")?;
    let scaled_up_after = started.elapsed();
    wait_for_ready_replicas(node, &namespace, name, peak)?;
    for worker in pods(node, &namespace, &selector(&statefulset)?)? {
        assert_running_restricted(&worker, &images.worker_ref);
    }
    wait_for_replicas(node, &namespace, name, |replicas| replicas == 1).context("the job never scaled back to 1")?;
    let scaled_down_after = started.elapsed();
    let all = [lines.clone(), spike].concat();
    exact_counts(node, &namespace, name, &mut sink, &all)?;
    let summary = format!(
        "operator pod {}, worker pods 1 -> {peak} ({scaled_up_after:.0?} after it resumed) -> 1 \
         ({scaled_down_after:.0?} after) on a backlog of {SPIKE_LINES} lines; {} lines counted exactly",
        operator["metadata"]["name"].as_str().unwrap_or_default(),
        all.len(),
    );

    node.kubectl(&["delete", "sj", name, "-n", &namespace, "--timeout=120s"])?;
    release.uninstall(&node.kubeconfig)?;
    // Last, once everything held: scripts/test.sh counts these lines.
    println!("ran on a real node: {summary}");
    Ok(())
}

/// Lines of the backlog: far above the test job's lagThreshold of 2 000 per replica.
const SPIKE_LINES: usize = 600_000;

/// Reads the sink until its final counts are those of `lines`; an error with the differences
/// and the workers' log otherwise.
fn exact_counts(
    node: &RealNode,
    namespace: &str,
    name: &str,
    sink: &mut TopicReader,
    lines: &[NewRecord],
) -> anyhow::Result<()> {
    let want = expected_word_counts(lines, WINDOW_MS);
    let complete = sink.read_until(WAIT, |records| final_word_counts(records).is_ok_and(|counts| counts == want));
    if complete {
        return Ok(());
    }
    let got = final_word_counts(&sink.records).map_err(anyhow::Error::msg)?;
    let logs =
        node.kubectl(&["logs", "-n", namespace, &format!("statefulset/{name}"), "--tail=30"]).unwrap_or_default();
    bail!("the workers' counts differ: {:?}\nworker log ends:\n{logs}", word_count_differences(&want, &got))
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
    // The example's autoscaling with a lower lagThreshold and a shorter poll, and workers held
    // to WORKER_CPU, as a namespace's LimitRange would: so that a backlog lasts several polls
    // after the resumed worker is ready however fast the machine is (unthrottled, a dist worker
    // drained 150 000 lines between two 2 s polls; at 50 millicores it once drained them before
    // the settled autoscaler's first decision), and the autoscaler has lag to act on.
    let mut job = example("wordcount.yaml").named(name).in_namespace(namespace).autoscaling(json!({
        "minReplicas": 1, "maxReplicas": 4, "lagThreshold": 2000, "pollIntervalSeconds": 2,
        "scaleDown": {"stabilizationSeconds": 30},
    }));
    job.spec.source.bootstrap_servers = node.bootstrap.clone();
    job.spec.source.topics = vec![lines.to_owned()];
    job.spec.sink.topic = counts.to_owned();
    let mut manifest = serde_json::to_value(&job)?;
    manifest["spec"]["imagePullPolicy"] = json!("Never");
    manifest["spec"]["resources"] = json!({
        "requests": {"cpu": WORKER_CPU, "memory": "64Mi"},
        "limits": {"cpu": WORKER_CPU, "memory": "512Mi"},
    });
    let path = node.dir.join(format!("{name}.yaml"));
    std::fs::write(&path, serde_yaml::to_string(&manifest)?)?;
    Ok(path)
}

/// Lines of 2–5 words, their timestamps in order from `start_ms`, 50 a millisecond.
fn lines_from(range: std::ops::Range<usize>, start_ms: i64) -> Vec<NewRecord> {
    let first = range.start;
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
            timestamp_ms: Some(start_ms + (i - first) as i64 / 50),
        })
        .collect()
}
