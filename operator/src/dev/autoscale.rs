//! The autoscaler as the operator runs it (the same probe and `poll`), applied to the
//! in-process worker pool instead of a StatefulSet.

use std::time::Duration;

use rdkafka::ClientConfig;
use streamjob_crds::StreamJob;

use super::pool::WorkerPool;
use super::screen::{ScaleLine, Snapshot};
use crate::autoscaler::policy::{poll, History, PartitionSample, Settings, Workers};
use crate::autoscaler::probe::{LagProbe, ProbeTarget};

/// The autoscaler as the operator runs it, on in-process workers.
pub(super) struct DevAutoscaler {
    pub(super) settings: Option<Settings>,
    pub(super) poll_interval: Duration,
    history: History,
    probe: LagProbe,
    target: ProbeTarget,
    pub(super) partitions: i32,
}

impl DevAutoscaler {
    pub(super) fn new(job: &StreamJob, bootstrap: &str) -> Self {
        let autoscaling = job.spec.autoscaling.as_ref().filter(|a| a.enabled);
        let mut connection = ClientConfig::new();
        connection.set("bootstrap.servers", bootstrap);
        Self {
            settings: autoscaling
                .map(|a| Settings::from_spec(a, job.spec.source.start_from).with_open_windows(&job.spec.pipeline)),
            poll_interval: Duration::from_secs(autoscaling.map_or(5, |a| a.poll_interval_seconds.max(1)) as u64),
            history: History::default(),
            probe: LagProbe::default(),
            target: ProbeTarget { connection, group: job.consumer_group(), topics: job.spec.source.topics.clone() },
            partitions: 0,
        }
    }
}

/// One probe and decision; applies it to the pool. Returns the scale event, if any.
pub(super) async fn poll_autoscaler(
    autoscaler: &mut DevAutoscaler,
    pool: &mut WorkerPool,
    settled: bool,
    now: f64,
    snapshot: &mut Snapshot,
) -> Option<ScaleLine> {
    let samples: Vec<PartitionSample> = match autoscaler.probe.measure(&autoscaler.target).await {
        Ok(samples) => samples,
        Err(error) => {
            snapshot.decision =
                format!("AutoscalerDegraded: cannot measure lag, holding the current replicas: {error}");
            return None;
        }
    };
    autoscaler.partitions = samples.len() as i32;
    let start_from = autoscaler.settings.as_ref().map_or(streamjob_crds::StartFrom::Earliest, |s| s.start_from);
    snapshot.partition_lags = samples.iter().map(|s| (s.topic.clone(), s.partition, s.lag(start_from))).collect();
    snapshot.total_lag = Some(samples.iter().map(|s| s.lag(start_from)).sum());
    let Some(settings) = &autoscaler.settings else {
        snapshot.decision = format!("autoscaling is off: spec.replicas {}", pool.len());
        return None;
    };
    let workers = Workers { current: pool.len(), ready: pool.ready(), settled };
    let decision = poll(&mut autoscaler.history, samples, workers, settings, now);
    snapshot.decision = decision.reason.clone();
    if decision.replicas == workers.current {
        return None;
    }
    if let Err(error) = pool.scale_to(decision.replicas) {
        snapshot.decision = format!("cannot start workers: {error}");
        return None;
    }
    Some(ScaleLine {
        at: Duration::from_secs_f64(now),
        from: workers.current,
        to: decision.replicas,
        reason: decision.reason,
    })
}
