//! The operator against a real API server (envtest convention; see `streamjob_e2e`): the CRD
//! installs and enforces its rules, jobs become children, the scale subresource, suspend and
//! resume, observedGeneration, conditions, deletion, `kubectl wait`/`scale`, a config roll, the
//! pause annotation, a pipeline change on a windowed job that drains the workers before the new
//! pipeline starts, and leader election between two processes. The operator, in-process or as a
//! process, runs with nothing but a token of the chart's ServiceAccount (the chart installed
//! with the Helm SDK for the test's namespace, [`ChartRbac`]), and the API server refuses none
//! of its requests; the test itself acts as the admin.
//!
//! Over 400 lines: every test of a binary shares its one control plane, which a file per test
//! would start again (several seconds each, in CI's wall time).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use streamjob_crds::{Phase, StreamJob};
use streamjob_e2e::{
    api_server, eventually, free_port, fresh_namespace, install_crd, repo_root, scratch_dir, workspace_binary,
    ChartRbac,
};
use streamjob_operator::run::{run_with_client, RunOptions};
use streamjob_testkit::fixtures::{example, JobFixture};

const WAIT: Duration = Duration::from_secs(30);

fn run_options(identity: &str, leader_election: bool, namespace: &str) -> RunOptions {
    RunOptions {
        namespaces: vec![namespace.to_owned()],
        worker_image: "example.com/streamjob-worker:e2e".to_owned(),
        metrics_addr: "127.0.0.1:0".parse().expect("address"),
        leader_election,
        lease_name: "streamjob-operator-leader".to_owned(),
        lease_namespace: namespace.to_owned(),
        lease_duration_seconds: 15,
        identity: identity.to_owned(),
    }
}

async fn stateful_set_replicas(sets: &Api<StatefulSet>, name: &str) -> Option<i32> {
    sets.get_opt(name).await.ok().flatten()?.spec?.replicas
}

#[tokio::test]
async fn operator_reconciles_jobs_on_a_real_api_server() -> anyhow::Result<()> {
    let Some(env) = api_server().await? else { return Ok(()) };
    let client = env.client.clone();
    install_crd(&client).await?;
    let namespace = fresh_namespace(&client, "sj-e2e").await?;
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &namespace);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);

    // The API server enforces the CEL rules: an invalid manifest is rejected with its message.
    let invalid = std::fs::read_to_string(repo_root().join("examples/invalid/min-above-max.yaml"))?;
    let invalid: serde_json::Value = serde_yaml::from_str(&invalid)?;
    let rejected = jobs.create(&PostParams::default(), &serde_json::from_value(invalid)?).await;
    let message = format!("{:?}", rejected.expect_err("the API server rejects minReplicas > maxReplicas"));
    assert!(
        message.contains("autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas"),
        "{message}"
    );

    let rbac = ChartRbac::for_namespaces(&env, std::slice::from_ref(&namespace)).await?;
    let controller = tokio::spawn(run_with_client(rbac.client().await?, run_options("e2e", false, &namespace)));
    // A fixed-size job: spec.replicas (and the scale subresource) size it.
    let fixed_size = example("wordcount.yaml").fixed(2);
    let created = jobs.create(&PostParams::default(), &fixed_size).await?;
    let uid = created.uid().expect("uid");

    // Children within 5 s, owned by the job.
    let stateful_set = eventually(Duration::from_secs(5), "the StatefulSet", || async {
        sets.get_opt("wordcount").await.ok().flatten()
    })
    .await?;
    let owner = &stateful_set.metadata.owner_references.as_ref().expect("owner references")[0];
    assert_eq!((owner.uid.as_str(), owner.kind.as_str(), owner.controller), (uid.as_str(), "StreamJob", Some(true)));
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    assert!(config_maps.get_opt("wordcount-config").await?.is_some());
    assert_eq!(stateful_set.spec.as_ref().and_then(|s| s.replicas), Some(2));

    // Status: observedGeneration and conditions true to the cluster.
    let job = eventually(WAIT, "status.observedGeneration = 1", || async {
        let job = jobs.get("wordcount").await.ok()?;
        (job.status.as_ref()?.observed_generation == Some(1)).then_some(job)
    })
    .await?;
    let status = job.status.expect("status");
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready condition");
    let all_ready = status.ready_replicas == status.desired_replicas && status.desired_replicas > 0;
    assert_eq!(ready.status == "True", all_ready, "Ready says what the StatefulSet shows: {ready:?}");
    assert_eq!(status.conditions.iter().find(|c| c.type_ == "ConfigValid").map(|c| c.status.as_str()), Some("True"));

    // The scale subresource drives spec.replicas, and the operator follows.
    jobs.patch_scale("wordcount", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}}))).await?;
    eventually(WAIT, "StatefulSet replicas 3", || async {
        (stateful_set_replicas(&sets, "wordcount").await == Some(3)).then_some(())
    })
    .await?;
    let scale = jobs.get_scale("wordcount").await?;
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(3));
    let selector = scale.status.map(|s| s.selector).unwrap_or_default();
    eventually(WAIT, "status.selector", || async {
        let scale = jobs.get_scale("wordcount").await.ok()?;
        scale.status?.selector.filter(|s| s.contains("app.kubernetes.io/instance=wordcount"))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}; last selector {selector:?}"))?;

    // Suspend: 0 workers, phase Suspended, observedGeneration follows.
    jobs.patch("wordcount", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": true}}))).await?;
    eventually(WAIT, "StatefulSet replicas 0", || async {
        (stateful_set_replicas(&sets, "wordcount").await == Some(0)).then_some(())
    })
    .await?;
    eventually(WAIT, "phase Suspended at the new generation", || async {
        let job = jobs.get("wordcount").await.ok()?;
        let status = job.status.as_ref()?;
        (status.phase == Some(Phase::Suspended) && status.observed_generation == job.metadata.generation).then_some(())
    })
    .await?;

    // Resume: the workers come back at spec.replicas, and the phase leaves Suspended.
    jobs.patch("wordcount", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": false}}))).await?;
    eventually(WAIT, "StatefulSet replicas 3 after the resume", || async {
        (stateful_set_replicas(&sets, "wordcount").await == Some(3)).then_some(())
    })
    .await?;
    eventually(WAIT, "a phase other than Suspended at the new generation", || async {
        let job = jobs.get("wordcount").await.ok()?;
        let status = job.status.as_ref()?;
        let resumed = status.phase.is_some() && status.phase != Some(Phase::Suspended);
        (resumed && status.observed_generation == job.metadata.generation).then_some(())
    })
    .await?;

    // Deletion: children carry the owner reference; the garbage collector removes them.
    jobs.delete("wordcount", &DeleteParams::default()).await?;
    eventually(Duration::from_secs(60), "children garbage-collected", || async {
        sets.get_opt("wordcount").await.ok()?.is_none().then_some(())
    })
    .await?;
    eventually(WAIT, "the job gone", || async { jobs.get_opt("wordcount").await.ok()?.is_none().then_some(()) })
        .await?;
    controller.abort();
    rbac.assert_nothing_refused()
}

/// `streamjob_operator_leader` from a process's /metrics.
fn leader_metric(port: u16) -> Option<bool> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    let line = body.lines().find(|l| l.starts_with("streamjob_operator_leader "))?;
    Some(line.ends_with(" 1"))
}

#[tokio::test]
async fn leader_election_hands_over_within_the_lease_duration() -> anyhow::Result<()> {
    let Some(env) = api_server().await? else { return Ok(()) };
    let client = env.client.clone();
    install_crd(&client).await?;
    let namespace = fresh_namespace(&client, "sj-leader").await?;
    let binary = workspace_binary("streamjob-operator");
    anyhow::ensure!(binary.exists(), "{} missing: run `cargo build --workspace --bins` first", binary.display());
    // Two replicas as the chart's Deployment runs them: its arguments, its ServiceAccount, the
    // release's Lease.
    let rbac = ChartRbac::for_namespaces(&env, std::slice::from_ref(&namespace)).await?;
    let (lease_name, lease_namespace) = rbac.lease()?;
    let dir = scratch_dir("leader")?;
    let start = |identity: &str, port: u16| {
        let args = rbac.release.operator_args(&format!("127.0.0.1:{port}"))?;
        rbac.spawn_operator(&args, identity, &dir.join(format!("{identity}.log")))
    };
    let (port_a, port_b) = (free_port()?, free_port()?);
    let mut a = Some(start("replica-a", port_a)?);
    let _b = start("replica-b", port_b)?;

    let leases: Api<Lease> = Api::namespaced(client.clone(), &lease_namespace);
    let holder =
        eventually(WAIT, "a lease holder", || async { leases.get_opt(&lease_name).await.ok()??.spec?.holder_identity })
            .await?;
    let (leader_port, follower_port) = if holder == "replica-a" { (port_a, port_b) } else { (port_b, port_a) };
    eventually(WAIT, "the leader metric", || async { (leader_metric(leader_port) == Some(true)).then_some(()) })
        .await?;
    assert_eq!(leader_metric(follower_port), Some(false), "only one replica leads");

    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &namespace);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    jobs.create(&PostParams::default(), &example("wordcount.yaml")).await?;
    eventually(WAIT, "the leader to reconcile", || async { sets.get_opt("wordcount").await.ok()? }).await?;

    // Kill the leader without letting it release the lease: the follower must take over once
    // the lease expires (15 s), and then reconcile.
    if holder == "replica-a" {
        a.take();
    } else {
        drop(_b);
    }
    let survivor = if holder == "replica-a" { "replica-b" } else { "replica-a" };
    eventually(Duration::from_secs(25), "the lease to move to the survivor", || async {
        let lease = leases.get_opt(&lease_name).await.ok()??;
        (lease.spec?.holder_identity.as_deref() == Some(survivor)).then_some(())
    })
    .await?;
    let second = example("wordcount.yaml").named("after-handover");
    jobs.create(&PostParams::default(), &second).await?;
    eventually(WAIT, "the new leader to reconcile", || async { sets.get_opt("after-handover").await.ok()? }).await?;
    rbac.assert_nothing_refused()
}

/// Runs kubectl (built with the control plane) against the test's API server.
fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let assets = std::env::var_os("KUBEBUILDER_ASSETS").map(std::path::PathBuf::from);
    let binary = assets.map(|a| a.join("kubectl")).filter(|p| p.exists()).unwrap_or_else(|| "kubectl".into());
    Ok(Command::new(binary).arg("--kubeconfig").arg(kubeconfig).args(args).output()?)
}

fn pod_template_checksum(set: &StatefulSet) -> Option<String> {
    set.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()?.get("checksum/config").cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_wait_scale_config_roll_and_pause_on_a_real_api_server() -> anyhow::Result<()> {
    let Some(env) = api_server().await? else { return Ok(()) };
    let client = env.client.clone();
    install_crd(&client).await?;
    let namespace = fresh_namespace(&client, "sj-kubectl").await?;
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &namespace);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let rbac = ChartRbac::for_namespaces(&env, std::slice::from_ref(&namespace)).await?;
    let controller = tokio::spawn(run_with_client(rbac.client().await?, run_options("e2e-kubectl", false, &namespace)));
    let kubelet =
        streamjob_e2e::kubelet_marks_pods_ready(client.clone(), &namespace, "app.kubernetes.io/instance=wordcount");
    let job = example("wordcount.yaml").fixed(1);
    jobs.create(&PostParams::default(), &job).await?;

    // `kubectl wait` returns once the workers are ready (the kubelet's part played by the test).
    let ns = namespace.as_str();
    let waited =
        kubectl(&env.kubeconfig, &["-n", ns, "wait", "--for=condition=Ready", "sj/wordcount", "--timeout=60s"])?;
    assert!(waited.status.success(), "kubectl wait: {}", String::from_utf8_lossy(&waited.stderr));
    let status = jobs.get("wordcount").await?.status.expect("status");
    assert_eq!((status.ready_replicas, status.phase), (1, Some(Phase::Running)));

    // `kubectl scale` drives spec.replicas through the scale subresource; the workers follow.
    let scaled = kubectl(&env.kubeconfig, &["-n", ns, "scale", "sj/wordcount", "--replicas=3"])?;
    assert!(scaled.status.success(), "kubectl scale: {}", String::from_utf8_lossy(&scaled.stderr));
    eventually(WAIT, "StatefulSet replicas 3", || async {
        (stateful_set_replicas(&sets, "wordcount").await == Some(3)).then_some(())
    })
    .await?;
    let waited =
        kubectl(&env.kubeconfig, &["-n", ns, "wait", "--for=condition=Ready", "sj/wordcount", "--timeout=60s"])?;
    assert!(waited.status.success(), "kubectl wait after scale: {}", String::from_utf8_lossy(&waited.stderr));

    // A pipeline change rolls the workers: a new config checksum on the pod template, an event.
    let before = sets.get("wordcount").await.ok().as_ref().and_then(pod_template_checksum);
    let roll = json!({"spec": {"pipeline": [
        {"split": {"field": "value", "lowercase": false}}, {"keyBy": {"field": "value"}},
        {"window": {"type": "tumbling", "size": "10s", "aggregate": {"function": "count"}}}
    ]}});
    jobs.patch("wordcount", &PatchParams::default(), &Patch::Merge(&roll)).await?;
    let after = eventually(WAIT, "a new config checksum", || async {
        let checksum = sets.get("wordcount").await.ok().as_ref().and_then(pod_template_checksum)?;
        (Some(&checksum) != before.as_ref()).then_some(checksum)
    })
    .await?;
    let described =
        kubectl(&env.kubeconfig, &["-n", ns, "get", "events", "--field-selector", "reason=RollingOut", "-o", "name"])?;
    assert!(!String::from_utf8_lossy(&described.stdout).trim().is_empty(), "a RollingOut event for checksum {after}");

    // The pause annotation: the operator leaves the children alone and says so.
    let paused =
        kubectl(&env.kubeconfig, &["-n", ns, "annotate", "sj/wordcount", "streamjob.io/pause-reconciliation=true"])?;
    assert!(paused.status.success(), "kubectl annotate: {}", String::from_utf8_lossy(&paused.stderr));
    eventually(WAIT, "ReconciliationPaused", || async {
        let job = jobs.get("wordcount").await.ok()?;
        job.status?.conditions.iter().any(|c| c.type_ == "ReconciliationPaused" && c.status == "True").then_some(())
    })
    .await?;
    jobs.patch_scale("wordcount", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 1}}))).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stateful_set_replicas(&sets, "wordcount").await, Some(3), "children untouched while paused");
    let resumed =
        kubectl(&env.kubeconfig, &["-n", ns, "annotate", "sj/wordcount", "streamjob.io/pause-reconciliation-"])?;
    assert!(resumed.status.success(), "kubectl annotate -: {}", String::from_utf8_lossy(&resumed.stderr));
    eventually(WAIT, "StatefulSet replicas 1 after the pause", || async {
        (stateful_set_replicas(&sets, "wordcount").await == Some(1)).then_some(())
    })
    .await?;
    kubelet.abort();
    controller.abort();
    rbac.assert_nothing_refused()
}

fn credentials_checksum(set: &StatefulSet) -> Option<String> {
    set.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()?.get("checksum/credentials").cloned()
}

/// Secrets by consent: a job naming a Secret without the label `streamjob.io/kafka-credentials`
/// is refused (`ConfigValid=False`, reason `SecretNotOptedIn`, an event) and no StatefulSet
/// refers to the Secret; the README's `kubectl label` lets it proceed, and a changed Secret
/// changes the pod template (rotation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_that_did_not_opt_in_is_never_used() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::api::events::v1::Event;

    let Some(env) = api_server().await? else { return Ok(()) };
    let client = env.client.clone();
    install_crd(&client).await?;
    let namespace = fresh_namespace(&client, "sj-secrets").await?;
    let ns = namespace.as_str();
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), ns);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    // Not labelled: any Secret of the namespace, as a StreamJob author might name it.
    let unlabelled = json!({"metadata": {"name": "db-password"}, "stringData": {"username": "u", "password": "p"}});
    secrets.create(&PostParams::default(), &serde_json::from_value(unlabelled)?).await?;
    let ca = json!({"metadata": {"name": "kafka-ca", "labels": {"streamjob.io/kafka-credentials": "true"}},
        "stringData": {"ca.crt": "-----BEGIN CERTIFICATE-----"}});
    secrets.create(&PostParams::default(), &serde_json::from_value(ca)?).await?;

    let rbac = ChartRbac::for_namespaces(&env, std::slice::from_ref(&namespace)).await?;
    let controller = tokio::spawn(run_with_client(rbac.client().await?, run_options("e2e-secrets", false, ns)));
    let mut job = example("wordcount.yaml").fixed(1);
    job.spec.source.auth = Some(serde_json::from_value(json!({
        "mechanism": "SCRAM-SHA-512", "secretRef": {"name": "db-password"}, "tls": {"caSecretRef": {"name": "kafka-ca"}}
    }))?);
    jobs.create(&PostParams::default(), &job).await?;

    let refused = eventually(WAIT, "ConfigValid=False SecretNotOptedIn", || async {
        let status = jobs.get("wordcount").await.ok()?.status?;
        let condition = status.conditions.into_iter().find(|c| c.type_ == "ConfigValid" && c.status == "False")?;
        (condition.reason == "SecretNotOptedIn" && status.phase == Some(Phase::Failed)).then_some(condition.message)
    })
    .await?;
    assert!(refused.contains("Secret db-password (spec.source.auth.secretRef)"), "{refused}");
    assert!(refused.contains("kubectl label secret db-password streamjob.io/kafka-credentials=true"), "{refused}");
    assert!(!refused.contains("kafka-ca"), "the labelled CA Secret is not refused: {refused}");
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let event = eventually(WAIT, "a SecretNotOptedIn event", || async {
        let listed = events.list(&Default::default()).await.ok()?;
        listed.items.into_iter().find(|e| e.reason.as_deref() == Some("SecretNotOptedIn"))
    })
    .await?;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(event.note.as_deref().is_some_and(|n| n.contains("db-password")), "{event:?}");
    // No StatefulSet, so no pod template names the Secret (nor a ConfigMap, Service or PDB).
    assert!(sets.list(&Default::default()).await?.items.is_empty(), "no StatefulSet for a refused job");

    // The migration step the README gives: label the Secret, and the job proceeds unchanged.
    let labelled =
        kubectl(&env.kubeconfig, &["-n", ns, "label", "secret", "db-password", "streamjob.io/kafka-credentials=true"])?;
    assert!(labelled.status.success(), "kubectl label: {}", String::from_utf8_lossy(&labelled.stderr));
    let set = eventually(WAIT, "the StatefulSet once the Secret opted in", || async {
        sets.get_opt("wordcount").await.ok().flatten()
    })
    .await?;
    let container = &set.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod spec").containers[0];
    let secret_of = |variable: &str| {
        let env = container.env.iter().flatten().find(|e| e.name == variable)?;
        env.value_from.as_ref()?.secret_key_ref.as_ref().map(|s| s.name.clone())
    };
    assert_eq!(secret_of("STREAMJOB_KAFKA_PASSWORD").as_deref(), Some("db-password"));
    let before = credentials_checksum(&set).expect("a credentials checksum on the pod template");
    let valid = eventually(WAIT, "ConfigValid=True", || async {
        let status = jobs.get("wordcount").await.ok()?.status?;
        status.conditions.into_iter().find(|c| c.type_ == "ConfigValid" && c.status == "True")
    })
    .await?;
    assert_eq!(valid.reason, "Valid");

    // Rotation: a new password changes the pod template at the next reconcile (the job is still
    // rolling out, no kubelet here: within its 15 s requeue), so the workers roll onto it.
    let rotate = json!({"stringData": {"password": "rotated"}});
    secrets.patch("db-password", &PatchParams::default(), &Patch::Merge(&rotate)).await?;
    let after = eventually(Duration::from_secs(30), "a new credentials checksum", || async {
        let checksum = sets.get("wordcount").await.ok().as_ref().and_then(credentials_checksum)?;
        (checksum != before).then_some(checksum)
    })
    .await?;
    eprintln!("refused: {refused}\ncredentials checksum {before} -> {after} after rotation");
    controller.abort();
    rbac.assert_nothing_refused()
}

/// Every version of `K` a watch sees from its start, with its resourceVersion (the API server's
/// storage revision, which orders changes across kinds) and whether it was the deletion.
type Seen<K> = std::sync::Arc<std::sync::Mutex<Vec<(u64, bool, K)>>>;

fn record<K>(api: Api<K>, config: watcher::Config) -> (tokio::task::JoinHandle<()>, Seen<K>)
where
    K: Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    use futures::StreamExt;
    let seen: Seen<K> = Default::default();
    let sink = seen.clone();
    let task = tokio::spawn(async move {
        let mut stream = watcher(api, config).boxed();
        while let Some(event) = stream.next().await {
            let (object, deleted) = match event {
                Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => (object, false),
                Ok(watcher::Event::Delete(object)) => (object, true),
                _ => continue,
            };
            let version = object.resource_version().and_then(|v| v.parse().ok()).unwrap_or(0);
            sink.lock().expect("not poisoned").push((version, deleted, object));
        }
    });
    (task, seen)
}

fn pod_revision(pod: &Pod) -> Option<&str> {
    pod.labels().get("controller-revision-hash").map(String::as_str)
}

/// A change to the window of a running windowed job is no rolling update: the operator takes
/// the StatefulSet to 0 with the old template, and only once every old pod is gone applies the
/// new pipeline (ConfigMap and template) with the job's replicas; the status says
/// `Progressing`/`DrainingForPipelineChange` meanwhile, and each step is an event. The order is
/// checked on the resourceVersions of the watched StatefulSet and pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_change_drains_the_workers_before_the_new_pipeline_starts() -> anyhow::Result<()> {
    let Some(env) = api_server().await? else { return Ok(()) };
    let client = env.client.clone();
    install_crd(&client).await?;
    let namespace = fresh_namespace(&client, "sj-drain").await?;
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &namespace);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let rbac = ChartRbac::for_namespaces(&env, std::slice::from_ref(&namespace)).await?;
    let controller = tokio::spawn(run_with_client(rbac.client().await?, run_options("e2e-drain", false, &namespace)));
    let selector = "app.kubernetes.io/instance=wordcount";
    let kubelet = streamjob_e2e::kubelet_marks_pods_ready(client.clone(), &namespace, selector);
    jobs.create(&PostParams::default(), &example("wordcount.yaml").fixed(2)).await?;
    let ready = |job: &StreamJob| {
        let status = job.status.as_ref();
        status.is_some_and(|s| {
            s.observed_generation == job.metadata.generation
                && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
        })
    };
    let running = eventually(Duration::from_secs(60), "2 workers ready", || async {
        let job = jobs.get("wordcount").await.ok()?;
        let set = sets.get("wordcount").await.ok()?;
        (ready(&job) && set.status.as_ref()?.ready_replicas == Some(2)).then_some(set)
    })
    .await?;
    let old_checksum = pod_template_checksum(&running).expect("a checksum");
    let old_revision = running.status.as_ref().and_then(|s| s.update_revision.clone()).expect("a revision");

    let by_name = || watcher::Config::default().fields("metadata.name=wordcount");
    let (set_watch, set_versions) = record(sets.clone(), by_name());
    let (pod_watch, pod_versions) = record(pods.clone(), watcher::Config::default().labels(selector));
    let (job_watch, job_versions) = record(jobs.clone(), by_name());
    eventually(WAIT, "the watches' first lists", || async {
        let lists = [set_versions.lock().ok()?.len(), pod_versions.lock().ok()?.len(), job_versions.lock().ok()?.len()];
        lists.iter().all(|n| *n > 0).then_some(())
    })
    .await?;

    let started = std::time::Instant::now();
    let change = json!({"spec": {"pipeline": [
        {"split": {"field": "value", "lowercase": true}}, {"keyBy": {"field": "value"}},
        {"window": {"type": "tumbling", "size": "20s", "aggregate": {"function": "count"}}}
    ]}});
    jobs.patch("wordcount", &PatchParams::default(), &Patch::Merge(&change)).await?;
    eventually(Duration::from_secs(60), "the new pipeline's 2 workers ready", || async {
        let job = jobs.get("wordcount").await.ok()?;
        let set = sets.get("wordcount").await.ok()?;
        let new = pod_template_checksum(&set).is_some_and(|c| c != old_checksum);
        let status = set.status.as_ref()?;
        let rolled = status.ready_replicas == Some(2) && status.update_revision != Some(old_revision.clone());
        (ready(&job) && new && rolled).then_some(())
    })
    .await?;
    let took = started.elapsed();
    for watch in [set_watch, pod_watch, job_watch] {
        watch.abort();
    }

    let set_versions = set_versions.lock().expect("not poisoned").clone();
    let checksum = |set: &StatefulSet| pod_template_checksum(set).unwrap_or_default();
    let replicas = |set: &StatefulSet| set.spec.as_ref().and_then(|s| s.replicas);
    let stopped = set_versions
        .iter()
        .find(|(_, _, set)| checksum(set) == old_checksum && replicas(set) == Some(0))
        .map(|(version, _, _)| *version)
        .expect("the StatefulSet at 0 with the old template");
    let new_template = set_versions
        .iter()
        .filter(|(_, _, set)| checksum(set) != old_checksum)
        .map(|(version, _, set)| (*version, replicas(set)))
        .min()
        .expect("the new template");
    assert!(stopped < new_template.0, "stopped at {stopped}, new template at {}", new_template.0);
    assert_eq!(new_template.1, Some(2), "the new template comes with the job's replicas");

    let pod_versions = pod_versions.lock().expect("not poisoned").clone();
    let old_pods_gone: std::collections::BTreeMap<String, u64> = pod_versions
        .iter()
        .filter(|(_, deleted, pod)| *deleted && pod_revision(pod) == Some(old_revision.as_str()))
        .map(|(version, _, pod)| (pod.name_any(), *version))
        .collect();
    assert_eq!(old_pods_gone.len(), 2, "both old workers stopped: {old_pods_gone:?}");
    let last_old_pod_gone = old_pods_gone.values().copied().max().unwrap_or(u64::MAX);
    let first_new_pod = pod_versions
        .iter()
        .filter(|(_, _, pod)| pod_revision(pod).is_some_and(|r| r != old_revision))
        .map(|(version, _, _)| *version)
        .min()
        .expect("new pods");
    assert!(
        last_old_pod_gone < new_template.0 && new_template.0 < first_new_pod,
        "old pods gone at {last_old_pod_gone}, new template at {}, first new pod at {first_new_pod}",
        new_template.0
    );

    let job_versions = job_versions.lock().expect("not poisoned").clone();
    let draining = job_versions
        .iter()
        .filter_map(|(_, _, job)| job.status.as_ref())
        .flat_map(|status| status.conditions.iter())
        .find(|c| c.type_ == "Progressing" && c.status == "True" && c.reason == "DrainingForPipelineChange")
        .expect("Progressing: DrainingForPipelineChange while the workers drain");
    assert!(draining.message.contains("fingerprint"), "{}", draining.message);
    for reason in ["DrainingForPipelineChange", "PipelineChangeStarted"] {
        let selector = format!("reason={reason}");
        let events = kubectl(
            &env.kubeconfig,
            &["-n", &namespace, "get", "events", "--field-selector", &selector, "-o", "name"],
        )?;
        assert!(!String::from_utf8_lossy(&events.stdout).trim().is_empty(), "a {reason} event");
    }
    println!("drain roll: window change to 2 new workers ready in {took:?}");
    kubelet.abort();
    controller.abort();
    rbac.assert_nothing_refused()
}
