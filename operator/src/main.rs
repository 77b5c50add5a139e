use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The StreamJob operator.
#[derive(Parser)]
#[command(name = "streamjob-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// Flags of `run`.
#[derive(clap::Args)]
struct RunArgs {
    /// Namespace to watch; repeat for several. Without it, all namespaces.
    #[arg(long = "namespace", env = "STREAMJOB_WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Worker image for jobs that name none.
    #[arg(long, env = "STREAMJOB_WORKER_IMAGE", default_value = streamjob_operator::DEFAULT_WORKER_IMAGE)]
    worker_image: String,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
    /// Elect one active replica through a coordination.k8s.io Lease.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "streamjob-operator-leader")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Seconds a leader's lease lasts without renewal: the longest hand-over time.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "STREAMJOB_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), for example `info` or `streamjob_operator=debug`.
    #[arg(long, default_value = "info", env = "STREAMJOB_LOG_LEVEL")]
    log_level: String,
}

impl RunArgs {
    fn into_options(self) -> streamjob_operator::run::RunOptions {
        streamjob_operator::run::RunOptions {
            namespaces: self.namespaces,
            worker_image: self.worker_image,
            metrics_addr: self.metrics_addr,
            leader_election: self.leader_election,
            lease_name: self.lease_name,
            lease_namespace: self.lease_namespace,
            lease_duration_seconds: self.lease_duration_seconds,
            identity: self.identity.unwrap_or_else(default_identity),
        }
    }
}

/// Flags of `dev`.
#[cfg(feature = "dev")]
#[derive(clap::Args)]
struct DevArgs {
    /// The StreamJob manifest to run.
    manifest: PathBuf,
    /// A Kafka broker to use instead of the embedded one (plaintext).
    #[arg(long)]
    bootstrap: Option<String>,
    /// Synthetic input rate plan: RATE[/s][@START[-END]],... for example
    /// `5000/s,50000/s@20s-40s` (a spike from 20 s to 40 s). Default 1000/s without --input.
    #[arg(long)]
    load: Option<String>,
    /// Replay a file of input lines (`-` for standard input), at the --load rate if given.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Stop after this long (for example 30s, 2m); without it, run until Ctrl-C.
    #[arg(long)]
    duration: Option<String>,
    /// Partitions of each source topic on the embedded broker.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=1000))]
    partitions: i32,
    /// Plain status lines even on a terminal.
    #[arg(long)]
    plain: bool,
    /// Log filter for the workers and Kafka clients, on standard error (tracing EnvFilter
    /// syntax, for example `warn` or `streamjob_worker=info`).
    #[arg(long, default_value = "error", env = "STREAMJOB_LOG_LEVEL")]
    log_level: String,
}

#[cfg(feature = "dev")]
impl DevArgs {
    fn into_options(self) -> Result<streamjob_operator::dev::DevOptions, String> {
        let load = self
            .load
            .as_deref()
            .map(streamjob_operator::dev::load::LoadPlan::parse)
            .transpose()
            .map_err(|e| e.to_string())?;
        let duration = self
            .duration
            .as_deref()
            .map(|d| streamjob_crds::duration::parse_duration(d).map_err(|e| format!("--duration: {e}")))
            .transpose()?;
        Ok(streamjob_operator::dev::DevOptions {
            manifest: self.manifest,
            bootstrap: self.bootstrap,
            load,
            input: self.input,
            duration,
            partitions: self.partitions,
            plain: self.plain,
        })
    }
}

#[cfg(feature = "dev")]
fn run_dev(args: DevArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(colour).with_writer(std::io::stderr).init();
    let options = match args.into_options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    match runtime.block_on(streamjob_operator::dev::run_dev(options, &mut stdout)) {
        Ok(summary) => {
            println!("{}", summary.render());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a StreamJob on this machine: embedded broker, synthetic load, in-process workers
    /// scaled by the autoscaler, and a live status screen.
    #[cfg(feature = "dev")]
    Dev(DevArgs),
    /// Run the operator against the cluster in KUBECONFIG or the in-cluster service account.
    Run(RunArgs),
    /// Print the StreamJob CustomResourceDefinition (YAML).
    Crd,
    /// Print the Kubernetes objects a StreamJob manifest becomes, without a cluster.
    Render {
        /// The StreamJob manifest (`-` for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Worker image for jobs that name none.
        #[arg(long, env = "STREAMJOB_WORKER_IMAGE", default_value = streamjob_operator::DEFAULT_WORKER_IMAGE)]
        worker_image: String,
    },
}

fn read_input(path: &PathBuf) -> std::io::Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path)
    }
}

fn init_tracing(format: LogFormat, level: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "streamjob-operator".to_owned());
    format!("{host}-{}", std::process::id())
}

/// glibc gives each thread that allocates an arena of its own, up to eight per core, and a
/// long-lived process keeps them all: two are plenty for a controller, whose heap is its caches.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets a tunable of the allocator; called before any thread starts.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            init_tracing(args.log_format, &args.log_level);
            let options = args.into_options();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("error: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(streamjob_operator::run::run(options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(%error, "operator stopped");
                    ExitCode::FAILURE
                }
            }
        }
        #[cfg(feature = "dev")]
        Command::Dev(args) => run_dev(args),
        Command::Crd => {
            print!("{}", streamjob_crds::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Render { file, worker_image } => {
            let manifests = match read_input(&file) {
                Ok(text) => text,
                Err(error) => {
                    eprintln!("error: cannot read {}: {error}", file.display());
                    return ExitCode::FAILURE;
                }
            };
            match streamjob_operator::render::render_manifests(&manifests, &worker_image) {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("error: {}: {errors}", file.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}
