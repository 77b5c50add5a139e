//! The in-memory API server harness shared by the controller and autoscaler tests, and (in
//! `kafka`) the real Kafka broker the lag tests run against.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use http::Method;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{json, Value};
use streamjob_crds::{Phase, StreamJob};
use streamjob_operator::build::CONFIG_CHECKSUM_ANNOTATION;
use streamjob_operator::controller::{
    reconcile, ConsumerGroupDeleter, Context, GroupCleanup, GroupDeletionError, ScaleDecisions,
};
use streamjob_operator::metrics::Metrics;
use streamjob_testkit::fake_api::FakeApiServer;
use streamjob_testkit::fixtures::{self, JobFixture};

pub const JOBS: &str = "/apis/streamjob.io/v1alpha1/streamjobs";
pub const STATEFUL_SETS: &str = "/apis/apps/v1/statefulsets";
pub const CONFIG_MAPS: &str = "/api/v1/configmaps";
pub const SERVICES: &str = "/api/v1/services";
pub const BUDGETS: &str = "/apis/policy/v1/poddisruptionbudgets";
pub const PODS: &str = "/api/v1/pods";
pub const EVENTS: &str = "/apis/events.k8s.io/v1/events";
pub const NS: &str = "team";

pub struct FailingDeleter {
    pub calls: AtomicU32,
}

impl ConsumerGroupDeleter for FailingDeleter {
    fn delete_group<'a>(&'a self, _job: &'a StreamJob) -> BoxFuture<'a, Result<GroupCleanup, GroupDeletionError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err("broker unreachable".into()) })
    }
}

pub struct Harness {
    pub api: FakeApiServer,
    pub context: Arc<Context>,
    pub deleter: Arc<FailingDeleter>,
}

pub fn harness() -> Harness {
    let api = FakeApiServer::new();
    let client = api.client();
    let deleter = Arc::new(FailingDeleter { calls: AtomicU32::new(0) });
    let context = Arc::new(Context::new(
        client.clone(),
        Recorder::new(client, Reporter { controller: "streamjob-operator".into(), instance: None }),
        "example.com/worker:test".to_owned(),
        Arc::new(Metrics::default()),
        Arc::new(ScaleDecisions::default()),
        deleter.clone(),
    ));
    Harness { api, context, deleter }
}

/// An example manifest in the harness's namespace.
pub fn example(file: &str) -> StreamJob {
    fixtures::example(file).in_namespace(NS)
}

impl Harness {
    pub fn job(&self, name: &str) -> StreamJob {
        self.api.get(JOBS, NS, name).expect("job stored")
    }

    pub async fn reconcile(&self, name: &str) -> Result<Action, streamjob_operator::controller::Error> {
        reconcile(Arc::new(self.job(name)), self.context.clone()).await
    }

    pub fn stateful_set(&self, name: &str) -> StatefulSet {
        self.api.get(STATEFUL_SETS, NS, name).expect("StatefulSet exists")
    }

    pub fn replicas(&self, name: &str) -> i32 {
        self.stateful_set(name).spec.and_then(|s| s.replicas).expect("replicas set")
    }

    pub fn checksum(&self, name: &str) -> String {
        let sts = self.stateful_set(name);
        sts.spec.unwrap().template.metadata.unwrap().annotations.unwrap()[CONFIG_CHECKSUM_ANNOTATION].clone()
    }

    /// Plays the StatefulSet controller: all `replicas` exist, are ready and up to date.
    pub fn workers_ready(&self, name: &str, replicas: i32) {
        let generation = self.stateful_set(name).metadata.generation.unwrap_or(1);
        self.api.edit(
            STATEFUL_SETS,
            NS,
            name,
            &json!({"status": {"replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas,
                    "observedGeneration": generation, "currentRevision": "r1", "updateRevision": "r1"}}),
        );
    }

    pub fn condition(&self, name: &str, type_: &str) -> (String, String, String) {
        let job = self.job(name);
        let condition = job
            .status
            .expect("status written")
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("condition {type_} present"));
        (condition.status, condition.reason, condition.message)
    }

    pub fn phase(&self, name: &str) -> Option<Phase> {
        self.job(name).status.and_then(|s| s.phase)
    }

    pub fn events(&self) -> Vec<(String, String)> {
        self.api
            .list(EVENTS, NS)
            .into_iter()
            .map(|e: Value| {
                (e["reason"].as_str().unwrap_or("").to_owned(), e["note"].as_str().unwrap_or("").to_owned())
            })
            .collect()
    }

    pub fn status_writes(&self) -> usize {
        self.api.count_requests(&Method::PATCH, "/status")
    }
}

#[allow(unused_imports)] // not every test binary uses both
pub use streamjob_testkit::{real_broker, unique};

/// The Kafka helpers use the worker's topic I/O, which the operator reaches only with `dev`.
#[cfg(feature = "dev")]
mod kafka;
#[cfg(feature = "dev")]
#[allow(unused_imports)] // only the broker tests use them
pub use kafka::*;
