//! A real node for the tests that run the images as pods: `scripts/node.sh` starts a
//! single-node cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
//! containerd + runc + the CNI bridge, the kubelet, kube-proxy) and an Apache Kafka broker the
//! pods reach, with its state in a scratch folder; dropping [`RealNode`] stops it all and undoes
//! what it changed on the host. The images come from `scripts/images.sh` ([`images`]).
//!
//! Needs root, the Debian packages `.ci/run` installs, and `KUBEBUILDER_ASSETS` holding the
//! kubelet, kube-scheduler and kube-proxy too (`scripts/controlplane.sh` builds them). Without
//! them the test skips with one line, or fails under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use crate::{repo_root, require_real_part, scratch_dir, target_dir};

/// The binaries a node needs beside the control plane's.
const NODE_BINARIES: [&str; 7] =
    ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"];
/// The host tools `scripts/node.sh` and `scripts/images.sh` call.
const HOST_TOOLS: [&str; 7] = ["containerd", "runc", "ctr", "iptables", "umoci", "skopeo", "gcc"];

/// A running node; stopped when dropped.
pub struct RealNode {
    pub dir: PathBuf,
    /// Cluster-admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The Kafka broker, at an address both this machine and the pods reach.
    pub bootstrap: String,
    /// The node's address (the bridge's gateway), where the API server and Kafka listen.
    pub gateway: String,
    kubectl: PathBuf,
}

/// The two images as OCI archives, with the chart's tags.
pub struct Images {
    pub operator: PathBuf,
    pub worker: PathBuf,
    /// `REGISTRY/NAME:TAG` of each, as the archives name them.
    pub operator_ref: String,
    pub worker_ref: String,
}

/// Why a node cannot start here, if it cannot: not root, a missing host tool or binary.
fn missing_part(assets: Option<&Path>) -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("a real node needs root (containerd, the kubelet, a network bridge)".to_owned());
    }
    if let Some(tool) = HOST_TOOLS.iter().find(|tool| !on_path(tool)) {
        return Some(format!("no {tool} for a real node (.ci/run installs it: containerd runc umoci skopeo …)"));
    }
    let Some(assets) = assets else {
        return Some("no KUBEBUILDER_ASSETS (scripts/controlplane.sh prints it)".to_owned());
    };
    NODE_BINARIES.iter().find(|binary| !assets.join(binary).exists()).map(|binary| {
        format!("KUBEBUILDER_ASSETS={} has no {binary} (scripts/controlplane.sh builds it)", assets.display())
    })
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false)
}

impl RealNode {
    /// Starts a node (blocking, a minute or two); `None` when this machine cannot run one and
    /// not under CI (after one line saying why).
    pub fn start() -> anyhow::Result<Option<Self>> {
        let assets = std::env::var_os("KUBEBUILDER_ASSETS").map(PathBuf::from);
        if let Some(why) = missing_part(assets.as_deref()) {
            return require_real_part(&why);
        }
        let assets = assets.context("KUBEBUILDER_ASSETS")?;
        let dir = scratch_dir("node")?;
        let output = Command::new("bash")
            .arg(repo_root().join("scripts/node.sh"))
            .arg("start")
            .arg(&dir)
            .env("KUBEBUILDER_ASSETS", &assets)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .context("bash scripts/node.sh start")?;
        // From here on, dropping the node undoes whatever part of it started.
        let mut node = RealNode {
            kubeconfig: dir.join("kubeconfig"),
            dir,
            bootstrap: String::new(),
            gateway: String::new(),
            kubectl: assets.join("kubectl"),
        };
        if !output.status.success() {
            bail!("scripts/node.sh start failed; its logs are in {}/logs", node.dir.display());
        }
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            match line.split_once('=') {
                Some(("STREAMJOB_NODE_BOOTSTRAP", value)) => node.bootstrap = value.to_owned(),
                Some(("STREAMJOB_NODE_GATEWAY", value)) => node.gateway = value.to_owned(),
                _ => {}
            }
        }
        if node.bootstrap.is_empty() || node.gateway.is_empty() {
            bail!("scripts/node.sh start printed no STREAMJOB_NODE_BOOTSTRAP/GATEWAY");
        }
        Ok(Some(node))
    }

    /// Imports OCI archives into the node's containerd (the `k8s.io` namespace the kubelet uses).
    pub fn import(&self, archives: &[&Path]) -> anyhow::Result<()> {
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/node.sh"))
            .arg("import")
            .arg(&self.dir)
            .args(archives)
            .stdin(Stdio::null())
            .status()
            .context("bash scripts/node.sh import")?;
        if !status.success() {
            bail!("importing {archives:?} into the node's containerd failed");
        }
        Ok(())
    }

    /// Stops the node's containerd (SIGTERM, as systemd stops it: the shims and the containers
    /// they hold keep running) and starts it again on the same state; returns once it serves.
    pub fn restart_containerd(&self) -> anyhow::Result<()> {
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/node.sh"))
            .arg("restart-containerd")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .status()
            .context("bash scripts/node.sh restart-containerd")?;
        if !status.success() {
            bail!("restarting the node's containerd failed; see {}/logs/containerd.log", self.dir.display());
        }
        Ok(())
    }

    /// Runs `ctr` in the `k8s.io` namespace of the node's containerd (the kubelet's containers);
    /// its stdout, or an error with its stderr.
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("ctr")
            .arg("--address")
            .arg(self.dir.join("containerd/containerd.sock"))
            .args(["-n", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("ctr")?;
        if !output.status.success() {
            bail!("ctr {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs kubectl against the node's API server; its stdout, or an error with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("kubectl")?;
        if !output.status.success() {
            bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The tail of one of the node's logs (`kubelet`, `containerd`, `kafka`, …), for a failure.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("logs").join(format!("{name}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/node.sh"))
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .status();
        match status {
            Ok(status) if status.success() => {
                if std::env::var_os("STREAMJOB_KEEP_NODE_DIR").is_none() {
                    let _ = std::fs::remove_dir_all(&self.dir);
                }
            }
            _ => eprintln!("warning: scripts/node.sh stop {} did not finish cleanly", self.dir.display()),
        }
    }
}

/// The images: `STREAMJOB_IMAGES=DIR` (what `scripts/images.sh DIR` wrote), else built now
/// into the target folder by `scripts/images.sh` (the worker with `STREAMJOB_WORKER_PROFILE`,
/// default `dist`).
pub fn images() -> anyhow::Result<Images> {
    let dir = match std::env::var_os("STREAMJOB_IMAGES") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dir = target_dir().join("images");
            // The worker with the operator's dist profile, as CI builds it (.ci/run): its
            // dependencies are those of the test command's dist operator.
            let profile = std::env::var("STREAMJOB_WORKER_PROFILE").unwrap_or_else(|_| "dist".to_owned());
            let status = Command::new("bash")
                .arg(repo_root().join("scripts/images.sh"))
                .arg(&dir)
                .env("STREAMJOB_WORKER_PROFILE", profile)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .context("bash scripts/images.sh")?;
            if !status.success() {
                bail!("scripts/images.sh failed");
            }
            dir
        }
    };
    let tag = match std::env::var("STREAMJOB_IMAGE_TAG") {
        Ok(tag) => tag,
        Err(_) => app_version()?,
    };
    let registry = std::env::var("STREAMJOB_IMAGE_REGISTRY").unwrap_or_else(|_| "ghcr.io/streamjob".to_owned());
    let images = Images {
        operator: dir.join("streamjob-operator.tar"),
        worker: dir.join("streamjob-worker.tar"),
        operator_ref: format!("{registry}/streamjob-operator:{tag}"),
        worker_ref: format!("{registry}/streamjob-worker:{tag}"),
    };
    for archive in [&images.operator, &images.worker] {
        if !archive.is_file() {
            bail!("no image archive {} (bash scripts/images.sh {})", archive.display(), dir.display());
        }
    }
    Ok(images)
}

/// The chart's appVersion, the images' tag.
pub fn app_version() -> anyhow::Result<String> {
    let chart = std::fs::read_to_string(repo_root().join("charts/streamjob-operator/Chart.yaml"))?;
    let chart: serde_yaml::Value = serde_yaml::from_str(&chart)?;
    chart["appVersion"].as_str().map(str::to_owned).context("Chart.yaml has no appVersion")
}
