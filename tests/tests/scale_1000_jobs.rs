//! Benchmark on the real API server: the operator started once 1 000 suspended StreamJobs
//! exist, until every job is reconciled (its four children applied, its status written at its
//! generation). Prints the operator's peak RSS and the reconcile rate. The peak is held to the
//! budget the chart's memory request is sized from (measured 45.9–46.2 MiB with the `dist`
//! build without `dev`, 46.3–46.7 MiB with it, 49.8 MiB with `release`; the goal is 50 MB). `STREAMJOB_SCALE_JOBS` changes the
//! count; `STREAMJOB_OPERATOR_BIN` names the binary (the test command passes the `dist` build
//! without the `dev` feature, as in the image).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{stream, StreamExt, TryStreamExt};
use kube::api::{ListParams, PostParams};
use kube::Api;
use streamjob_crds::StreamJob;
use streamjob_e2e::{api_server, eventually, free_port, fresh_namespace, install_crd, workspace_binary, ChildGuard};
use streamjob_testkit::fixtures::{example, JobFixture};

/// A regression bound over the measured peak, at the chart's 64 MiB memory request (its limit is
/// 128 MiB).
const PEAK_RSS_LIMIT_KIB: u64 = 64 * 1024;

/// A `/proc/PID/status` field in KiB, such as `VmHWM` (peak resident set).
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(&format!("{field}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn reconciled(jobs: &Api<StreamJob>) -> usize {
    let Ok(list) = jobs.list(&ListParams::default()).await else { return 0 };
    list.items
        .iter()
        .filter(|job| job.status.as_ref().and_then(|s| s.observed_generation) == job.metadata.generation)
        .count()
}

#[tokio::test]
async fn a_thousand_jobs_reconcile_within_the_memory_budget() -> anyhow::Result<()> {
    let Some(env) = api_server().await? else { return Ok(()) };
    let count: usize = std::env::var("STREAMJOB_SCALE_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let client = env.client.clone();
    install_crd(&client).await?;
    let namespace = fresh_namespace(&client, "sj-scale").await?;
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &namespace);
    let template = example("wordcount.yaml").suspended();
    let created = Instant::now();
    stream::iter(0..count)
        .map(|i| {
            let (jobs, job) = (jobs.clone(), template.clone().named(&format!("job-{i:04}")));
            async move { jobs.create(&PostParams::default(), &job).await.map(|_| ()) }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    eprintln!("created {count} StreamJobs in {:.1?}", created.elapsed());

    // The binary as shipped: the `dist` build without `dev` (a debug build maps ten times the code).
    let binary = std::env::var_os("STREAMJOB_OPERATOR_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_binary("streamjob-operator"));
    anyhow::ensure!(binary.exists(), "{} missing: run `cargo build --workspace --bins` first", binary.display());
    let log = std::fs::File::create(std::env::temp_dir().join(format!("streamjob-scale-{}.log", std::process::id())))?;
    let started = Instant::now();
    let operator = ChildGuard(
        Command::new(&binary)
            .args(["run", "--namespace", &namespace, "--leader-election", "false", "--log-level", "warn"])
            .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port()?)])
            .env("KUBECONFIG", &env.kubeconfig)
            .envs(std::env::var("STREAMJOB_SCALE_MALLOC_ARENA_MAX").map(|v| ("MALLOC_ARENA_MAX", v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    );
    let pid = operator.0.id();
    eventually(Duration::from_secs(600), &format!("all {count} jobs reconciled"), || async {
        (reconciled(&jobs).await == count).then_some(())
    })
    .await?;
    let elapsed = started.elapsed();
    let peak_kib = proc_status_kib(pid, "VmHWM").unwrap_or(u64::MAX);
    let (anon, file) = (proc_status_kib(pid, "RssAnon"), proc_status_kib(pid, "RssFile"));
    eprintln!("operator RSS now: anonymous {anon:?} KiB, file-backed {file:?} KiB");
    eprintln!(
        "real API server, {count} jobs: all reconciled in {elapsed:.1?} ({:.1} jobs/s); operator peak RSS {:.1} MiB",
        count as f64 / elapsed.as_secs_f64(),
        peak_kib as f64 / 1024.0
    );
    assert!(peak_kib <= PEAK_RSS_LIMIT_KIB, "peak RSS {peak_kib} KiB over {PEAK_RSS_LIMIT_KIB} KiB");
    Ok(())
}
