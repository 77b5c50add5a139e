//! A real Kubernetes control plane on loopback, envtest-style: etcd, kube-apiserver and
//! kube-controller-manager from `KUBEBUILDER_ASSETS` (built by `scripts/controlplane.sh`). The
//! controller-manager brings the real StatefulSet controller (which creates Pods; no kubelet
//! runs them) and the garbage collector.
//!
//! One control plane is shared by every test of a test binary ([`shared`]); a test that kills
//! the API server starts its own ([`ControlPlane::start`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::{free_port, require_real_part, scratch_dir, ChildGuard};

/// Token the local API server accepts for a `system:masters` user.
const ADMIN_TOKEN: &str = "streamjob-envtest-admin-token";
/// Audits the requests of ServiceAccounts (the operator under the chart's RBAC), not the admin's
/// (the tests and kube-controller-manager), at the level that records the response code.
const AUDIT_POLICY: &str = r"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: [system:serviceaccounts]
  - level: None
";
const BINARIES: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];

/// A running control plane; its processes stop when it is dropped.
pub struct ControlPlane {
    pub dir: PathBuf,
    /// A kubeconfig (admin) for the test's clients and the processes it starts.
    pub kubeconfig: PathBuf,
    pub api_port: u16,
    assets: PathBuf,
    etcd_url: String,
    /// kube-apiserver, then the rest; kube-apiserver first so a test can restart it.
    processes: Vec<ChildGuard>,
}

/// `KUBEBUILDER_ASSETS` when it holds every binary; `None` (after saying why, or failing under
/// CI) otherwise.
pub fn assets() -> anyhow::Result<Option<PathBuf>> {
    let Some(assets) = std::env::var_os("KUBEBUILDER_ASSETS").map(PathBuf::from) else {
        return require_real_part(
            "no Kubernetes API server (set KUBEBUILDER_ASSETS to the folder scripts/controlplane.sh prints)",
        );
    };
    if let Some(missing) = BINARIES.iter().find(|binary| !assets.join(binary).exists()) {
        return require_real_part(&format!("KUBEBUILDER_ASSETS={} has no {missing}", assets.display()));
    }
    Ok(Some(assets))
}

/// The control plane shared by the tests of this binary, started on first use. Its processes
/// are started from a thread that lives as long as the binary and die with it.
pub fn shared() -> anyhow::Result<Option<&'static ControlPlane>> {
    static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
    let Some(assets) = assets()? else { return Ok(None) };
    let started = SHARED.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(ControlPlane::start(&assets).map_err(|e| format!("{e:#}")));
            loop {
                std::thread::park();
            }
        });
        receiver.recv().unwrap_or_else(|_| Err("the control-plane thread ended".to_owned()))
    });
    match started {
        Ok(plane) => Ok(Some(plane)),
        Err(error) => bail!("the shared control plane did not start: {error}"),
    }
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager and waits until the API server
    /// serves. Blocking; the processes are killed with the calling thread's process.
    pub fn start(assets: &Path) -> anyhow::Result<Self> {
        let dir = scratch_dir("envtest")?;
        let etcd_url = format!("http://127.0.0.1:{}", free_port()?);
        let mut plane = ControlPlane {
            kubeconfig: dir.join("kubeconfig"),
            api_port: free_port()?,
            assets: assets.to_owned(),
            etcd_url,
            dir,
            processes: Vec::new(),
        };
        let etcd = plane.start_etcd()?;
        plane.write_credentials()?;
        let apiserver = plane.start_apiserver()?;
        plane.processes = vec![apiserver, etcd];
        plane.wait_until_serving(Duration::from_secs(120))?;
        let controller_manager = plane.start_controller_manager()?;
        plane.processes.push(controller_manager);
        Ok(plane)
    }

    /// A client for this control plane, on the calling test's runtime.
    pub async fn client(&self) -> anyhow::Result<Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// The API server's audit log: one JSON line per request a ServiceAccount made
    /// ([`AUDIT_POLICY`]), with its verb, resource and response code.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    pub fn api_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// Kills kube-apiserver (SIGKILL, as a crash or a node loss would).
    pub fn kill_apiserver(&mut self) {
        let apiserver = &mut self.processes[0].0;
        let _ = apiserver.kill();
        let _ = apiserver.wait();
        self.note_outage("down");
    }

    /// Starts kube-apiserver again on the same port and storage; returns once it serves.
    pub fn restart_apiserver(&mut self) -> anyhow::Result<()> {
        self.processes[0] = self.start_apiserver()?;
        self.wait_until_serving(Duration::from_secs(120))?;
        self.note_outage("ready");
        Ok(())
    }

    /// The times kube-apiserver was killed and was ready again, one `down|ready RFC3339` a line.
    /// A restarted API server answers before its RBAC caches are filled, and refuses what RBAC
    /// allows until it is ready ([`crate::chart_rbac`] does not count those refusals).
    pub fn outages(&self) -> PathBuf {
        self.dir.join("apiserver-outages")
    }

    fn note_outage(&self, what: &str) {
        use std::io::Write as _;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(self.outages());
        if let Err(error) = file.and_then(|mut file| writeln!(file, "{what} {now}")) {
            eprintln!("warning: could not note the API server outage: {error}");
        }
    }

    fn start_etcd(&self) -> anyhow::Result<ChildGuard> {
        let peer_url = format!("http://127.0.0.1:{}", free_port()?);
        let mut command = Command::new(self.assets.join("etcd"));
        command
            .args(["--data-dir", &self.dir.join("etcd").to_string_lossy()])
            .args(["--listen-client-urls", &self.etcd_url, "--advertise-client-urls", &self.etcd_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .args(["--unsafe-no-fsync", "--log-level", "warn"]);
        spawn_logged(command, &self.dir.join("etcd.log"), "etcd")
    }

    fn write_credentials(&self) -> anyhow::Result<()> {
        let key = self.dir.join("sa.key");
        let status = Command::new("openssl")
            .args(["genrsa", "-out", &key.to_string_lossy(), "2048"])
            .stderr(Stdio::null())
            .status()
            .context("openssl genrsa (the service-account signing key)")?;
        if !status.success() {
            bail!("openssl genrsa failed");
        }
        std::fs::write(self.dir.join("tokens.csv"), format!("{ADMIN_TOKEN},admin,admin,system:masters\n"))?;
        std::fs::write(&self.kubeconfig, kubeconfig_text(&self.api_url(), ADMIN_TOKEN))?;
        std::fs::write(self.dir.join("audit-policy.yaml"), AUDIT_POLICY)?;
        Ok(())
    }

    fn start_apiserver(&self) -> anyhow::Result<ChildGuard> {
        let key = self.dir.join("sa.key");
        let mut command = Command::new(self.assets.join("kube-apiserver"));
        command
            .arg(format!("--etcd-servers={}", self.etcd_url))
            .arg(format!("--cert-dir={}", self.dir.join("certs").display()))
            .arg(format!("--secure-port={}", self.api_port))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .args(["--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=true"])
            .args(["--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount"])
            // As on clusters that enforce it (OpenShift): an owner reference with
            // blockOwnerDeletion needs update on the owner's finalizers, which the chart grants.
            .arg("--enable-admission-plugins=OwnerReferencesPermissionEnforcement")
            .arg(format!("--token-auth-file={}", self.dir.join("tokens.csv").display()))
            .arg("--service-account-issuer=https://localhost")
            .arg(format!("--service-account-key-file={}", key.display()))
            .arg(format!("--service-account-signing-key-file={}", key.display()))
            .arg(format!("--audit-policy-file={}", self.dir.join("audit-policy.yaml").display()))
            .arg(format!("--audit-log-path={}", self.audit_log().display()))
            .args(["--audit-log-maxbackup=0", "--audit-log-maxsize=0"]);
        spawn_logged(command, &self.dir.join("kube-apiserver.log"), "kube-apiserver")
    }

    fn start_controller_manager(&self) -> anyhow::Result<ChildGuard> {
        let mut command = Command::new(self.assets.join("kube-controller-manager"));
        command
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(["--leader-elect=false", "--secure-port=0", "--use-service-account-credentials=false"])
            .arg(format!("--service-account-private-key-file={}", self.dir.join("sa.key").display()))
            .arg("--controllers=*,-nodeipam,-nodelifecycle,-ttl,-bootstrap-signer-controller,-token-cleaner-controller")
            .args(["--concurrent-statefulset-syncs=5", "--concurrent-gc-syncs=20"]);
        spawn_logged(command, &self.dir.join("kube-controller-manager.log"), "kube-controller-manager")
    }

    /// Polls `/readyz` with the admin token until it answers ok.
    fn wait_until_serving(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/readyz", self.api_url());
        loop {
            let output = Command::new("curl")
                .args(["-sk", "--max-time", "2", "-H", &format!("Authorization: Bearer {ADMIN_TOKEN}"), &url])
                .output()
                .context("curl (to wait for the API server)")?;
            if output.status.success() && output.stdout == b"ok" {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver did not become ready in {timeout:?}; see {}",
                    self.dir.join("kube-apiserver.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Starts `command` with stderr and stdout to `log`, killed with the process that started it.
fn spawn_logged(mut command: Command, log: &Path, name: &str) -> anyhow::Result<ChildGuard> {
    let file = std::fs::File::create(log)?;
    command.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
    die_with_parent(&mut command);
    let child: Child = command.spawn().with_context(|| format!("starting {name}"))?;
    Ok(ChildGuard(child))
}

/// Makes the child receive SIGKILL when the thread that started it ends, so a test binary that
/// exits (or panics) leaves no control plane behind.
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

pub fn kubeconfig_text(server: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: {server}\n    \
         insecure-skip-tls-verify: true\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: envtest\n  \
         context:\n    cluster: envtest\n    user: user\n    namespace: default\ncurrent-context: envtest\n"
    )
}

pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path).context("reading kubeconfig")?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}
