//! The kubelet's part for a job's worker Pods on a control plane without nodes: every Pod the
//! StatefulSet controller creates gets a real `streamjob-worker` process, started as its
//! container would be (`POD_NAME`, `POD_NAMESPACE`, the ConfigMap's `job.yaml` as the config
//! file), and is reported Running and Ready; a Pod being deleted (or gone) gets SIGTERM, and once
//! the process has exited the Pod is removed (grace 0), as a kubelet confirms a termination. So
//! consumer-group membership follows the Pods as in a cluster.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use streamjob_crds::worker_paths;
use streamjob_runtime::sync::lock;

use crate::{free_port, workspace_binary, ChildGuard};

/// Extra worker flags (timings) every Pod's process gets.
const WORKER_FLAGS: [&str; 6] = ["--commit-interval", "500ms", "--idle-timeout", "4s", "--session-timeout", "10s"];
/// How long a worker gets to drain after SIGTERM before it is killed (the pod's grace).
const TERMINATION_GRACE: Duration = Duration::from_secs(60);

/// What happened to the processes, for the test to check and print.
#[derive(Debug, Default, Clone)]
pub struct PodLog {
    /// Pods whose worker was started, in order.
    pub started: Vec<String>,
    /// Pods whose worker was stopped by SIGTERM, with its exit status.
    pub stopped: Vec<(String, String)>,
    /// Workers that exited without being asked, with their status.
    pub exited_on_their_own: Vec<(String, String)>,
    /// Pods whose worker could not be started, and why (the last error of each).
    pub start_failures: Vec<(String, String)>,
}

/// Runs the worker processes of the Pods matching `selector` in `namespace` until dropped.
pub struct PodWorkers {
    task: tokio::task::JoinHandle<()>,
    log: Arc<Mutex<PodLog>>,
    processes: Arc<Mutex<HashMap<String, ChildGuard>>>,
    /// Where each process's stderr goes (`<pod>.log`).
    pub log_dir: PathBuf,
}

impl Drop for PodWorkers {
    fn drop(&mut self) {
        self.task.abort();
        lock(&self.processes).clear();
    }
}

impl PodWorkers {
    pub fn start(client: Client, namespace: &str, job: &str, log_dir: PathBuf) -> Self {
        let log = Arc::new(Mutex::new(PodLog::default()));
        let processes: Arc<Mutex<HashMap<String, ChildGuard>>> = Arc::default();
        let (shared_log, shared_processes) = (log.clone(), processes.clone());
        let (namespace, job, dir) = (namespace.to_owned(), job.to_owned(), log_dir.clone());
        let task = tokio::spawn(async move {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            let maps: Api<ConfigMap> = Api::namespaced(client, &namespace);
            let params = ListParams::default().labels(&format!("app.kubernetes.io/instance={job}"));
            loop {
                let Ok(listed) = pods.list(&params).await.map(|list| list.items) else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                // A Pod deleted outright (an unscheduled Pod goes without a grace period): its
                // worker is stopped as the kubelet would stop the container.
                let gone: Vec<String> = lock(&shared_processes)
                    .keys()
                    .filter(|name| !listed.iter().any(|pod| pod.name_any() == **name))
                    .cloned()
                    .collect();
                for name in gone {
                    let status = stop(&shared_processes, &name).await;
                    lock(&shared_log).stopped.push((name, status));
                }
                for pod in listed {
                    let name = pod.name_any();
                    let running = lock(&shared_processes).contains_key(&name);
                    if pod.metadata.deletion_timestamp.is_some() {
                        if running {
                            let status = stop(&shared_processes, &name).await;
                            lock(&shared_log).stopped.push((name.clone(), status));
                        }
                        let _ = pods
                            .delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
                            .await;
                    } else if !running {
                        match start_worker(&maps, &pod, &namespace, &job, &dir).await {
                            Ok(child) => {
                                lock(&shared_processes).insert(name.clone(), child);
                                lock(&shared_log).started.push(name.clone());
                                let ready = Patch::Merge(crate::pod_ready_status(&pod));
                                let _ = pods.patch_status(&name, &PatchParams::default(), &ready).await;
                            }
                            Err(error) => {
                                let mut log = lock(&shared_log);
                                log.start_failures.retain(|(pod, _)| *pod != name);
                                log.start_failures.push((name.clone(), format!("{error:#}")));
                            }
                        }
                    }
                }
                // A process that ended by itself: say so, and start it again (restartPolicy Always).
                let ended: Vec<(String, String)> = lock(&shared_processes)
                    .iter_mut()
                    .filter_map(|(name, child)| Some((name.clone(), child.0.try_wait().ok()??.to_string())))
                    .collect();
                for (name, status) in ended {
                    lock(&shared_processes).remove(&name);
                    lock(&shared_log).exited_on_their_own.push((name, status));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { task, log, processes, log_dir }
    }

    pub fn log(&self) -> PodLog {
        lock(&self.log).clone()
    }

    /// Worker processes running now.
    pub fn running(&self) -> usize {
        lock(&self.processes).len()
    }
}

/// SIGTERM, then up to the grace period for the process to exit; its exit status.
async fn stop(processes: &Arc<Mutex<HashMap<String, ChildGuard>>>, name: &str) -> String {
    let Some(mut child) = lock(processes).remove(name) else { return "not running".to_owned() };
    // SAFETY: signals our own child, which has not been waited for, so its pid is live.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + TERMINATION_GRACE;
    loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            return status.to_string();
        }
        if Instant::now() > deadline {
            return "killed after the grace period".to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_worker(
    maps: &Api<ConfigMap>,
    pod: &Pod,
    namespace: &str,
    job: &str,
    dir: &std::path::Path,
) -> anyhow::Result<ChildGuard> {
    let name = pod.name_any();
    let map = maps.get(&format!("{job}-config")).await?;
    let config = map
        .data
        .as_ref()
        .and_then(|data| data.get(worker_paths::CONFIG_FILE_NAME))
        .ok_or_else(|| anyhow::anyhow!("ConfigMap {job}-config has no {}", worker_paths::CONFIG_FILE_NAME))?;
    let config_path = dir.join(format!("{name}.yaml"));
    std::fs::write(&config_path, config)?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.log")))?;
    let port = free_port()?;
    let child = Command::new(workspace_binary("streamjob-worker"))
        .args(["--config", &config_path.display().to_string()])
        .args(["--http-address", &format!("127.0.0.1:{port}"), "--log-format", "text"])
        .args(WORKER_FLAGS)
        .env(worker_paths::POD_NAME_ENV, &name)
        .env(worker_paths::POD_NAMESPACE_ENV, namespace)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    Ok(ChildGuard(child))
}
