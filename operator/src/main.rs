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

#[derive(Subcommand)]
enum Command {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
