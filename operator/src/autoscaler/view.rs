//! What the autoscaler reads of the cluster on every poll, from watches instead of requests: the
//! StatefulSets the operator manages, the workers' pods, and the StatefulSet controller's
//! `FailedCreate` events. Three requests a poll per job (a StatefulSet read, and while workers
//! were missing a pod and an event list) were 0.3 API requests per second per job at a 10 s poll
//! (300 autoscaled jobs whose pods could not run: 0.51/s per job in all, `scale_autoscaled_jobs.rs`);
//! a watch costs one request per object change. The caches keep only what the autoscaler
//! reads: no `managedFields`, no pod template, no pod spec.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

use crate::build::{selector_labels, FIELD_MANAGER, MANAGED_BY_LABEL, NAME_LABEL, WORKER_NAME};
use crate::run::scoped_api;

/// The caches of one watched scope (a namespace, or all).
struct Scope {
    stateful_sets: Store<StatefulSet>,
    pods: Store<Pod>,
    events: Store<Event>,
}

/// The autoscaler's caches over every watched scope, filled by the tasks `start` returns.
pub struct ClusterView {
    scopes: Vec<Scope>,
}

impl ClusterView {
    /// Starts the watches of each scope; the caller drives (and aborts) the returned tasks.
    pub fn start(client: &Client, scopes: &[Option<String>]) -> (Self, Vec<tokio::task::JoinHandle<()>>) {
        let mut tasks = Vec::new();
        let scopes = scopes
            .iter()
            .map(|scope| {
                let managed = format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}");
                let (stateful_sets, task) = cache(
                    scoped_api::<StatefulSet>(client, scope.as_deref()),
                    watcher::Config::default().labels(&managed),
                    |set: &mut StatefulSet| {
                        set.managed_fields_mut().clear();
                        if let Some(spec) = set.spec.as_mut() {
                            spec.template = Default::default();
                            spec.volume_claim_templates = None;
                        }
                    },
                );
                tasks.push(task);
                let workers = format!("{NAME_LABEL}={WORKER_NAME}");
                let (pods, task) = cache(
                    scoped_api::<Pod>(client, scope.as_deref()),
                    watcher::Config::default().labels(&workers),
                    |pod: &mut Pod| {
                        pod.managed_fields_mut().clear();
                        pod.spec = None;
                    },
                );
                tasks.push(task);
                let (events, task) = cache(
                    scoped_api::<Event>(client, scope.as_deref()),
                    watcher::Config::default().fields("involvedObject.kind=StatefulSet,reason=FailedCreate"),
                    |event: &mut Event| event.managed_fields_mut().clear(),
                );
                tasks.push(task);
                Scope { stateful_sets, pods, events }
            })
            .collect();
        (Self { scopes }, tasks)
    }

    /// Waits until every cache has its first full list (a cache not yet filled would read as
    /// a StatefulSet that does not exist).
    pub async fn ready(&self) {
        for scope in &self.scopes {
            let _ = scope.stateful_sets.wait_until_ready().await;
            let _ = scope.pods.wait_until_ready().await;
            let _ = scope.events.wait_until_ready().await;
        }
    }

    pub fn stateful_set(&self, namespace: &str, name: &str) -> Option<StatefulSet> {
        let key = ObjectRef::new(name).within(namespace);
        self.scopes.iter().find_map(|scope| scope.stateful_sets.get(&key)).map(|set| (*set).clone())
    }

    /// The pods of job `name`'s workers.
    pub fn worker_pods(&self, namespace: &str, name: &str) -> Vec<Pod> {
        let wanted = selector_labels(name);
        self.scopes
            .iter()
            .flat_map(|scope| scope.pods.state())
            .filter(|pod| pod.namespace().as_deref() == Some(namespace))
            .filter(|pod| wanted.iter().all(|(key, value)| pod.labels().get(key) == Some(value)))
            .map(|pod| (*pod).clone())
            .collect()
    }

    /// The `FailedCreate` events of StatefulSet `name`.
    pub fn create_failures(&self, namespace: &str, name: &str) -> Vec<Event> {
        self.scopes
            .iter()
            .flat_map(|scope| scope.events.state())
            .filter(|event| event.namespace().as_deref() == Some(namespace))
            .filter(|event| event.involved_object.name.as_deref() == Some(name))
            .map(|event| (*event).clone())
            .collect()
    }
}

/// A cache of `api`'s objects matching `config`, each trimmed by `trim`, and the task that fills
/// it (watch errors are retried with kube's default backoff and logged).
fn cache<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: impl FnMut(&mut K) + Send + 'static,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    use futures::StreamExt as _;
    let (store, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().modify(trim).reflect(writer).applied_objects();
    let task = tokio::spawn(async move {
        stream
            .for_each(|event| async move {
                if let Err(error) = event {
                    tracing::warn!(%error, kind = K::kind(&()).as_ref(), "the autoscaler's watch failed; retrying");
                }
            })
            .await;
    });
    (store, task)
}
