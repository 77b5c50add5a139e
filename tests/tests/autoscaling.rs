//! The autoscaler on a real API server against a real Kafka broker: two watched namespaces, each
//! with an autoscaled job whose source topic has real lag. The StatefulSets follow the
//! decisions up and down, `status.lastScale` and the `ScaledUp`/`ScaledDown` events carry the
//! numbers, `spec.replicas` is never written, and no status field one writer sets is reverted by
//! the other while both write; after the scale-down, at a load one worker carries (reporting its
//! true rate with its commits), the size stays. The operator runs with nothing but a token of the chart's
//! ServiceAccount (the chart installed with the Helm SDK for both namespaces, [`ChartRbac`]), and
//! the API server refuses none of its requests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Event;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use streamjob_crds::capacity_report::CapacityReport;
use streamjob_crds::StreamJob;
use streamjob_e2e::{
    api_server, eventually, fresh_namespace, install_crd, kubelet_marks_pods_ready, real_broker, unique, ChartRbac,
};
use streamjob_operator::run::{run_with_client, RunOptions};
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
