//! Faults as a cluster makes them (issue 27, item 4), on a real node (`scripts/node.sh`): the
//! chart's operator runs as a pod, a job's workers as pods from the worker image, input flows
//! through the node's Kafka broker, and each test is one row of the fault suite's table
//! (`streamjob_e2e::faults`): records produced, what the sink holds (lost and duplicated; read
//! `read_committed` under `delivery: exactlyOnce`) and how long the job took to recover.
//!
//! - **a worker pod force-deleted** (`kubectl delete pod --grace-period=0 --force`) under
//!   exactly-once while input flows: nothing lost, no duplicate;
//! - **a worker the quota refuses**: a `ResourceQuota` of one pod less than the autoscaler asks
//!   for on a backlog: the job says so (`ScaleBlocked`, `QuotaExceeded`) and its two workers
//!   process everything, exactly once;
//! - **the operator pod force-deleted mid-scale** (`scaleUp.maxStep: 1`, killed once the first
//!   step is made): the Deployment's new operator pod takes the lease and scales on to the
//!   autoscaler's target, and nothing is lost or duplicated;
//! - **containerd restarted** under a running at-least-once job: the workers keep running or the
//!   kubelet restarts them, and nothing is lost (duplicates are counted).
//!
//! The job is the passthrough keyed by `seq` (each record's number once in the sink), so lost and
//! duplicated counts are exact. One node per test; the node is one per machine, so the tests take
//! turns. Each prints its row, then, last and only once everything it checks held, a line
//! `ran on a real node: …` (scripts/test.sh counts them).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use streamjob_e2e::chart_rbac::Release;
use streamjob_e2e::faults::{record, report, write_paced, Case, Delivery, Job, Row};
use streamjob_e2e::node::{images, RealNode};
use streamjob_e2e::node_job::{install_operator, pods, print_diagnostics, ready_and_desired, selector, WAIT};
use streamjob_e2e::unique;
use streamjob_testkit::kafka::NewRecord;
use streamjob_worker::topic_io::TopicReader;

/// One node per machine (its bridge and subnet are fixed): the tests of this file take turns.
static ONE_NODE: Mutex<()> = Mutex::new(());

/// Partitions of each row's topics: 1, 2, 3 and 6 workers share them evenly.
const PARTITIONS: i32 = 6;
/// Records a fixed-size row writes while its fault happens, and over how long.
const FLOW: usize = 6_000;
const FLOW_OVER: Duration = Duration::from_secs(40);
/// The autoscaled rows: a backlog written before the job starts, far above `LAG_THRESHOLD` per
/// worker, drained by workers held to `THROTTLED_CPU` so that it lasts several polls after the
/// first worker is ready (an unthrottled worker drains it between two polls), and live input
/// beside it.
const BACKLOG: usize = 150_000;
/// The operator row's backlog: it must outlast the first step, the kill and the new operator's
/// lease wait (up to the chart's 15 s) and first settled polls, drained by 2 workers meanwhile
/// (some 2 000 records a second each at 20 millicores here).
const LONG_BACKLOG: usize = 450_000;
const LAG_THRESHOLD: i64 = 1_000;
const THROTTLED_CPU: &str = "20m";

#[test]
fn a_worker_pod_force_deleted_under_exactly_once_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    on_node("a worker pod force-deleted", |node, _| {
        let job = NodeJob::create(node, "worker pod force-deleted", Delivery::ExactlyOnce, |spec| {
            spec["replicas"] = json!(2);
            spec["resources"] = resources("500m");
        })?;
        let started = Instant::now();
        job.apply_and_wait_ready()?;
        let feed = job.feed(0, FLOW, FLOW_OVER);
        job.wait_for_output()?;
        let victim = format!("{}-1", job.name());
        let uid = job.pod_uid(&victim)?;
        node.kubectl(&["delete", "pod", &victim, "-n", &job.namespace, "--grace-period=0", "--force"])?;
        let killed = Instant::now();
        job.wait_until("the force-deleted worker back and every worker ready", || {
            let back = job.pod_uid(&victim).is_ok_and(|new| new != uid);
            Ok(back && ready_and_desired(node, &job.namespace, job.name())? == (2, 2))
        })?;
        let recovered = killed.elapsed();
        let written = feed.join().map_err(|_| anyhow::anyhow!("the feed panicked"))??;
        let mut row = job.row(written, started);
        row.notes.push(format!("{victim} force-deleted: recreated and 2/2 workers ready {recovered:.0?} later"));
        let summary = summary(&row, &format!("worker pod {victim} force-deleted, back in {recovered:.0?}"));
        Ok((row, summary))
    })
}

#[test]
fn a_worker_the_quota_refuses_is_reported_and_the_others_process_everything() -> anyhow::Result<()> {
    on_node("a worker pod the ResourceQuota refuses", |node, _| {
        let job = NodeJob::create(node, "quota admits 1 pod less", Delivery::ExactlyOnce, |spec| {
            spec["autoscaling"] = json!({
                "minReplicas": 1, "maxReplicas": 3, "lagThreshold": LAG_THRESHOLD, "pollIntervalSeconds": 2,
                "scaleDown": {"stabilizationSeconds": 30},
            });
            spec["resources"] = resources(THROTTLED_CPU);
        })?;
        // The autoscaler asks for 3 (maxReplicas) on the backlog; the namespace admits 2 pods.
        let quota = json!({
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "two-pods", "namespace": job.namespace},
            "spec": {"hard": {"pods": "2"}},
        });
        job.apply_object(&quota)?;
        let started = Instant::now();
        let backlog = job.backlog(BACKLOG)?;
        job.apply_and_wait_ready()?;
        let feed = job.feed(BACKLOG, FLOW, FLOW_OVER);
        let blocked = job.wait_until("ScaleBlocked True with reason QuotaExceeded", || {
            let condition = job.condition("ScaleBlocked")?;
            Ok(condition["status"] == "True" && condition["reason"] == "QuotaExceeded")
        });
        let blocked_after = started.elapsed();
        let condition = job.condition("ScaleBlocked")?;
        let (ready, desired) = ready_and_desired(node, &job.namespace, job.name())?;
        if let Err(error) = blocked {
            bail!("{error:#}: the StatefulSet wants {desired} with {ready} ready; ScaleBlocked is {condition}");
        }
        if desired != 3 {
            bail!("blocked, but the StatefulSet wants {desired} workers, not the autoscaler's 3");
        }
        // The two admitted workers run on: both ready while the third stays refused.
        job.wait_until("the 2 admitted workers ready", || {
            Ok(ready_and_desired(node, &job.namespace, job.name())?.0 == 2)
        })?;
        let running = pods(node, &job.namespace, &job.selector()?)?.len();
        if running != 2 {
            bail!("{running} worker pods exist under a quota of 2 pods");
        }
        let written = [backlog, feed.join().map_err(|_| anyhow::anyhow!("the feed panicked"))??].concat();
        let mut row = job.row(written, started);
        let message = condition["message"].as_str().unwrap_or_default();
        row.notes.push(format!(
            "ScaleBlocked QuotaExceeded {blocked_after:.0?} after the backlog was written, {ready} of {desired} \
             workers ready: {message}"
        ));
        let summary = summary(
            &row,
            &format!("autoscaler asked 3, quota admits 2: ScaleBlocked QuotaExceeded after {blocked_after:.0?}"),
        );
        Ok((row, summary))
    })
}

#[test]
fn the_operator_pod_force_deleted_mid_scale_is_replaced_and_the_scale_up_finishes() -> anyhow::Result<()> {
    on_node("the operator pod force-deleted mid-scale", |node, release| {
        let job = NodeJob::create(node, "operator killed mid-scale", Delivery::ExactlyOnce, |spec| {
            spec["autoscaling"] = json!({
                "minReplicas": 1, "maxReplicas": 3, "lagThreshold": LAG_THRESHOLD, "pollIntervalSeconds": 2,
                "scaleUp": {"maxStep": 1}, "scaleDown": {"stabilizationSeconds": 60},
            });
            spec["resources"] = resources(THROTTLED_CPU);
        })?;
        let operator_selector = selector(release.object("Deployment")?)?;
        let operator_pods = pods(node, &release.namespace, &operator_selector)?;
        let [operator] = operator_pods.as_slice() else { bail!("{} operator pods, not 1", operator_pods.len()) };
        let operator = operator["metadata"]["name"].as_str().context("the operator pod's name")?.to_owned();
        let started = Instant::now();
        let backlog = job.backlog(LONG_BACKLOG)?;
        job.apply_and_wait_ready()?;
        let feed = job.feed(LONG_BACKLOG, FLOW, FLOW_OVER);
        // The first step of the scale-up (1 → 2); the operator dies before the next one.
        job.wait_until("the autoscaler's first step, 1 → 2", || {
            Ok(ready_and_desired(node, &job.namespace, job.name())?.1 >= 2)
        })?;
        node.kubectl(&["delete", "pod", &operator, "-n", &release.namespace, "--grace-period=0", "--force"])?;
        let (killed, killed_at) = (Instant::now(), chrono::Utc::now());
        let at_kill = ready_and_desired(node, &job.namespace, job.name())?.1;
        if at_kill != 2 {
            bail!("the operator was killed at {at_kill} workers, after the scale-up it was to interrupt");
        }
        let replacement = job.wait_until_value("a new operator pod ready", || {
            let pods = pods(node, &release.namespace, &operator_selector)?;
            let ready = pods.iter().find(|pod| {
                pod["metadata"]["name"] != operator.as_str()
                    && pod["status"]["containerStatuses"][0]["ready"] == json!(true)
            });
            Ok(ready.and_then(|pod| pod["metadata"]["name"].as_str().map(str::to_owned)))
        })?;
        let replaced = killed.elapsed();
        job.wait_until("the scale-up finished: 3/3 workers ready", || {
            Ok(ready_and_desired(node, &job.namespace, job.name())? == (3, 3))
        })?;
        let recovered = killed.elapsed();
        // The step 2 → 3 is the new operator's: made after the kill, under its lease.
        let scale = job.status()?["lastScale"].clone();
        let scaled_at = scale["time"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if (scale["from"].as_i64(), scale["to"].as_i64()) != (Some(2), Some(3))
            || scaled_at.is_none_or(|at| at < killed_at)
        {
            bail!("the last scale is not a step 2 → 3 made after the kill at {killed_at}: {scale}");
        }
        let holder = node.kubectl(&[
            "get",
            "lease",
            "-n",
            &release.namespace,
            "-o",
            "jsonpath={.items[*].spec.holderIdentity}",
        ])?;
        if holder.split_whitespace().all(|identity| identity != replacement) {
            bail!("the leader lease is held by {holder:?}, not by the new operator pod {replacement}");
        }
        let written = [backlog, feed.join().map_err(|_| anyhow::anyhow!("the feed panicked"))??].concat();
        let mut row = job.row(written, started);
        row.notes.push(format!(
            "operator {operator} force-deleted at 2 of 3 workers; {replacement} ready {replaced:.0?} later; \
             3/3 workers ready {recovered:.0?} after the kill; it holds the lease; lastScale {scale}"
        ));
        let summary = summary(
            &row,
            &format!("operator pod force-deleted at 1 → 2 of 3; its replacement scaled to 3/3 ready {recovered:.0?} after the kill"),
        );
        Ok((row, summary))
    })
}

#[test]
fn containerd_restarted_under_a_running_job_loses_nothing() -> anyhow::Result<()> {
    on_node("containerd restarted", |node, _| {
        let job = NodeJob::create(node, "containerd restarted", Delivery::AtLeastOnce, |spec| {
            spec["replicas"] = json!(2);
            spec["resources"] = resources("500m");
        })?;
        let started = Instant::now();
        job.apply_and_wait_ready()?;
        let before = job.containers()?;
        let feed = job.feed(0, FLOW, FLOW_OVER);
        let fed = Instant::now();
        job.wait_for_output()?;
        let restarted = Instant::now();
        node.restart_containerd()?;
        let serving = restarted.elapsed();
        // The new containerd runs the workers' containers (the old ones, or new ones the kubelet
        // started), the pods are ready, and records written after the restart reach the sink.
        let after_restart = written_by(fed.elapsed()) + FLOW / FLOW_OVER.as_secs() as usize;
        if after_restart >= FLOW {
            bail!(
                "containerd served again {:.0?} after the input began, too late to see input after it",
                fed.elapsed()
            );
        }
        job.wait_until("every worker container running in the new containerd, every pod ready", || {
            let containers = job.containers()?;
            let tasks = node.ctr(&["tasks", "ls"])?;
            let running = |id: &str| {
                tasks.lines().any(|line| line.starts_with(id) && line.split_whitespace().nth(2) == Some("RUNNING"))
            };
            Ok(containers.len() == 2
                && containers.iter().all(|c| c.running && c.ready && running(c.id.trim_start_matches("containerd://")))
                && ready_and_desired(node, &job.namespace, job.name())? == (2, 2))
        })?;
        let mut sink = TopicReader::new(&node.bootstrap, &job.case.sink, false)?;
        let resumed = sink.read_until(WAIT, |records| {
            records.iter().any(|r| seq_of(&r.value).is_some_and(|seq| seq >= after_restart as u64))
        });
        if !resumed {
            bail!("no record written after the restart (seq {after_restart} on) reached the sink within {WAIT:?}");
        }
        let recovered = restarted.elapsed();
        let written = feed.join().map_err(|_| anyhow::anyhow!("the feed panicked"))??;
        let mut row = job.row(written, started);
        let after = job.containers()?;
        let kept = after.iter().filter(|c| before.iter().any(|b| b.pod == c.pod && b.id == c.id)).count();
        let restarts: Vec<String> = after.iter().map(|c| format!("{} {}", ordinal(&c.pod), c.restarts)).collect();
        let fate = format!(
            "{kept} of {} worker containers kept running through the restart (restarts by pod ordinal: {})",
            after.len(),
            restarts.join(", ")
        );
        row.notes.push(format!(
            "containerd serving again {serving:.0?} after the restart began; records written after it in the sink \
             {recovered:.0?} after; {fate}"
        ));
        let summary =
            summary(&row, &format!("containerd restarted, records flowing again {recovered:.0?} after; {fate}"));
        Ok((row, summary))
    })
}

/// How many records the feed has written `elapsed` after it began (it writes in 100 ms steps).
fn written_by(elapsed: Duration) -> usize {
    let steps = (FLOW_OVER.as_millis() / 100) as usize;
    let step = (elapsed.as_millis() / 100) as usize + 1;
    FLOW * step.min(steps) / steps
}

/// The `seq` of a passthrough record's value.
fn seq_of(value: &str) -> Option<u64> {
    serde_json::from_str::<Value>(value).ok()?["seq"].as_u64()
}

/// `job-3` → `3`.
fn ordinal(pod: &str) -> &str {
    pod.rsplit_once('-').map_or(pod, |(_, ordinal)| ordinal)
}

// ---------------------------------------------------------------------------------------------

/// Starts a node, installs the chart's operator on it and runs `row`; prints the row's table
/// (failing when it lost, or under exactly-once duplicated, a record) and, last, its summary.
fn on_node(title: &str, row: impl FnOnce(&RealNode, &Release) -> anyhow::Result<(Row, String)>) -> anyhow::Result<()> {
    let _turn = ONE_NODE.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(node) = RealNode::start()? else { return Ok(()) };
    let started = Instant::now();
    let result = images().and_then(|images| {
        let release = install_operator(&node, &images)?;
        row(&node, &release)
    });
    let (row, summary) = match result {
        Ok(done) => done,
        Err(error) => {
            print_diagnostics(&node);
            return Err(error);
        }
    };
    if !row.passed() {
        print_diagnostics(&node);
    }
    report(&format!("faults on a real node: {title}"), std::slice::from_ref(&row), started);
    // Last, once everything held: scripts/test.sh counts these lines.
    println!("ran on a real node: {summary}");
    Ok(())
}

/// The row's one-line summary: what was produced and what the sink holds.
fn summary(row: &Row, what: &str) -> String {
    let tally = row.outcome.as_ref().cloned().unwrap_or_default();
    format!(
        "{what}; {:?}: {} records produced, sink {} ({} lost, {} duplicated), {:.0?} in all",
        row.delivery, tally.input, tally.sink, tally.lost, tally.duplicated, row.elapsed
    )
}

/// A worker pod's CPU request and limit: memory as the chart's defaults would leave it.
fn resources(cpu: &str) -> Value {
    json!({"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"cpu": cpu, "memory": "512Mi"}})
}

/// A row's passthrough job on the node: its namespace, topics and manifest (the fault suite's
/// [`Case`], its manifest pointed at the node's broker, the imported image, and `edit`'s spec).
struct NodeJob<'a> {
    node: &'a RealNode,
    case: Case,
    namespace: String,
}

/// A worker container as its pod's status reports it.
struct Container {
    pod: String,
    id: String,
    restarts: i64,
    running: bool,
    ready: bool,
}

impl<'a> NodeJob<'a> {
    fn create(
        node: &'a RealNode,
        scenario: &str,
        delivery: Delivery,
        edit: impl FnOnce(&mut Value),
    ) -> anyhow::Result<Self> {
        let namespace = unique("sj-faults");
        node.kubectl(&["create", "namespace", &namespace])?;
        let case = Case::create(scenario, Job::Passthrough, delivery, &node.bootstrap, PARTITIONS, |doc| {
            let mut spec: Value = serde_json::to_value(&doc["spec"])?;
            spec["source"]["bootstrapServers"] = json!(node.bootstrap);
            spec["imagePullPolicy"] = json!("Never");
            if let Some(spec) = spec.as_object_mut() {
                spec.remove("replicas");
            }
            edit(&mut spec);
            doc["spec"] = serde_yaml::to_value(&spec)?;
            doc["metadata"]["namespace"] = namespace.as_str().into();
            Ok(())
        })?;
        Ok(Self { node, case, namespace })
    }

    fn name(&self) -> &str {
        &self.case.group
    }

    fn apply_object(&self, object: &Value) -> anyhow::Result<()> {
        let path = self.case.logs.join(format!("{}.yaml", unique("object")));
        std::fs::write(&path, serde_yaml::to_string(object)?)?;
        self.node.kubectl(&["apply", "-f", &path.display().to_string()])?;
        Ok(())
    }

    /// `kubectl apply` of the job, then `kubectl wait --for=condition=Ready`.
    fn apply_and_wait_ready(&self) -> anyhow::Result<()> {
        self.node.kubectl(&["wait", "--for=condition=Established", "crd/streamjobs.streamjob.io", "--timeout=90s"])?;
        self.node.kubectl(&["apply", "-f", &self.case.manifest.display().to_string()])?;
        self.node
            .kubectl(&[
                "wait",
                "--for=condition=Ready",
                &format!("sj/{}", self.name()),
                "-n",
                &self.namespace,
                "--timeout=240s",
            ])
            .context("the StreamJob never became Ready")?;
        Ok(())
    }

    /// `records` records (numbers 0..records), written at once.
    fn backlog(&self, records: usize) -> anyhow::Result<Vec<NewRecord>> {
        write_paced(&self.case.bootstrap, &self.case.input, records, Duration::ZERO, |i| {
            record(Job::Passthrough, i, false)
        })
    }

    /// Writes records `first..first + total` over `over` in the background.
    fn feed(
        &self,
        first: usize,
        total: usize,
        over: Duration,
    ) -> std::thread::JoinHandle<anyhow::Result<Vec<NewRecord>>> {
        let (bootstrap, topic) = (self.case.bootstrap.clone(), self.case.input.clone());
        std::thread::spawn(move || {
            write_paced(&bootstrap, &topic, total, over, |i| record(Job::Passthrough, first + i, false))
        })
    }

    /// Waits until the sink holds something: the workers are busy when the fault hits.
    fn wait_for_output(&self) -> anyhow::Result<()> {
        let committed = self.case.delivery == Delivery::ExactlyOnce;
        let mut sink = TopicReader::new(&self.case.bootstrap, &self.case.sink, committed)?;
        if !sink.read_until(WAIT, |records| !records.is_empty()) {
            bail!("the sink stayed empty for {WAIT:?}");
        }
        Ok(())
    }

    /// Counts what the sink holds of `written` (read_committed under exactly-once).
    fn row(&self, written: Vec<NewRecord>, started: Instant) -> Row {
        self.case.row(self.case.check(written), &mut [], started)
    }

    fn pod_uid(&self, pod: &str) -> anyhow::Result<String> {
        let uid = self.node.kubectl(&["get", "pod", pod, "-n", &self.namespace, "-o", "jsonpath={.metadata.uid}"])?;
        Ok(uid.trim().to_owned())
    }

    fn selector(&self) -> anyhow::Result<String> {
        let statefulset: Value = serde_json::from_str(&self.node.kubectl(&[
            "get",
            "statefulset",
            self.name(),
            "-n",
            &self.namespace,
            "-o",
            "json",
        ])?)?;
        selector(&statefulset)
    }

    fn status(&self) -> anyhow::Result<Value> {
        let job: Value = serde_json::from_str(&self.node.kubectl(&[
            "get",
            "sj",
            self.name(),
            "-n",
            &self.namespace,
            "-o",
            "json",
        ])?)?;
        Ok(job["status"].clone())
    }

    /// The job's condition of `kind` (null when it has none).
    fn condition(&self, kind: &str) -> anyhow::Result<Value> {
        let status = self.status()?;
        let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
        Ok(conditions.into_iter().find(|c| c["type"] == kind).unwrap_or(Value::Null))
    }

    /// The worker containers of the job's pods.
    fn containers(&self) -> anyhow::Result<Vec<Container>> {
        let pods = pods(self.node, &self.namespace, &self.selector()?)?;
        let mut containers = Vec::new();
        for pod in &pods {
            for status in pod["status"]["containerStatuses"].as_array().into_iter().flatten() {
                containers.push(Container {
                    pod: pod["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                    id: status["containerID"].as_str().unwrap_or_default().to_owned(),
                    restarts: status["restartCount"].as_i64().unwrap_or(0),
                    running: status["state"]["running"].is_object(),
                    ready: status["ready"] == json!(true),
                });
            }
        }
        Ok(containers)
    }

    /// Polls `done` every second until it holds, for at most [`WAIT`].
    fn wait_until(&self, what: &str, mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
        self.wait_until_value(what, || Ok(done()?.then_some(())))
    }

    /// Polls `found` every second until it returns a value, for at most [`WAIT`]. A failed poll
    /// (kubectl against an API server that is busy) counts as not yet.
    fn wait_until_value<T>(
        &self,
        what: &str,
        mut found: impl FnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + WAIT;
        let mut last_error = None;
        loop {
            match found() {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(error) => last_error = Some(error),
            }
            if Instant::now() > deadline {
                let why = last_error.map(|e| format!(" (last poll: {e:#})")).unwrap_or_default();
                bail!("not within {WAIT:?}: {what}{why}");
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}
