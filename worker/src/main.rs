//! `streamjob-worker --config job.yaml`: runs one worker of a StreamJob, in a pod or as a plain
//! process.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use streamjob_crds::worker_paths;
use streamjob_runtime::http::{serve, Health};
use streamjob_runtime::shutdown::shutdown_signal;
use streamjob_worker::group_protocol::GroupProtocolChoice;
use streamjob_worker::stall::StallWatch;
use streamjob_worker::{Control, Overrides, WorkerConfig};

/// The exit status of a worker that stopped because it was stuck (EX_SOFTWARE).
const STUCK_EXIT_CODE: i32 = 70;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Parser, Debug)]
#[command(about = "Runs one worker of a StreamJob: consume, process, produce")]
struct Args {
    /// The StreamJob manifest (the operator mounts it at /etc/streamjob/job.yaml).
    #[arg(long, default_value_t = worker_paths::config_file())]
    config: String,
    /// Brokers to use instead of the manifest's (source and sink).
    #[arg(long, env = "STREAMJOB_BOOTSTRAP")]
    bootstrap: Option<String>,
    /// Consumer group instead of the manifest's.
    #[arg(long)]
    group: Option<String>,
    /// This worker's identity (default: $POD_NAME): the static member id; its ordinal is part of
    /// the transactional id, with the namespace ($POD_NAMESPACE) and the job's name.
    #[arg(long)]
    instance_id: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:9090")]
    http_address: String,
    /// How often offsets (or transactions) are committed.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    commit_interval: Duration,
    /// A source partition quiet this long stops holding back windows.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Group session timeout: how long a dead worker keeps its partitions.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    session_timeout: Duration,
    /// Consumer group protocol: `consumer` is KIP-848's (the brokers assign partitions and set
    /// the session timeout and heartbeat interval), `classic` the JoinGroup/SyncGroup one with
    /// the cooperative-sticky assignor and `--session-timeout`; `auto` takes `consumer` when
    /// the brokers accept it.
    #[arg(long, env = "STREAMJOB_GROUP_PROTOCOL", value_enum, default_value_t = GroupProtocolChoice::default())]
    group_protocol: GroupProtocolChoice,
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_level: String,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    streamjob_crds::duration::parse_duration(text).map_err(|e| e.to_string())
}

fn init_tracing(format: LogFormat, level: &str) {
    let builder = tracing_subscriber::fmt().with_env_filter(level).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format, &args.log_level);
    let overrides = Overrides {
        bootstrap_servers: args.bootstrap.clone(),
        consumer_group: args.group.clone(),
        instance_id: args.instance_id.clone(),
    };
    let mut config = WorkerConfig::load(args.config.as_ref(), &overrides, |name| std::env::var(name).ok())
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    config.timings.commit_interval = args.commit_interval;
    config.timings.idle_timeout = args.idle_timeout;
    config.timings.session_timeout = args.session_timeout;
    config.group_protocol = args.group_protocol;
    let control = Control::default();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&args.http_address))
        .with_context(|| format!("cannot listen on {}", args.http_address))?;
    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let health = Health { metrics: control.metrics.clone(), ready: control.ready.clone(), not_ready: "not consuming" };
    runtime.spawn(serve(listener, health, async {
        let _ = stopped.await;
    }));
    let shutdown = control.shutdown.clone();
    runtime.spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: draining, flushing and committing");
        shutdown.store(true, Ordering::SeqCst);
    });
    watch_for_a_stuck_worker(control.stall.clone());
    let worker = std::thread::spawn(move || streamjob_worker::run(config, control));
    let result = worker.join().map_err(|_| anyhow::anyhow!("the worker thread panicked"))?;
    let _ = stop_http.send(());
    result.map_err(|error| anyhow::anyhow!("{error}"))
}

/// The process exits when the worker is stuck in one step far past that step's own bound (see
/// `streamjob_worker::stall`): the pod restarts and the new process reads again from the last
/// commit, which a stuck process would never reach.
fn watch_for_a_stuck_worker(stall: Arc<StallWatch>) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(1));
        if let Some(stuck) = stall.stalled() {
            tracing::error!(
                step = stuck.step,
                stuck_for = ?stuck.for_,
                bound = ?stuck.bound,
                "the worker is stuck in librdkafka and exits so that a fresh process takes over; \
                 nothing is lost: what was not committed is read again"
            );
            std::process::exit(STUCK_EXIT_CODE);
        }
    });
}
