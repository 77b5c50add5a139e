//! Reconciles 1000 StreamJobs against the in-memory API server and prints reconciles/s and the
//! operator side's peak resident memory. The API server runs in a child process (this binary
//! with `--serve-api`), so the memory figure is the reconciler's alone.
//! Run: `cargo bench -p streamjob-operator --bench reconcile`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client, Config};
use streamjob_crds::StreamJob;
use streamjob_operator::controller::{
    reconcile, ConsumerGroupDeleter, Context, GroupCleanup, GroupDeletionError, ScaleDecisions,
};
use streamjob_operator::metrics::Metrics;
use streamjob_testkit::fake_api::FakeApiServer;
use streamjob_testkit::fixtures::{example, JobFixture};

const JOBS: usize = 1000;
const CONCURRENCY: usize = 16;
const COLLECTION: &str = "/apis/streamjob.io/v1alpha1/streamjobs";
const NAMESPACE: &str = "bench";

struct NoKafka;

impl ConsumerGroupDeleter for NoKafka {
    fn delete_group<'a>(
        &'a self,
        _job: &'a StreamJob,
    ) -> futures::future::BoxFuture<'a, Result<GroupCleanup, GroupDeletionError>> {
        Box::pin(async { Ok(GroupCleanup::default()) })
    }
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Child process: holds 1000 jobs and answers API requests on a loopback port it prints.
async fn serve_api() {
    let template = example("clicks-per-user.yaml").in_namespace(NAMESPACE);
    let api = FakeApiServer::new();
    for i in 0..JOBS {
        api.create(COLLECTION, &template.clone().named(&format!("job-{i}")));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    println!("{}", listener.local_addr().expect("address"));
    api.serve_http(listener).await.expect("serve");
}

async fn reconcile_all(jobs: &Api<StreamJob>, context: &Arc<Context>) -> (usize, usize) {
    let names: Vec<String> = (0..JOBS).map(|i| format!("job-{i}")).collect();
    let results: Vec<bool> = futures::stream::iter(names)
        .map(|name| async move {
            match jobs.get(&name).await {
                Ok(job) => reconcile(Arc::new(job), context.clone()).await.is_ok(),
                Err(_) => false,
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let ok = results.iter().filter(|ok| **ok).count();
    (ok, results.len() - ok)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--serve-api") {
        return serve_api().await;
    }
    let mut server = Command::new(std::env::current_exe().expect("own path"))
        .arg("--serve-api")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the API server process");
    let mut address = String::new();
    BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut address).expect("address line");
    let config = Config::new(format!("http://{}", address.trim()).parse().expect("url"));
    let client = Client::try_from(config).expect("client");
    let context = Arc::new(Context::new(
        client.clone(),
        Recorder::new(client.clone(), Reporter { controller: "streamjob-operator".into(), instance: None }),
        "worker:bench".to_owned(),
        Arc::new(Metrics::default()),
        Arc::new(ScaleDecisions::default()),
        Arc::new(NoKafka),
    ));
    let jobs: Api<StreamJob> = Api::namespaced(client, NAMESPACE);
    for (round, label) in ["first (creates 4000 children)", "second (steady state)"].iter().enumerate() {
        let started = Instant::now();
        let (ok, failed) = reconcile_all(&jobs, &context).await;
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "round {}: {label}: {ok} reconciles ok, {failed} failed in {seconds:.2} s = {:.0} reconciles/s",
            round + 1,
            ok as f64 / seconds
        );
    }
    match peak_rss_kib() {
        Some(kib) => println!("operator peak RSS: {:.1} MiB for {JOBS} jobs", kib as f64 / 1024.0),
        None => println!("operator peak RSS: unavailable (no /proc/self/status)"),
    }
    let _ = server.kill();
    let _ = server.wait();
}
