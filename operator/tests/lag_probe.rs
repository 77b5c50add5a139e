//! The lag probe against the real Kafka broker named by `STREAMJOB_TEST_BOOTSTRAP`, with
//! committed offsets and watermarks the test sets; a dead broker is librdkafka's mock cluster
//! taken down (fault injection).

use std::time::Duration;

mod common;

use common::{commit, commit_with_metadata, create_topics, fill, real_broker, unique};
use rdkafka::ClientConfig;
use streamjob_crds::capacity_report::CapacityReport;
use streamjob_crds::StartFrom;
use streamjob_operator::autoscaler::kafka_admin::ClusterAdmin;
use streamjob_operator::autoscaler::policy::PartitionSample;
use streamjob_operator::autoscaler::probe::{measure_with, LagProbe, ProbeError, ProbeTarget};
use streamjob_worker::mock_broker::MockBroker;

fn target(bootstrap: &str, group: &str, topics: &[&str]) -> ProbeTarget {
    let mut connection = ClientConfig::new();
    connection.set("bootstrap.servers", bootstrap);
    ProbeTarget { connection, group: group.to_owned(), topics: topics.iter().map(|t| (*t).to_owned()).collect() }
}

fn sample(topic: &str, partition: i32, high: i64, committed: Option<i64>) -> PartitionSample {
    PartitionSample { topic: topic.to_owned(), partition, low: 0, high, committed, committed_by: None }
}

#[tokio::test(flavor = "multi_thread")]
async fn committed_offsets_and_watermarks_give_the_lag_per_partition() {
    let Some(bootstrap) = real_broker() else { return };
    let (orders, refunds, group) = (unique("orders"), unique("refunds"), unique("billing"));
    create_topics(&bootstrap, &[(&orders, 3), (&refunds, 1)]);
    fill(&bootstrap, &orders, &[10, 20, 30]);
    fill(&bootstrap, &refunds, &[5]);
    commit(&bootstrap, &group, &orders, &[(0, 4), (1, 20)]);
    commit(&bootstrap, &group, &refunds, &[(0, 2)]);

    let probe = LagProbe::default();
    let samples =
        probe.measure(&target(&bootstrap, &group, &[orders.as_str(), refunds.as_str()])).await.expect("probe");
    assert_eq!(
        samples,
        vec![
            sample(&orders, 0, 10, Some(4)),
            sample(&orders, 1, 20, Some(20)),
            sample(&orders, 2, 30, None),
            sample(&refunds, 0, 5, Some(2)),
        ]
    );
    let lags: Vec<i64> = samples.iter().map(|s| s.lag(StartFrom::Earliest)).collect();
    assert_eq!(lags, vec![10 - 4, 20 - 20, 30, 5 - 2], "no commit on orders/2: earliest reads all 30 retained records");
    let lags: Vec<i64> = samples.iter().map(|s| s.lag(StartFrom::Latest)).collect();
    assert_eq!(lags, vec![10 - 4, 20 - 20, 0, 5 - 2], "no commit on orders/2: latest skips them");

    // The same client is reused, and sees progress.
    commit(&bootstrap, &group, &orders, &[(2, 25)]);
    fill(&bootstrap, &orders, &[0, 7, 0]);
    let samples = probe.measure(&target(&bootstrap, &group, &[orders.as_str()])).await.expect("second probe");
    assert_eq!(samples[1], sample(&orders, 1, 27, Some(20)));
    assert_eq!(samples[2], sample(&orders, 2, 30, Some(25)));
    assert_eq!(samples[1].lag(StartFrom::Earliest), 27 - 20);
}

/// Many jobs on one cluster share one client (its threads and connections), whatever their
/// groups; each still reads its own group's offsets.
#[tokio::test(flavor = "multi_thread")]
async fn jobs_on_one_cluster_share_one_client_and_read_their_own_groups() {
    let Some(bootstrap) = real_broker() else { return };
    let orders = unique("orders");
    create_topics(&bootstrap, &[(&orders, 2)]);
    fill(&bootstrap, &orders, &[10, 10]);
    let groups: Vec<String> = (0..20).map(|_| unique("billing")).collect();
    for (i, group) in groups.iter().enumerate() {
        commit(&bootstrap, group, &orders, &[(0, i as i64 % 10)]);
    }
    let probe = LagProbe::default();
    let targets: Vec<ProbeTarget> = groups.iter().map(|group| target(&bootstrap, group, &[orders.as_str()])).collect();
    let measured = futures::future::join_all(targets.iter().map(|target| probe.measure(target))).await;
    for (i, samples) in measured.into_iter().enumerate() {
        let samples = samples.expect("probe");
        assert_eq!(samples, vec![sample(&orders, 0, 10, Some(i as i64 % 10)), sample(&orders, 1, 10, None)]);
    }
    assert_eq!(probe.clients(), 1, "one client for the cluster");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workers_capacity_report_comes_back_with_its_commit() {
    let Some(bootstrap) = real_broker() else { return };
    let (orders, group) = (unique("orders"), unique("billing"));
    create_topics(&bootstrap, &[(&orders, 2)]);
    fill(&bootstrap, &orders, &[10, 10]);
    let report = CapacityReport {
        worker: "billing-worker-0".into(),
        records_per_busy_second: 45_000.0,
        busy_share: 0.25,
        at_ms: streamjob_runtime::clock::now_ms() - 4_000,
    };
    commit_with_metadata(&bootstrap, &group, &orders, &[(0, 5)], &report.encode());
    commit_with_metadata(&bootstrap, &group, &orders, &[(1, 5)], "some other client's metadata");

    let samples = LagProbe::default().measure(&target(&bootstrap, &group, &[orders.as_str()])).await.expect("probe");
    let rate = samples[0].committed_by.as_ref().expect("the report of partition 0's commit");
    assert_eq!(
        (rate.worker.as_str(), rate.records_per_busy_second, rate.busy_share),
        ("billing-worker-0", 45_000.0, 0.25)
    );
    assert!((4.0..30.0).contains(&rate.age_seconds), "measured 4 s before the probe: {}", rate.age_seconds);
    assert_eq!(samples[1].committed_by, None, "other metadata is no report");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_topic_is_an_error_not_zero_lag() {
    let Some(bootstrap) = real_broker() else { return };
    let missing = unique("no-such-topic");
    let probe = LagProbe::default();
    let result = probe.measure(&target(&bootstrap, &unique("billing"), &[missing.as_str()])).await;
    assert!(matches!(result, Err(ProbeError::Topic { ref topic, .. }) if *topic == missing), "{result:?}");
}

/// Fault injection: the mock cluster can take its broker down on cue.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_broker_is_an_error_not_zero_lag() {
    let broker = MockBroker::start(1).expect("mock cluster");
    let bootstrap = broker.bootstrap_servers();
    broker.create_topic("orders", 2).expect("topic");
    broker.cluster().broker_down(1).expect("broker down");
    let admin = std::sync::Arc::new(
        ClusterAdmin::new(ClientConfig::new().set("bootstrap.servers", &bootstrap)).expect("admin client"),
    );
    let down = measure_with(&admin, "billing", &["orders".to_owned()], Duration::from_secs(2)).await;
    assert!(down.is_err(), "a broker that is down gives an error: {down:?}");
}

/// Fault injection: the group coordinator answers OffsetFetch with NOT_COORDINATOR and
/// COORDINATOR_LOAD_IN_PROGRESS (a fresh group, a coordinator moving). librdkafka's handler
/// then asks the client's own group to find its coordinator again, which crashed a client
/// without one (a segfault in CI); the probe's client has one and survives, measuring or saying
/// why not.
#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_that_moves_is_retried_not_a_crash() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let broker = MockBroker::start(1).expect("mock cluster");
    let bootstrap = broker.bootstrap_servers();
    broker.create_topic("orders", 2).expect("topic");
    broker.cluster().request_errors(
        RDKafkaApiKey::OffsetFetch,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
        ],
    );
    let admin = std::sync::Arc::new(
        ClusterAdmin::new(ClientConfig::new().set("bootstrap.servers", &bootstrap)).expect("admin client"),
    );
    // Each measurement meets at most one injected error (an error for the poll, not a crash);
    // once they are used up the probe measures.
    let mut measured = Vec::new();
    for _ in 0..4 {
        measured.push(measure_with(&admin, "billing", &["orders".to_owned()], Duration::from_secs(5)).await);
    }
    let last = measured.pop().expect("four measurements");
    assert_eq!(last.expect("measures once the coordinator answers").len(), 2);
}
