//! The Kafka side of the worker: one consumer-group member, one producer, and the loop that
//! feeds the [`Engine`] and commits what it reports safe.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
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
use streamjob_crds::kafka::connection_properties;
use streamjob_crds::StartFrom;
use streamjob_runtime::sync::lock;

use crate::config::WorkerConfig;
use crate::engine::{Commit, Destination, Engine, EngineSettings, Input, Output, Ticket, Totals};
use crate::group_protocol::{self, GroupProtocol, WorkerGroupSettings};
use crate::metrics::{KindLabel, PartitionLabels, ResultLabel, WorkerMetrics};
use crate::offset_reset::{OffsetReset, PendingResets};
use crate::partition_end::{self, Start};
use crate::pipeline::CompiledPipeline;
use crate::repartition::source_id;
use crate::undeliverable::{DeliveryFailure, FailureKind};

const POLL_TIMEOUT: Duration = Duration::from_millis(100);
const TICK_INTERVAL: Duration = Duration::from_millis(50);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// One step of an abort: between steps the producers are polled for the reports it waits for.
const ABORT_STEP: Duration = Duration::from_millis(500);
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
}

pub use streamjob_runtime::clock::now_ms;

/// Collects delivery reports; the loop hands them to the engine.
#[derive(Default)]
pub struct DeliveryContext {
    reports: Mutex<Vec<(Ticket, Result<(), DeliveryFailure>)>>,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_librdkafka("producer", level, facility, message);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Option<Ticket>>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Self::DeliveryOpaque) {
        let Some(ticket) = *ticket else {
            if let Err((error, _)) = result {
                tracing::warn!(%error, "a progress marker was not delivered; the next one replaces it");
            }
            return;
        };
        let outcome = result.as_ref().map(|_| ()).map_err(|(error, _)| failure_of(error));
        lock(&self.reports).push((ticket, outcome));
    }
}

/// What a produce error means for the record: whether a retry can deliver it.
fn failure_of(error: &KafkaError) -> DeliveryFailure {
    let kind = match error.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidRecord,
        ) => FailureKind::Record,
        Some(
            RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed,
        ) => FailureKind::Topic,
        _ => FailureKind::Retriable,
    };
    DeliveryFailure { error: error.to_string(), kind }
}

fn log_librdkafka(client: &str, level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            tracing::error!(client, facility, "{message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(client, facility, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(client, facility, "{message}"),
        RDKafkaLogLevel::Debug => tracing::debug!(client, facility, "{message}"),
    }
}

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
    /// The partitions whose cached high watermark is recent, from the last statistics.
    fresh_fetches: Mutex<HashMap<String, HashSet<i32>>>,
    pending_resets: PendingResets,
    totals: Arc<Totals>,
    ready: Arc<AtomicBool>,
}

pub struct GroupContext {
    shared: Arc<Shared>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        // librdkafka warns of a reset that an error caused (an offset out of range); the others
        // (no commit yet) are debug messages.
        let warning = !matches!(level, RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug);
        if warning && facility == "OFFSET" && message.contains("offset reset") {
            self.shared.count_offset_reset(message);
        }
        log_librdkafka("consumer", level, facility, message);
    }

    fn stats(&self, statistics: Statistics) {
        *lock(&self.shared.fresh_fetches) = partition_end::fresh_fetches(&statistics);
        for (topic, stats) in &statistics.topics {
            for (partition, partition_stats) in &stats.partitions {
                if *partition >= 0 && partition_stats.consumer_lag >= 0 {
                    let labels = PartitionLabels::new(topic, *partition);
                    self.shared.metrics.consumer_lag.get_or_create(&labels).set(partition_stats.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, error: RDKafkaRespErr, partitions: &mut TopicPartitionList) {
        if self.shared.abandoned.load(Ordering::SeqCst) {
            // As a crash would: hand the partitions back with nothing flushed or committed.
            let _ = match error {
                RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => consumer.incremental_assign(partitions),
                _ => consumer.incremental_unassign(partitions),
            };
            return;
        }
        match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.shared.assign(consumer, partitions),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.shared.revoke(consumer, partitions),
            other => tracing::error!(error = ?other, "rebalance failed"),
        }
    }
}

type WorkerConsumer = BaseConsumer<GroupContext>;

impl Shared {
    /// `message` is librdkafka's warning of a reset (see [`OffsetReset`]).
    fn count_offset_reset(&self, message: &str) {
        let reset = OffsetReset::parse(message);
        let (topic, partition) = reset.as_ref().map_or(("", -1), |r| (r.topic.as_str(), r.partition));
        self.metrics.offset_resets.get_or_create(&PartitionLabels::new(topic, partition)).inc();
        if let Some(reset) = &reset {
            self.pending_resets.record(reset);
        }
        let start_from = match self.start_from {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
        };
        tracing::warn!(
            topic,
            partition,
            start_from,
            detail = message,
            "a committed offset is out of range on the broker: reading goes on from the startFrom end"
        );
    }

    /// The first record after a reset tells how many records it jumped over.
    fn count_passed_over(&self, input: &Input) {
        let Some(count) = self.pending_resets.passed_over(input.topic, input.partition, input.offset) else {
            return;
        };
        let labels = PartitionLabels::new(input.topic, input.partition);
        self.metrics.records_passed_over_by_reset.get_or_create(&labels).inc_by(count);
        self.totals.passed_over_by_resets.fetch_add(count, Ordering::Relaxed);
        if count > 0 {
            tracing::warn!(
                topic = input.topic,
                partition = input.partition,
                records = count,
                "records were deleted by the broker before this job read them: they are not processed"
            );
        }
    }

    /// Starts each newly assigned partition at its committed offset, restoring the aggregating
    /// stage's checkpoint from the commit metadata. The repartition topic starts at its
    /// beginning when it has no commit, whatever `startFrom` says: partials are never skipped.
    fn assign(&self, consumer: &WorkerConsumer, partitions: &mut TopicPartitionList) {
        if self.leaving.load(Ordering::SeqCst) {
            // Others left too and this worker got their partitions while closing: it reads no
            // more records, so it takes them without state and hands them straight back.
            if let Err(error) = consumer.incremental_assign(partitions) {
                tracing::debug!(%error, "incremental assign while leaving failed");
            }
            return;
        }
        self.ready.store(true, Ordering::SeqCst);
        let committed = match consumer.committed_offsets(partitions.clone(), REQUEST_TIMEOUT) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(%error, "could not read committed offsets; starting from the broker's positions");
                partitions.clone()
            }
        };
        let mut engine = lock(&self.engine);
        let mut starts = lock(&self.starts);
        let mut assignment = TopicPartitionList::new();
        for element in committed.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let metadata = Some(element.metadata()).filter(|m| !m.is_empty());
            let offset = match element.offset() {
                Offset::Offset(offset) => Offset::Offset(offset),
                _ if Some(topic) == self.repartition_topic.as_deref() => Offset::Beginning,
                _ => match self.start_from {
                    StartFrom::Earliest => Offset::Beginning,
                    StartFrom::Latest => Offset::End,
                },
            };
            if let Err(error) = assignment.add_partition_offset(topic, partition, offset) {
                tracing::error!(%error, topic, partition, "cannot set the start offset");
            }
            let start = match offset {
                Offset::Offset(offset) => Start::Committed(offset),
                Offset::End => Start::End,
                _ => Start::Beginning,
            };
            starts.entry(topic.to_owned()).or_default().insert(partition, start);
            engine.assign(topic, partition, metadata);
            self.metrics.rebalances.get_or_create(&KindLabel { kind: "assigned".into() }).inc();
        }
        drop(starts);
        if let Err(error) = consumer.incremental_assign(&assignment) {
            tracing::error!(%error, "incremental assign failed");
        }
        tracing::info!(partitions = ?engine.assigned(), "partitions assigned");
    }

    /// Finishes the revoked partitions' work, commits, and forgets their state.
    fn revoke(&self, consumer: &WorkerConsumer, partitions: &TopicPartitionList) {
        if consumer.assignment_lost() {
            self.ready.store(false, Ordering::SeqCst);
        }
        let mut engine = lock(&self.engine);
        for element in partitions.elements() {
            engine.prepare_revoke(element.topic(), element.partition());
        }
        if let Err(error) = self.commit_now(consumer, &mut engine) {
            tracing::warn!(%error, "commit before revocation failed; nothing is lost: the new owner replays from the last commit");
        }
        for element in partitions.elements() {
            engine.revoke(element.topic(), element.partition());
            self.metrics.rebalances.get_or_create(&KindLabel { kind: "revoked".into() }).inc();
        }
        if let Err(error) = consumer.incremental_unassign(partitions) {
            tracing::error!(%error, "incremental unassign failed");
        }
        tracing::info!(partitions = ?engine.assigned(), "partitions revoked; still assigned");
    }

    /// Tells the engine which source partitions this worker has read to their end: only then
    /// can a partition become idle.
    fn observe_source_ends(&self, consumer: &WorkerConsumer, engine: &mut Engine) {
        if self.repartition_topic.is_none() {
            return;
        }
        let positions = match consumer.position() {
            Ok(positions) => positions,
            Err(error) => return tracing::debug!(%error, "no consumer positions"),
        };
        let starts = lock(&self.starts);
        let fresh = lock(&self.fresh_fetches);
        let now = now_ms();
        for element in positions.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let Some(start) = starts.get(topic).and_then(|partitions| partitions.get(&partition)) else {
                continue;
            };
            if Some(topic) == self.repartition_topic.as_deref() {
                continue;
            }
            let position = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            let watermarks = partition_end::cached_watermarks(consumer, topic, partition);
            let fetched_lately = fresh.get(topic).is_some_and(|partitions| partitions.contains(&partition));
            let at_end = fetched_lately && partition_end::read_to_end(position, *start, watermarks);
            engine.observe_end(topic, partition, at_end, now);
        }
    }

    fn producer_for(&self, destination: Destination) -> &WorkerProducer {
        match (destination, &self.sink_producer) {
            (Destination::Sink, Some(sink)) => sink,
            _ => &self.producer,
        }
    }

    fn producers(&self) -> impl Iterator<Item = &WorkerProducer> {
        std::iter::once(&self.producer).chain(self.sink_producer.iter())
    }

    /// Queues the engine's outputs in the producer, waiting while its queue is full.
    fn send_outputs(&self, engine: &mut Engine) {
        let mut outputs = engine.take_outputs();
        for output in outputs.drain(..) {
            self.send(engine, output);
        }
        engine.recycle_outputs(outputs);
    }

    fn send(&self, engine: &mut Engine, output: Output) {
        let topic = match output.destination {
            Destination::Sink => self.sink_topic.as_str(),
            Destination::DeadLetter => self.dead_letter_topic.as_deref().unwrap_or(self.sink_topic.as_str()),
            Destination::Repartition { .. } => self.repartition_topic.as_deref().unwrap_or(self.sink_topic.as_str()),
        };
        let producer = self.producer_for(output.destination);
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(output.ticket)).payload(&output.payload);
        if let Some(key) = &output.key {
            record = record.key(key.as_slice());
        }
        if !output.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(output.headers.len());
            for (name, value) in &output.headers {
                headers = headers.insert(Header { key: name, value: Some(value.as_bytes()) });
            }
            record = record.headers(headers);
        }
        if let Destination::Repartition { partition } = output.destination {
            record = record.partition(partition);
        }
        loop {
            match producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    producer.poll(Duration::from_millis(10));
                    self.deliver_reports(engine);
                }
                Err((error, returned)) => {
                    let ticket = *returned.delivery_opaque;
                    tracing::error!(%error, topic, "could not queue a record");
                    if let Some(ticket) = ticket {
                        engine.on_delivery(ticket, Err(failure_of(&error)), now_ms());
                    }
                    return;
                }
            }
        }
    }

    fn deliver_reports(&self, engine: &mut Engine) {
        let reports = std::mem::take(&mut *lock(&self.producer.context().reports));
        let sink_reports = self.sink_producer.as_ref().map(|p| std::mem::take(&mut *lock(&p.context().reports)));
        let now = now_ms();
        for (ticket, result) in reports.into_iter().chain(sink_reports.into_iter().flatten()) {
            engine.on_delivery(ticket, result, now);
        }
    }

    fn poll_producers(&self, engine: &mut Engine) {
        for producer in self.producers() {
            producer.poll(Duration::ZERO);
        }
        self.deliver_reports(engine);
    }

    /// Commits what is safe now: with at-least-once, after every output is acknowledged (the
    /// producers are flushed); with exactly-once, by committing the open transaction.
    fn commit_now(&self, consumer: &WorkerConsumer, engine: &mut Engine) -> Result<(), KafkaError> {
        engine.flush_all();
        self.send_outputs(engine);
        if self.exactly_once {
            return self.commit_transaction(consumer, engine);
        }
        for producer in self.producers() {
            if let Err(error) = producer.flush(self.flush_timeout) {
                tracing::warn!(%error, "flush did not finish; unacknowledged records stay uncommitted");
            }
        }
        self.deliver_reports(engine);
        self.commit_offsets(consumer, engine, CommitMode::Sync)
    }

    fn commit_offsets(
        &self,
        consumer: &WorkerConsumer,
        engine: &mut Engine,
        mode: CommitMode,
    ) -> Result<(), KafkaError> {
        let commits = engine.commits(true);
        if commits.is_empty() {
            return Ok(());
        }
        let list = commit_list(&commits)?;
        let result = consumer.commit(&list, mode);
        self.count_commit(&result);
        if result.is_ok() {
            engine.committed(&commits);
        }
        result
    }

    fn count_commit(&self, result: &Result<(), KafkaError>) {
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics.commits.get_or_create(&ResultLabel { result: label.into() }).inc();
    }

    fn commit_transaction(&self, consumer: &WorkerConsumer, engine: &mut Engine) -> Result<(), KafkaError> {
        let commits = engine.commits(false);
        let result = (|| {
            if !commits.is_empty() {
                let metadata = consumer.group_metadata().ok_or(KafkaError::ConsumerCommit(RDKafkaErrorCode::State))?;
                self.producer.send_offsets_to_transaction(&commit_list(&commits)?, &metadata, REQUEST_TIMEOUT)?;
            }
            self.producer.commit_transaction(REQUEST_TIMEOUT)
        })();
        self.count_commit(&result);
        self.deliver_reports(engine);
        match result {
            Ok(()) => {
                engine.committed(&commits);
                self.producer.begin_transaction()
            }
            Err(error) => {
                tracing::warn!(%error, "transaction failed; aborting and rewinding to the last commit");
                self.abort_and_rewind(consumer, engine)?;
                Err(error)
            }
        }
    }

    fn abort_and_rewind(&self, consumer: &WorkerConsumer, engine: &mut Engine) -> Result<(), KafkaError> {
        if self.exactly_once {
            self.abort_transaction(engine)?;
        }
        self.deliver_reports(engine);
        rewind(consumer, engine);
        if self.exactly_once {
            self.producer.begin_transaction()?;
        }
        Ok(())
    }

    /// Aborts the open transaction. librdkafka first waits for the delivery report of every
    /// message still outstanding, and those reports only come through `poll`: so it aborts in
    /// short steps and serves the reports in between (they belong to the aborted transaction;
    /// the rewind that follows drops their tickets). Aborting without polling times out, and
    /// the broker then aborts the transaction itself and fences this producer.
    fn abort_transaction(&self, engine: &mut Engine) -> Result<(), KafkaError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            match self.producer.abort_transaction(ABORT_STEP) {
                Err(KafkaError::Transaction(error)) if error.is_retriable() && Instant::now() < deadline => {
                    self.poll_producers(engine);
                }
                result => return result,
            }
        }
    }
}

pub(crate) fn commit_list(commits: &[Commit]) -> Result<TopicPartitionList, KafkaError> {
    let mut list = TopicPartitionList::new();
    for commit in commits {
        list.add_partition_offset(&commit.topic, commit.partition, Offset::Offset(commit.offset))?;
        if let (Some(metadata), Some(mut element)) =
            (&commit.metadata, list.find_partition(&commit.topic, commit.partition))
        {
            element.set_metadata(metadata.as_str());
        }
    }
    Ok(list)
}

/// Drops all state and reads every assigned partition again from its last commit.
fn rewind(consumer: &WorkerConsumer, engine: &mut Engine) {
    for (topic, partition, offset) in engine.rewind() {
        if let Err(error) = consumer.seek(&topic, partition, Offset::Offset(offset), REQUEST_TIMEOUT) {
            tracing::error!(%error, topic, partition, offset, "seek failed during rewind");
        }
    }
}

fn client_config(config: &WorkerConfig, bootstrap: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in
        connection_properties(bootstrap, &config.job.spec.source, config.credentials.as_ref(), config.ca.as_ref())
    {
        client.set(key, value);
    }
    client.set("client.id", format!("streamjob-worker-{}", config.instance_id));
    client.set_log_level(RDKafkaLogLevel::Warning);
    if let Ok(contexts) = std::env::var("STREAMJOB_LIBRDKAFKA_DEBUG") {
        client.set("debug", contexts).set_log_level(RDKafkaLogLevel::Debug);
    }
    client
}

fn create_producer(config: &WorkerConfig, bootstrap: &str, transactional: bool) -> Result<WorkerProducer, WorkerError> {
    let mut client = client_config(config, bootstrap);
    client.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5");
    if transactional {
        client.set("transactional.id", config.transactional_id());
    }
    client
        .create_with_context(DeliveryContext::default())
        .map_err(|source| WorkerError::Client { client: "producer", source })
}

fn create_consumer(config: &WorkerConfig, shared: Arc<Shared>) -> Result<WorkerConsumer, WorkerError> {
    let worker = WorkerGroupSettings {
        session_timeout: config.timings.session_timeout,
        static_membership: config.job.spec.source.static_membership,
    };
    let protocol =
        group_protocol::choose(config.group_protocol, worker, &client_config(config, &config.source_bootstrap));
    let mut client = client_config(config, &config.source_bootstrap);
    client
        .set("group.id", &config.consumer_group)
        .set("group.protocol", protocol.name())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Also how soon a partition whose leader went away stops counting as read to its end.
        .set("statistics.interval.ms", "1000")
        // librdkafka pauses a partition's fetching for a second once its local queue is above
        // queued.min.messages; a worker that drains that queue would then wait idle.
        .set("fetch.queue.backoff.ms", "10")
        .set("isolation.level", if config.exactly_once() { "read_committed" } else { "read_uncommitted" })
        // Where a committed offset the broker no longer has resumes (without it librdkafka
        // jumps to the end and skips what is left).
        .set(
            "auto.offset.reset",
            match config.job.spec.source.start_from {
                StartFrom::Earliest => "earliest",
                StartFrom::Latest => "latest",
            },
        );
    if protocol == GroupProtocol::Classic {
        // The consumer protocol has these on the brokers (group.consumer.*) and refuses them.
        // Members learn of a rebalance on a heartbeat, and a cooperative one has two rounds:
        // at most 250 ms each instead of a sixth of the session timeout (1.7 s at 10 s).
        client
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", config.timings.session_timeout.as_millis().to_string())
            .set("heartbeat.interval.ms", (config.timings.session_timeout.as_millis() / 6).clamp(100, 250).to_string());
    }
    if config.job.spec.source.static_membership {
        client.set("group.instance.id", &config.instance_id);
    }
    client
        .create_with_context(GroupContext { shared })
        .map_err(|source| WorkerError::Client { client: "consumer", source })
}

/// The engine's settings for `config`'s job; `repartition` is the repartition topic and its
/// partition count, for windowed jobs.
pub fn engine_settings(config: &WorkerConfig, repartition: Option<(String, i32)>) -> EngineSettings {
    EngineSettings {
        source_format: config.job.spec.source.format,
        sink_format: config.job.spec.sink.format,
        dead_letter: config.job.spec.sink.dead_letter_topic.is_some(),
        repartition,
        flush_interval_ms: config.timings.flush_interval.as_millis() as i64,
        idle_timeout_ms: config.timings.idle_timeout.as_millis() as i64,
        max_partials: 100_000,
    }
}

/// Runs the worker until `control.shutdown` (drain, commit, leave) or `control.abandon`.
pub fn run(config: WorkerConfig, control: Control) -> Result<(), WorkerError> {
    let pipeline = CompiledPipeline::compile(&config.job.spec.pipeline)?;
    let windowed = pipeline.window.is_some();
    let (repartition, sources) = if windowed {
        let (partitions, sources) = ensure_repartition_topic(&config, &control)?;
        (Some((config.repartition_topic(), partitions)), sources)
    } else {
        (None, Vec::new())
    };
    let settings = engine_settings(&config, repartition.clone());
    let mut engine = Engine::new(settings, pipeline, control.metrics.clone(), control.totals.clone());
    engine.expect_sources(sources);
    let exactly_once = config.exactly_once();
    let producer = create_producer(&config, &config.source_bootstrap, exactly_once)?;
    let sink_producer = if config.sink_bootstrap != config.source_bootstrap {
        Some(create_producer(&config, &config.sink_bootstrap, false)?)
    } else {
        None
    };
    if exactly_once {
        producer
            .init_transactions(REQUEST_TIMEOUT)
            .map_err(|source| WorkerError::Kafka { what: "cannot start transactions", source })?;
        producer
            .begin_transaction()
            .map_err(|source| WorkerError::Kafka { what: "cannot begin a transaction", source })?;
    }
    let shared = Arc::new(Shared {
        engine: Mutex::new(engine),
        producer,
        sink_producer,
        sink_topic: config.job.spec.sink.topic.clone(),
        dead_letter_topic: config.job.spec.sink.dead_letter_topic.clone(),
        repartition_topic: repartition.map(|(topic, _)| topic),
        exactly_once,
        start_from: config.job.spec.source.start_from,
        abandoned: AtomicBool::new(false),
        leaving: AtomicBool::new(false),
        metrics: control.metrics.clone(),
        flush_timeout: config.timings.shutdown_timeout,
        starts: Mutex::default(),
        fresh_fetches: Mutex::default(),
        pending_resets: PendingResets::default(),
        totals: control.totals.clone(),
        ready: control.ready.clone(),
    });
    let consumer = create_consumer(&config, shared.clone())?;
    let mut topics: Vec<&str> = config.job.spec.source.topics.iter().map(String::as_str).collect();
    if let Some(topic) = &shared.repartition_topic {
        topics.push(topic);
    }
    consumer.subscribe(&topics).map_err(|source| WorkerError::Kafka { what: "cannot subscribe", source })?;
    tracing::info!(group = %config.consumer_group, ?topics, instance = %config.instance_id, exactly_once, "worker started");
    let result = consume_until_stopped(&config, &control, &shared, &consumer);
    control.ready.store(false, Ordering::SeqCst);
    if control.abandon.load(Ordering::SeqCst) {
        shared.abandoned.store(true, Ordering::SeqCst);
        tracing::warn!("abandoned without committing");
        return result;
    }
    shared.leaving.store(true, Ordering::SeqCst);
    let mut engine = lock(&shared.engine);
    if let Err(error) = shared.commit_now(&consumer, &mut engine) {
        tracing::warn!(%error, "final commit failed; nothing is lost: the next owner replays from the last commit");
    }
    drop(engine);
    drop(consumer);
    tracing::info!("worker stopped: drained, committed and left the group");
    result
}

fn consume_until_stopped(
    config: &WorkerConfig,
    control: &Control,
    shared: &Shared,
    consumer: &WorkerConsumer,
) -> Result<(), WorkerError> {
    let mut last_tick = Instant::now();
    let mut last_commit = Instant::now();
    while !control.shutdown.load(Ordering::Relaxed) && !control.abandon.load(Ordering::Relaxed) {
        read_batch(shared, consumer);
        let mut engine = lock(&shared.engine);
        let now = Instant::now();
        if now - last_tick >= TICK_INTERVAL {
            last_tick = now;
            shared.observe_source_ends(consumer, &mut engine);
            engine.on_tick(now_ms());
        }
        if engine.has_outputs() {
            shared.send_outputs(&mut engine);
        }
        shared.poll_producers(&mut engine);
        if let Some(failure) = engine.failure().map(str::to_owned) {
            tracing::error!(error = %failure, "a record was not delivered; rewinding to the last commit");
            for producer in shared.producers() {
                let _ = producer.flush(REQUEST_TIMEOUT);
            }
            shared.deliver_reports(&mut engine);
            if let Err(error) = shared.abort_and_rewind(consumer, &mut engine) {
                return Err(WorkerError::Kafka { what: "cannot rewind", source: error });
            }
        }
        if now - last_commit >= config.timings.commit_interval {
            last_commit = now;
            let result = if shared.exactly_once {
                shared.commit_now(consumer, &mut engine)
            } else {
                shared.commit_offsets(consumer, &mut engine, CommitMode::Async)
            };
            if let Err(error) = result {
                if is_fatal(&error) {
                    return Err(WorkerError::Kafka { what: "fatal transaction error", source: error });
                }
                tracing::warn!(%error, "commit failed; retrying at the next interval");
            }
        }
    }
    Ok(())
}

/// Reads what the consumer has ready, up to [`READ_BATCH`] records or errors, waiting up to
/// [`POLL_TIMEOUT`] for the first. The engine is locked per record, never across a poll: a
/// poll may run the rebalance callback, which locks it too.
fn read_batch(shared: &Shared, consumer: &WorkerConsumer) {
    let mut next = consumer.poll(POLL_TIMEOUT);
    let now_ms = now_ms();
    let mut events = 0;
    while let Some(result) = next.take() {
        match result {
            Ok(message) => {
                let input = Input {
                    topic: message.topic(),
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key(),
                    payload: message.payload(),
                    timestamp_ms: message.timestamp().to_millis(),
                };
                shared.count_passed_over(&input);
                lock(&shared.engine).on_input(&input, now_ms);
            }
            Err(KafkaError::PartitionEOF(_)) => {}
            Err(error) => tracing::warn!(%error, "consumer error; librdkafka retries"),
        }
        events += 1;
        if events < READ_BATCH {
            next = consumer.poll(Duration::ZERO);
        }
    }
}

fn is_fatal(error: &KafkaError) -> bool {
    matches!(error, KafkaError::Transaction(e) if e.is_fatal())
}

/// Makes sure `<consumerGroup>-repartition` exists with as many partitions as the source's
/// largest topic, and returns its partition count and the source partitions.
fn ensure_repartition_topic(config: &WorkerConfig, control: &Control) -> Result<(i32, Vec<String>), WorkerError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;

    let topic = config.repartition_topic();
    let mut client = client_config(config, &config.source_bootstrap);
    // Else asking for the topic's metadata creates it, with the broker's default partitions.
    client.set("allow.auto.create.topics", "false");
    let admin: AdminClient<DefaultClientContext> =
        client.create().map_err(|source| WorkerError::Client { client: "admin client", source })?;
    let mut backoff = Duration::from_millis(200);
    loop {
        if control.shutdown.load(Ordering::Relaxed) || control.abandon.load(Ordering::Relaxed) {
            return Err(WorkerError::Unreachable(config.source_bootstrap.clone()));
        }
        match partition_counts(admin.inner(), config, &topic) {
            Ok((sources, Some(existing))) => return Ok((existing, sources)),
            Ok((sources, None)) => {
                let source_partitions = largest_topic(&sources);
                tracing::info!(topic, partitions = source_partitions, "creating the repartition topic");
                let new_topic = NewTopic::new(&topic, source_partitions, TopicReplication::Fixed(-1));
                let created = futures::executor::block_on(admin.create_topics([&new_topic], &AdminOptions::new()));
                if let Err(error) = created.map_err(|e| e.to_string()).and_then(|results| {
                    results.into_iter().try_for_each(|r| match r {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => Ok(()),
                        Err((_, code)) => Err(code.to_string()),
                    })
                }) {
                    tracing::warn!(topic, %error, "could not create the repartition topic; relying on the broker's automatic creation");
                    produce_to_create(config, &topic)?;
                }
            }
            Err(error) => {
                tracing::warn!(%error, bootstrap = %config.source_bootstrap, "brokers not reachable yet; retrying")
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// The source partitions (as [`source_id`]s), and the repartition topic's partition count if
/// it exists.
fn partition_counts<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    config: &WorkerConfig,
    repartition_topic: &str,
) -> Result<(Vec<String>, Option<i32>), KafkaError> {
    let mut sources = Vec::new();
    for topic in &config.job.spec.source.topics {
        let metadata = client.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
        let before = sources.len();
        for found in metadata.topics().iter().filter(|t| t.error().is_none()) {
            sources.extend(found.partitions().iter().map(|p| source_id(topic, p.id())));
        }
        if sources.len() == before {
            return Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition));
        }
    }
    let metadata = client.fetch_metadata(Some(repartition_topic), REQUEST_TIMEOUT)?;
    let existing = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32)
        .next();
    Ok((sources, existing))
}

/// The partition count of the largest topic among `sources`.
fn largest_topic(sources: &[String]) -> i32 {
    let mut counts: HashMap<&str, i32> = HashMap::new();
    for topic in sources.iter().filter_map(|id| id.rsplit_once('/')).map(|(topic, _)| topic) {
        *counts.entry(topic).or_default() += 1;
    }
    counts.into_values().max().unwrap_or(1)
}

/// Brokers without the CreateTopics API (librdkafka's mock cluster) create a topic on first use.
fn produce_to_create(config: &WorkerConfig, topic: &str) -> Result<(), WorkerError> {
    let mut client = client_config(config, &config.source_bootstrap);
    client.set("allow.auto.create.topics", "true");
    let consumer: BaseConsumer = client
        .set("group.id", "streamjob-topic-probe")
        .create()
        .map_err(|source| WorkerError::Client { client: "consumer", source })?;
    let _ = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT);
    Ok(())
}
