//! The chart on a real API server: installed with the real Helm SDK (`tests/helm/release.py`),
//! then the operator binary run with the chart Deployment's arguments and nothing but a token of
//! the chart's ServiceAccount, so the chart's RBAC is all it may use. With Roles in one watched
//! namespace, and with the cluster-wide ClusterRole, the operator takes the release's Lease,
//! reconciles jobs (children, status from both of its field managers, events and an event
//! series, the pods), reads a job's Kafka credentials Secret, runs the `DeleteConsumerGroup`
//! finalizer against the real broker and follows the scale subresource, and the API server
//! refuses none of its requests. The chart's worker NetworkPolicy, accepted by the API server,
//! selects the workers' pods. `helm uninstall` then leaves none of the release's objects.
//!
//! One file over 400 lines: each effect the RBAC must allow is one short function here.

use std::time::Duration;

use anyhow::{bail, Context as _};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::{Api, Client, ResourceExt};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use streamjob_crds::StreamJob;
use streamjob_e2e::chart_rbac::Release;
use streamjob_e2e::{
    api_server, eventually, free_port, fresh_namespace, kubelet_marks_pods_ready, real_broker, scratch_dir, unique,
    ChartRbac,
};

/// The tests of this binary share one API server, and a cluster-wide operator would take the
/// other test's jobs: one test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(90);
const PARTITIONS: i32 = 2;
const FINALIZER: &str = "streamjob.io/delete-consumer-group";
const MANAGERS: [&str; 2] = ["streamjob-operator", "streamjob-autoscaler"];

#[tokio::test]
async fn the_chart_rbac_for_one_watched_namespace_is_all_the_operator_needs() -> anyhow::Result<()> {
    chart_rbac_suffices(Watch::OneNamespace).await
}

#[tokio::test]
async fn the_chart_rbac_for_every_namespace_is_all_the_operator_needs() -> anyhow::Result<()> {
    chart_rbac_suffices(Watch::Cluster).await
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Watch {
    /// `watchNamespaces: [<the job namespace>]`: Roles there.
    OneNamespace,
    /// `watchNamespaces: []`: a ClusterRole.
    Cluster,
}

async fn chart_rbac_suffices(watch: Watch) -> anyhow::Result<()> {
    let Some(env) = api_server().await? else { return Ok(()) };
    let Some(bootstrap) = real_broker() else { return Ok(()) };
    let _turn = ONE_AT_A_TIME.lock().await;
    let client = env.client.clone();
    let jobs_ns = fresh_namespace(&client, "sj-chart-jobs").await?;
    // The worker NetworkPolicy goes to the watched namespaces, or to the ones it names.
    let (watched, policy_namespaces) =
        if watch == Watch::OneNamespace { (json!([jobs_ns]), json!([])) } else { (json!([]), json!([jobs_ns])) };
    let values = json!({
        "watchNamespaces": watched,
        "leaderElection": {"enabled": true},
        "workerNetworkPolicy": {"enabled": true, "namespaces": policy_namespaces},
    });
    let rbac = ChartRbac::install(&env, &values).await?;
    let release = &rbac.release;

    let dir = scratch_dir("chart-install")?;
    let identity = "chart-operator-0";
    let args = release.operator_args(&format!("127.0.0.1:{}", free_port()?))?;
    let operator = rbac.spawn_operator(&args, identity, &dir.join("operator.log"))?;

    let outcome = async {
        takes_the_lease(&client, release, identity).await?;
        tokio::try_join!(
            reconciles_and_follows_the_scale_subresource(&client, &jobs_ns, &bootstrap),
            autoscales_and_deletes_the_consumer_group(&client, &jobs_ns, &bootstrap),
            reads_the_credentials_secret(&client, &jobs_ns, &bootstrap),
            repeated_events_become_a_series(&client, &jobs_ns, &bootstrap),
        )
    }
    .await;
    let log = operator.stop()?;
    outcome.with_context(|| format!("operator log:\n{log}"))?;
    worker_policy_selects_the_workers(&client, release, &jobs_ns).await?;
    let refused: Vec<&str> = log.lines().filter(|line| line.to_lowercase().contains("forbidden")).collect();
    assert!(refused.is_empty(), "the API server refused the operator ({watch:?}):\n{}", refused.join("\n"));
    rbac.assert_nothing_refused().with_context(|| format!("{watch:?}"))?;

    remove_jobs(&client, &jobs_ns).await?;
    release.uninstall(&env.kubeconfig)?;
    let left = eventually(WAIT, "helm uninstall to remove every object of the release", || async {
        leftovers(&client, release).await.ok().filter(Vec::is_empty)
    })
    .await;
    if left.is_err() {
        bail!("left behind by helm uninstall: {:?}", leftovers(&client, release).await?);
    }
    delete_namespace(&client, &release.namespace).await
}

async fn takes_the_lease(client: &Client, release: &Release, identity: &str) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &release.namespace);
    let name = release.name_of("Lease")?;
    eventually(WAIT, "the operator to hold the release's Lease", || async {
        let holder = leases.get(&name).await.ok()?.spec?.holder_identity;
        (holder.as_deref() == Some(identity)).then_some(())
    })
    .await
}

fn job(name: &str, bootstrap: &str, topic: &str, extra_spec: Value) -> anyhow::Result<StreamJob> {
    let mut spec = json!({
        "source": {"bootstrapServers": bootstrap, "topics": [topic], "format": "text"},
        "sink": {"topic": format!("{topic}-out")},
    });
    for (key, value) in extra_spec.as_object().into_iter().flatten() {
        spec[key] = value.clone();
    }
    let job =
        json!({"apiVersion": "streamjob.io/v1alpha1", "kind": "StreamJob", "metadata": {"name": name}, "spec": spec});
    Ok(serde_json::from_value(job)?)
}

fn autoscaling() -> Value {
    json!({"minReplicas": 1, "maxReplicas": 2, "lagThreshold": 1000, "pollIntervalSeconds": 2})
}

/// Aborts a background task when dropped.
struct Background(tokio::task::JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Children applied, status written from the pods, events published; `kubectl scale` (the
/// scale subresource) moves the StatefulSet and reads the selector and replicas back.
async fn reconciles_and_follows_the_scale_subresource(
    client: &Client,
    ns: &str,
    bootstrap: &str,
) -> anyhow::Result<()> {
    let name = "by-hand";
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), ns);
    jobs.create(&PostParams::default(), &job(name, bootstrap, "unused", json!({"replicas": 1}))?).await?;
    let _kubelet =
        Background(kubelet_marks_pods_ready(client.clone(), ns, &format!("app.kubernetes.io/instance={name}")));
    children_exist(client, ns, name).await?;
    let job = eventually(WAIT, "by-hand: one ready worker in the status", || async {
        let job = jobs.get(name).await.ok()?;
        (job.status.as_ref()?.ready_replicas == 1).then_some(job)
    })
    .await?;
    assert!(status_managers(&job).contains(&MANAGERS[0].to_owned()), "{:?}", job.managed_fields());
    let created = reasons(client, ns, name).await?.into_iter().filter(|r| r == "Created").count();
    assert_eq!(created, 4, "one Created event per child");

    let scale = jobs.get_scale(name).await?;
    let selector = scale.status.and_then(|s| s.selector);
    assert_eq!(selector.as_deref(), Some("app.kubernetes.io/instance=by-hand,app.kubernetes.io/name=streamjob-worker"));
    jobs.patch_scale(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 2}}))).await?;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, "by-hand: the StatefulSet to follow the scale subresource", || async {
        (sets.get(name).await.ok()?.spec?.replicas == Some(2)).then_some(())
    })
    .await?;
    eventually(WAIT, "by-hand: two workers in the scale subresource", || async {
        (jobs.get_scale(name).await.ok()?.status?.replicas == 2).then_some(())
    })
    .await
}

async fn children_exist(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, &format!("{name}: ConfigMap, Service, StatefulSet and PodDisruptionBudget"), || async {
        config_maps.get_opt(&format!("{name}-config")).await.ok()??;
        services.get_opt(name).await.ok()??;
        sets.get_opt(name).await.ok()??;
        budgets.get_opt(name).await.ok()??;
        Some(())
    })
    .await
}

/// The field managers that server-side applied the job's status.
fn status_managers(job: &StreamJob) -> Vec<String> {
    let status_applies = job
        .managed_fields()
        .iter()
        .filter(|m| m.subresource.as_deref() == Some("status") && m.operation.as_deref() == Some("Apply"));
    status_applies.filter_map(|m| m.manager.clone()).collect()
}

/// The events.k8s.io Events regarding the job `name`.
async fn events_of(client: &Client, ns: &str, name: &str) -> anyhow::Result<Vec<Event>> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let all = events.list(&ListParams::default()).await?.items;
    Ok(all.into_iter().filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)).collect())
}

async fn reasons(client: &Client, ns: &str, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(events_of(client, ns, name).await?.into_iter().filter_map(|e| e.reason).collect())
}

/// The autoscaler's part of the status under its own field manager; the finalizer added, and at
/// deletion the consumer group deleted on the real broker before the job goes.
async fn autoscales_and_deletes_the_consumer_group(client: &Client, ns: &str, bootstrap: &str) -> anyhow::Result<()> {
    let name = "lagged";
    let topic = unique("chart-in");
    streamjob_worker::topic_io::create_topics(bootstrap, &[(topic.as_str(), PARTITIONS)])?;
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), ns);
    let spec = json!({"autoscaling": autoscaling(), "deletionPolicy": "DeleteConsumerGroup"});
    let group = jobs.create(&PostParams::default(), &job(name, bootstrap, &topic, spec)?).await?.consumer_group();
    let kafka = (bootstrap.to_owned(), group.clone(), topic.clone());
    let offsets = tokio::task::spawn_blocking(move || commit_start(&kafka.0, &kafka.1, &kafka.2)).await??;
    assert!(offsets.iter().all(|o| *o == Offset::Offset(0)), "the group has offsets before: {offsets:?}");

    eventually(WAIT, "lagged: the finalizer, and the lag under the autoscaler's field manager", || async {
        let job = jobs.get(name).await.ok()?;
        let measured = job.status.as_ref()?.partitions == Some(PARTITIONS) && job.status.as_ref()?.lag.is_some();
        let managers = status_managers(&job);
        let both = MANAGERS.iter().all(|m| managers.contains(&(*m).to_owned()));
        (measured && both && job.finalizers().iter().any(|f| f == FINALIZER)).then_some(())
    })
    .await?;
    jobs.delete(name, &DeleteParams::default()).await?;
    eventually(WAIT, "lagged: the finalizer to let the job go", || async {
        jobs.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await?;
    assert!(reasons(client, ns, name).await?.contains(&"ConsumerGroupDeleted".to_owned()));
    let kafka = (bootstrap.to_owned(), group, topic);
    let offsets = tokio::task::spawn_blocking(move || committed(&kafka.0, &kafka.1, &kafka.2)).await??;
    assert!(offsets.iter().all(|o| *o == Offset::Invalid), "the group still has offsets: {offsets:?}");
    Ok(())
}

fn consumer(bootstrap: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    Ok(ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create()?)
}

fn partitions(topic: &str) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        list.add_partition(topic, partition);
    }
    list
}

/// Commits offset 0 on every partition for `group`, so the group exists; returns what the
/// broker then has.
fn commit_start(bootstrap: &str, group: &str, topic: &str) -> anyhow::Result<Vec<Offset>> {
    let consumer = consumer(bootstrap, group)?;
    let mut offsets = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        offsets.add_partition_offset(topic, partition, Offset::Offset(0))?;
    }
    consumer.commit(&offsets, CommitMode::Sync)?;
    committed(bootstrap, group, topic)
}

/// The group's committed offsets on the topic (`Offset::Invalid` where it has none).
fn committed(bootstrap: &str, group: &str, topic: &str) -> anyhow::Result<Vec<Offset>> {
    let consumer = consumer(bootstrap, group)?;
    let committed = consumer.committed_offsets(partitions(topic), Duration::from_secs(10))?;
    Ok(committed.elements().iter().map(|e| e.offset()).collect())
}

/// The operator reads the job's credentials Secret: missing, the reconciler's metadata read is a
/// 404, which only a permitted request gets (a refused one is a 403), and the job is held with
/// `SecretNotOptedIn`; once it exists with the opt-in label the workers are built, and the lag
/// probe reads it and goes on to Kafka.
async fn reads_the_credentials_secret(client: &Client, ns: &str, bootstrap: &str) -> anyhow::Result<()> {
    let (name, secret) = ("with-credentials", "kafka-credentials");
    let auth = json!({"mechanism": "SCRAM-SHA-512", "secretRef": {"name": secret}});
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), ns);
    let spec = json!({"autoscaling": autoscaling()});
    let mut job = job(name, bootstrap, "unused", spec)?;
    job.spec.source.auth = Some(serde_json::from_value(auth)?);
    jobs.create(&PostParams::default(), &job).await?;
    let condition = |kind: &'static str| {
        let jobs = jobs.clone();
        async move {
            let job = jobs.get(name).await.ok()?;
            job.status?.conditions.into_iter().find(|c| c.type_ == kind)
        }
    };
    let missing = format!("Secret {secret} (spec.source.auth.secretRef) does not exist");
    eventually(WAIT, "with-credentials: held, its Secret not found", || async {
        condition("ConfigValid").await.filter(|c| c.reason == "SecretNotOptedIn" && c.message.contains(&missing))
    })
    .await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let credentials = json!({"metadata": {"name": secret, "labels": {"streamjob.io/kafka-credentials": "true"}},
        "stringData": {"username": "u", "password": "p"}});
    secrets.create(&PostParams::default(), &serde_json::from_value(credentials)?).await?;
    let past = eventually(WAIT, "with-credentials: the probe to read the Secret and go on to Kafka", || async {
        condition("AutoscalerDegraded").await.map(|c| c.message).filter(|m| !m.contains("Secret"))
    })
    .await?;
    eprintln!("with-credentials, with its Secret read: {past}");
    Ok(())
}

/// A failure that repeats unchanged is one event whose series counts up (the recorder patches
/// it). The job's Service name is taken by a ClusterIP Service the headless one cannot replace.
async fn repeated_events_become_a_series(client: &Client, ns: &str, bootstrap: &str) -> anyhow::Result<()> {
    let name = "blocked";
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let in_the_way = json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 9090}]}});
    services.create(&PostParams::default(), &serde_json::from_value(in_the_way)?).await?;
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), ns);
    jobs.create(&PostParams::default(), &job(name, bootstrap, "unused", json!({}))?).await?;
    eventually(WAIT, "blocked: a ReconcileError event seen twice or more", || async {
        let events = events_of(client, ns, name).await.ok()?;
        let series = |e: &Event| e.series.as_ref().is_some_and(|s| s.count >= 2);
        events.iter().any(|e| e.reason.as_deref() == Some("ReconcileError") && series(e)).then_some(())
    })
    .await
}

/// The chart's worker NetworkPolicy selects the pods the operator's StatefulSets made, and lets
/// in traffic to a port those pods name.
async fn worker_policy_selects_the_workers(client: &Client, release: &Release, ns: &str) -> anyhow::Result<()> {
    let policy = release
        .objects
        .iter()
        .find(|o| o["kind"] == "NetworkPolicy" && o["metadata"]["namespace"] == ns)
        .context("the release has no worker NetworkPolicy in the job namespace")?;
    let labels = policy["spec"]["podSelector"]["matchLabels"].as_object().context("no matchLabels")?;
    let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    let selected = pods.list(&ListParams::default().labels(&selector.join(","))).await?.items;
    assert!(selected.iter().any(|p| p.labels().get("app.kubernetes.io/instance").is_some_and(|j| j == "by-hand")));
    let port = policy["spec"]["ingress"][0]["ports"][0]["port"].as_str().context("the ingress port is not named")?;
    for pod in &selected {
        let containers = pod.spec.iter().flat_map(|spec| &spec.containers);
        let names: Vec<_> =
            containers.flat_map(|c| c.ports.iter().flatten()).filter_map(|p| p.name.as_deref()).collect();
        assert!(names.contains(&port), "pod {} has no port {port}: {names:?}", pod.name_any());
    }
    Ok(())
}

/// Deletes the namespace's jobs and waits until they are gone, so no later cluster-wide
/// operator finds them in a terminating namespace.
async fn remove_jobs(client: &Client, ns: &str) -> anyhow::Result<()> {
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), ns);
    jobs.delete_collection(&DeleteParams::default(), &ListParams::default()).await?;
    eventually(WAIT, "the jobs to be deleted", || async {
        jobs.list(&ListParams::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await?;
    delete_namespace(client, ns).await
}

async fn delete_namespace(client: &Client, ns: &str) -> anyhow::Result<()> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces.delete(ns, &DeleteParams::default()).await?;
    Ok(())
}

/// The release's objects that still exist, and Helm's record of the release.
async fn leftovers(client: &Client, release: &Release) -> anyhow::Result<Vec<String>> {
    let mut left = Vec::new();
    for object in &release.objects {
        let object: DynamicObject = serde_json::from_value(object.clone())?;
        let types = object.types.as_ref().context("an object without apiVersion and kind")?;
        let (resource, capabilities) =
            kube::discovery::pinned_kind(client, &GroupVersionKind::try_from(types)?).await?;
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Namespaced => {
                let ns = object.namespace().unwrap_or_else(|| release.namespace.clone());
                Api::namespaced_with(client.clone(), &ns, &resource)
            }
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        if api.get_opt(&object.name_any()).await?.is_some() {
            left.push(format!("{} {}", types.kind, object.name_any()));
        }
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &release.namespace);
    let records = secrets.list(&ListParams::default().labels(&format!("owner=helm,name={}", release.name))).await?;
    left.extend(records.items.iter().map(|s| format!("Helm's Secret {}", s.name_any())));
    Ok(left)
}
