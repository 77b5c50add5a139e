//! Support for the end-to-end tests: a real Kubernetes API server following the envtest
//! convention, and small polling helpers.
//!
//! - `KUBEBUILDER_ASSETS=/path/with/etcd-and-kube-apiserver`: start both on loopback ports;
//! - `STREAMJOB_E2E_CLUSTER=1` with `KUBECONFIG`: use that cluster (which also runs the
//!   StatefulSet controller and the garbage collector, so more can be checked);
//! - neither: the tests print one line saying so and pass without checking anything.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Token the local API server accepts for a `system:masters` user.
const ADMIN_TOKEN: &str = "streamjob-envtest-admin-token";

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
    /// A kubeconfig file for processes the test starts.
    pub kubeconfig: PathBuf,
    /// True for a whole cluster (controllers run: StatefulSets get status, owned objects are
    /// garbage collected); false for a bare envtest API server.
    pub full_cluster: bool,
    _processes: Vec<ChildGuard>,
}

/// Starts or connects to an API server; `None` (after printing why) when none is available.
pub async fn api_server() -> anyhow::Result<Option<ApiServerEnv>> {
    if std::env::var("STREAMJOB_E2E_CLUSTER").as_deref() == Ok("1") {
        let kubeconfig = std::env::var("KUBECONFIG").context("STREAMJOB_E2E_CLUSTER=1 needs KUBECONFIG")?;
        let client = client_from_kubeconfig(Path::new(&kubeconfig)).await?;
        return Ok(Some(ApiServerEnv {
            client,
            kubeconfig: kubeconfig.into(),
            full_cluster: true,
            _processes: vec![],
        }));
    }
    let Some(assets) = std::env::var_os("KUBEBUILDER_ASSETS").map(PathBuf::from) else {
        eprintln!("skipping: no API server (set KUBEBUILDER_ASSETS to a folder with etcd and kube-apiserver, or STREAMJOB_E2E_CLUSTER=1 with KUBECONFIG)");
        return Ok(None);
    };
    for binary in ["etcd", "kube-apiserver"] {
        if !assets.join(binary).exists() {
            eprintln!("skipping: KUBEBUILDER_ASSETS={} has no {binary}", assets.display());
            return Ok(None);
        }
    }
    start_local(&assets).await.map(Some)
}

/// A loopback TCP port nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn scratch_dir() -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
    let dir = std::env::temp_dir().join(format!("streamjob-envtest-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn start_local(assets: &Path) -> anyhow::Result<ApiServerEnv> {
    let dir = scratch_dir()?;
    let (etcd_port, etcd_peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let etcd = Command::new(assets.join("etcd"))
        .args(["--data-dir", &dir.join("etcd").to_string_lossy()])
        .args(["--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{etcd_peer_port}")])
        .args(["--unsafe-no-fsync"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("etcd.log"))?)
        .spawn()
        .context("starting etcd")?;
    let etcd = ChildGuard(etcd);

    let key = dir.join("sa.key");
    let status = Command::new("openssl")
        .args(["genrsa", "-out", &key.to_string_lossy(), "2048"])
        .stderr(Stdio::null())
        .status()
        .context("openssl genrsa (the service-account signing key)")?;
    if !status.success() {
        bail!("openssl genrsa failed");
    }
    let tokens = dir.join("tokens.csv");
    std::fs::write(&tokens, format!("{ADMIN_TOKEN},admin,admin,system:masters\n"))?;
    let apiserver = Command::new(assets.join("kube-apiserver"))
        .arg(format!("--etcd-servers={etcd_url}"))
        .arg(format!("--cert-dir={}", dir.join("certs").display()))
        .arg(format!("--secure-port={api_port}"))
        .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
        .args(["--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=true"])
        .args(["--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount"])
        .arg(format!("--token-auth-file={}", tokens.display()))
        .arg("--service-account-issuer=https://localhost")
        .arg(format!("--service-account-key-file={}", key.display()))
        .arg(format!("--service-account-signing-key-file={}", key.display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("kube-apiserver.log"))?)
        .spawn()
        .context("starting kube-apiserver")?;
    let apiserver = ChildGuard(apiserver);

    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: https://127.0.0.1:{api_port}\n    \
             insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n    token: {ADMIN_TOKEN}\ncontexts:\n- name: envtest\n  \
             context:\n    cluster: envtest\n    user: admin\n    namespace: default\ncurrent-context: envtest\n"
        ),
    )?;
    let client = client_from_kubeconfig(&kubeconfig).await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if client.apiserver_version().await.is_ok() && namespace_default_exists(&client).await {
            break;
        }
        if Instant::now() > deadline {
            bail!("kube-apiserver did not become ready in 90 s; see {}", dir.join("kube-apiserver.log").display());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(ApiServerEnv { client, kubeconfig, full_cluster: false, _processes: vec![apiserver, etcd] })
}

async fn namespace_default_exists(client: &Client) -> bool {
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    namespaces.get_opt("default").await.ok().flatten().is_some()
}

async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path).context("reading kubeconfig")?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
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

/// The repository root.
/// `name` made unique to this run, so topics and groups on a shared Kafka are fresh.
pub fn unique(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), streamjob_worker::runner::now_ms() % 1_000_000)
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A workspace binary built by `cargo build --workspace --bins`.
pub fn workspace_binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    target.join("debug").join(name)
}

/// A Kafka-protocol broker for the multi-process tests.
pub struct Broker {
    pub bootstrap: String,
    _process: Option<ChildGuard>,
}

/// The broker under test, with `topics` created: the Kafka named by `STREAMJOB_TEST_BOOTSTRAP`,
/// or `streamjob-mock-broker` in its own process.
pub fn broker(topics: &[(&str, i32)]) -> Broker {
    if let Ok(bootstrap) = std::env::var("STREAMJOB_TEST_BOOTSTRAP") {
        streamjob_worker::topic_io::create_topics(&bootstrap, topics).expect("topics created on the test Kafka");
        return Broker { bootstrap, _process: None };
    }
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
