//! The Kafka side of the worker: one consumer-group member, one producer, and the loop that
//! feeds the [`Engine`] and commits what it reports safe. This file holds what the parts share
//! (the state the loop and the rebalance callbacks both use, the limits); `run_loop.rs` is the
//! loop, `contexts.rs` the librdkafka callbacks, `group.rs` assignment and revocation,
//! `output.rs` the producers, `commit.rs` commits and rewinds, `clients.rs` the client
//! settings, `admin.rs` the repartition topic, `starts.rs` where assigned partitions start.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use streamjob_crds::capacity_report::CapacityReport;
use streamjob_crds::kafka::Cluster;
use streamjob_crds::StartFrom;
use streamjob_runtime::sync::lock;

use crate::busy_time::{self, BusyMeter};
use crate::config::WorkerConfig;
use crate::engine::{Commit, Destination, Engine, EngineSettings, Input, Output, Ticket, Totals};
use crate::metrics::{KindLabel, PartitionLabels, ReasonLabel, ResultLabel, WorkerMetrics};
use crate::offset_reset::{OffsetReset, PendingResets};
use crate::partition_end::{self, Start};
use crate::partition_start::HeldPartitions;
use crate::pipeline::CompiledPipeline;
use crate::repartition::source_id;
use crate::stall::StallWatch;
use crate::undeliverable::{DeliveryFailure, FailureKind};

mod admin;
mod clients;
mod commit;
mod contexts;
mod group;
mod limits;
mod output;
mod run_loop;
mod starts;

pub use clients::engine_settings;
pub(crate) use commit::commit_list;
pub use contexts::{DeliveryContext, GroupContext};
pub use run_loop::run;

const POLL_TIMEOUT: Duration = Duration::from_millis(100);
const TICK_INTERVAL: Duration = Duration::from_millis(50);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// One step of an abort: between steps the producers are polled for the reports it waits for.
const ABORT_STEP: Duration = Duration::from_millis(500);
/// One turn of the loop, a poll and the records it returned, should take no longer than this.
const LOOP_TURN_BOUND: Duration = Duration::from_secs(5);
/// How long a send waits for room in a full producer queue before it tries again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(10);
/// Records (or consumer errors) read between sending outputs and collecting delivery reports.
const READ_BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid pipeline: {0}")]
    Pipeline(#[from] crate::pipeline::CompileError),
    #[error("cannot create the Kafka {client}: {source}")]
    Client { client: &'static str, source: KafkaError },
    #[error("{what}: {source}")]
    Kafka { what: &'static str, source: KafkaError },
    #[error("stopped before the brokers at {0} could be reached")]
    Unreachable(String),
    #[error("cannot start a thread: {0}")]
    Thread(String),
}

/// Shared with whoever runs the worker: flags in, metrics out.
#[derive(Clone, Default)]
pub struct Control {
    /// Set to stop: drain, flush, commit, leave the group.
    pub shutdown: Arc<AtomicBool>,
    /// Set to stop at once without committing or leaving cleanly, as `kill -9` would (tests).
    pub abandon: Arc<AtomicBool>,
    /// True while the worker is a member of its group: set at each assignment (of no
    /// partitions too), cleared when it loses its assignment or stops.
    pub ready: Arc<AtomicBool>,
    pub metrics: Arc<WorkerMetrics>,
    pub totals: Arc<Totals>,
    /// The step the worker is in, for a watchdog that ends a worker stuck in librdkafka.
    pub stall: Arc<StallWatch>,
}

pub use streamjob_runtime::clock::now_ms;

type WorkerProducer = BaseProducer<DeliveryContext>;

/// What the loop and the rebalance callbacks share.
struct Shared {
    engine: Mutex<Engine>,
    producer: WorkerProducer,
    /// A second producer when the sink is on other brokers (at-least-once only).
    sink_producer: Option<WorkerProducer>,
    sink_topic: String,
    dead_letter_topic: Option<String>,
    repartition_topic: Option<String>,
    exactly_once: bool,
    start_from: StartFrom,
    abandoned: AtomicBool,
    /// Set once the worker is leaving: partitions offered now are not started.
    leaving: AtomicBool,
    metrics: Arc<WorkerMetrics>,
    /// Longest wait for acknowledgements before a commit (revocation, shutdown).
    flush_timeout: Duration,
    /// Where each assigned source partition started: its position until a record is read.
    starts: Mutex<HashMap<String, HashMap<i32, Start>>>,
    /// Assigned partitions whose start is not known yet: paused, not in the engine.
    held: Mutex<HeldPartitions>,
    /// The partitions whose cached high watermark is recent, from the last statistics.
    fresh_fetches: Mutex<HashMap<String, HashSet<i32>>>,
    pending_resets: PendingResets,
    totals: Arc<Totals>,
    ready: Arc<AtomicBool>,
    /// Who this worker is in its capacity reports.
    instance_id: String,
    busy: Mutex<BusyMeter>,
    /// Time spent waiting for room in a producer's queue since the loop last took it: not busy.
    queue_full_wait: Mutex<Duration>,
    /// Records on the broker not yet read, from the last statistics.
    unread: AtomicI64,
    stall: Arc<StallWatch>,
}

type WorkerConsumer = BaseConsumer<GroupContext>;
