//! Fault injection: the worker against librdkafka's mock cluster, which can take its broker
//! down and fail chosen requests, which a real broker cannot be made to do on cue. This is the
//! only worker test on the mock cluster; everything else runs on a real broker (`kafka.rs`).

mod common;

use std::time::Duration;

use common::*;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use streamjob_testkit::kafka::produce_all;
use streamjob_worker::mock_broker::MockBroker;

#[test]
fn broker_outage_and_request_errors_are_survived_without_loss() {
    init_logs();
    let broker = MockBroker::start(1).expect("mock cluster starts");
    let names = JobNames::new("wc-faults");
    // The mock cluster has no CreateTopics: the worker's repartition topic is made here too.
    for (topic, partitions) in [(&names.source, 4), (&names.sink, 4), (&names.repartition(), 4)] {
        broker.create_topic(topic, partitions).expect("topic created");
    }
    let bootstrap = broker.bootstrap_servers();
    let lines = text_lines(600, 0, 0);
    let mut produced = stamped(&lines[..200], now_ms(), 3);
    produce_all(&bootstrap, &names.source, &produced).expect("first part");

    let worker = TestWorker::start(config("wordcount.yaml", &bootstrap, &names, "0"));
    assert!(wait_until(LIMIT, || worker.records_in() > 0), "the worker never got going");
    broker.cluster().broker_down(1).expect("broker down");
    std::thread::sleep(Duration::from_secs(3));
    broker.cluster().broker_up(1).expect("broker up");
    broker.cluster().request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    broker
        .cluster()
        .request_errors(RDKafkaApiKey::OffsetCommit, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE]);
    let rest = stamped(&lines[200..], now_ms(), 3);
    produce_all(&bootstrap, &names.source, &rest).expect("rest");
    produced.extend(rest);
    let expected = expected_word_counts(&produced);

    read_until_counts_are(&bootstrap, &names.sink, false, &expected, "after the outage");
    drop(worker);
}
