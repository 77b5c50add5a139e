//! The worker's life: start the clients, consume until stopped, drain and commit.

use super::admin::ensure_repartition_topic;
use super::clients::{create_consumer, create_producer};
use super::limits::read_record_limits;
use super::starts::StartReader;
use super::*;
use crate::sink_refusal::{SinkRefusal, Step};

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
    let reader = StartReader::start(&config, windowed.then(|| sources.clone()))?;
    engine.expect_sources(sources);
    let limits = read_record_limits(&config);
    engine.limit_record_sizes(limits);
    let fingerprint = streamjob_crds::fingerprint::pipeline_fingerprint(&config.job.spec);
    engine.set_pipeline_fingerprint(fingerprint.unwrap_or(0));
    if let Some(fingerprint) = fingerprint {
        tracing::info!(pipeline = %streamjob_crds::fingerprint::fingerprint_label(Some(fingerprint)), "pipeline fingerprint: partials of any other are discarded");
    }
    let exactly_once = config.exactly_once();
    let separate_sink = config.sink_bootstrap != config.source_bootstrap;
    let main_limits = if separate_sink { vec![limits.dead_letter] } else { vec![limits.sink, limits.dead_letter] };
    let producer = create_producer(&config, Cluster::Source, exactly_once, &main_limits)?;
    let sink_producer =
        if separate_sink { Some(create_producer(&config, Cluster::Sink, false, &[limits.sink])?) } else { None };
    if exactly_once {
        control.stall.enter("init_transactions", REQUEST_TIMEOUT);
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
        held: Mutex::default(),
        fresh_fetches: Mutex::default(),
        pending_resets: PendingResets::default(),
        totals: control.totals.clone(),
        ready: control.ready.clone(),
        instance_id: config.instance_id.clone(),
        busy: Mutex::new(BusyMeter::new(now_ms())),
        queue_full_wait: Mutex::default(),
        unread: AtomicI64::new(0),
        stall: control.stall.clone(),
    });
    let consumer = create_consumer(&config, shared.clone())?;
    let mut topics: Vec<&str> = config.job.spec.source.topics.iter().map(String::as_str).collect();
    if let Some(topic) = &shared.repartition_topic {
        topics.push(topic);
    }
    consumer.subscribe(&topics).map_err(|source| WorkerError::Kafka { what: "cannot subscribe", source })?;
    tracing::info!(group = %config.consumer_group, ?topics, instance = %config.instance_id, exactly_once, "worker started");
    let result = consume_until_stopped(&config, &control, &shared, &consumer, &reader);
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
    shared.stall.enter("closing the consumer", shared.flush_timeout);
    leave_group(&consumer, shared.flush_timeout);
    drop(consumer);
    tracing::info!("worker stopped: drained, committed and left the group");
    result
}

/// Leaves the group before the consumer is closed: unsubscribes and serves the revocation (it
/// commits and unassigns, see `Shared::revoke`) until nothing is assigned. Closing a cooperative
/// consumer that still holds partitions while a rebalance is under way can hang in librdkafka
/// (confluentinc/librdkafka#4527; seen here as a `dev` whose worker never stopped, blocked in
/// `incremental_unassign` inside the close). A record a poll returns now is not processed and
/// not committed: the partition's next owner reads it.
fn leave_group(consumer: &WorkerConsumer, timeout: Duration) {
    consumer.unsubscribe();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match consumer.assignment() {
            Ok(assignment) if assignment.count() > 0 => {}
            _ => return,
        }
        let _ = consumer.poll(Duration::from_millis(100));
    }
    tracing::warn!("partitions still assigned {timeout:?} after unsubscribing; closing the consumer anyway");
}

fn consume_until_stopped(
    config: &WorkerConfig,
    control: &Control,
    shared: &Shared,
    consumer: &WorkerConsumer,
    reader: &StartReader,
) -> Result<(), WorkerError> {
    let mut last_tick = Instant::now();
    let mut last_commit = Instant::now();
    let mut refusal = Refusal::default();
    while !control.shutdown.load(Ordering::Relaxed) && !control.abandon.load(Ordering::Relaxed) {
        let turn = Instant::now();
        shared.stall.enter("reading and processing records", LOOP_TURN_BOUND);
        shared.serve_starts(consumer, reader, refusal.state.backing_off());
        let (read_busy, source_records) = read_batch(shared, consumer);
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
        shared.count_busy(read_busy + now.elapsed(), turn.elapsed(), source_records);
        if let Some(reason) = engine.sink_refused().map(str::to_owned) {
            refusal.refused(shared, consumer, &mut engine, &reason);
        } else if let Some(failure) = engine.failure().map(str::to_owned) {
            tracing::error!(error = %failure, "a record was not delivered; rewinding to the last commit");
            for producer in shared.producers() {
                shared.stall.enter("flushing before a rewind", REQUEST_TIMEOUT);
                let _ = producer.flush(REQUEST_TIMEOUT);
            }
            shared.deliver_reports(&mut engine);
            if let Err(error) = shared.abort_and_rewind(consumer, &mut engine) {
                return Err(WorkerError::Kafka { what: "cannot rewind", source: error });
            }
        }
        if refusal.tick(shared, consumer, &mut engine, control)? {
            continue;
        }
        if now - last_commit >= config.timings.commit_interval {
            last_commit = now;
            shared.advance_past_markers(consumer, &mut engine);
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

/// The loop's side of a sink the broker refuses (see [`crate::sink_refusal`]).
#[derive(Default)]
struct Refusal {
    state: SinkRefusal,
    /// Records the sink had acknowledged when the partitions were last resumed.
    out_at_resume: u64,
    /// The reason the metric shows now.
    shown: Option<String>,
}

impl Refusal {
    /// The sink refused a record: pause every partition for the back-off (the failure stays
    /// set, so nothing is committed meanwhile).
    fn refused(&mut self, shared: &Shared, consumer: &WorkerConsumer, engine: &mut Engine, reason: &str) {
        let Step::Pause { backoff_ms, first } = self.state.refused(reason, now_ms()) else {
            return;
        };
        tracing::warn!(sink = %shared.sink_topic, reason, backoff_ms, first,
            "the broker refuses the sink topic: pausing, then reading again from the last commit; \
             nothing is lost, and the worker reports not ready meanwhile");
        shared.metrics.delivery_errors.inc();
        if let Err(error) = consumer.pause(&engine_assignment(engine)) {
            tracing::error!(%error, "cannot pause the partitions");
        }
        self.show(shared);
    }

    /// Resumes once the back-off is over (after a rewind), and ends the refusal when the sink
    /// takes records again. True while backing off: the turn does nothing more.
    fn tick(
        &mut self,
        shared: &Shared,
        consumer: &WorkerConsumer,
        engine: &mut Engine,
        control: &Control,
    ) -> Result<bool, WorkerError> {
        if self.shown.is_none() {
            return Ok(false);
        }
        let out = control.totals.records_out.load(Ordering::Relaxed);
        if out > self.out_at_resume && !self.state.backing_off() {
            self.state.accepted();
        }
        if self.state.tick(now_ms()) == Step::Resume {
            for producer in shared.producers() {
                shared.stall.enter("flushing before a rewind", REQUEST_TIMEOUT);
                let _ = producer.flush(REQUEST_TIMEOUT);
            }
            shared.deliver_reports(engine);
            shared
                .abort_and_rewind(consumer, engine)
                .map_err(|source| WorkerError::Kafka { what: "cannot rewind", source })?;
            self.out_at_resume = control.totals.records_out.load(Ordering::Relaxed);
            if let Err(error) = consumer.resume(&engine_assignment(engine)) {
                tracing::error!(%error, "cannot resume the partitions");
            }
            tracing::info!(sink = %shared.sink_topic, "back-off over: sending again from the last commit");
        }
        self.show(shared);
        Ok(self.state.backing_off())
    }

    /// The metric and `/readyz` follow the state.
    fn show(&mut self, shared: &Shared) {
        let now = self.state.reason().map(str::to_owned);
        if now == self.shown {
            return;
        }
        if let Some(old) = &self.shown {
            shared.metrics.sink_refused.get_or_create(&ReasonLabel { reason: label(old) }).set(0);
        }
        if let Some(reason) = &now {
            shared.metrics.sink_refused.get_or_create(&ReasonLabel { reason: label(reason) }).set(1);
        } else {
            tracing::info!(sink = %shared.sink_topic, "the sink takes records again");
        }
        *lock(&shared.metrics.not_ready_because) =
            now.as_ref().map(|reason| format!("the broker refuses the sink topic {}: {reason}", shared.sink_topic));
        self.shown = now;
    }
}

/// A reason as a metric label: short, one line.
fn label(reason: &str) -> String {
    reason.lines().next().unwrap_or_default().chars().take(120).collect()
}

/// The engine's partitions, for a pause or resume (held partitions stay paused).
fn engine_assignment(engine: &Engine) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (topic, partition) in engine.assigned() {
        list.add_partition(&topic, partition);
    }
    list
}

/// Reads what the consumer has ready, up to [`READ_BATCH`] records or errors, waiting up to
/// [`POLL_TIMEOUT`] for the first. The engine is locked per record, never across a poll: a
/// poll may run the rebalance callback, which locks it too. Returns the time spent on the
/// records (not the wait for the first) and how many came from the source topics.
fn read_batch(shared: &Shared, consumer: &WorkerConsumer) -> (Duration, u64) {
    let mut next = consumer.poll(POLL_TIMEOUT);
    let started = Instant::now();
    let now_ms = now_ms();
    let mut events = 0;
    let mut source_records = 0;
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
                if Some(input.topic) != shared.repartition_topic.as_deref() {
                    source_records += 1;
                }
            }
            Err(KafkaError::PartitionEOF(_)) => {}
            Err(error) => tracing::warn!(%error, "consumer error; librdkafka retries"),
        }
        events += 1;
        if events < READ_BATCH {
            next = consumer.poll(Duration::ZERO);
        }
    }
    (started.elapsed(), source_records)
}

fn is_fatal(error: &KafkaError) -> bool {
    matches!(error, KafkaError::Transaction(e) if e.is_fatal())
}
