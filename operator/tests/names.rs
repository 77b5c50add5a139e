//! The consumer group a job gets, through the reconciler and the in-memory API server: a job
//! that ran under the old `streamjob-<namespace>-<name>` keeps it, a new job gets
//! `streamjob.<namespace>.<name>`, and a job whose group an older job of another namespace
//! already uses is held with `ConfigValid=False` and an event, its workers never started.

mod common;

use std::sync::Arc;

use common::{example, harness, CONFIG_MAPS, EVENTS, JOBS, NS, STATEFUL_SETS};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{json, Value};
use streamjob_crds::StreamJob;
use streamjob_operator::controller::reconcile;
use streamjob_testkit::fixtures::JobFixture;

fn worker_group(config_map: &ConfigMap) -> String {
    let yaml = &config_map.data.as_ref().expect("data")["job.yaml"];
    let job: StreamJob = serde_yaml::from_str(yaml).expect("the worker config is a StreamJob");
    job.spec.source.consumer_group.expect("the group is resolved")
}

#[tokio::test]
async fn a_job_that_ran_under_the_old_name_keeps_its_group_and_a_new_job_gets_the_unambiguous_one() {
    let h = harness();
    h.api.create(JOBS, &example("wordcount.yaml").named("legacy").fixed(1));
    h.api.edit(
        JOBS,
        NS,
        "legacy",
        &json!({"status": {"consumerGroup": "streamjob-team-legacy", "observedGeneration": 1}}),
    );
    h.api.create(JOBS, &example("wordcount.yaml").named("fresh").fixed(1));
    for name in ["legacy", "fresh"] {
        h.reconcile(name).await.expect("reconciled");
    }
    let groups: Vec<(String, Option<String>)> = ["legacy", "fresh"]
        .iter()
        .map(|name| {
            let map: ConfigMap = h.api.get(CONFIG_MAPS, NS, &format!("{name}-config")).expect("ConfigMap");
            (worker_group(&map), h.job(name).status.and_then(|s| s.consumer_group))
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("streamjob-team-legacy".to_owned(), Some("streamjob-team-legacy".to_owned())),
            ("streamjob.team.fresh".to_owned(), Some("streamjob.team.fresh".to_owned())),
        ]
    );
}

#[tokio::test]
async fn a_job_whose_group_an_older_job_uses_is_held_with_a_condition_and_an_event() {
    let h = harness();
    let shared = |job: StreamJob, namespace: &str, name: &str| {
        let mut job = job.named(name).fixed(1);
        job.metadata.namespace = Some(namespace.to_owned());
        job.spec.source.consumer_group = Some("shared".to_owned());
        job
    };
    // Same creation time in the fake: the tie goes to the namespace first in order ("team").
    h.api.create(JOBS, &shared(example("wordcount.yaml"), NS, "orders"));
    h.api.create(JOBS, &shared(example("wordcount.yaml"), "zeta", "orders"));
    let get = |namespace: &str| -> StreamJob { h.api.get(JOBS, namespace, "orders").expect("stored") };
    // A started operator reconciles every job; here the older one first, then the younger.
    reconcile(Arc::new(get(NS)), h.context.clone()).await.expect("older reconciled");
    reconcile(Arc::new(get("zeta")), h.context.clone()).await.expect("younger reconciled");

    assert!(h.api.get::<StatefulSet>(STATEFUL_SETS, NS, "orders").is_some(), "the older job runs");
    assert!(h.api.get::<StatefulSet>(STATEFUL_SETS, "zeta", "orders").is_none(), "the younger job starts no workers");
    let held = get("zeta").status.expect("status");
    let condition = held.conditions.iter().find(|c| c.type_ == "ConfigValid").expect("ConfigValid");
    assert_eq!(condition.status, "False");
    assert!(
        condition.message.contains("consumer group shared is already used by StreamJob team/orders"),
        "{}",
        condition.message
    );
    let events: Vec<Value> = h.api.list(EVENTS, "zeta");
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "InvalidConfig" && e["note"].as_str().is_some_and(|n| n.contains("team/orders"))),
        "{events:?}"
    );

    // The older job goes (deleted without a finalizer, never reconciled again): the younger one
    // finds the claim stale on its next check and runs.
    let jobs: kube::Api<StreamJob> = kube::Api::namespaced(h.context.client.clone(), NS);
    jobs.delete("orders", &Default::default()).await.expect("deleted");
    reconcile(Arc::new(get("zeta")), h.context.clone()).await.expect("rechecked");
    assert!(h.api.get::<StatefulSet>(STATEFUL_SETS, "zeta", "orders").is_some(), "the younger job runs now");
}
