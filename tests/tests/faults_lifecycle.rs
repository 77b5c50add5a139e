//! Fault rows of a job's life cycle (issue 26, items 2 and 3), on the real broker, counted by the
//! fault suite's checker (`streamjob_e2e::faults`):
//!
//! - **names that collided**: `<u>-a/orders` and `<u>/a-orders` (the issue's `team-a/orders` and
//!   `team/a-orders`, made unique per run) both ran as `streamjob-<u>-a-orders`: one consumer group
//!   and one `transactional.id` per ordinal, so each job's workers fenced the other's and exited.
//!   Both run at once here, exactly-once, two workers each, started as their pods would be: the
//!   `job.yaml` of the ConfigMap `streamjob-operator render` prints, `POD_NAME`, `POD_NAMESPACE`,
//!   no override of group or id. Each job must be exact, and no worker may exit by itself.
//! - **deleted and re-created**: a windowed job with `deletionPolicy: DeleteConsumerGroup` runs
//!   under the operator on the real API server, its Pods' workers as real processes
//!   ([`PodWorkers`], the kubelet's part); it counts its input exactly, is deleted (the group
//!   and the repartition topic must be gone on the broker, and the events must say so), and a job
//!   of the same name is created on new input and sink topics: its sink must hold exactly the new
//!   input's windows, nothing of the old job's (which a surviving repartition topic replays).
//!
//! Each row's lost, duplicated and unexpected counts are 0, or the row fails.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::Event;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use streamjob_crds::{names, StreamJob};
use streamjob_e2e::faults::{records_for, table, Case, Delivery, Job, Row, Tally, Worker, IDLE_TIMEOUT, PARTITIONS};
use streamjob_e2e::pod_workers::PodWorkers;
use streamjob_e2e::{
    api_server, eventually, free_port, fresh_namespace, install_crd, real_broker, unique, workspace_binary, ChartRbac,
};
use streamjob_operator::run::{run_with_client, RunOptions};

// ---------------------------------------------------------------------------------------------
// Two jobs whose names collided.

/// The worker configuration `streamjob-operator render` puts in the job's ConfigMap.
fn rendered_worker_config(manifest: &Path) -> anyhow::Result<String> {
    let output = Command::new(workspace_binary("streamjob-operator"))
        .args(["render", "-f", &manifest.display().to_string()])
        .output()
        .context("streamjob-operator render (cargo build --workspace --bins first)")?;
    if !output.status.success() {
        bail!("render failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let text = String::from_utf8(output.stdout)?;
    for document in text.split("---\n").filter(|d| !d.trim().is_empty()) {
        let value: serde_yaml::Value = serde_yaml::from_str(document)?;
        if value["kind"].as_str() == Some("ConfigMap") {
            if let Some(config) = value["data"]["job.yaml"].as_str() {
                return Ok(config.to_owned());
            }
        }
    }
    bail!("render printed no ConfigMap with job.yaml")
}

/// Worker `ordinal` of `case`'s job as its pod runs it: the rendered config, the pod's name and
/// namespace, nothing overridden.
fn pod_worker(case: &Case, config: &Path, namespace: &str, name: &str, ordinal: usize) -> anyhow::Result<Worker> {
    let port = free_port()?;
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(case.logs.join(format!("worker-{ordinal}.log")))?;
    let mut command = Command::new(workspace_binary("streamjob-worker"));
    command
        .args(["--config", &config.display().to_string()])
        .args(["--http-address", &format!("127.0.0.1:{port}"), "--log-format", "text"])
        .args(["--commit-interval", "500ms", "--idle-timeout", IDLE_TIMEOUT, "--session-timeout", "10s"])
        .env("POD_NAME", format!("{name}-{ordinal}"))
        .env("POD_NAMESPACE", namespace)
        .stdout(Stdio::null());
    let start = move || -> anyhow::Result<Child> {
        command.stderr(log.try_clone()?).spawn().context("streamjob-worker starts")
    };
    Worker::supervise(start, port, ordinal)
}

/// A row whose workers exited by themselves fails, whatever the counts.
fn fail_on_exits(mut row: Row) -> Row {
    let exits: Vec<String> = row.notes.iter().filter(|n| n.contains("exited by itself")).cloned().collect();
    if let (Ok(tally), false) = (&row.outcome, exits.is_empty()) {
        row.outcome = Err(format!("{tally:?}, but {}", exits.join("; ")));
    }
    row
}

fn colliding_names(bootstrap: &str) -> Vec<Row> {
    let u = unique("team");
    let jobs = [(format!("{u}-a"), "orders"), (u.clone(), "a-orders")];
    let legacy: Vec<String> = jobs.iter().map(|(ns, name)| names::legacy_consumer_group(ns, name)).collect();
    assert_eq!(legacy[0], legacy[1], "the row's two jobs collided under the old names");
    let started = Instant::now();
    let cases: anyhow::Result<Vec<(Case, String, &str)>> = jobs
        .iter()
        .map(|(namespace, name)| {
            let case = Case::create(
                &format!("names collide: {namespace}/{name}"),
                Job::Passthrough,
                Delivery::ExactlyOnce,
                bootstrap,
                PARTITIONS,
                |doc| {
                    doc["metadata"]["name"] = (*name).into();
                    doc["metadata"]["namespace"] = namespace.as_str().into();
                    doc["spec"]["source"]["bootstrapServers"] = bootstrap.into();
                    Ok(())
                },
            )?;
            Ok((case, namespace.clone(), *name))
        })
        .collect();
    let cases = match cases {
        Ok(cases) => cases,
        Err(error) => return vec![streamjob_e2e::faults::failed_row("names collide", format!("{error:#}"))],
    };
    let mut workers: Vec<Vec<Worker>> = cases.iter().map(|_| Vec::new()).collect();
    let outcomes: Vec<anyhow::Result<(Tally, Vec<String>)>> = (|| -> anyhow::Result<_> {
        for ((case, namespace, name), workers) in cases.iter().zip(workers.iter_mut()) {
            let config = case.logs.join("rendered-job.yaml");
            std::fs::write(&config, rendered_worker_config(&case.manifest)?)?;
            for ordinal in 0..2 {
                workers.push(pod_worker(case, &config, namespace, name, ordinal)?);
            }
        }
        for worker in workers.iter().flatten() {
            worker.wait_ready()?;
        }
        let feeds: Vec<_> =
            cases.iter().map(|(case, _, _)| case.feed(records_for(case.job), Duration::from_secs(16))).collect();
        let written: Vec<_> = feeds.into_iter().map(|feed| feed.join()).collect::<anyhow::Result<_>>()?;
        Ok(cases.iter().zip(written).map(|((case, _, _), written)| case.check(written)).collect())
    })()
    .unwrap_or_else(|error| cases.iter().map(|_| Err(anyhow::anyhow!("{error:#}"))).collect());
    cases
        .iter()
        .zip(outcomes)
        .zip(workers.iter_mut())
        .map(|(((case, _, _), outcome), workers)| fail_on_exits(case.row(outcome, workers, started)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A job deleted and re-created under the same name.

const JOB: &str = "recreated";

/// The word count with `deletionPolicy: DeleteConsumerGroup` and two workers (no autoscaling), named [`JOB`] in
/// `namespace`, on new topics.
fn recreated_case(scenario: &str, bootstrap: &str, namespace: &str) -> anyhow::Result<Case> {
    Case::create(scenario, Job::WordCount, Delivery::AtLeastOnce, bootstrap, PARTITIONS, |doc| {
        doc["metadata"]["name"] = JOB.into();
        doc["metadata"]["namespace"] = namespace.into();
        doc["spec"]["source"]["bootstrapServers"] = bootstrap.into();
        doc["spec"]["deletionPolicy"] = "DeleteConsumerGroup".into();
        doc["spec"]["replicas"] = 2.into();
        if let Some(spec) = doc["spec"].as_mapping_mut() {
            spec.remove("autoscaling");
        }
        Ok(())
    })
}

async fn create_job(jobs: &Api<StreamJob>, case: &Case) -> anyhow::Result<StreamJob> {
    let job = streamjob_crds::parse_manifest(&std::fs::read_to_string(&case.manifest)?)
        .map_err(|e| anyhow::anyhow!("the row's manifest: {e}"))?;
    Ok(jobs.create(&PostParams::default(), &job).await?)
}

async fn event_reasons(client: &Client, namespace: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().fields(&format!("involvedObject.name={JOB}"));
    let events = events.list(&params).await.map(|l| l.items).unwrap_or_default();
    events.into_iter().filter_map(|e| Some(format!("{}: {}", e.reason?, e.message.unwrap_or_default()))).collect()
}

/// What the broker still holds of a group and its repartition topic: `None` when both are gone.
fn left_on_the_broker(bootstrap: &str, group: &str, input: &str, topic: &str) -> anyhow::Result<Option<String>> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create()?;
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions.add_partition(input, partition);
    }
    let committed = consumer.committed_offsets(partitions, Duration::from_secs(10))?;
    let offsets: Vec<Offset> = committed.elements().iter().map(|e| e.offset()).collect();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let topic_exists = metadata.topics().iter().any(|t| t.error().is_none() && !t.partitions().is_empty());
    let has_offsets = offsets.iter().any(|o| *o != Offset::Invalid);
    Ok((has_offsets || topic_exists).then(|| {
        format!(
            "left on the broker: group {group} offsets {offsets:?}, repartition topic {topic} exists: {topic_exists}"
        )
    }))
}

/// Sums two phases' counts into the row's.
fn sum(a: &Tally, b: &Tally) -> Tally {
    Tally {
        input: a.input + b.input,
        sink: a.sink + b.sink,
        lost: a.lost + b.lost,
        duplicated: a.duplicated + b.duplicated,
        unexpected: a.unexpected + b.unexpected,
        dead_lettered: a.dead_lettered + b.dead_lettered,
        poison: a.poison + b.poison,
    }
}

async fn deleted_and_recreated(bootstrap: String) -> anyhow::Result<Option<Row>> {
    let Some(env) = api_server().await? else { return Ok(None) };
    let started = Instant::now();
    let client = env.client.clone();
    install_crd(&client).await?;
    let namespace = fresh_namespace(&client, "sj-recreate").await?;
    let rbac = ChartRbac::for_namespaces(&env, std::slice::from_ref(&namespace)).await?;
    let options = RunOptions {
        namespaces: vec![namespace.clone()],
        worker_image: "example.com/streamjob-worker:e2e".to_owned(),
        metrics_addr: "127.0.0.1:0".parse()?,
        leader_election: false,
        lease_name: "streamjob-operator-leader".to_owned(),
        lease_namespace: "default".to_owned(),
        lease_duration_seconds: 15,
        identity: "e2e-recreate".to_owned(),
    };
    let operator = tokio::spawn(run_with_client(rbac.client().await?, options));
    let first = recreated_case("deleted and re-created", bootstrap.as_str(), &namespace)?;
    let second = recreated_case("deleted and re-created", bootstrap.as_str(), &namespace)?;
    let pods = PodWorkers::start(client.clone(), &namespace, JOB, first.logs.clone());
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &namespace);

    let mut notes = Vec::new();
    let outcome: anyhow::Result<(Tally, Vec<String>)> = async {
        let job = create_job(&jobs, &first).await?;
        let group = job.consumer_group();
        let repartition = job.repartition_topic();
        if let Err(error) =
            eventually(Duration::from_secs(60), "two workers", || async { (pods.running() == 2).then_some(()) }).await
        {
            let status = jobs.get(JOB).await.ok().and_then(|j| j.status);
            let all: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &namespace);
            let listed: Vec<String> =
                all.list(&ListParams::default()).await?.items.iter().map(kube::ResourceExt::name_any).collect();
            bail!("{error:#}; job status {status:?}; pods {listed:?}; pod log {:?}", pods.log());
        }
        let feed = first.feed(records_for(first.job), Duration::from_secs(8));
        let (case, written) = (&first, tokio::task::spawn_blocking(move || feed.join()).await??);
        let (before, mut details) = tokio::task::block_in_place(|| case.check(written))?;

        let deleting = Instant::now();
        jobs.delete(JOB, &DeleteParams::default()).await?;
        eventually(Duration::from_secs(240), "the deleted job to go", || async {
            jobs.get_opt(JOB).await.ok()?.is_none().then_some(())
        })
        .await?;
        notes.push(format!("deletion took {:.1?}", deleting.elapsed()));
        let reasons = event_reasons(&client, &namespace).await;
        for expected in ["StoppingWorkers", "ConsumerGroupDeleted"] {
            if !reasons.iter().any(|r| r.starts_with(expected)) {
                bail!("no {expected} event; events: {reasons:?}");
            }
        }
        let (b, g, i, t) = (bootstrap.clone(), group.clone(), first.input.clone(), repartition.clone());
        // The broker finishes a topic deletion on its own time: wait for it, bounded.
        let mut left = None;
        for _ in 0..20 {
            let (b, g, i, t) = (b.clone(), g.clone(), i.clone(), t.clone());
            left = tokio::task::spawn_blocking(move || left_on_the_broker(&b, &g, &i, &t)).await??;
            if left.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if let Some(left) = left {
            bail!("{left}; events: {reasons:?}");
        }

        // The old job's children go by garbage collection after it: re-created before that, the
        // operator's apply would take over the old ConfigMap's owner reference, which needs
        // `delete` on it (OwnerReferencesPermissionEnforcement) that the chart does not grant
        // (a refused apply, retried until the collector is done).
        let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &namespace);
        let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client.clone(), &namespace);
        eventually(Duration::from_secs(60), "the old children to be collected", || async {
            let map = maps.get_opt(&format!("{JOB}-config")).await.ok()?;
            let set = sets.get_opt(JOB).await.ok()?;
            (map.is_none() && set.is_none()).then_some(())
        })
        .await?;
        let recreated = create_job(&jobs, &second).await?;
        if recreated.consumer_group() != group || recreated.repartition_topic() != repartition {
            bail!("the re-created job has other names: {}", recreated.consumer_group());
        }
        eventually(Duration::from_secs(60), "two new workers", || async { (pods.running() == 2).then_some(()) })
            .await?;
        let feed = second.feed(records_for(second.job), Duration::from_secs(8));
        let (case, written) = (&second, tokio::task::spawn_blocking(move || feed.join()).await??);
        let (after, more) = tokio::task::block_in_place(|| case.check(written))?;
        details.extend(more);
        Ok((sum(&before, &after), details))
    }
    .await;
    let log = pods.log();
    if !log.exited_on_their_own.is_empty() {
        notes.push(format!("workers exited by themselves: {:?}", log.exited_on_their_own));
    }
    notes.push(format!("workers stopped with their pods: {:?}", log.stopped));
    if !log.start_failures.is_empty() {
        notes.push(format!("workers that could not start: {:?}", log.start_failures));
    }
    drop(pods);
    operator.abort();
    let refused = rbac.assert_nothing_refused().err().map(|e| format!("{e:#}"));
    let mut row = first.row(outcome, &mut [], started);
    row.notes.extend(notes);
    if let (Some(refused), Ok(_)) = (refused, &row.outcome) {
        row.outcome = Err(refused);
    }
    Ok(Some(row))
}

#[test]
fn faults_lifecycle() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    }
    // Under CI=true a missing broker fails here; elsewhere the test skips with one line.
    let Some(bootstrap) = real_broker() else { return };
    let mut rows = colliding_names(&bootstrap);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    match runtime.block_on(deleted_and_recreated(bootstrap.clone())) {
        Ok(Some(row)) => rows.push(row),
        Ok(None) => {}
        Err(error) => rows.push(streamjob_e2e::faults::failed_row("deleted and re-created", format!("{error:#}"))),
    }
    let printed = table(&rows);
    eprintln!("{printed}");
    assert!(rows.iter().all(Row::passed), "a row failed:\n{printed}");
}
