//! Support for the end-to-end tests: a real Kubernetes control plane ([`control_plane`],
//! envtest convention), the operator under the chart's RBAC only ([`chart_rbac`]), the real Kafka
//! broker the test command starts, and polling helpers.
//!
//! - `KUBEBUILDER_ASSETS=/path/with/etcd-kube-apiserver-and-kube-controller-manager`: start them on
//!   loopback ports, once per test binary;
//! - `STREAMJOB_E2E_CLUSTER=1` with `KUBECONFIG`: use that cluster;
//! - neither: under `CI=true` the test fails; elsewhere it prints one line saying why and passes
//!   without checking anything.

pub mod chart_rbac;
pub mod control_plane;
pub mod faults;
pub mod node;
pub mod node_job;
pub mod pod_workers;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Client, CustomResourceExt};
use streamjob_crds::StreamJob;

pub use chart_rbac::ChartRbac;
pub use control_plane::{client_from_kubeconfig, ControlPlane};

/// A process killed when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A reachable API server and how to reach it.
pub struct ApiServerEnv {
    pub client: Client,
    /// A kubeconfig file (cluster admin) for processes the test starts.
    pub kubeconfig: PathBuf,
    /// The local control plane, when the tests started it (not with `STREAMJOB_E2E_CLUSTER=1`).
    pub local: Option<&'static ControlPlane>,
}

pub use streamjob_testkit::{in_ci, real_broker, unique};

/// A real part (API server, Kafka) is missing: an error under CI, else a one-line skip.
pub fn require_real_part<T>(what: &str) -> anyhow::Result<Option<T>> {
    if in_ci() {
        bail!("{what} (CI=true: a test that needs it fails instead of skipping)");
    }
    eprintln!("skipping: {what}");
    Ok(None)
}

/// Connects to the cluster of `STREAMJOB_E2E_CLUSTER=1`, or to this binary's shared local
/// control plane; `None` (after printing why) when there is neither and not in CI.
pub async fn api_server() -> anyhow::Result<Option<ApiServerEnv>> {
    if std::env::var("STREAMJOB_E2E_CLUSTER").as_deref() == Ok("1") {
        let kubeconfig = std::env::var("KUBECONFIG").context("STREAMJOB_E2E_CLUSTER=1 needs KUBECONFIG")?;
        let client = client_from_kubeconfig(Path::new(&kubeconfig)).await?;
        return Ok(Some(ApiServerEnv { client, kubeconfig: kubeconfig.into(), local: None }));
    }
    let Some(plane) = control_plane::shared()? else { return Ok(None) };
    Ok(Some(ApiServerEnv { client: plane.client().await?, kubeconfig: plane.kubeconfig.clone(), local: Some(plane) }))
}

/// Applies the CRD generated from the types and waits until it is Established.
pub async fn install_crd(client: &Client) -> anyhow::Result<()> {
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    let params = kube::api::PatchParams::apply("streamjob-e2e").force();
    crds.patch("streamjobs.streamjob.io", &params, &kube::api::Patch::Apply(StreamJob::crd())).await?;
    eventually(Duration::from_secs(30), "the CRD to be Established", || async {
        let crd = crds.get("streamjobs.streamjob.io").await.ok()?;
        let established = crd.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(())
    })
    .await
}

/// A new namespace named `prefix-<unique>`: tests share one API server.
pub async fn fresh_namespace(client: &Client, prefix: &str) -> anyhow::Result<String> {
    let name = unique(prefix);
    let namespaces: kube::Api<Namespace> = kube::Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
    namespaces.create(&kube::api::PostParams::default(), &namespace).await?;
    Ok(name)
}

/// A loopback TCP port nothing listens on right now and not handed out before by this process,
/// below the kernel's ephemeral range: a server that owns it and is restarted (the API server,
/// a Kafka node) finds it free again, since no outgoing connection is given a local port there.
pub fn free_port() -> anyhow::Result<u16> {
    use std::hash::BuildHasher;
    const LOWEST: u16 = 10_000;
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let span = ephemeral_range_start().max(LOWEST + 1) - LOWEST;
    // Every port below the range once, from a random one on, so that two test processes rarely
    // try the same port first.
    let start = std::collections::hash_map::RandomState::new().hash_one(std::process::id()) % u64::from(span);
    let mut handed_out = streamjob_runtime::sync::lock(&HANDED_OUT);
    let port = (0..span)
        .map(|step| LOWEST + ((start + u64::from(step)) % u64::from(span)) as u16)
        .find(|port| !handed_out.contains(port) && std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .with_context(|| format!("no free loopback port between {LOWEST} and {}", LOWEST + span))?;
    handed_out.push(port);
    Ok(port)
}

/// The first port Linux hands out to outgoing connections (`ip_local_port_range`); 32768
/// where that file cannot be read.
fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A fresh folder under the temp dir for one run's files.
pub fn scratch_dir(prefix: &str) -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
    let dir = std::env::temp_dir().join(format!("streamjob-{prefix}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Polls `check` every 100 ms until it yields a value or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub use streamjob_testkit::{repo_root, target_dir};

/// A workspace binary built by `cargo build --workspace --bins`.
pub fn workspace_binary(name: &str) -> PathBuf {
    target_dir().join("debug").join(name)
}

/// A Kafka-protocol broker for the multi-process tests.
pub struct Broker {
    pub bootstrap: String,
    _process: Option<ChildGuard>,
}

/// The broker under test, with `topics` created: the real Kafka named by
/// `STREAMJOB_TEST_BOOTSTRAP` (the test command starts one). Without it, under CI the test
/// fails; elsewhere it falls back to `streamjob-mock-broker` in its own process, saying so, since
/// librdkafka's mock cluster proves nothing about a real broker.
pub fn broker(topics: &[(&str, i32)]) -> Broker {
    if let Ok(bootstrap) = std::env::var("STREAMJOB_TEST_BOOTSTRAP") {
        streamjob_worker::topic_io::create_topics(&bootstrap, topics).expect("topics created on the test Kafka");
        return Broker { bootstrap, _process: None };
    }
    assert!(!in_ci(), "no real Kafka broker: set STREAMJOB_TEST_BOOTSTRAP (scripts/test.sh starts one)");
    eprintln!("warning: no real Kafka broker (STREAMJOB_TEST_BOOTSTRAP); using librdkafka's mock cluster");
    let mut command = Command::new(workspace_binary("streamjob-mock-broker"));
    for (topic, partitions) in topics {
        command.arg("--topic").arg(format!("{topic}:{partitions}"));
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("streamjob-mock-broker starts (cargo build --bins first)");
    let stdout = child.stdout.take().expect("stdout");
    let mut first_line = String::new();
    BufReader::new(stdout).read_line(&mut first_line).expect("broker prints its address");
    let bootstrap = first_line.trim().strip_prefix("bootstrap=").expect("bootstrap=<address>").to_owned();
    Broker { bootstrap, _process: Some(ChildGuard(child)) }
}

/// The kubelet's part, for a control plane without nodes: every Pod matching `selector` in
/// `namespace` is reported Running and Ready through the status subresource, as a kubelet whose
/// containers started would, until the task is aborted.
pub fn kubelet_marks_pods_ready(client: Client, namespace: &str, selector: &str) -> tokio::task::JoinHandle<()> {
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, namespace);
    let params = kube::api::ListParams::default().labels(selector);
    tokio::spawn(async move {
        loop {
            for pod in pods.list(&params).await.map(|list| list.items).unwrap_or_default() {
                let ready = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if ready || pod.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let name = kube::ResourceExt::name_any(&pod);
                let _ = pods
                    .patch_status(
                        &name,
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(pod_ready_status(&pod)),
                    )
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

pub(crate) fn pod_ready_status(pod: &k8s_openapi::api::core::v1::Pod) -> serde_json::Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let containers: Vec<serde_json::Value> = pod
        .spec
        .iter()
        .flat_map(|spec| &spec.containers)
        .map(|c| {
            serde_json::json!({
                "name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "", "ready": true,
                "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}}
            })
        })
        .collect();
    let condition = |type_: &str| serde_json::json!({"type": type_, "status": "True", "lastTransitionTime": now});
    serde_json::json!({"status": {
        "phase": "Running",
        "podIP": "127.0.0.1",
        "startTime": now,
        "conditions": [condition("PodScheduled"), condition("Initialized"), condition("ContainersReady"), condition("Ready")],
        "containerStatuses": containers,
    }})
}

/// The response to `GET path` from a local HTTP port (a worker's health and metrics), empty
/// when nothing answers.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes());
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body
}
