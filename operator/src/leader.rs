//! Leader election on a `coordination.k8s.io` Lease with client-go's semantics: a standby takes
//! the lease only after it has seen the same record unchanged for the lease duration (its own
//! clock, so clock skew does not matter); the leader renews every retry period and steps down
//! when it has not renewed within the renew deadline, which is shorter than the lease duration.
//! So a leader that cannot reach the API server stops acting before any standby may start: never
//! two leaders. Every write is a merge patch carrying the `resourceVersion` it read (a
//! compare-and-swap), and needs only `get` and `patch` on the one Lease.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::time::Instant;

/// Timings of the election, as client-go names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseTimings {
    /// How long a standby waits on an unchanged record before it takes the lease.
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby looks.
    pub retry_period: Duration,
}

impl LeaseTimings {
    /// client-go's proportions (15 s / 10 s / 2 s): renew deadline 2/3 of the duration, retry
    /// period 2/15 of it (at least 200 ms).
    pub fn for_duration(lease_duration_seconds: u64) -> Self {
        let lease_duration = Duration::from_secs(lease_duration_seconds.max(1));
        Self {
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: (lease_duration * 2 / 15).max(Duration::from_millis(200)),
        }
    }
}

/// Why the leader stopped leading.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SteppedDown {
    #[error("could not renew the lease within the renew deadline of {0:?} (last renewal {1:?} ago)")]
    RenewDeadline(Duration, Duration),
    #[error("the lease is held by {0}")]
    TakenBy(String),
}

/// Why one look at the lease failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("reading Lease {0}: {1}")]
    Read(String, #[source] kube::Error),
    #[error("writing Lease {0}: {1}")]
    Write(String, #[source] kube::Error),
    #[error("Lease {0} does not exist (the chart creates it)")]
    Missing(String),
    #[error("no answer from the API server within {0:?}")]
    Timeout(Duration),
}

/// The part of a Lease record that changes when anyone renews or takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub holder: Option<String>,
    pub renew_time: Option<String>,
    pub resource_version: Option<String>,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec.and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0.to_string()),
            resource_version: lease.resource_version(),
        }
    }
}

/// Whether `identity` may write itself into the lease now: it holds it already, nobody does, or
/// the record has not changed for a whole lease duration since `observed_at`.
pub fn may_take(record: &Record, identity: &str, observed_at: Instant, now: Instant, lease_duration: Duration) -> bool {
    match record.holder.as_deref() {
        None => true,
        Some(holder) if holder == identity => true,
        Some(_) => now.saturating_duration_since(observed_at) >= lease_duration,
    }
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: LeaseTimings,
    /// The last record seen and when (this process's clock) it was first seen.
    observed: Option<(Record, Instant)>,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, timings: LeaseTimings) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timings,
            observed: None,
        }
    }

    /// One client-go `tryAcquireOrRenew`: `Ok(None)` when this replica holds the lease now,
    /// `Ok(Some(holder))` when another does.
    async fn try_acquire_or_renew(&mut self) -> Result<Option<String>, LeaseError> {
        let lease = self.api.get_opt(&self.name).await.map_err(|e| LeaseError::Read(self.name.clone(), e))?;
        let lease = lease.ok_or_else(|| LeaseError::Missing(self.name.clone()))?;
        let record = Record::of(&lease);
        let now = Instant::now();
        let observed_at = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => now,
        };
        self.observed = Some((record.clone(), observed_at));
        if !may_take(&record, &self.identity, observed_at, now, self.timings.lease_duration) {
            return Ok(record.holder);
        }
        let spec = lease.spec.unwrap_or_default();
        let taking = record.holder.as_deref() != Some(self.identity.as_str());
        let stamp = MicroTime(Timestamp::now());
        let mut patch = json!({
            "metadata": { "resourceVersion": record.resource_version },
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.timings.lease_duration.as_secs(),
                "renewTime": stamp,
            }
        });
        if taking {
            patch["spec"]["acquireTime"] = json!(stamp);
            patch["spec"]["leaseTransitions"] = json!(spec.lease_transitions.unwrap_or(0) + 1);
        }
        let written = self
            .api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| LeaseError::Write(self.name.clone(), e))?;
        self.observed = Some((Record::of(&written), Instant::now()));
        Ok(None)
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&mut self) {
        loop {
            let attempt = tokio::time::timeout(self.timings.retry_period * 2, self.try_acquire_or_renew()).await;
            match attempt {
                Ok(Ok(None)) => return,
                Ok(Ok(Some(holder))) => tracing::debug!(%holder, "the lease is held by another replica"),
                Ok(Err(error)) => tracing::warn!(%error, "could not take the leader lease; retrying"),
                Err(_) => tracing::warn!("no answer from the API server about the leader lease; retrying"),
            }
            tokio::time::sleep(self.timings.retry_period).await;
        }
    }

    /// Renews the lease every retry period while this replica leads; returns as soon as it must
    /// stop: another replica holds the lease, or no renewal succeeded within the renew deadline
    /// (each attempt is cut off at the deadline). Call right after [`Self::acquire`].
    pub async fn hold(&mut self) -> SteppedDown {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.timings.retry_period).await;
            let started = Instant::now();
            let deadline = renewed + self.timings.renew_deadline;
            let left = deadline.saturating_duration_since(started);
            let attempt = match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(result) => result,
                Err(_) => Err(LeaseError::Timeout(left)),
            };
            match attempt {
                Ok(None) => renewed = started,
                Ok(Some(holder)) => return SteppedDown::TakenBy(holder),
                Err(error) => tracing::warn!(%error, "could not renew the leader lease"),
            }
            let now = Instant::now();
            if now >= renewed + self.timings.renew_deadline {
                return SteppedDown::RenewDeadline(self.timings.renew_deadline, now - renewed);
            }
        }
    }

    /// Gives the lease up (on shutdown), so that a standby need not wait for it to expire.
    /// Best effort: a failure only means the standby waits the lease duration.
    pub async fn release(&mut self) {
        let Some((record, _)) = self.observed.clone() else { return };
        if record.holder.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        let patch = json!({
            "metadata": { "resourceVersion": record.resource_version },
            "spec": { "holderIdentity": null, "leaseDurationSeconds": 1 }
        });
        let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
        let released = self.api.patch(&self.name, &params, &patch);
        match tokio::time::timeout(self.timings.retry_period, released).await {
            Ok(Ok(_)) => tracing::info!("released the leader lease"),
            Ok(Err(error)) => tracing::warn!(%error, "could not release the leader lease"),
            Err(_) => tracing::warn!("no answer while releasing the leader lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_follow_client_go_and_the_renew_deadline_ends_before_the_lease() {
        let timings = LeaseTimings::for_duration(15);
        assert_eq!(
            timings,
            LeaseTimings {
                lease_duration: Duration::from_secs(15),
                renew_deadline: Duration::from_secs(10),
                retry_period: Duration::from_secs(2),
            }
        );
        for seconds in [1, 2, 5, 15, 60, 137] {
            let t = LeaseTimings::for_duration(seconds);
            assert!(t.retry_period < t.renew_deadline && t.renew_deadline < t.lease_duration, "{t:?}");
        }
    }

    fn record(holder: Option<&str>) -> Record {
        Record { holder: holder.map(str::to_owned), renew_time: Some("t".into()), resource_version: Some("1".into()) }
    }

    /// (holder, seconds the record has been seen unchanged) → may "me" take it?
    #[test]
    fn a_standby_takes_the_lease_only_once_the_record_stood_still_a_whole_duration() {
        let duration = Duration::from_secs(15);
        let cases = [
            (None, 0, true),
            (Some("me"), 0, true),
            (Some("other"), 0, false),
            (Some("other"), 14, false),
            (Some("other"), 15, true),
            (Some("other"), 100, true),
        ];
        let start = Instant::now();
        for (holder, seen_for, expected) in cases {
            let now = start + Duration::from_secs(seen_for);
            assert_eq!(may_take(&record(holder), "me", start, now, duration), expected, "{holder:?} {seen_for}");
        }
    }
}
