//! The librdkafka callbacks: delivery reports of the producers, and the consumer's logs,
//! statistics and rebalances.

use super::*;

/// Collects delivery reports; the loop hands them to the engine.
#[derive(Default)]
pub struct DeliveryContext {
    reports: Mutex<Vec<(Ticket, Result<(), DeliveryFailure>)>>,
}

impl DeliveryContext {
    /// The reports collected since the last call.
    pub(super) fn take_reports(&self) -> Vec<(Ticket, Result<(), DeliveryFailure>)> {
        std::mem::take(&mut *lock(&self.reports))
    }
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
pub(super) fn failure_of(error: &KafkaError) -> DeliveryFailure {
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

pub(super) fn log_librdkafka(client: &str, level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            tracing::error!(client, facility, "{message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(client, facility, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(client, facility, "{message}"),
        RDKafkaLogLevel::Debug => tracing::debug!(client, facility, "{message}"),
    }
}

pub struct GroupContext {
    pub(super) shared: Arc<Shared>,
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
        self.shared.unread.store(busy_time::unread_records(&statistics), Ordering::Relaxed);
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
