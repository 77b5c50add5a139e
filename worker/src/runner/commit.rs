//! Commits (offsets, or the open transaction), with this worker's capacity report in the
//! source partitions' metadata; abort and rewind.

use super::*;

impl Shared {
    /// Commits what is safe now: with at-least-once, after every output is acknowledged (the
    /// producers are flushed); with exactly-once, by committing the open transaction.
    pub(super) fn commit_now(&self, consumer: &WorkerConsumer, engine: &mut Engine) -> Result<(), KafkaError> {
        engine.flush_all();
        self.send_outputs(engine);
        if self.exactly_once {
            return self.commit_transaction(consumer, engine);
        }
        for producer in self.producers() {
            self.stall.enter("flushing the producers before a commit", self.flush_timeout);
            if let Err(error) = producer.flush(self.flush_timeout) {
                tracing::warn!(%error, "flush did not finish; unacknowledged records stay uncommitted");
            }
        }
        self.deliver_reports(engine);
        self.commit_offsets(consumer, engine, CommitMode::Sync)
    }

    /// Moves each partition's progress to the consumer's position, past the transaction
    /// markers (and aborted records) the consumer never returns: see [`Engine::passed_to`].
    pub(super) fn advance_past_markers(&self, consumer: &WorkerConsumer, engine: &mut Engine) {
        let positions = match consumer.position() {
            Ok(positions) => positions,
            Err(error) => return tracing::debug!(%error, "no consumer positions"),
        };
        for element in positions.elements() {
            if let Offset::Offset(position) = element.offset() {
                engine.passed_to(element.topic(), element.partition(), position);
            }
        }
    }

    pub(super) fn commit_offsets(
        &self,
        consumer: &WorkerConsumer,
        engine: &mut Engine,
        mode: CommitMode,
    ) -> Result<(), KafkaError> {
        let commits = engine.commits(true);
        if commits.is_empty() {
            return Ok(());
        }
        let list = self.commit_list(&commits)?;
        self.stall.enter("committing offsets", REQUEST_TIMEOUT);
        let result = consumer.commit(&list, mode);
        self.count_commit(&result);
        if result.is_ok() {
            engine.committed(&commits);
        }
        result
    }

    /// The commit of `commits`, each source partition's carrying this worker's capacity report
    /// for the operator's autoscaler (the aggregating stage's partitions carry its checkpoint).
    pub(super) fn commit_list(&self, commits: &[Commit]) -> Result<TopicPartitionList, KafkaError> {
        let list = commit_list(commits)?;
        let Some(report) = self.capacity_report() else { return Ok(list) };
        for commit in commits.iter().filter(|c| c.metadata.is_none()) {
            if Some(commit.topic.as_str()) == self.repartition_topic.as_deref() {
                continue;
            }
            if let Some(mut element) = list.find_partition(&commit.topic, commit.partition) {
                element.set_metadata(report.as_str());
            }
        }
        Ok(list)
    }

    /// This worker's true rate now, as commit metadata, also shown in its metrics.
    pub(super) fn capacity_report(&self) -> Option<String> {
        let (at_ms, rate) = lock(&self.busy).latest(now_ms())?;
        self.metrics.records_per_busy_second.set(rate.records_per_busy_second);
        self.metrics.busy_share.set(rate.busy_share);
        let report = CapacityReport {
            worker: self.instance_id.clone(),
            records_per_busy_second: rate.records_per_busy_second,
            busy_share: rate.busy_share,
            at_ms,
        };
        Some(report.encode())
    }

    /// One turn of the loop: `busy` on records and outputs, `turn` the whole turn (waits
    /// included), `source_records` read in it. While the worker is behind, the whole turn counts.
    pub(super) fn count_busy(&self, busy: Duration, turn: Duration, source_records: u64) {
        let queue_full_wait = std::mem::take(&mut *lock(&self.queue_full_wait));
        let now = now_ms();
        let mut meter = lock(&self.busy);
        let busy = if meter.behind(self.unread.load(Ordering::Relaxed), now) {
            turn
        } else {
            busy.saturating_sub(queue_full_wait)
        };
        meter.add(now, busy, source_records);
        self.metrics.busy_seconds.inc_by(busy.as_secs_f64());
    }

    pub(super) fn count_commit(&self, result: &Result<(), KafkaError>) {
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics.commits.get_or_create(&ResultLabel { result: label.into() }).inc();
    }

    pub(super) fn commit_transaction(&self, consumer: &WorkerConsumer, engine: &mut Engine) -> Result<(), KafkaError> {
        let commits = engine.commits(false);
        let result = (|| {
            if !commits.is_empty() {
                let metadata = consumer.group_metadata().ok_or(KafkaError::ConsumerCommit(RDKafkaErrorCode::State))?;
                let list = self.commit_list(&commits)?;
                self.stall.enter("send_offsets_to_transaction", REQUEST_TIMEOUT);
                self.producer.send_offsets_to_transaction(&list, &metadata, REQUEST_TIMEOUT)?;
            }
            self.stall.enter("commit_transaction", REQUEST_TIMEOUT);
            self.producer.commit_transaction(REQUEST_TIMEOUT)
        })();
        self.count_commit(&result);
        self.deliver_reports(engine);
        match result {
            Ok(()) => {
                engine.committed(&commits);
                self.stall.enter("begin_transaction", REQUEST_TIMEOUT);
                self.producer.begin_transaction()
            }
            Err(error) => {
                tracing::warn!(%error, "transaction failed; aborting and rewinding to the last commit");
                self.abort_and_rewind(consumer, engine)?;
                Err(error)
            }
        }
    }

    pub(super) fn abort_and_rewind(&self, consumer: &WorkerConsumer, engine: &mut Engine) -> Result<(), KafkaError> {
        if self.exactly_once {
            self.abort_transaction(engine)?;
        }
        self.deliver_reports(engine);
        self.rewind(consumer, engine);
        if self.exactly_once {
            self.stall.enter("begin_transaction", REQUEST_TIMEOUT);
            self.producer.begin_transaction()?;
        }
        Ok(())
    }

    /// Drops all state and reads every assigned partition again from its last commit. Where
    /// each partition starts is then its commit: until a record is read again, a partition is
    /// read to its end when that commit is (see [`partition_end::read_to_end`]), so a source
    /// partition with nothing after its commit still goes idle and its windows close.
    fn rewind(&self, consumer: &WorkerConsumer, engine: &mut Engine) {
        for (topic, partition, offset) in engine.rewind() {
            if let Err(error) = consumer.seek(&topic, partition, Offset::Offset(offset), REQUEST_TIMEOUT) {
                tracing::error!(%error, topic, partition, offset, "seek failed during rewind");
                continue;
            }
            lock(&self.starts).entry(topic).or_default().insert(partition, Start::Committed(offset));
        }
    }

    /// Aborts the open transaction. librdkafka first waits for the delivery report of every
    /// message still outstanding, and those reports only come through `poll`: so it aborts in
    /// short steps and serves the reports in between (they belong to the aborted transaction;
    /// the rewind that follows drops their tickets). Aborting without polling times out, and
    /// the broker then aborts the transaction itself and fences this producer.
    pub(super) fn abort_transaction(&self, engine: &mut Engine) -> Result<(), KafkaError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            self.stall.enter("abort_transaction", ABORT_STEP);
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
