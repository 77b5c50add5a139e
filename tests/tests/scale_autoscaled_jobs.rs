//! Benchmark on the real API server and the real Kafka broker: many **autoscaled** StreamJobs,
//! each over its own 3-partition topic with some lag, their worker pods left Pending (this
//! control plane has no node, as a cluster short of capacity), the operator (`dist`, as shipped)
//! started once they exist. After a warm-up in which every job's lag is measured, over one
//! minute: the operator's peak RSS, threads, TCP connections to the broker, and the API
//! server's requests per second with the operator against without it (`apiserver_request_total`);
//! then the time from a lag spike on one job to its scale-up while the others keep polling.
//!
//! Run: `cargo test -p streamjob-e2e --test scale_autoscaled_jobs -- --ignored --nocapture`
//! (`STREAMJOB_AUTOSCALED_JOBS`, default 300; `STREAMJOB_OPERATOR_BIN` as in scale_1000_jobs).
//! A benchmark, not in the test command: it prints the figures the README quotes and asserts
//! only what does not depend on the machine (one probe client: the broker connections do not
//! grow with the job count).

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{stream, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use streamjob_crds::{Phase, StreamJob};
use streamjob_e2e::{
    api_server, eventually, free_port, fresh_namespace, install_crd, kubelet_marks_pods_ready, workspace_binary,
    ChildGuard,
};
use streamjob_operator::build::{NAME_LABEL, WORKER_NAME};
use streamjob_testkit::fixtures::{example, JobFixture};
use streamjob_testkit::kafka::{produce_all, NewRecord};
use streamjob_testkit::real::{real_broker, unique};

const POLL_SECONDS: i32 = 10;
const LAG_THRESHOLD: i64 = 1_000;
const MEASURED: Duration = Duration::from_secs(60);

fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(&format!("{field}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The process's established TCP connections to `port` (its socket inodes matched in
/// /proc/net/tcp and tcp6).
fn connections_to(pid: u32, port: u16) -> usize {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            link.to_str().and_then(|l| l.strip_prefix("socket:[")).map(|l| l.trim_end_matches(']').to_owned())
        })
        .collect();
    let port_hex = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| table.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 9 && fields[2].ends_with(&port_hex) && fields[3] == "01" && inodes.contains(fields[9])
        })
        .count()
}

/// The API server's `apiserver_request_total`, summed over every label.
async fn api_requests(client: &Client) -> anyhow::Result<f64> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with("apiserver_request_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

async fn requests_per_second(client: &Client, over: Duration) -> anyhow::Result<f64> {
    let before = api_requests(client).await?;
    tokio::time::sleep(over).await;
    Ok((api_requests(client).await? - before) / over.as_secs_f64())
}

#[tokio::test]
#[ignore = "benchmark: cargo test -p streamjob-e2e --test scale_autoscaled_jobs -- --ignored --nocapture"]
async fn many_autoscaled_jobs_share_one_probe_client() -> anyhow::Result<()> {
    let Some(env) = api_server().await? else { return Ok(()) };
    let Some(bootstrap) = real_broker() else { return Ok(()) };
    let broker_port: u16 = bootstrap.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(9092);
    let count: usize = std::env::var("STREAMJOB_AUTOSCALED_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let client = env.client.clone();
    install_crd(&client).await?;
    let namespace = fresh_namespace(&client, "sj-autoscaled").await?;

    let prefix = unique("scale-in");
    let topics: Vec<String> = (0..count).map(|i| format!("{prefix}-{i:04}")).collect();
    let setup = Instant::now();
    for chunk in topics.chunks(100) {
        let specs: Vec<(&str, i32)> = chunk.iter().map(|t| (t.as_str(), 3)).collect();
        streamjob_worker::topic_io::create_topics(&bootstrap, &specs)?;
    }
    let backlog = |n: usize| -> Vec<NewRecord> {
        (0..n).map(|i| NewRecord { key: Some(format!("k{i}")), value: b"a b c".to_vec(), timestamp_ms: None }).collect()
    };
    for topic in &topics {
        produce_all(&bootstrap, topic, &backlog(30))?;
    }
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &namespace);
    stream::iter(topics.iter().enumerate())
        .map(|(i, topic)| {
            let mut job = example("wordcount.yaml").named(&format!("job-{i:04}")).autoscaling(json!({
                "minReplicas": 1, "maxReplicas": 3, "lagThreshold": LAG_THRESHOLD,
                "pollIntervalSeconds": POLL_SECONDS,
            }));
            job.spec.source.bootstrap_servers = bootstrap.clone();
            job.spec.source.topics = vec![topic.clone()];
            let jobs = jobs.clone();
            async move { jobs.create(&PostParams::default(), &job).await.map(|_| ()) }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    eprintln!("{count} topics with lag and {count} autoscaled StreamJobs created in {:.1?}", setup.elapsed());
    let idle_rate = requests_per_second(&client, Duration::from_secs(20)).await?;

    let binary = std::env::var_os("STREAMJOB_OPERATOR_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_binary("streamjob-operator"));
    anyhow::ensure!(binary.exists(), "{} missing: run `cargo build --workspace --bins` first", binary.display());
    let log_path = std::env::temp_dir().join(format!("streamjob-autoscaled-{}.log", std::process::id()));
    let operator = ChildGuard(
        Command::new(&binary)
            .args(["run", "--namespace", &namespace, "--leader-election", "false", "--log-level", "warn"])
            .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port()?)])
            .env("KUBECONFIG", &env.kubeconfig)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()?,
    );
    let pid = operator.0.id();
    let started = Instant::now();
    eventually(Duration::from_secs(600), &format!("the lag of all {count} jobs measured"), || async {
        let list = jobs.list(&ListParams::default()).await.ok()?;
        let measured = list.items.iter().filter(|job| job.status.as_ref().is_some_and(|s| s.lag.is_some())).count();
        (measured == count).then_some(())
    })
    .await?;
    eprintln!("every job's lag measured {:.1?} after the operator started", started.elapsed());

    let pending_rate = requests_per_second(&client, MEASURED).await?;

    // The same jobs once their pods run (this control plane has no kubelet: the test reports the
    // pods Ready), as in a healthy cluster: the reconciler no longer rechecks unsettled jobs.
    let kubelet = kubelet_marks_pods_ready(client.clone(), &namespace, &format!("{NAME_LABEL}={WORKER_NAME}"));
    let stateful_sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    eventually(Duration::from_secs(600), &format!("the workers of all {count} jobs ready"), || async {
        let list = stateful_sets.list(&ListParams::default()).await.ok()?;
        let ready = list.items.iter().filter(|set| set.status.as_ref().and_then(|s| s.ready_replicas) == Some(1));
        (ready.count() == count).then_some(())
    })
    .await?;
    eventually(Duration::from_secs(600), &format!("all {count} jobs Ready"), || async {
        let list = jobs.list(&ListParams::default()).await.ok()?;
        let ready = list.items.iter().filter(|job| job.status.as_ref().and_then(|s| s.phase) == Some(Phase::Running));
        (ready.count() == count).then_some(())
    })
    .await?;
    let running_rate = requests_per_second(&client, MEASURED).await?;
    let (threads, connections) = (proc_status(pid, "Threads").unwrap_or(0), connections_to(pid, broker_port));
    let peak_kib = proc_status(pid, "VmHWM").unwrap_or(u64::MAX);

    // A spike on one job while the others keep polling: the time until its StatefulSet grows.
    let spiked = "job-0000";
    produce_all(&bootstrap, &topics[0], &backlog(20 * LAG_THRESHOLD as usize))?;
    let spike = Instant::now();
    eventually(Duration::from_secs(120), "the spiked job scaled up", || async {
        let set = stateful_sets.get(spiked).await.ok()?;
        (set.spec?.replicas? > 1).then_some(())
    })
    .await?;
    let decision = spike.elapsed();
    kubelet.abort();

    let per_job = |rate: f64| (rate - idle_rate).max(0.0) / count as f64;
    eprintln!(
        "real API server and broker, {count} autoscaled jobs (poll {POLL_SECONDS} s): operator peak RSS {:.1} MiB, \
         {threads} threads, {connections} TCP connections to the broker; API requests without the operator \
         {idle_rate:.1}/s; with it, pods Pending {pending_rate:.1}/s ({:.3}/s per job), pods Ready \
         {running_rate:.1}/s ({:.3}/s per job); a spike on one job scaled it {decision:.1?} after its last record \
         was written",
        peak_kib as f64 / 1024.0,
        per_job(pending_rate),
        per_job(running_rate),
    );
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let probe_failures = log.lines().filter(|line| line.contains("lag probe failed")).count();
    eprintln!("lag probe failures logged: {probe_failures}");
    assert!(connections <= 8, "one probe client for the one broker: {connections} connections to it");
    Ok(())
}
