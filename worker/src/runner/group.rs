//! The consumer-group side: partitions assigned and revoked, offset resets, and which source
//! partitions have been read to their end.

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

    /// Starts each newly assigned partition at its committed offset, restoring the aggregating
    /// stage's checkpoint from the commit metadata. The repartition topic starts at its
    /// beginning when it has no commit, whatever `startFrom` says: partials are never skipped.
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
        self.stall.enter("reading the committed offsets", REQUEST_TIMEOUT);
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
    pub(super) fn revoke(&self, consumer: &WorkerConsumer, partitions: &TopicPartitionList) {
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
