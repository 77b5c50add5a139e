//! Whether the consumer has read a partition to its end, from librdkafka's local state only
//! (no request): the application's position and the high watermark of the last fetch. It is
//! what lets a source partition's owner declare the partition idle.

use std::ffi::CString;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

/// Where the consumer started reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Committed(i64),
    Beginning,
    End,
}

/// `position`: the offset after the last record returned to the application (librdkafka moves
/// it past transaction markers too), `None` before the first. `watermarks`: the low and high
/// watermarks of the last fetch, `None` before one.
pub fn read_to_end(position: Option<i64>, start: Start, watermarks: Option<(i64, i64)>) -> bool {
    let Some((low, high)) = watermarks else {
        return false;
    };
    match (position, start) {
        (Some(position), _) => position >= high,
        (None, Start::Committed(committed)) => committed >= high || (committed < low && low >= high),
        (None, Start::Beginning) => low >= high,
        // Started at the end and nothing returned yet: what is written from now on is fetched
        // within a fetch wait and, once read, wakes the partition.
        (None, Start::End) => true,
    }
}

/// librdkafka's low and high watermarks of `topic`/`partition` from its last fetch response.
pub fn cached_watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<(i64, i64)> {
    let topic = CString::new(topic).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: the client handle is valid while `consumer` is borrowed, `topic` is a valid C
    // string, and the call only reads the partition's cached offsets under librdkafka's lock.
    let error = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (error == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_is_the_high_watermark_of_the_last_fetch() {
        assert!(!read_to_end(Some(10), Start::Committed(0), None), "nothing fetched yet");
        assert!(!read_to_end(Some(9), Start::Committed(0), Some((0, 10))));
        assert!(read_to_end(Some(10), Start::Committed(0), Some((0, 10))));
        assert!(read_to_end(None, Start::Committed(10), Some((0, 10))), "committed at the end");
        assert!(!read_to_end(None, Start::Committed(4), Some((0, 10))), "records after the commit");
        assert!(read_to_end(None, Start::Committed(4), Some((10, 10))), "the commit fell out of an empty log");
        assert!(!read_to_end(None, Start::Beginning, Some((3, 10))));
        assert!(read_to_end(None, Start::Beginning, Some((10, 10))));
    }
}
