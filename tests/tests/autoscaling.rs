//! The autoscaler on a real API server against a real Kafka broker: two watched namespaces, each
//! with an autoscaled job whose source topic has real lag. The StatefulSets follow the
//! decisions up and down, `status.lastScale` and the `ScaledUp`/`ScaledDown` events carry the
//! numbers, `spec.replicas` is never written, and no status field one writer sets is reverted by
//! the other while both write; after the scale-down, at a load one worker carries (reporting its
//! true rate with its commits), the size stays. The operator runs with nothing but a token of the chart's
//! ServiceAccount (the chart installed with the Helm SDK for both namespaces, [`ChartRbac`]), and
//! the API server refuses none of its requests.
//!
//! Also on the real API server, the load the operator puts on it: a change to a job's status
//! alone (the operator's own writes, the autoscaler's readings) does not wake the reconciler,
//! and a deleted job's series leave `/metrics`. Workers a `ResourceQuota` blocks: the job keeps
//! scaling up while lag grows and says why (`ScaleBlocked`). A broker that cannot be reached:
//! `fallback.replicas` after `fallback.failureThreshold` failed polls. A sink topic that does not
//! exist: the job `Degraded` (`SinkRefused`, the broker's reason) until it is created.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Event;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use streamjob_crds::capacity_report::CapacityReport;
use streamjob_crds::StreamJob;
use streamjob_e2e::{
    api_server, eventually, free_port, fresh_namespace, http_get, install_crd, kubelet_marks_pods_ready, real_broker,
    unique, ChartRbac,
};
use streamjob_operator::run::{run_with_client, RunOptions};
use streamjob_testkit::fixtures::{example, JobFixture};
use streamjob_worker::topic_io::{create_topics, producer, send_waiting};

const PARTITIONS: i32 = 6;
const BACKLOG: usize = 30_000;
const LAG_THRESHOLD: i64 = 1_000;

fn autoscaled_job(name: &str, bootstrap: &str, topic: &str) -> anyhow::Result<StreamJob> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "streamjob.io/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": name},
        "spec": {
            "source": {"bootstrapServers": bootstrap, "topics": [topic], "format": "text", "startFrom": "earliest"},
            "sink": {"topic": format!("{topic}-out")},
            "autoscaling": {
                "minReplicas": 1, "maxReplicas": 6, "lagThreshold": LAG_THRESHOLD, "pollIntervalSeconds": 2,
                "scaleDown": {"stabilizationSeconds": 10}
            }
        }
    }))?)
}

fn produce_backlog(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let producer = producer(bootstrap)?;
    for i in 0..BACKLOG {
        let value = format!("line {i}");
        send_waiting(&producer, rdkafka::producer::BaseRecord::to(topic).payload(value.as_bytes()))?;
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30))?;
    Ok(())
}

/// Commits the end of every partition for `group`, as workers that caught up would, with
/// `metadata` on each commit.
fn commit_caught_up(bootstrap: &str, group: &str, topic: &str, metadata: &str) -> anyhow::Result<()> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create()?;
    let mut offsets = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        offsets.add_partition_offset(topic, partition, Offset::Offset(high))?;
        if let Some(mut element) = offsets.find_partition(topic, partition) {
            element.set_metadata(metadata);
        }
    }
    consumer.commit(&offsets, CommitMode::Sync)?;
    Ok(())
}

/// As one worker that keeps up would, for `seconds`: `RATE` records a second come in, and every
/// quarter second the worker commits all of them with a report of its true rate (far above the
/// input: it is busy 1% of the time).
fn keep_up(bootstrap: &str, group: &str, topic: &str, seconds: u64) -> anyhow::Result<()> {
    const RATE: usize = 400;
    let producer = producer(bootstrap)?;
    let end = std::time::Instant::now() + Duration::from_secs(seconds);
    while std::time::Instant::now() < end {
        for i in 0..RATE / 4 {
            let value = format!("steady {i}");
            send_waiting(&producer, rdkafka::producer::BaseRecord::to(topic).payload(value.as_bytes()))?;
        }
        rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30))?;
        let report = CapacityReport {
            worker: "scaled-0".to_owned(),
            records_per_busy_second: 40_000.0,
            busy_share: 0.01,
            at_ms: streamjob_worker::runner::now_ms(),
        };
        commit_caught_up(bootstrap, group, topic, &report.encode())?;
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

async fn replicas(sets: &Api<StatefulSet>, name: &str) -> Option<i32> {
    sets.get_opt(name).await.ok().flatten()?.spec?.replicas
}

/// Every distinct value a status field took, in order. A value that comes back after another
/// replaced it was reverted by a writer working from an old copy.
#[derive(Default)]
struct FieldHistory(Vec<Value>);

impl FieldHistory {
    fn observe(&mut self, value: &Value) {
        if !value.is_null() && self.0.last() != Some(value) {
            self.0.push(value.clone());
        }
    }

    fn reverted(&self) -> Vec<String> {
        let mut seen: Vec<&Value> = Vec::new();
        let mut reverts = Vec::new();
        for value in &self.0 {
            if seen.contains(&value) {
                reverts.push(value.to_string());
            }
            seen.push(value);
        }
        reverts
    }
}

/// Samples `status.lastScale` and `status.lag` every 50 ms until aborted.
fn sample_status(
    jobs: Api<StreamJob>,
    name: String,
    history: Arc<Mutex<[FieldHistory; 2]>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Ok(job) = jobs.get(&name).await {
                let status = serde_json::to_value(&job.status).unwrap_or_default();
                let mut history = history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                history[0].observe(&status["lastScale"]);
                history[1].observe(&status["lag"]);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

async fn scale_notes(client: &Client, namespace: &str, name: &str, reason: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
    let events = events.list(&params).await.map(|l| l.items).unwrap_or_default();
    events.into_iter().filter(|e| e.reason.as_deref() == Some(reason)).filter_map(|e| e.message).collect()
}

/// The consumer group of `w`'s job in its namespace.
fn group_of(w: &Watched) -> String {
    w.job.consumer_group().replace("default", &w.namespace)
}

struct Watched {
    namespace: String,
    topic: String,
    job: StreamJob,
    history: Arc<Mutex<[FieldHistory; 2]>>,
}

#[tokio::test]
async fn two_namespaces_scale_up_and_down_on_real_lag_then_hold_at_a_steady_load_and_no_status_field_reverts(
) -> anyhow::Result<()> {
    let Some(env) = api_server().await? else { return Ok(()) };
    let Some(bootstrap) = real_broker() else { return Ok(()) };
    let client = env.client.clone();
    install_crd(&client).await?;

    let mut watched = Vec::new();
    for prefix in ["sj-scale-a", "sj-scale-b"] {
        let namespace = fresh_namespace(&client, prefix).await?;
        let topic = unique("scale-in");
        create_topics(&bootstrap, &[(topic.as_str(), PARTITIONS)])?;
        let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &namespace);
        let job = jobs.create(&PostParams::default(), &autoscaled_job("scaled", &bootstrap, &topic)?).await?;
        let history = Arc::new(Mutex::new([FieldHistory::default(), FieldHistory::default()]));
        watched.push(Watched { namespace, topic, job, history });
    }
    let namespaces: Vec<String> = watched.iter().map(|w| w.namespace.clone()).collect();
    let rbac = ChartRbac::for_namespaces(&env, &namespaces).await?;
    let options = RunOptions {
        namespaces,
        worker_image: "example.com/streamjob-worker:e2e".to_owned(),
        metrics_addr: "127.0.0.1:0".parse()?,
        leader_election: false,
        lease_name: "streamjob-operator-leader".to_owned(),
        lease_namespace: "default".to_owned(),
        lease_duration_seconds: 15,
        identity: "e2e-autoscaling".to_owned(),
    };
    let operator = tokio::spawn(run_with_client(rbac.client().await?, options));
    let mut background = vec![];
    for w in &watched {
        let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &w.namespace);
        background.push(kubelet_marks_pods_ready(client.clone(), &w.namespace, "app.kubernetes.io/instance=scaled"));
        background.push(sample_status(jobs, "scaled".to_owned(), w.history.clone()));
    }

    for w in &watched {
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &w.namespace);
        eventually(Duration::from_secs(30), "one worker (minReplicas)", || async {
            (replicas(&sets, "scaled").await == Some(1)).then_some(())
        })
        .await?;
        produce_backlog(&bootstrap, &w.topic)?;
    }
    // 30 000 records over a threshold of 1 000: as many workers as partitions, in both namespaces.
    for w in &watched {
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &w.namespace);
        eventually(Duration::from_secs(60), &format!("{}: scale-up to 6", w.namespace), || async {
            (replicas(&sets, "scaled").await == Some(6)).then_some(())
        })
        .await?;
        let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &w.namespace);
        let job = eventually(Duration::from_secs(20), "status.lastScale 1 → 6", || async {
            let job = jobs.get("scaled").await.ok()?;
            let last = job.status.as_ref()?.last_scale.as_ref()?;
            (last.from == 1 && last.to == 6).then_some(job)
        })
        .await?;
        let reason =
            &job.status.as_ref().and_then(|s| s.last_scale.as_ref()).map(|l| l.reason.clone()).unwrap_or_default();
        assert!(reason.contains("lag") && reason.contains("1 → 6"), "lastScale.reason has the numbers: {reason}");
        let notes = scale_notes(&client, &w.namespace, "scaled", "ScaledUp").await;
        assert!(notes.iter().any(|n| n.contains("lag") && n.contains("1 → 6")), "ScaledUp events: {notes:?}");
    }

    // The workers catch up: the lag goes, and after the stabilisation window they scale down.
    for w in &watched {
        commit_caught_up(&bootstrap, &group_of(w), &w.topic, "")?;
    }
    for w in &watched {
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &w.namespace);
        eventually(Duration::from_secs(90), &format!("{}: scale-down to 1", w.namespace), || async {
            (replicas(&sets, "scaled").await == Some(1)).then_some(())
        })
        .await?;
        let notes = scale_notes(&client, &w.namespace, "scaled", "ScaledDown").await;
        assert!(notes.iter().any(|n| n.contains("6 → 1")), "ScaledDown events: {notes:?}");
    }
    // At a constant load one worker carries, it stays one worker: no scaling after the scale-down.
    let steady: Vec<_> = watched
        .iter()
        .map(|w| {
            let (bootstrap, group, topic) = (bootstrap.clone(), group_of(w), w.topic.clone());
            tokio::task::spawn_blocking(move || keep_up(&bootstrap, &group, &topic, 16))
        })
        .collect();
    let mut sizes = Vec::new();
    while !steady.iter().all(|task| task.is_finished()) {
        for w in &watched {
            let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &w.namespace);
            sizes.push((w.namespace.clone(), replicas(&sets, "scaled").await));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for task in steady {
        task.await??;
    }
    let changed: Vec<_> = sizes.iter().filter(|(_, size)| *size != Some(1)).collect();
    assert!(changed.is_empty(), "at a load one worker carries, the size changed after the scale-down: {changed:?}");
    for w in &watched {
        let ups = scale_notes(&client, &w.namespace, "scaled", "ScaledUp").await;
        let downs = scale_notes(&client, &w.namespace, "scaled", "ScaledDown").await;
        assert_eq!(
            (ups.len(), downs.len()),
            (1, 1),
            "{}: one scale-up, one scale-down: {ups:?} {downs:?}",
            w.namespace
        );
    }
    for task in background {
        task.abort();
    }
    operator.abort();

    for w in &watched {
        let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &w.namespace);
        let job = jobs.get("scaled").await?;
        assert_eq!(job.spec.replicas, w.job.spec.replicas, "spec.replicas is the user's, never the autoscaler's");
        let spec_writers: Vec<String> = job
            .managed_fields()
            .iter()
            .filter(|m| m.fields_v1.as_ref().is_some_and(|f| f.0.get("f:spec").is_some()))
            .filter_map(|m| m.manager.clone())
            .collect();
        assert!(spec_writers.iter().all(|m| !m.contains("streamjob")), "the operator wrote the spec: {spec_writers:?}");
        let history = w.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        assert!(history[0].0.len() >= 2, "{}: lastScale changed at least twice: {:?}", w.namespace, history[0].0);
        assert_eq!(history[0].reverted(), Vec::<String>::new(), "{}: status.lastScale went back", w.namespace);
        assert_eq!(history[1].reverted(), Vec::<String>::new(), "{}: status.lag went back", w.namespace);
    }
    rbac.assert_nothing_refused()
}

/// `/metrics` from the in-process operator on `port`, read off the async runtime (the
/// operator's server runs on it).
async fn scrape(port: u16) -> String {
    tokio::task::spawn_blocking(move || http_get(port, "/metrics")).await.unwrap_or_default()
}

/// The sum of the samples of `metric` in `/metrics` on `port` whose line contains `labels`.
async fn metric_sum(port: u16, metric: &str, labels: &str) -> Option<f64> {
    let body = scrape(port).await;
    let values: Vec<f64> = body
        .lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!body.is_empty()).then(|| values.iter().sum())
}

/// Lines of `/metrics` on `port` that name the job `name` in `namespace`.
async fn job_series(port: u16, namespace: &str, name: &str) -> Vec<String> {
    let labels = format!("namespace=\"{namespace}\",job=\"{name}\"");
    scrape(port).await.lines().filter(|l| l.contains(&labels)).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_only_change_does_not_reconcile_and_a_deleted_jobs_series_leave_metrics() -> anyhow::Result<()> {
    let Some(env) = api_server().await? else { return Ok(()) };
    let client = env.client.clone();
    install_crd(&client).await?;
    let namespace = fresh_namespace(&client, "sj-quiet").await?;
    let rbac = ChartRbac::for_namespaces(&env, std::slice::from_ref(&namespace)).await?;
    let port = free_port()?;
    let options = RunOptions {
        namespaces: vec![namespace.clone()],
        worker_image: "example.com/streamjob-worker:e2e".to_owned(),
        metrics_addr: format!("127.0.0.1:{port}").parse()?,
        leader_election: false,
        lease_name: "streamjob-operator-leader".to_owned(),
        lease_namespace: "default".to_owned(),
        lease_duration_seconds: 15,
        identity: "e2e-quiet".to_owned(),
    };
    let operator = tokio::spawn(run_with_client(rbac.client().await?, options));
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &namespace);
    jobs.create(&PostParams::default(), &example("wordcount.yaml").fixed(2).suspended()).await?;
    eventually(Duration::from_secs(30), "the job Suspended", || async {
        let status = jobs.get("wordcount").await.ok()?.status?;
        (status.phase == Some(streamjob_crds::Phase::Suspended)).then_some(())
    })
    .await?;
    let series = eventually(Duration::from_secs(30), "the job's series in /metrics", || async {
        let series = job_series(port, &namespace, "wordcount").await;
        series.iter().any(|l| l.starts_with("streamjob_operator_job_degraded")).then_some(series)
    })
    .await?;
    assert!(series.iter().any(|l| l.starts_with("streamjob_operator_desired_replicas")), "{series:?}");

    // Five changes to the status alone, as another writer (or the autoscaler) makes them, each
    // a field the reconciler owns: a reconcile would put it back. Then one change a reconcile
    // must act on (the pause annotation), whose effect shows when it has run.
    let reconciles = |port| metric_sum(port, "streamjob_operator_reconciles_total", "");
    let before = reconciles(port).await.ok_or_else(|| anyhow::anyhow!("no /metrics on {port}"))?;
    let status_params = PatchParams::default();
    for i in 0..5 {
        let patch = json!({ "status": { "ready": format!("tampered-{i}") } });
        jobs.patch_status("wordcount", &status_params, &Patch::Merge(&patch)).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let annotation = |value: Value| {
        let annotations = serde_json::Map::from_iter([(streamjob_operator::PAUSE_ANNOTATION.to_owned(), value)]);
        json!({ "metadata": { "annotations": annotations } })
    };
    let pause = annotation(json!("true"));
    jobs.patch("wordcount", &PatchParams::default(), &Patch::Merge(&pause)).await?;
    let job = eventually(Duration::from_secs(30), "the ReconciliationPaused condition", || async {
        let job = jobs.get("wordcount").await.ok()?;
        let status = job.status.as_ref()?;
        status.conditions.iter().any(|c| c.type_ == "ReconciliationPaused" && c.status == "True").then_some(job)
    })
    .await?;
    let after = eventually(Duration::from_secs(10), "the pause's reconcile counted", || async {
        reconciles(port).await.filter(|after| *after > before)
    })
    .await?;
    let ran = after - before;
    assert!(ran <= 2.0, "{ran} reconciles for 5 status-only changes and 1 annotation change");
    let ready = job.status.as_ref().and_then(|s| s.ready.clone());
    assert_eq!(ready.as_deref(), Some("tampered-4"), "no reconcile put the status back");

    // Deleted, the job's series go with it.
    let unpause = annotation(Value::Null);
    jobs.patch("wordcount", &PatchParams::default(), &Patch::Merge(&unpause)).await?;
    jobs.delete("wordcount", &DeleteParams::default()).await?;
    eventually(Duration::from_secs(60), "the job gone", || async {
        jobs.get_opt("wordcount").await.ok()?.is_none().then_some(())
    })
    .await?;
    eventually(Duration::from_secs(30), "the deleted job's series gone from /metrics", || async {
        job_series(port, &namespace, "wordcount").await.is_empty().then_some(())
    })
    .await?;
    let phases = metric_sum(port, "streamjob_operator_jobs", "phase=").await.unwrap_or(-1.0);
    assert_eq!(phases, 0.0, "no job is counted in any phase once it is deleted");
    operator.abort();
    rbac.assert_nothing_refused()
}

/// An operator watching `namespace` only, with its `/metrics` on a port of its own.
async fn start_operator(
    env: &streamjob_e2e::ApiServerEnv,
    namespace: &str,
    identity: &str,
) -> anyhow::Result<(ChartRbac, u16, tokio::task::JoinHandle<Result<(), streamjob_operator::run::RunError>>)> {
    let rbac = ChartRbac::for_namespaces(env, &[namespace.to_owned()]).await?;
    let port = free_port()?;
    let options = RunOptions {
        namespaces: vec![namespace.to_owned()],
        worker_image: "example.com/streamjob-worker:e2e".to_owned(),
        metrics_addr: format!("127.0.0.1:{port}").parse()?,
        leader_election: false,
        lease_name: "streamjob-operator-leader".to_owned(),
        lease_namespace: "default".to_owned(),
        lease_duration_seconds: 15,
        identity: identity.to_owned(),
    };
    let operator = tokio::spawn(run_with_client(rbac.client().await?, options));
    Ok((rbac, port, operator))
}

/// The condition `type_` of the job `name`: (status, reason, message).
async fn condition(jobs: &Api<StreamJob>, name: &str, type_: &str) -> Option<(String, String, String)> {
    let job = jobs.get(name).await.ok()?;
    let found = job.status?.conditions.into_iter().find(|c| c.type_ == type_)?;
    Some((found.status, found.reason, found.message))
}

fn produce(bootstrap: &str, topic: &str, records: usize) -> anyhow::Result<()> {
    let producer = producer(bootstrap)?;
    for i in 0..records {
        let value = format!("line {i}");
        send_waiting(&producer, rdkafka::producer::BaseRecord::to(topic).payload(value.as_bytes()))?;
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30))?;
    Ok(())
}

#[tokio::test]
async fn a_quota_that_blocks_workers_the_job_keeps_scaling_up_to_and_reports_scale_blocked() -> anyhow::Result<()> {
    let Some(env) = api_server().await? else { return Ok(()) };
    let Some(bootstrap) = real_broker() else { return Ok(()) };
    let client = env.client.clone();
    install_crd(&client).await?;
    let namespace = fresh_namespace(&client, "sj-quota").await?;
    // Two pods at most in the namespace; the admission plugin needs the quota's status first.
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> = Api::namespaced(client.clone(), &namespace);
    let quota = serde_json::from_value(json!({"metadata": {"name": "two-pods"}, "spec": {"hard": {"pods": "2"}}}))?;
    quotas.create(&PostParams::default(), &quota).await?;
    eventually(Duration::from_secs(30), "the quota's status", || async {
        quotas.get("two-pods").await.ok()?.status?.hard.filter(|h| h.contains_key("pods")).map(|_| ())
    })
    .await?;
    let topic = unique("quota-in");
    create_topics(&bootstrap, &[(topic.as_str(), PARTITIONS)])?;
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &namespace);
    jobs.create(&PostParams::default(), &autoscaled_job("scaled", &bootstrap, &topic)?).await?;
    let (rbac, _port, operator) = start_operator(&env, &namespace, "e2e-quota").await?;
    let kubelet = kubelet_marks_pods_ready(client.clone(), &namespace, "app.kubernetes.io/instance=scaled");
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    eventually(Duration::from_secs(30), "one worker (minReplicas)", || async {
        (replicas(&sets, "scaled").await == Some(1)).then_some(())
    })
    .await?;

    // 2 500 records over a threshold of 1 000: 3 workers (of 6 partitions), one more than the
    // quota lets run.
    produce(&bootstrap, &topic, 2_500)?;
    eventually(Duration::from_secs(60), "scale-up to 3", || async {
        (replicas(&sets, "scaled").await == Some(3)).then_some(())
    })
    .await?;
    let (_, reason, message) = eventually(Duration::from_secs(60), "ScaleBlocked True", || async {
        condition(&jobs, "scaled", "ScaleBlocked").await.filter(|(status, _, _)| status == "True")
    })
    .await?;
    assert_eq!(reason, "QuotaExceeded", "{message}");
    assert!(message.contains("exceeded quota"), "{message}");

    // The lag keeps growing while one worker cannot run: scaling goes on, to maxReplicas.
    produce(&bootstrap, &topic, 10_000)?;
    eventually(Duration::from_secs(60), "scale-up to 6 with 2 workers ready", || async {
        (replicas(&sets, "scaled").await == Some(6)).then_some(())
    })
    .await?;
    let set = sets.get("scaled").await?;
    let ready = set.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
    assert!(ready <= 2, "the quota lets 2 pods run, {ready} are ready");
    let (status, reason, message) =
        condition(&jobs, "scaled", "ScaleBlocked").await.ok_or_else(|| anyhow::anyhow!("no ScaleBlocked"))?;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "QuotaExceeded"), "{message}");
    let ups = scale_notes(&client, &namespace, "scaled", "ScaledUp").await;
    assert!(ups.iter().any(|n| n.contains("grew") && n.contains("3 → 6")), "ScaledUp events: {ups:?}");
    let warnings = scale_notes(&client, &namespace, "scaled", "ScaleBlocked").await;
    assert!(warnings.iter().any(|n| n.starts_with("QuotaExceeded") && n.contains("exceeded quota")), "{warnings:?}");

    // The quota goes: every worker runs and the condition clears.
    quotas.delete("two-pods", &DeleteParams::default()).await?;
    eventually(Duration::from_secs(90), "ScaleBlocked False once every worker runs", || async {
        condition(&jobs, "scaled", "ScaleBlocked").await.filter(|(status, _, _)| status == "False")
    })
    .await?;
    kubelet.abort();
    operator.abort();
    rbac.assert_nothing_refused()
}

#[tokio::test]
async fn fallback_replicas_run_after_failed_polls_against_an_unreachable_broker() -> anyhow::Result<()> {
    let Some(env) = api_server().await? else { return Ok(()) };
    let client = env.client.clone();
    install_crd(&client).await?;
    let namespace = fresh_namespace(&client, "sj-fallback").await?;
    // A loopback port nothing listens on: every lag measurement fails.
    let unreachable = format!("127.0.0.1:{}", free_port()?);
    let mut job = autoscaled_job("scaled", &unreachable, "in")?;
    if let Some(autoscaling) = job.spec.autoscaling.as_mut() {
        autoscaling.poll_interval_seconds = 1;
        autoscaling.fallback = Some(streamjob_crds::AutoscalingFallback { failure_threshold: 2, replicas: 4 });
    }
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &namespace);
    jobs.create(&PostParams::default(), &job).await?;
    let (rbac, _port, operator) = start_operator(&env, &namespace, "e2e-fallback").await?;
    let kubelet = kubelet_marks_pods_ready(client.clone(), &namespace, "app.kubernetes.io/instance=scaled");
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    eventually(Duration::from_secs(30), "one worker (minReplicas)", || async {
        (replicas(&sets, "scaled").await == Some(1)).then_some(())
    })
    .await?;
    let (_, _, message) = eventually(Duration::from_secs(120), "AutoscalerDegraded FallbackReplicas", || async {
        condition(&jobs, "scaled", "AutoscalerDegraded").await.filter(|(_, reason, _)| reason == "FallbackReplicas")
    })
    .await?;
    assert!(message.contains("running fallback.replicas 4"), "{message}");
    eventually(Duration::from_secs(30), "the StatefulSet at fallback.replicas", || async {
        (replicas(&sets, "scaled").await == Some(4)).then_some(())
    })
    .await?;
    let notes = scale_notes(&client, &namespace, "scaled", "FallbackReplicas").await;
    assert!(notes.iter().any(|n| n.contains("1 → 4") && n.contains("2 times in a row")), "{notes:?}");
    let last = jobs.get("scaled").await?.status.and_then(|s| s.last_scale);
    assert_eq!(last.map(|l| (l.from, l.to)), Some((1, 4)), "status.lastScale says so");
    kubelet.abort();
    operator.abort();
    rbac.assert_nothing_refused()
}

#[tokio::test]
async fn a_missing_sink_topic_shows_the_job_degraded_until_it_is_created() -> anyhow::Result<()> {
    let Some(env) = api_server().await? else { return Ok(()) };
    let Some(bootstrap) = real_broker() else { return Ok(()) };
    let client = env.client.clone();
    install_crd(&client).await?;
    let namespace = fresh_namespace(&client, "sj-sink").await?;
    let (rbac, _port, operator) = start_operator(&env, &namespace, "e2e-sink").await?;
    let topic = unique("lines");
    let sink = format!("{topic}-out");
    create_topics(&bootstrap, &[(topic.as_str(), 1)])?;
    let mut job = autoscaled_job("refused", &bootstrap, &topic)?;
    (job.spec.autoscaling, job.spec.replicas) = (None, 1);
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &namespace);
    jobs.create(&PostParams::default(), &job).await?;

    let degraded = |wanted: &'static str| {
        let jobs = jobs.clone();
        move || {
            let jobs = jobs.clone();
            async move { condition(&jobs, "refused", "Degraded").await.filter(|(status, _, _)| status == wanted) }
        }
    };
    let (_, reason, message) = eventually(Duration::from_secs(60), "Degraded=True", degraded("True")).await?;
    assert_eq!(reason, "SinkRefused", "{message}");
    assert!(message.contains(&format!("sink topic {sink} on {bootstrap}")), "{message}");
    assert!(message.contains("Unknown topic or partition"), "the broker's reason: {message}");
    let status = jobs.get("refused").await?.status.unwrap_or_default();
    assert_eq!(status.phase, Some(streamjob_crds::Phase::Degraded), "what `kubectl get sj` shows");
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").map(|c| (c.status.as_str(), c.reason.as_str()));
    assert_eq!(ready, Some(("False", "SinkRefused")));
    let warnings = scale_notes(&client, &namespace, "refused", "SinkRefused").await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");

    create_topics(&bootstrap, &[(sink.as_str(), 1)])?;
    let (_, reason, _) = eventually(Duration::from_secs(60), "Degraded=False", degraded("False")).await?;
    assert_eq!(reason, "WorkersHealthy");
    let writable = eventually(Duration::from_secs(10), "the SinkWritable event", || async {
        let notes = scale_notes(&client, &namespace, "refused", "SinkWritable").await;
        (!notes.is_empty()).then_some(notes)
    })
    .await?;
    assert_eq!(writable.len(), 1, "{writable:?}");
    operator.abort();
    rbac.assert_nothing_refused()
}
