//! The operator under the chart's RBAC only: the chart installed with the real Helm SDK
//! (`tests/helm/release.py`) for the namespaces a test watches, and credentials that are nothing
//! but a TokenRequest token of the chart's ServiceAccount, for the operator run in-process
//! ([`ChartRbac::client`]) or as a process ([`ChartRbac::spawn_operator`]). The test's own
//! requests keep the admin credentials.
//!
//! On the local control plane the API server audits every ServiceAccount request
//! ([`crate::ControlPlane::audit_log`]), so [`ChartRbac::refused`] lists each call the chart's
//! RBAC did not allow, whether the operator logged it or only retried, and
//! [`ChartRbac::calls`] what the operator did use.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};

use crate::{client_from_kubeconfig, eventually, repo_root, scratch_dir, unique, workspace_binary, ApiServerEnv};
use crate::{ChildGuard, ControlPlane};

/// A release of the chart, as the Helm SDK installed it.
pub struct Release {
    pub name: String,
    pub namespace: String,
    /// Every object of the release's manifest.
    pub objects: Vec<Value>,
}

impl Release {
    /// `helm install` of the chart with `values`, as the admin of `kubeconfig`, into a new
    /// namespace.
    pub fn install(kubeconfig: &Path, values: &Value) -> anyhow::Result<Self> {
        let (name, namespace) = (unique("chart"), unique("sj-chart-release"));
        let installed = release_script("install", kubeconfig, &namespace, &name, values)?;
        let objects = installed["objects"].as_array().context("release.py printed no objects")?.clone();
        Ok(Self { name, namespace, objects })
    }

    pub fn uninstall(&self, kubeconfig: &Path) -> anyhow::Result<()> {
        release_script("uninstall", kubeconfig, &self.namespace, &self.name, &json!({}))?;
        Ok(())
    }

    pub fn object(&self, kind: &str) -> anyhow::Result<&Value> {
        self.objects.iter().find(|o| o["kind"] == kind).with_context(|| format!("the release has no {kind}"))
    }

    pub fn name_of(&self, kind: &str) -> anyhow::Result<String> {
        let name = self.object(kind)?["metadata"]["name"].as_str();
        Ok(name.with_context(|| format!("the {kind} has no name"))?.to_owned())
    }

    /// The operator container's arguments in the chart's Deployment, but for the metrics address.
    pub fn operator_args(&self, metrics_addr: &str) -> anyhow::Result<Vec<String>> {
        let container = &self.object("Deployment")?["spec"]["template"]["spec"]["containers"][0];
        let args = container["args"].as_array().context("the operator container has no args")?;
        let metrics = format!("--metrics-addr={metrics_addr}");
        let arg = |arg: &str| if arg.starts_with("--metrics-addr=") { metrics.clone() } else { arg.to_owned() };
        Ok(args.iter().filter_map(Value::as_str).map(arg).collect())
    }
}

/// Runs `tests/helm/release.py`, which drives the Helm SDK; returns what it printed.
fn release_script(
    action: &str,
    kubeconfig: &Path,
    namespace: &str,
    name: &str,
    values: &Value,
) -> anyhow::Result<Value> {
    let output = Command::new("python3")
        .arg(repo_root().join("tests/helm/release.py"))
        .arg(action)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--namespace", namespace, "--name", name, "--values-json", &values.to_string()])
        .output()
        .context("python3 tests/helm/release.py (needs the Helm SDK: pip install -r tests/python/requirements.txt)")?;
    if !output.status.success() {
        bail!("release.py {action} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice(&output.stdout).context("release.py printed no JSON")
}

/// The chart's values for an operator watching `namespaces` (Roles there), with leader election
/// on its own Lease, and no operator Deployment of its own: the test runs the operator.
pub fn watching(namespaces: &[String]) -> Value {
    json!({"watchNamespaces": namespaces, "leaderElection": {"enabled": true}, "replicaCount": 0})
}

/// A label selector only the credentials probe of [`ChartRbac::install`] uses, so its refusal is
/// told apart from the operator's.
const PROBE_SELECTOR: &str = "streamjob-e2e-probe=token-is-only-the-service-account";

/// The chart installed, and credentials that are only its ServiceAccount's.
pub struct ChartRbac {
    pub release: Release,
    /// A kubeconfig whose only credentials are a token of the chart's ServiceAccount.
    pub kubeconfig: PathBuf,
    /// The ServiceAccount's user name, as the API server authenticates the token.
    pub user: String,
    /// The watched namespaces (`watchNamespaces`; empty: all).
    pub namespaces: Vec<String>,
    audit_log: Option<PathBuf>,
    /// [`ControlPlane::outages`] of the API server of the audit log.
    outages: Option<PathBuf>,
    /// Whether [`ChartRbac::assert_nothing_refused`] ran; if not (the test failed before), the
    /// refusals are printed when this is dropped, as the likely cause.
    checked: std::cell::Cell<bool>,
}

impl Drop for ChartRbac {
    fn drop(&mut self) {
        if self.checked.get() {
            return;
        }
        match self.refused() {
            Ok(refused) if !refused.is_empty() => {
                eprintln!("the API server refused the operator under the chart's RBAC:\n{}", refused.join("\n"));
            }
            Ok(_) => {}
            Err(error) => eprintln!("the audit log could not be read: {error:#}"),
        }
    }
}

impl ChartRbac {
    /// The chart with [`watching`] `namespaces`, on the API server of `env`.
    pub async fn for_namespaces(env: &ApiServerEnv, namespaces: &[String]) -> anyhow::Result<Self> {
        Self::install(env, &watching(namespaces)).await
    }

    /// The chart with `values`, on the API server of `env`.
    pub async fn install(env: &ApiServerEnv, values: &Value) -> anyhow::Result<Self> {
        Self::install_with(&env.client, &env.kubeconfig, env.local, values).await
    }

    /// The chart with [`watching`] `namespaces`, on `plane` (a test's own control plane).
    pub async fn on_control_plane(plane: &ControlPlane, namespaces: &[String]) -> anyhow::Result<Self> {
        Self::install_with(&plane.client().await?, &plane.kubeconfig, Some(plane), &watching(namespaces)).await
    }

    async fn install_with(
        admin: &Client,
        admin_kubeconfig: &Path,
        plane: Option<&ControlPlane>,
        values: &Value,
    ) -> anyhow::Result<Self> {
        let release = Release::install(admin_kubeconfig, values)?;
        crd_established(admin).await?;
        let account = release.name_of("ServiceAccount")?;
        let dir = scratch_dir("chart-rbac")?;
        let kubeconfig =
            service_account_kubeconfig(admin, admin_kubeconfig, &release.namespace, &account, &dir).await?;
        let user = format!("system:serviceaccount:{}:{account}", release.namespace);
        let namespaces = values["watchNamespaces"].as_array().into_iter().flatten();
        let namespaces = namespaces.filter_map(Value::as_str).map(str::to_owned).collect();
        let (audit_log, outages) = (plane.map(ControlPlane::audit_log), plane.map(ControlPlane::outages));
        let rbac = Self { release, kubeconfig, user, namespaces, audit_log, outages, checked: false.into() };
        rbac.token_is_only_the_service_account().await?;
        Ok(rbac)
    }

    /// A client with nothing but the ServiceAccount's token, on the calling test's runtime.
    pub async fn client(&self) -> anyhow::Result<Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// The release's leader-election Lease: `(name, namespace)`.
    pub fn lease(&self) -> anyhow::Result<(String, String)> {
        Ok((self.release.name_of("Lease")?, self.release.namespace.clone()))
    }

    /// The operator credentials carry the ServiceAccount and nothing more: what the chart does
    /// not grant (listing Secrets) is refused.
    async fn token_is_only_the_service_account(&self) -> anyhow::Result<()> {
        let namespace = self.namespaces.first().unwrap_or(&self.release.namespace);
        let secrets: Api<Secret> = Api::namespaced(self.client().await?, namespace);
        match secrets.list(&ListParams::default().labels(PROBE_SELECTOR)).await {
            Err(kube::Error::Api(status)) if status.code == 403 => Ok(()),
            other => bail!("the ServiceAccount's token listed Secrets (only get is granted): {other:?}"),
        }
    }

    /// `streamjob-operator` (from `cargo build --workspace --bins`) with `args`, as the chart's
    /// Deployment runs it: the ServiceAccount's kubeconfig, `POD_NAMESPACE` the release's,
    /// `POD_NAME` `identity`; standard output and error to `log`.
    pub fn spawn_operator(&self, args: &[String], identity: &str, log: &Path) -> anyhow::Result<OperatorProcess> {
        let file = std::fs::File::create(log)?;
        let child = Command::new(workspace_binary("streamjob-operator"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("POD_NAMESPACE", &self.release.namespace)
            .env("POD_NAME", identity)
            .env_remove("STREAMJOB_WATCH_NAMESPACES")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting streamjob-operator (cargo build --workspace --bins first)")?;
        Ok(OperatorProcess { process: ChildGuard(child), log: log.to_owned() })
    }

    /// The ServiceAccount's requests as the API server audited them: `None` without an audit log
    /// (a cluster of `STREAMJOB_E2E_CLUSTER=1`).
    fn audited(&self) -> anyhow::Result<Option<Vec<Value>>> {
        let Some(path) = &self.audit_log else { return Ok(None) };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let events = text.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok());
        let mine = events.filter(|e| e["user"]["username"] == self.user.as_str());
        let probe = |e: &Value| e["requestURI"].as_str().is_some_and(|uri| uri.contains("streamjob-e2e-probe"));
        Ok(Some(mine.filter(|e| !probe(e)).collect()))
    }

    /// Every request of the operator the API server refused (403), as `verb resource[/sub]
    /// namespace/name: reason`; empty also when there is no audit log to read. Not those a
    /// restarted API server received before it was ready ([`ControlPlane::outages`]).
    pub fn refused(&self) -> anyhow::Result<Vec<String>> {
        let Some(events) = self.audited()? else { return Ok(Vec::new()) };
        let outages = self.outages()?;
        let in_outage = |e: &Value| {
            let received = e["requestReceivedTimestamp"].as_str().and_then(|t| t.parse::<Timestamp>().ok());
            received.is_some_and(|t| outages.iter().any(|(down, ready)| *down <= t && t <= *ready))
        };
        let refused = events.iter().filter(|e| e["responseStatus"]["code"] == 403);
        let (outage, refused): (Vec<&Value>, Vec<&Value>) = refused.partition(|e| in_outage(e));
        if !outage.is_empty() {
            eprintln!("not counted: {} refusals by the API server while restarting, before it was ready", outage.len());
        }
        let describe = |e: &Value| format!("{}: {}", call(e), e["responseStatus"]["reason"].as_str().unwrap_or(""));
        Ok(refused.into_iter().map(describe).collect::<BTreeSet<_>>().into_iter().collect())
    }

    /// The `(down, ready)` times of each API server restart.
    fn outages(&self) -> anyhow::Result<Vec<(Timestamp, Timestamp)>> {
        let Some(path) = self.outages.as_ref().filter(|p| p.exists()) else { return Ok(Vec::new()) };
        let text = std::fs::read_to_string(path)?;
        let mut windows = Vec::new();
        let mut down = None;
        for line in text.lines() {
            let (what, at) = line.split_once(' ').with_context(|| format!("{}: {line}", path.display()))?;
            let at: Timestamp = at.parse()?;
            match what {
                "down" => down = Some(at),
                _ => windows.extend(down.take().map(|down| (down, at))),
            }
        }
        // Still down: every later request.
        windows.extend(down.map(|down| (down, chrono::DateTime::<chrono::Utc>::MAX_UTC)));
        Ok(windows)
    }

    /// The distinct calls (`verb resource[/subresource]` under `group`) the operator made that
    /// the API server allowed.
    pub fn calls(&self) -> anyhow::Result<BTreeSet<String>> {
        let Some(events) = self.audited()? else { return Ok(BTreeSet::new()) };
        let allowed = events.iter().filter(|e| e["responseStatus"]["code"] != 403);
        Ok(allowed.map(rule_of).collect())
    }

    /// Fails, listing them, when the API server refused any of the operator's requests; prints
    /// the calls it made, to compare with the chart's rules.
    pub fn assert_nothing_refused(&self) -> anyhow::Result<()> {
        self.checked.set(true);
        if self.audit_log.is_none() {
            eprintln!("note: no audit log on this API server; the chart's RBAC shows only through the test's checks");
            return Ok(());
        }
        let refused = self.refused()?;
        if !refused.is_empty() {
            bail!("the API server refused the operator under the chart's RBAC:\n{}", refused.join("\n"));
        }
        let calls = self.calls()?;
        eprintln!("the operator's calls under the chart's RBAC: {}", calls.into_iter().collect::<Vec<_>>().join("; "));
        Ok(())
    }
}

fn resource_of(event: &Value) -> String {
    let object = &event["objectRef"];
    let resource = object["resource"].as_str().unwrap_or("<non-resource>");
    match object["subresource"].as_str() {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_owned(),
    }
}

/// `verb group/resource[/subresource]`, the shape of an RBAC rule.
fn rule_of(event: &Value) -> String {
    let group = event["objectRef"]["apiGroup"].as_str().unwrap_or("");
    let resource = resource_of(event);
    let target = if event["objectRef"].is_null() {
        event["requestURI"].as_str().unwrap_or("").to_owned()
    } else if group.is_empty() {
        resource
    } else {
        format!("{group}/{resource}")
    };
    format!("{} {target}", event["verb"].as_str().unwrap_or("?"))
}

/// One request: its rule, and the object's namespace and name.
fn call(event: &Value) -> String {
    let object = &event["objectRef"];
    let namespace = object["namespace"].as_str().unwrap_or("");
    let name = object["name"].as_str().unwrap_or("");
    format!("{} {namespace}/{name}", rule_of(event))
}

type Timestamp = chrono::DateTime<chrono::Utc>;

/// The operator binary run by [`ChartRbac::spawn_operator`]; killed when dropped.
pub struct OperatorProcess {
    process: ChildGuard,
    log: PathBuf,
}

impl OperatorProcess {
    /// Stops the operator; returns its log.
    pub fn stop(self) -> anyhow::Result<String> {
        drop(self.process);
        Ok(std::fs::read_to_string(&self.log)?)
    }
}

/// Waits for the chart's CRD (Helm installs it from `crds/` unless it exists) to be Established.
pub async fn crd_established(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    eventually(Duration::from_secs(90), "the chart's CRD to be Established", || async {
        let conditions = crds.get("streamjobs.streamjob.io").await.ok()?.status?.conditions?;
        conditions.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
    })
    .await
}

/// A kubeconfig for the API server of `admin_kubeconfig` whose only credentials are a token of
/// `account` (TokenRequest API).
async fn service_account_kubeconfig(
    admin: &Client,
    admin_kubeconfig: &Path,
    namespace: &str,
    account: &str,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let request = serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))?;
    let answer = accounts.create_token_request(account, &PostParams::default(), &request).await?;
    let token = answer.status.context("the TokenRequest came back without a token")?.token;
    let mut kubeconfig: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(admin_kubeconfig)?)?;
    let users = kubeconfig.get_mut("users").and_then(serde_yaml::Value::as_sequence_mut);
    for user in users.context("the admin kubeconfig has no users")? {
        let user = user.as_mapping_mut().context("a kubeconfig user is not a mapping")?;
        user.insert("user".into(), serde_yaml::to_value(json!({"token": token}))?);
    }
    let path = dir.join("operator.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;
    Ok(path)
}
