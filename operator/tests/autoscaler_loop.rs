//! The autoscaler on a job: lag from the real Kafka broker named by `STREAMJOB_TEST_BOOTSTRAP`,
//! the job and its StatefulSet in the in-memory API server. Scale-up within a poll of the lag crossing the threshold, scale-down
//! only after the stabilisation window, the event and `status.lastScale`, and a failing probe
//! that holds the replicas.

mod common;

use std::sync::Arc;

use common::*;
use streamjob_crds::StreamJob;
use streamjob_operator::autoscaler::driver::Autoscaler;
use streamjob_runtime::http::Exposition;
use streamjob_testkit::fixtures::JobFixture;

const PARTITIONS: i32 = 4;

/// The wordcount example, autoscaled on `topic`, with a consumer group unique to this run.
fn autoscaled_job(bootstrap: &str, topic: &str) -> StreamJob {
    let mut job = example("wordcount.yaml");
    job.spec.source.bootstrap_servers = bootstrap.to_owned();
    job.spec.source.topics = vec![topic.to_owned()];
    job.spec.source.consumer_group = Some(unique("wordcount"));
    job.autoscaling(serde_json::json!({
        "minReplicas": 1, "maxReplicas": 8, "lagThreshold": 100, "pollIntervalSeconds": 10,
        "scaleDown": {"stabilizationSeconds": 120}
    }))
}

fn last_scale(h: &Harness) -> (i32, i32, String) {
    let status = h.job("wordcount").status.expect("status");
    let scale = status.last_scale.expect("lastScale written");
    (scale.from, scale.to, scale.reason)
}

#[tokio::test(flavor = "multi_thread")]
async fn scales_up_on_lag_and_down_only_after_the_stabilisation_window() {
    let Some(bootstrap) = real_broker() else { return };
    let lines = unique("lines");
    create_topics(&bootstrap, &[(&lines, PARTITIONS)]);
    let h = harness();
    h.api.create(JOBS, &autoscaled_job(&bootstrap, &lines));
    let spec_replicas = h.job("wordcount").spec.replicas;
    h.reconcile("wordcount").await.expect("reconcile");
    assert_eq!(h.replicas("wordcount"), 1, "minReplicas before the first decision");
    h.workers_ready("wordcount", 1);
    let autoscaler = Autoscaler::new(h.context.clone());
    let poll = |t: f64| {
        let (autoscaler, job) = (&autoscaler, Arc::new(h.job("wordcount")));
        async move { autoscaler.poll_due(&[job], t).await }
    };

    // Below the threshold: 1 worker is enough.
    fill(&bootstrap, &lines, &[20; PARTITIONS as usize]);
    poll(0.0).await;
    poll(10.0).await;
    assert_eq!(h.replicas("wordcount"), 1);
    let status = h.job("wordcount").status.expect("status");
    assert_eq!(status.lag.as_ref().map(|l| l.total), Some(80), "4 partitions × 20 records, no commits yet");
    assert_eq!(status.partitions, Some(PARTITIONS));
    assert!(status.last_scale.is_none());

    // The lag crosses the threshold: the next poll scales up, capped at the partition count.
    fill(&bootstrap, &lines, &[200; PARTITIONS as usize]);
    poll(15.0).await;
    assert_eq!(h.replicas("wordcount"), 1, "not due before pollIntervalSeconds");
    poll(20.0).await;
    assert_eq!(h.replicas("wordcount"), 4, "lag 880 over threshold 100 wants 9; 4 partitions cap it");
    let (from, to, reason) = last_scale(&h);
    assert_eq!((from, to), (1, 4));
    assert!(reason.contains("lag 880"), "{reason}");
    let scaled_up: Vec<String> = h.events().into_iter().filter(|(r, _)| r == "ScaledUp").map(|(_, n)| n).collect();
    assert_eq!(scaled_up.len(), 1, "{scaled_up:?}");
    assert!(scaled_up[0].contains("lag 880") && scaled_up[0].contains("1 → 4"), "{}", scaled_up[0]);
    assert_eq!(h.job("wordcount").spec.replicas, spec_replicas, "spec.replicas is never written");
    h.reconcile("wordcount").await.expect("reconcile");
    assert_eq!(h.replicas("wordcount"), 4, "the reconciler keeps the autoscaler's decision");
    // status.desiredReplicas has one writer, the reconciler, which the StatefulSet change wakes.
    assert_eq!(h.job("wordcount").status.expect("status").desired_replicas, 4);

    // The workers catch up; no lag. Scale-down waits for the 120 s window.
    h.workers_ready("wordcount", 4);
    let caught_up: Vec<(i32, i64)> = (0..PARTITIONS).map(|p| (p, 220)).collect();
    commit(&bootstrap, &h.job("wordcount").consumer_group(), &lines, &caught_up);
    for t in [30.0, 40.0, 50.0, 100.0, 130.0] {
        poll(t).await;
        assert_eq!(h.replicas("wordcount"), 4, "still inside the stabilisation window at {t}");
    }
    poll(150.0).await;
    assert_eq!(h.replicas("wordcount"), 1, "every recommendation over 120 s allowed 1");
    let (from, to, _) = last_scale(&h);
    assert_eq!((from, to), (4, 1));
    assert!(h.events().iter().any(|(r, n)| r == "ScaledDown" && n.contains("4 → 1")), "{:?}", h.events());
    let metrics = h.context.metrics.encode();
    assert!(
        metrics.contains(
            "streamjob_operator_scale_decisions_total{namespace=\"team\",job=\"wordcount\",reason=\"scale-up\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("streamjob_operator_job_lag_records{namespace=\"team\",job=\"wordcount\"} 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_probe_holds_the_replicas_and_says_so() {
    let Some(bootstrap) = real_broker() else { return };
    let missing = unique("missing-topic");
    let h = harness();
    h.api.create(JOBS, &autoscaled_job(&bootstrap, &missing));
    h.reconcile("wordcount").await.expect("reconcile");
    h.workers_ready("wordcount", 1);
    let autoscaler = Autoscaler::new(h.context.clone());
    for t in [0.0, 10.0, 20.0] {
        autoscaler.poll_due(&[Arc::new(h.job("wordcount"))], t).await;
    }
    assert_eq!(h.replicas("wordcount"), 1, "no scaling without a measurement");
    let (status, reason, message) = h.condition("wordcount", "AutoscalerDegraded");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "LagProbeFailed"));
    assert!(message.contains(&missing), "{message}");
    let warnings: Vec<_> = h.events().into_iter().filter(|(r, _)| r == "AutoscalerDegraded").collect();
    assert_eq!(warnings.len(), 1, "one event per failure streak: {warnings:?}");
    assert!(h.job("wordcount").status.expect("status").lag.is_none(), "no lag reported from missing data");
    let metrics = h.context.metrics.encode();
    assert!(
        metrics.contains("streamjob_operator_lag_probe_errors_total{namespace=\"team\",job=\"wordcount\"} 3"),
        "{metrics}"
    );
}

/// A job without autoscaling has its lag measured too, as metrics only (every 30 s): its lag
/// series and alerts exist, its replicas and status are the reconciler's alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_fixed_size_job_gets_lag_series_and_no_decision() {
    let Some(bootstrap) = real_broker() else { return };
    let lines = unique("lines");
    create_topics(&bootstrap, &[(&lines, PARTITIONS)]);
    let mut job = example("wordcount.yaml");
    job.spec.source.bootstrap_servers = bootstrap.clone();
    job.spec.source.topics = vec![lines.clone()];
    job.spec.source.consumer_group = Some(unique("wordcount"));
    job.spec.autoscaling = None;
    job.spec.replicas = 2;
    let h = harness();
    h.api.create(JOBS, &job);
    h.reconcile("wordcount").await.expect("reconcile");
    fill(&bootstrap, &lines, &[500; PARTITIONS as usize]);
    let autoscaler = Autoscaler::new(h.context.clone());
    autoscaler.poll_due(&[Arc::new(h.job("wordcount"))], 0.0).await;
    let metrics = h.context.metrics.encode();
    assert!(
        metrics.contains("streamjob_operator_job_lag_records{namespace=\"team\",job=\"wordcount\"} 2000"),
        "{metrics}"
    );
    assert_eq!(h.replicas("wordcount"), 2, "the autoscaler never scales a fixed-size job");
    assert!(h.job("wordcount").status.and_then(|s| s.lag).is_none(), "no status write from a metrics-only poll");
    assert!(!metrics.contains("streamjob_operator_scale_decisions_total{namespace=\"team\",job=\"wordcount\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_topic_that_does_not_exist_degrades_the_job_until_it_is_created() {
    let Some(bootstrap) = real_broker() else { return };
    let (lines, counts, dead_letters) = (unique("lines"), unique("counts"), unique("dead-letters"));
    create_topics(&bootstrap, &[(&lines, PARTITIONS), (&dead_letters, 1)]);
    let mut job = autoscaled_job(&bootstrap, &lines);
    job.spec.sink.topic = counts.clone();
    job.spec.sink.dead_letter_topic = Some(dead_letters.clone());
    let h = harness();
    h.api.create(JOBS, &job);
    h.reconcile("wordcount").await.expect("reconcile");
    h.workers_ready("wordcount", 1);
    let autoscaler = Autoscaler::new(h.context.clone());
    let check = |t: f64| {
        let (autoscaler, job) = (&autoscaler, h.job("wordcount"));
        async move { autoscaler.check_outputs(&job, t).await }
    };

    check(0.0).await;
    h.reconcile("wordcount").await.expect("reconcile");
    assert_eq!(h.phase("wordcount"), Some(streamjob_crds::Phase::Degraded));
    let (status, reason, message) = h.condition("wordcount", "Degraded");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "SinkRefused"), "{message}");
    assert!(message.contains(&format!("sink topic {counts} on {bootstrap}")), "{message}");
    assert!(message.contains("Unknown topic or partition"), "the broker's reason: {message}");
    assert_eq!(h.condition("wordcount", "Ready").1, "SinkRefused");
    let refused: Vec<_> = h.events().into_iter().filter(|(r, _)| r == "SinkRefused").collect();
    assert_eq!(refused.len(), 1, "{refused:?}");

    check(10.0).await;
    let refused = h.events().into_iter().filter(|(r, _)| r == "SinkRefused").count();
    assert_eq!(refused, 1, "one event per refusal, not one per check");

    create_topics(&bootstrap, &[(&counts, 1)]);
    check(40.0).await;
    h.reconcile("wordcount").await.expect("reconcile");
    let (status, reason, _) = h.condition("wordcount", "Degraded");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "WorkersHealthy"));
    assert_eq!(h.phase("wordcount"), Some(streamjob_crds::Phase::Running));
    assert!(h.events().iter().any(|(r, _)| r == "SinkWritable"), "{:?}", h.events());
}
