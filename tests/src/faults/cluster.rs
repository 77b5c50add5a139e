//! A 3-node KRaft cluster of a row's own, for broker faults.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::{repo_root, scratch_dir};

/// A 3-node KRaft cluster started by `scripts/kafka-broker.sh`, stopped when dropped.
pub struct Cluster {
    dir: PathBuf,
    pub bootstrap: String,
    restarted: Mutex<Vec<Child>>,
}

impl Cluster {
    pub fn start() -> anyhow::Result<Self> {
        let dir = scratch_dir("fault-cluster")?;
        let output = Command::new(repo_root().join("scripts/kafka-broker.sh"))
            .arg("start")
            .arg(&dir)
            .arg("3")
            .stderr(Stdio::inherit())
            .output()
            .context("scripts/kafka-broker.sh runs")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().find_map(|line| line.strip_prefix("STREAMJOB_TEST_BOOTSTRAP="));
        let cluster = Self { dir, bootstrap: line.unwrap_or_default().to_owned(), restarted: Mutex::default() };
        if !output.status.success() || cluster.bootstrap.is_empty() {
            bail!("scripts/kafka-broker.sh start {} 3 failed: {}", cluster.dir.display(), output.status);
        }
        Ok(cluster)
    }

    fn node_dir(&self, node: i32) -> PathBuf {
        self.dir.join(format!("node-{node}"))
    }

    /// The node leading `group`'s partition of `__consumer_offsets` (50 partitions by default):
    /// Kafka picks it by the Java hash code of the group id.
    pub fn group_coordinator(&self, group: &str) -> anyhow::Result<i32> {
        let hash = group.encode_utf16().fold(0_i32, |h, unit| h.wrapping_mul(31).wrapping_add(i32::from(unit)));
        self.leader_of("__consumer_offsets", (hash & 0x7fff_ffff) % 50)
    }

    pub fn leader_of(&self, topic: &str, partition: i32) -> anyhow::Result<i32> {
        let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &self.bootstrap).create()?;
        let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let found = metadata.topics().first().and_then(|t| t.partitions().iter().find(|p| p.id() == partition));
        found.map(|p| p.leader()).filter(|leader| *leader > 0).context("no leader")
    }

    /// SIGKILL to `node`'s process; returns its command line, to start it again.
    pub fn kill_9(&self, node: i32) -> anyhow::Result<Vec<String>> {
        let pid: i32 = std::fs::read_to_string(self.node_dir(node).join("pid"))?.trim().parse()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
        let command: Vec<String> =
            cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into()).collect();
        // SAFETY: a plain signal to the node's process, read from its pid file just now.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while process_alive(pid) {
            if Instant::now() > deadline {
                bail!("Kafka node {node} (pid {pid}) still alive 30 s after SIGKILL");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(command)
    }

    /// Starts `node` again with `command`, as the script does, and waits until it has started.
    pub fn restart(&self, node: i32, command: &[String]) -> anyhow::Result<()> {
        let home = self.node_dir(node);
        let log_path = home.join("broker.log");
        let started_before = started_count(&log_path);
        let log = std::fs::OpenOptions::new().append(true).open(&log_path)?;
        let (program, args) = command.split_first().context("an empty command line")?;
        let child = Command::new(program)
            .args(args)
            .env("KAFKA_NODE_HOME", &home)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        std::fs::write(home.join("pid"), child.id().to_string())?;
        self.restarted.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        while started_count(&log_path) <= started_before {
            if Instant::now() > deadline {
                bail!("Kafka node {node} did not start again within 2 minutes (see {})", log_path.display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/kafka-broker.sh")).arg("stop").arg(&self.dir).status();
        for child in self.restarted.get_mut().map(std::mem::take).unwrap_or_default().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn started_count(log: &Path) -> usize {
    std::fs::read_to_string(log).map(|text| text.matches("Kafka Server started").count()).unwrap_or(0)
}

/// Whether `pid` runs (a zombie, which holds no port or lock, does not).
fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}
