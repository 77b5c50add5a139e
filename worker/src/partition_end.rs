//! Whether the consumer has read a partition to its end, from librdkafka's local state only
//! (no request): the application's position and the high watermark of the last fetch, and
//! whether that fetch is recent. It is what lets a source partition's owner declare the
//! partition idle.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::statistics::Statistics;

/// A fetching connection that received nothing for longer than this is not trusted to know
/// where its partitions end (a fetch waits at most `fetch.wait.max.ms`, 500 ms by default).
const FRESH_RECEIVE_US: i64 = 2_000_000;

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

/// The partitions, by topic, that the consumer is fetching from a connection that is up and
/// answered within [`FRESH_RECEIVE_US`] when `statistics` were taken. Only of these does the
/// cached high watermark say where the partition ends: when its leader dies or is cut off, the
/// cache keeps the old end, and a partition read to it would look idle while what is written
/// meanwhile waits for a new leader. None at all while a broker is down (see
/// [`a_broker_is_down`]).
pub fn fresh_fetches(statistics: &Statistics) -> HashMap<String, HashSet<i32>> {
    if a_broker_is_down(statistics) {
        return HashMap::new();
    }
    let live: HashSet<i32> = statistics
        .brokers
        .values()
        .filter(|b| b.nodeid >= 0 && b.state == "UP" && (0..=FRESH_RECEIVE_US).contains(&b.rxidle))
        .map(|b| b.nodeid)
        .collect();
    let mut fresh: HashMap<String, HashSet<i32>> = HashMap::new();
    for (topic, stats) in &statistics.topics {
        let partitions = stats.partitions.values().filter(|p| p.fetch_state == "active" && live.contains(&p.broker));
        fresh.entry(topic.clone()).or_default().extend(partitions.map(|p| p.partition));
    }
    fresh
}

/// Whether the consumer is reconnecting to a broker it has been connected to. While a broker is
/// down, the high watermark of every partition it follows can stand still with acknowledged-to-be
/// records behind it: the leader waits for the dead follower until the controller takes it out
/// of the in-sync replicas (9 s by default in KRaft). Reading to such a high watermark is not
/// reading everything written, so no partition may turn idle then. A broker this consumer never
/// needed stays `INIT` and does not count.
fn a_broker_is_down(statistics: &Statistics) -> bool {
    const NOT_DOWN: [&str; 3] = ["INIT", "UP", "UPDATE"];
    statistics.brokers.values().any(|b| b.source == "learned" && b.nodeid >= 0 && !NOT_DOWN.contains(&b.state.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_partitions_fetched_from_a_connection_that_answers_lately_are_fresh() {
        use rdkafka::statistics::{Broker, Partition, Topic};
        let broker = |nodeid: i32, state: &str, rxidle: i64| Broker {
            nodeid,
            state: state.into(),
            rxidle,
            source: "learned".into(),
            ..Broker::default()
        };
        let partition = |partition: i32, broker: i32, fetch_state: &str| Partition {
            partition,
            broker,
            leader: broker,
            fetch_state: fetch_state.into(),
            ..Partition::default()
        };
        let statistics_of = |brokers: [Broker; 3]| Statistics {
            brokers: brokers.into_iter().map(|b| (format!("b{}", b.nodeid), b)).collect(),
            ..Default::default()
        };
        let mut statistics =
            statistics_of([broker(1, "UP", 300_000), broker(2, "INIT", 0), broker(3, "UP", 9_000_000)]);
        let partitions = [partition(0, 1, "active"), partition(1, 2, "active"), partition(2, 3, "active")];
        let mut partitions: HashMap<i32, Partition> = partitions.into_iter().map(|p| (p.partition, p)).collect();
        partitions.insert(3, partition(3, 1, "offset-query"));
        partitions.insert(-1, partition(-1, -1, "none"));
        statistics.topics.insert("lines".into(), Topic { topic: "lines".into(), partitions, ..Topic::default() });
        let fresh = fresh_fetches(&statistics);
        assert_eq!(fresh.get("lines"), Some(&HashSet::from([0])), "1 is on no connection, 2 on a silent one");

        for down in ["TRY_CONNECT", "CONNECT", "DOWN"] {
            let topics = std::mem::take(&mut statistics.topics);
            statistics = statistics_of([broker(1, "UP", 300_000), broker(2, down, 0), broker(3, "UP", 9_000_000)]);
            statistics.topics = topics;
            assert!(fresh_fetches(&statistics).is_empty(), "broker 2 is {down}: its followers' ends may stand still");
        }
    }

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
