//! The consumer-group side: partitions assigned and revoked, offset resets, and which source
//! partitions have been read to their end.

use super::starts::{Answer, Resolved, StartReader};
use super::*;

impl Shared {
    /// `message` is librdkafka's warning of a reset (see [`OffsetReset`]).
    pub(super) fn count_offset_reset(&self, message: &str) {
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
    pub(super) fn count_passed_over(&self, input: &Input) {
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

    /// Holds each newly assigned partition (assigned and paused) until its start is read (see
    /// `starts.rs`): no record is read from it before then.
    pub(super) fn assign(&self, consumer: &WorkerConsumer, partitions: &mut TopicPartitionList) {
        if self.leaving.load(Ordering::SeqCst) {
            // Others left too and this worker got their partitions while closing: it reads no
            // more records, so it takes them without state and hands them straight back.
            if let Err(error) = consumer.incremental_assign(partitions) {
                tracing::debug!(%error, "incremental assign while leaving failed");
            }
            return;
        }
        self.ready.store(true, Ordering::SeqCst);
        let mut assignment = TopicPartitionList::new();
        let mut held = lock(&self.held);
        let now = now_ms();
        for element in partitions.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            // A concrete offset, never a logical one (see `pause_before_assigning`): nothing is
            // fetched from it, the partition being paused, and it is sought to its start before
            // it is resumed.
            if let Err(error) = assignment.add_partition_offset(topic, partition, Offset::Offset(0)) {
                tracing::error!(%error, topic, partition, "cannot add the partition to the assignment");
            }
            held.hold(topic, partition, now);
            self.metrics.rebalances.get_or_create(&KindLabel { kind: "assigned".into() }).inc();
        }
        self.metrics.held_partitions.set(held.len() as i64);
        drop(held);
        pause_before_assigning(consumer, &assignment, &self.stall);
        if let Err(error) = consumer.incremental_assign(&assignment) {
            tracing::error!(%error, "incremental assign failed");
        }
        // Again: a partition the client did not know before its assignment is paused now.
        if let Err(error) = consumer.pause(&assignment) {
            tracing::error!(%error, "cannot pause the assigned partitions until their start is known");
        }
        tracing::info!(partitions = assignment.count(), "partitions assigned; reading where each starts");
    }

    /// Applies the starts the reader found: seek, resume, and hand the partition to the engine
    /// with its commit metadata. Asks for the held partitions whose retry is due.
    pub(super) fn serve_starts(&self, consumer: &WorkerConsumer, reader: &StartReader, paused: bool) {
        for answer in reader.answers() {
            match answer {
                Answer::Sources(ids) => lock(&self.engine).expect_sources(ids),
                Answer::Starts(starts) => {
                    for ((topic, partition, generation), outcome) in starts {
                        self.apply_start(consumer, &topic, partition, generation, outcome, paused);
                    }
                }
            }
        }
        let mut held = lock(&self.held);
        self.metrics.held_partitions.set(held.len() as i64);
        let due = held.due(now_ms());
        drop(held);
        if !due.is_empty() {
            reader.ask(due);
        }
    }

    fn apply_start(
        &self,
        consumer: &WorkerConsumer,
        topic: &str,
        partition: i32,
        generation: u64,
        outcome: Result<Resolved, String>,
        paused: bool,
    ) {
        let now = now_ms();
        let resolved = match outcome {
            Ok(resolved) => resolved,
            Err(error) => {
                let Some(still) = lock(&self.held).failed(topic, partition, generation, &error, now) else {
                    return;
                };
                self.metrics.partition_start_retries.inc();
                if still.failures == 1 || still.failures % 10 == 0 {
                    tracing::warn!(topic, partition, %error, failures = still.failures,
                        held_for_ms = still.held_for_ms, retry_in_ms = still.retry_in_ms,
                        "partition held: its committed offset cannot be read yet, so it is not read \
                         (never started from startFrom instead); retrying");
                }
                return;
            }
        };
        let mut one = TopicPartitionList::new();
        one.add_partition(topic, partition);
        if !lock(&self.held).contains(topic, partition) {
            return;
        }
        if let Err(error) = consumer.seek(topic, partition, Offset::Offset(resolved.offset), REQUEST_TIMEOUT) {
            lock(&self.held).retry_soon(topic, partition, generation, &format!("seek failed: {error}"), now);
            return;
        }
        let Some(held_for_ms) = lock(&self.held).release(topic, partition, generation, now) else {
            return;
        };
        let mut engine = lock(&self.engine);
        lock(&self.starts).entry(topic.to_owned()).or_default().insert(partition, Start::Committed(resolved.offset));
        engine.assign(topic, partition, resolved.metadata.as_deref());
        if Some(topic) != self.repartition_topic.as_deref() {
            engine.started_at(topic, partition, resolved.offset);
        }
        drop(engine);
        if !paused {
            if let Err(error) = consumer.resume(&one) {
                tracing::error!(%error, topic, partition, "cannot resume the partition");
            }
        }
        let level_warn = held_for_ms >= 5_000;
        if level_warn {
            tracing::warn!(
                topic,
                partition,
                offset = resolved.offset,
                start = resolved.how,
                held_for_ms,
                "partition started after being held"
            );
        } else {
            tracing::info!(topic, partition, offset = resolved.offset, start = resolved.how, "partition started");
        }
    }

    /// Finishes the revoked partitions' work, commits, and forgets their state.
    pub(super) fn revoke(&self, consumer: &WorkerConsumer, partitions: &TopicPartitionList) {
        if consumer.assignment_lost() {
            self.ready.store(false, Ordering::SeqCst);
        }
        let mut held = lock(&self.held);
        for element in partitions.elements() {
            held.forget(element.topic(), element.partition());
        }
        self.metrics.held_partitions.set(held.len() as i64);
        drop(held);
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
    pub(super) fn observe_source_ends(&self, consumer: &WorkerConsumer, engine: &mut Engine) {
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
}

/// How long the metadata of a topic with partitions the client does not know is waited for.
const METADATA_WAIT: Duration = Duration::from_secs(5);

/// Pauses the partitions about to be assigned, before the assignment: the client then never
/// fetches from them before their start is known, and never looks up where a logical offset
/// is. That matters: librdkafka answers a seek made while it looks up a logical start offset
/// (`Offset::End`, say) by dropping the lookup's answer as outdated and looking the logical
/// offset up again, 500 ms later, after the seek; the partition then jumps from the sought
/// start to the end, and the records between are never read (the cause of the lost word
/// counts with held partitions: 'outdated offset response: (re)starting offset query timer for
/// offset END' in its debug log). A partition the client does not know yet (one added to its
/// topic since its last metadata) cannot be paused: the topic's metadata is read first, which
/// makes it known.
fn pause_before_assigning(consumer: &WorkerConsumer, assignment: &TopicPartitionList, stall: &StallWatch) {
    // librdkafka marks in the list each partition it does not know.
    let unknown = |list: &TopicPartitionList| -> Vec<(String, i32)> {
        let elements = list.elements();
        elements.iter().filter(|e| e.error().is_err()).map(|e| (e.topic().to_owned(), e.partition())).collect()
    };
    let list = assignment.clone();
    if let Err(error) = consumer.pause(&list) {
        return tracing::warn!(%error, "cannot pause the partitions before assigning them");
    }
    let missing = unknown(&list);
    if missing.is_empty() {
        return;
    }
    let mut topics: Vec<&str> = missing.iter().map(|(topic, _)| topic.as_str()).collect();
    topics.dedup();
    for topic in topics {
        stall.enter("reading the metadata of a topic with new partitions", METADATA_WAIT);
        if let Err(error) = consumer.fetch_metadata(Some(topic), METADATA_WAIT) {
            tracing::warn!(%error, topic, "cannot read the metadata of a topic with new partitions");
        }
    }
    let list = assignment.clone();
    if let Err(error) = consumer.pause(&list) {
        return tracing::warn!(%error, "cannot pause the partitions before assigning them");
    }
    for (topic, partition) in unknown(&list) {
        tracing::warn!(topic, partition, "a partition the client does not know yet: paused only once assigned");
    }
}
