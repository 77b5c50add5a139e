//! The reconciler against the in-memory API server: children, status, events, retries.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::Action;
use serde_json::json;
use streamjob_crds::{Phase, StreamJob};
use streamjob_operator::controller::{error_policy, CONSUMER_GROUP_FINALIZER, MAX_GROUP_DELETION_ATTEMPTS};

mod common;

use common::*;

/// The wordcount example with two workers and no autoscaler, so replicas follow the spec.
fn fixed_size_wordcount() -> StreamJob {
    let mut job = example("wordcount.yaml");
    job.spec.autoscaling = None;
    job.spec.replicas = 2;
    job
}

#[tokio::test]
async fn create_builds_the_four_children_with_owner_references_and_pending_status() {
    let h = harness();
    h.api.create(JOBS, &fixed_size_wordcount());
    h.reconcile("wordcount").await.expect("reconcile succeeds");

    let job = h.job("wordcount");
    let uid = job.metadata.uid.clone().expect("uid");
    let config_map: ConfigMap = h.api.get(CONFIG_MAPS, NS, "wordcount-config").expect("ConfigMap");
    let service: Service = h.api.get(SERVICES, NS, "wordcount").expect("Service");
    let budget: PodDisruptionBudget = h.api.get(BUDGETS, NS, "wordcount").expect("PDB");
    let stateful_set = h.stateful_set("wordcount");
    for owners in [
        &config_map.metadata.owner_references,
        &service.metadata.owner_references,
        &budget.metadata.owner_references,
        &stateful_set.metadata.owner_references,
    ] {
        let owner = &owners.as_ref().expect("owner references")[0];
        assert_eq!((owner.uid.as_str(), owner.controller), (uid.as_str(), Some(true)));
    }
    assert_eq!(h.replicas("wordcount"), 2);
    let status = job.status.expect("status");
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.phase, Some(Phase::Pending));
    assert_eq!(status.desired_replicas, 2);
    assert_eq!(
        status.selector.as_deref(),
        Some("app.kubernetes.io/instance=wordcount,app.kubernetes.io/name=streamjob-worker")
    );
    assert_eq!(h.condition("wordcount", "ConfigValid").0, "True");
    assert_eq!(h.condition("wordcount", "Ready").0, "False");
    let created: Vec<String> = h.events().into_iter().filter(|(r, _)| r == "Created").map(|(_, n)| n).collect();
    assert_eq!(created.len(), 4, "one Created event per child: {created:?}");
}

#[tokio::test]
async fn status_is_written_once_per_change() {
    let h = harness();
    h.api.create(JOBS, &fixed_size_wordcount());
    h.reconcile("wordcount").await.expect("first");
    assert_eq!(h.status_writes(), 1);
    h.reconcile("wordcount").await.expect("second");
    h.reconcile("wordcount").await.expect("third");
    assert_eq!(h.status_writes(), 1, "nothing changed, nothing written");

    h.workers_ready("wordcount", 2);
    h.reconcile("wordcount").await.expect("after workers ready");
    assert_eq!(h.status_writes(), 2);
    assert_eq!(h.phase("wordcount"), Some(Phase::Running));
    assert_eq!(
        h.condition("wordcount", "Ready"),
        ("True".into(), "AllWorkersReady".into(), "2/2 workers ready".into())
    );
    h.reconcile("wordcount").await.expect("steady");
    assert_eq!(h.status_writes(), 2);
}

#[tokio::test]
async fn spec_update_rolls_the_workers_and_advances_observed_generation() {
    let h = harness();
    h.api.create(JOBS, &fixed_size_wordcount());
    h.reconcile("wordcount").await.expect("create");
    h.workers_ready("wordcount", 2);
    h.reconcile("wordcount").await.expect("ready");
    let before = h.checksum("wordcount");

    h.api.edit(JOBS, NS, "wordcount", &json!({"spec": {"sink": {"topic": "word-counts-v2"}}}));
    h.reconcile("wordcount").await.expect("update");
    assert_ne!(h.checksum("wordcount"), before, "a config change rolls the pods");
    let job = h.job("wordcount");
    assert_eq!(job.status.as_ref().and_then(|s| s.observed_generation), Some(2));
    assert_eq!(h.condition("wordcount", "Progressing").0, "True");
    assert!(h.events().iter().any(|(r, n)| r == "RollingOut" && n.contains("rolling 2 workers")));

    let checksum = h.checksum("wordcount");
    h.api.edit(JOBS, NS, "wordcount", &json!({"spec": {"podLabels": {"team": "data"}}}));
    h.reconcile("wordcount").await.expect("pod-only change");
    assert_eq!(h.checksum("wordcount"), checksum, "the checksum follows the worker config only");
}

#[tokio::test]
async fn suspend_scales_to_zero_and_resume_restores() {
    let h = harness();
    h.api.create(JOBS, &fixed_size_wordcount());
    h.reconcile("wordcount").await.expect("create");
    h.workers_ready("wordcount", 2);
    h.reconcile("wordcount").await.expect("ready");

    h.api.edit(JOBS, NS, "wordcount", &json!({"spec": {"suspend": true}}));
    h.reconcile("wordcount").await.expect("suspend");
    assert_eq!(h.replicas("wordcount"), 0);
    h.workers_ready("wordcount", 0);
    h.reconcile("wordcount").await.expect("suspended");
    assert_eq!(h.phase("wordcount"), Some(Phase::Suspended));
    assert_eq!(h.condition("wordcount", "Suspended").0, "True");
    assert!(h.events().iter().any(|(r, n)| r == "Suspended" && n.contains("workers 2 → 0")));

    h.api.edit(JOBS, NS, "wordcount", &json!({"spec": {"suspend": false}}));
    h.reconcile("wordcount").await.expect("resume");
    assert_eq!(h.replicas("wordcount"), 2);
    assert_eq!(h.condition("wordcount", "Suspended").0, "False");
    assert!(h.events().iter().any(|(r, n)| r == "Resumed" && n.contains("0 → 2")));
}

#[tokio::test]
async fn pause_annotation_leaves_children_untouched_and_says_so() {
    let h = harness();
    h.api.create(JOBS, &fixed_size_wordcount());
    h.reconcile("wordcount").await.expect("create");
    h.api.edit(
        JOBS,
        NS,
        "wordcount",
        &json!({"metadata": {"annotations": {"streamjob.io/pause-reconciliation": "true"}}, "spec": {"replicas": 5}}),
    );
    let action = h.reconcile("wordcount").await.expect("paused reconcile");
    assert_eq!(action, Action::await_change());
    assert_eq!(h.replicas("wordcount"), 2, "children untouched while paused");
    assert_eq!(h.condition("wordcount", "ReconciliationPaused").0, "True");

    h.api.edit(
        JOBS,
        NS,
        "wordcount",
        &json!({"metadata": {"annotations": {"streamjob.io/pause-reconciliation": null}}}),
    );
    h.reconcile("wordcount").await.expect("resumed reconcile");
    assert_eq!(h.replicas("wordcount"), 5);
    let conditions = h.job("wordcount").status.unwrap().conditions;
    assert!(conditions.iter().all(|c| c.type_ != "ReconciliationPaused"));
}

#[tokio::test]
async fn invalid_config_sets_config_valid_false_without_hot_retries() {
    let h = harness();
    let mut job = example("clicks-per-user.yaml");
    // What an API server without CEL (Kubernetes 1.24) would let through.
    job.spec.autoscaling.as_mut().unwrap().min_replicas = 20;
    h.api.create(JOBS, &job);
    let action = h.reconcile("clicks-per-user").await.expect("invalid config is not an error to retry");
    assert_eq!(action, Action::await_change());
    assert_eq!(h.phase("clicks-per-user"), Some(Phase::Failed));
    let (status, reason, message) = h.condition("clicks-per-user", "ConfigValid");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(
        message.contains("autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas"),
        "{message}"
    );
    assert!(h.api.get::<StatefulSet>(STATEFUL_SETS, NS, "clicks-per-user").is_none(), "nothing is built");
    h.reconcile("clicks-per-user").await.expect("again");
    let invalid_events = h.events().iter().filter(|(r, _)| r == "InvalidConfig").count();
    assert_eq!(invalid_events, 1, "reported once per spec change");

    let mut job = example("clicks-per-user.yaml");
    job.metadata.name = Some("bad-regex".into());
    job.spec.pipeline[0].filter.as_mut().unwrap().op = streamjob_crds::FilterOperator::Matches;
    job.spec.pipeline[0].filter.as_mut().unwrap().value = Some(json!("(unclosed"));
    h.api.create(JOBS, &job);
    h.reconcile("bad-regex").await.expect("reconcile");
    let (_, _, message) = h.condition("bad-regex", "ConfigValid");
    assert!(message.contains("spec.pipeline[0].filter.value: not a valid regular expression"), "{message}");
}

#[tokio::test]
async fn conflicts_and_throttling_are_retried_with_per_job_backoff() {
    let h = harness();
    h.api.create(JOBS, &fixed_size_wordcount());
    h.api.fail_next(Method::PATCH, "/statefulsets/", 409, 2);
    h.api.fail_next(Method::GET, "/pods", 429, 1);

    let job = Arc::new(h.job("wordcount"));
    let first = h.reconcile("wordcount").await.expect_err("409 surfaces");
    assert_eq!(first.reason(), "Api409");
    assert_eq!(error_policy(job.clone(), &first, h.context.clone()), Action::requeue(Duration::from_secs(1)));
    let second = h.reconcile("wordcount").await.expect_err("409 again");
    assert_eq!(error_policy(job.clone(), &second, h.context.clone()), Action::requeue(Duration::from_secs(2)));
    let third = h.reconcile("wordcount").await.expect_err("429 on listing pods");
    assert_eq!(third.reason(), "Api429");
    assert_eq!(error_policy(job.clone(), &third, h.context.clone()), Action::requeue(Duration::from_secs(4)));

    h.reconcile("wordcount").await.expect("succeeds once the API recovers");
    assert_eq!(h.replicas("wordcount"), 2);
    assert_eq!(
        error_policy(job, &first, h.context.clone()),
        Action::requeue(Duration::from_secs(1)),
        "success resets the backoff"
    );
    assert!(h.events().iter().any(|(r, n)| r == "ReconcileError" && n.contains("409")));
}

#[tokio::test]
async fn crash_looping_workers_make_the_job_degraded() {
    let h = harness();
    h.api.create(JOBS, &fixed_size_wordcount());
    h.reconcile("wordcount").await.expect("create");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "wordcount-0", "namespace": NS,
                     "labels": {"app.kubernetes.io/name": "streamjob-worker", "app.kubernetes.io/instance": "wordcount"}},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "worker", "image": "w", "imageID": "", "ready": false, "restartCount": 6,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed container"}}}]}
    }))
    .expect("pod");
    h.api.create(PODS, &pod);
    h.reconcile("wordcount").await.expect("reconcile");
    assert_eq!(h.phase("wordcount"), Some(Phase::Degraded));
    let (status, reason, message) = h.condition("wordcount", "Degraded");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "CrashLooping"));
    assert!(message.contains("pod wordcount-0: container worker is CrashLoopBackOff (restarts 6)"), "{message}");
}

#[tokio::test]
async fn consumer_group_finalizer_never_blocks_deletion_forever() {
    let h = harness();
    h.api.create(JOBS, &example("passthrough-exactly-once.yaml"));
    h.reconcile("orders-mirror").await.expect("create");
    assert!(h
        .job("orders-mirror")
        .metadata
        .finalizers
        .unwrap_or_default()
        .contains(&CONSUMER_GROUP_FINALIZER.to_owned()));

    h.api.create(JOBS, &{
        let mut retained = fixed_size_wordcount();
        retained.metadata.name = Some("retained".into());
        retained
    });
    h.reconcile("retained").await.expect("create retained");
    assert!(h.job("retained").metadata.finalizers.unwrap_or_default().is_empty(), "Retain needs no finalizer");

    let client = h.context.client.clone();
    let jobs: kube::Api<StreamJob> = kube::Api::namespaced(client, NS);
    jobs.delete("orders-mirror", &Default::default()).await.expect("delete accepted");
    for attempt in 1..MAX_GROUP_DELETION_ATTEMPTS {
        let action = h.reconcile("orders-mirror").await.expect("finalize attempt");
        assert_ne!(action, Action::await_change(), "attempt {attempt} retries");
    }
    h.reconcile("orders-mirror").await.expect("last attempt");
    assert_eq!(h.deleter.calls.load(Ordering::SeqCst), MAX_GROUP_DELETION_ATTEMPTS);
    assert!(h.api.get::<StreamJob>(JOBS, NS, "orders-mirror").is_none(), "the job is gone");
    assert!(h.api.get::<StatefulSet>(STATEFUL_SETS, NS, "orders-mirror").is_none(), "children collected");
    assert!(h.events().iter().any(|(r, n)| r == "ConsumerGroupNotDeleted" && n.contains("after 5 attempts")));
}
