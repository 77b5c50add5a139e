//! `streamjob-operator run`: leader election, the controllers, and the health/metrics server.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::{predicates, reflector, watcher, Controller, Predicate, PredicateConfig, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use streamjob_crds::StreamJob;

use crate::autoscaler::driver::Autoscaler;
use crate::autoscaler::view::ClusterView;
use streamjob_runtime::http::{serve, Health};
use streamjob_runtime::shutdown::shutdown_signal;

use crate::build::{FIELD_MANAGER, MANAGED_BY_LABEL};
use crate::controller::{error_policy, reconcile, Context, ScaleDecisions};
use crate::kafka::KafkaGroupDeleter;
use crate::leader::{Elector, LeaseTimings};
use crate::metrics::{JobLabels, Metrics};

/// Settings of `run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Namespaces to watch; empty for all.
    pub namespaces: Vec<String>,
    pub worker_image: String,
    pub metrics_addr: SocketAddr,
    pub leader_election: bool,
    pub lease_name: String,
    pub lease_namespace: String,
    pub lease_duration_seconds: u64,
    /// This replica's identity in the lease (the pod name in a cluster).
    pub identity: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(#[from] kube::Error),
    #[error("cannot listen on {address} for /healthz, /readyz and /metrics: {source}")]
    Listen { address: std::net::SocketAddr, source: std::io::Error },
    #[error("the health server failed: {0}")]
    Server(#[from] std::io::Error),
}

/// Runs against the cluster in KUBECONFIG or the in-cluster service account.
pub async fn run(options: RunOptions) -> Result<(), RunError> {
    run_with_client(Client::try_default().await?, options).await
}

/// Runs until SIGTERM/SIGINT; with leader election, reconciles only while it holds the lease.
pub async fn run_with_client(client: Client, options: RunOptions) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let health = Health {
        metrics: metrics.clone(),
        ready: ready.clone(),
        not_ready: "starting, or cannot reach the Kubernetes API server",
    };
    let listener = tokio::net::TcpListener::bind(options.metrics_addr)
        .await
        .map_err(|source| RunError::Listen { address: options.metrics_addr, source })?;
    let server = tokio::spawn(serve(listener, health, shutdown_signal()));

    let mut elector = options.leader_election.then(|| {
        let timings = LeaseTimings::for_duration(options.lease_duration_seconds);
        Elector::new(client.clone(), &options.lease_namespace, &options.lease_name, &options.identity, timings)
    });
    // A standby replica is ready too: it serves probes while it waits for the lease. Either is
    // not ready while the API server cannot be reached.
    let reachability = tokio::spawn(follow_api_reachability(client.clone(), ready.clone()));

    // Lead, and after stepping down stand by again: the controllers, the autoscaler and every
    // reconcile in flight stop when `lead` is dropped.
    loop {
        if let Some(elector) = elector.as_mut() {
            tracing::info!(identity = %options.identity, lease = %options.lease_name, "waiting for the leader lease");
            tokio::select! {
                () = elector.acquire() => {}
                () = shutdown_signal() => break,
            }
            tracing::info!(identity = %options.identity, "acquired the leader lease; reconciling");
        }
        metrics.leader.set(1);
        let leading = lead(&client, &options, &metrics);
        let stepped_down = match elector.as_mut() {
            Some(elector) => tokio::select! {
                () = leading => None,
                reason = elector.hold() => Some(reason),
            },
            None => {
                leading.await;
                None
            }
        };
        metrics.leader.set(0);
        match stepped_down {
            Some(reason) => {
                tracing::warn!(identity = %options.identity, %reason, "stepped down: stopped reconciling and autoscaling")
            }
            None => break,
        }
    }
    if let Some(elector) = elector.as_mut() {
        elector.release().await;
    }
    reachability.abort();
    server.abort();
    Ok(())
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Everything a leader does, until shutdown; dropping it stops all of it.
async fn lead(client: &Client, options: &RunOptions, metrics: &Arc<Metrics>) {
    let context = Arc::new(Context::new(
        client.clone(),
        Recorder::new(
            client.clone(),
            Reporter { controller: "streamjob-operator".into(), instance: Some(options.identity.clone()) },
        ),
        options.worker_image.clone(),
        metrics.clone(),
        Arc::new(ScaleDecisions::default()),
        Arc::new(KafkaGroupDeleter::new(client.clone())),
    ));
    let scopes: Vec<Option<String>> =
        if options.namespaces.is_empty() { vec![None] } else { options.namespaces.iter().cloned().map(Some).collect() };
    let (view, view_tasks) = ClusterView::start(client, &scopes);
    let _view_tasks: Vec<AbortOnDrop> = view_tasks.into_iter().map(AbortOnDrop).collect();
    let controllers: Vec<(Option<String>, JobController)> =
        scopes.into_iter().map(|ns| (ns.clone(), job_controller(client, ns.as_deref(), &context))).collect();
    let stores: Vec<Store<StreamJob>> = controllers.iter().map(|(_, controller)| controller.store()).collect();
    // Stopped with the controllers, also when a leader steps down and drops them.
    let _job_metrics = AbortOnDrop(tokio::spawn(follow_job_metrics(stores.clone(), metrics.clone())));
    let _autoscaling = AbortOnDrop(tokio::spawn(Arc::new(Autoscaler::with_view(context.clone(), view)).run(stores)));
    futures::future::join_all(
        controllers.into_iter().map(|(ns, controller)| run_controller(controller, ns, context.clone())),
    )
    .await;
}

/// How often `/readyz` checks that the API server answers, and how long it waits for it.
const REACHABILITY_INTERVAL: Duration = Duration::from_secs(2);

/// Keeps `ready` true exactly while the API server answers.
async fn follow_api_reachability(client: Client, ready: Arc<AtomicBool>) {
    loop {
        let reachable =
            matches!(tokio::time::timeout(REACHABILITY_INTERVAL, client.apiserver_version()).await, Ok(Ok(_)));
        if ready.swap(reachable, Ordering::Relaxed) != reachable {
            if reachable {
                tracing::info!("the Kubernetes API server answers again");
            } else {
                tracing::warn!("cannot reach the Kubernetes API server; /readyz says not ready");
            }
        }
        tokio::time::sleep(REACHABILITY_INTERVAL).await;
    }
}

/// Retry delays of the watches after an error: 250 ms doubling to at most 4 s, so that once an
/// API server is back (after a restart or an upgrade) the operator hears of changes within
/// seconds. kube's default grows to 30 s and, with the reconcile backoff behind it, left the
/// operator deaf for minutes.
#[derive(Clone, Debug, Default)]
struct WatchBackoff {
    failures: u32,
}

const WATCH_BACKOFF_FIRST: Duration = Duration::from_millis(250);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(4);

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = WATCH_BACKOFF_FIRST.saturating_mul(1 << self.failures.min(8));
        self.failures = self.failures.saturating_add(1);
        Some(delay.min(WATCH_BACKOFF_MAX))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The controller's backoff over all its watches together: none, since each watch has its own.
struct NoWait;

impl Iterator for NoWait {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for NoWait {
    fn reset(&mut self) {}
}

type JobController = Controller<StreamJob>;

/// Reconciles in flight at once, per watched scope. Unbounded, 1 000 jobs waking together (an
/// operator start, an API server restart) held 1 000 requests and their connections at once:
/// a peak of 225 MiB on the real API server.
const MAX_CONCURRENT_RECONCILES: u16 = 16;

/// The StreamJob controller of one scope (a namespace, or all), woken by changes to the jobs and
/// to the children it owns. Each watch backs off on its own ([`WatchBackoff`]): one shared
/// backoff made every watch wait out every other's error after an API server restart. The job
/// cache keeps no `managedFields`; the children are watched by label, metadata only, uncached.
/// The context's reconcile requests (for findings outside the API server) wake it too.
fn job_controller(client: &Client, scope: Option<&str>, context: &Context) -> JobController {
    let in_scope = scope.map(str::to_owned);
    let requests = context
        .reconcile_requests()
        .filter(move |job| std::future::ready(in_scope.is_none() || job.namespace.as_deref() == in_scope.as_deref()));
    let (jobs, writer) = reflector::store();
    let job_changes = watcher(scoped_api::<StreamJob>(client, scope), watcher::Config::default())
        .backoff(WatchBackoff::default())
        .modify(|job| job.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects()
        .predicate_filter(spec_or_metadata_changed, PredicateConfig::default());
    Controller::for_stream(job_changes, jobs)
        .owns_stream(child_changes::<StatefulSet>(client, scope))
        .owns_stream(child_changes::<ConfigMap>(client, scope))
        .owns_stream(child_changes::<Service>(client, scope))
        .owns_stream(child_changes::<PodDisruptionBudget>(client, scope))
        .reconcile_on(requests)
        .trigger_backoff(NoWait)
        .with_config(kube::runtime::controller::Config::default().concurrency(MAX_CONCURRENT_RECONCILES))
        .shutdown_on_signal()
}

/// What a reconcile acts on: the spec (its generation), the annotations (pause), labels,
/// finalizers and the deletion. A change to the status alone (the reconciler's own write, or
/// the autoscaler's lag readings) does not wake the reconciler, as controller-runtime's
/// `GenerationChangedPredicate`; the cache still holds the new status.
fn spec_or_metadata_changed(job: &StreamJob) -> Option<u64> {
    let deletion = |job: &StreamJob| {
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&job.metadata.deletion_timestamp.as_ref().map(|t| t.0.to_string()), &mut hasher);
        Some(std::hash::Hasher::finish(&hasher))
    };
    predicates::generation
        .combine(predicates::annotations)
        .combine(predicates::labels)
        .combine(predicates::finalizers)
        .combine(deletion)
        .hash_property(job)
}

/// Changes to the `K`s the operator manages (by their `managed-by` label), metadata only.
fn child_changes<K>(
    client: &Client,
    scope: Option<&str>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let selector = format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}");
    watcher(scoped_api::<PartialObjectMeta<K>>(client, scope), watcher::Config::default().labels(&selector))
        .backoff(WatchBackoff::default())
        .touched_objects()
}

/// How often the phase counts are refreshed and the series of deleted jobs removed.
const JOB_METRICS_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps the `jobs{phase}` gauge and the per-job series in line with the jobs of every watched
/// scope together: one count over all namespaces (one task per namespace made the gauge
/// alternate between their counts), and a deleted job's series removed (an alert on
/// `job_degraded` stops firing when the job is gone).
async fn follow_job_metrics(stores: Vec<Store<StreamJob>>, metrics: Arc<Metrics>) {
    loop {
        tokio::time::sleep(JOB_METRICS_INTERVAL).await;
        let jobs: Vec<Arc<StreamJob>> = stores.iter().flat_map(Store::state).collect();
        metrics.record_phases(jobs.iter().map(|job| job.as_ref()));
        let present: HashSet<JobLabels> = jobs.iter().map(|job| JobLabels::of(job)).collect();
        metrics.forget_jobs_except(&present);
    }
}

async fn run_controller(controller: JobController, namespace: Option<String>, context: Arc<Context>) {
    tracing::info!(namespace = namespace.as_deref().unwrap_or("<all>"), "watching StreamJobs");
    controller
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile did not complete");
            }
        })
        .await;
}

/// The API of `K` in one namespace, or in all.
pub(crate) fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_retries_start_fast_and_stay_within_four_seconds_until_reset() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<u64> = backoff.by_ref().take(7).map(|d| d.as_millis() as u64).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 4000, 4000]);
        kube::runtime::utils::Backoff::reset(&mut backoff);
        assert_eq!(backoff.next(), Some(WATCH_BACKOFF_FIRST));
    }
}
