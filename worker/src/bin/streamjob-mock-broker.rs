//! A Kafka-protocol broker for tests: librdkafka's mock cluster on real TCP ports.
//! Prints `bootstrap=<host:port,...>` on its first line, then serves until stdin closes or it
//! is signalled.

use std::io::{BufRead, Write};

use clap::Parser;
use streamjob_worker::mock_broker::{parse_topic, MockBroker};

#[derive(Parser)]
#[command(about = "librdkafka's mock Kafka cluster on local TCP ports, for tests")]
struct Args {
    /// Number of brokers.
    #[arg(long, default_value_t = 1)]
    brokers: i32,
    /// Topics to create, as name[:partitions] (6 partitions by default). Repeatable.
    #[arg(long = "topic", value_parser = parse_topic)]
    topics: Vec<(String, i32)>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let broker = MockBroker::start(args.brokers)?;
    for (topic, partitions) in &args.topics {
        broker.create_topic(topic, *partitions)?;
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "bootstrap={}", broker.bootstrap_servers())?;
    stdout.flush()?;
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
    Ok(())
}
