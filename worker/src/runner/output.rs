//! Outputs into the producers, and their delivery reports back to the engine.

use super::contexts::failure_of;
use super::*;

impl Shared {
    pub(super) fn producer_for(&self, destination: Destination) -> &WorkerProducer {
        match (destination, &self.sink_producer) {
            (Destination::Sink, Some(sink)) => sink,
            _ => &self.producer,
        }
    }

    pub(super) fn producers(&self) -> impl Iterator<Item = &WorkerProducer> {
        std::iter::once(&self.producer).chain(self.sink_producer.iter())
    }

    /// Queues the engine's outputs in the producer, waiting while its queue is full.
    pub(super) fn send_outputs(&self, engine: &mut Engine) {
        let mut outputs = engine.take_outputs();
        for output in outputs.drain(..) {
            self.send(engine, output);
        }
        engine.recycle_outputs(outputs);
    }

    pub(super) fn send(&self, engine: &mut Engine, output: Output) {
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
                    self.stall.enter("waiting for room in a producer's queue", QUEUE_FULL_WAIT);
                    let waiting = Instant::now();
                    producer.poll(QUEUE_FULL_WAIT);
                    *lock(&self.queue_full_wait) += waiting.elapsed();
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

    pub(super) fn deliver_reports(&self, engine: &mut Engine) {
        let reports = self.producer.context().take_reports();
        let sink_reports = self.sink_producer.as_ref().map(|p| p.context().take_reports());
        let now = now_ms();
        for (ticket, result) in reports.into_iter().chain(sink_reports.into_iter().flatten()) {
            engine.on_delivery(ticket, result, now);
        }
    }

    pub(super) fn poll_producers(&self, engine: &mut Engine) {
        for producer in self.producers() {
            producer.poll(Duration::ZERO);
        }
        self.deliver_reports(engine);
    }
}
