//! Which job uses which consumer group: two jobs (in any namespaces) that resolve to one group
//! would split each other's partitions and share window state, so the later one is held with a
//! condition and an event instead of sharing in silence.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::{Api, Client, ResourceExt};
use streamjob_crds::StreamJob;
use streamjob_runtime::sync::lock;

/// Stale claims (jobs deleted unseen) checked per reconcile before giving up.
const MAX_STALE_CLAIMS: usize = 4;

/// A job's identity for ordering claims: older first, then namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Claimant {
    created: Option<i64>,
    namespace: String,
    name: String,
}

impl Claimant {
    fn of(job: &StreamJob) -> Self {
        Self {
            // A job not yet stored (no timestamp) sorts after every stored one.
            created: job.creation_timestamp().map(|t| t.0.as_second()).or(Some(i64::MAX)),
            namespace: job.namespace().unwrap_or_default(),
            name: job.name_any(),
        }
    }

    fn same_job(&self, other: &Self) -> bool {
        self.namespace == other.namespace && self.name == other.name
    }
}

/// The consumer group each reconciled job resolved to. Filled as jobs are reconciled (every job
/// is, when the operator starts), emptied as they are deleted.
#[derive(Default)]
pub struct GroupClaims(Mutex<HashMap<(String, String), (String, Claimant)>>);

impl GroupClaims {
    /// Records that `job` uses its consumer group; returns the problem when an older job (by
    /// creation time, then namespace/name) already uses that group.
    pub fn claim(&self, job: &StreamJob) -> Option<String> {
        let group = job.consumer_group();
        let me = Claimant::of(job);
        let mut claims = lock(&self.0);
        claims.insert((me.namespace.clone(), me.name.clone()), (group.clone(), me.clone()));
        let owner = claims
            .values()
            .filter(|(claimed, claimant)| *claimed == group && !claimant.same_job(&me))
            .map(|(_, claimant)| claimant)
            .min()?;
        (*owner < me).then(|| {
            format!(
                "consumer group {group} is already used by StreamJob {}/{}: two jobs in one group split each \
                 other's partitions and share window state; set spec.source.consumerGroup to a group of this \
                 job's own",
                owner.namespace, owner.name
            )
        })
    }

    /// [`Self::claim`], checking with the API server that the job holding the group still exists
    /// and still uses it: a job deleted without a finalizer is never reconciled again, so its
    /// claim is only found stale here.
    pub async fn claim_checked(&self, job: &StreamJob, client: &Client) -> Result<Option<String>, kube::Error> {
        for _ in 0..MAX_STALE_CLAIMS {
            let Some(problem) = self.claim(job) else { return Ok(None) };
            let Some(owner) = self.owner_of(job) else { return Ok(None) };
            let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &owner.namespace);
            match jobs.get_opt(&owner.name).await? {
                Some(current) if current.consumer_group() == job.consumer_group() => return Ok(Some(problem)),
                Some(current) => {
                    self.claim(&current);
                }
                None => self.release(&owner.namespace, &owner.name),
            }
        }
        Ok(self.claim(job))
    }

    /// The other job claiming `job`'s group, if it is older.
    fn owner_of(&self, job: &StreamJob) -> Option<Claimant> {
        let group = job.consumer_group();
        let me = Claimant::of(job);
        let claims = lock(&self.0);
        let owner = claims
            .values()
            .filter(|(claimed, claimant)| *claimed == group && !claimant.same_job(&me))
            .map(|(_, claimant)| claimant)
            .min()?;
        (*owner < me).then(|| owner.clone())
    }

    /// Forgets a deleted job.
    pub fn release(&self, namespace: &str, name: &str) {
        lock(&self.0).remove(&(namespace.to_owned(), name.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use streamjob_crds::parse_manifest;

    fn job(namespace: &str, name: &str, group: Option<&str>, created: i64) -> StreamJob {
        let yaml = format!(
            "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
             spec:\n  source: {{bootstrapServers: 'k:9092', topics: [in]}}\n  sink: {{topic: out}}\n"
        );
        let mut job = parse_manifest(&yaml).expect("valid test job");
        job.spec.source.consumer_group = group.map(str::to_owned);
        job.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).expect("a time")));
        job
    }

    #[test]
    fn the_later_of_two_jobs_in_one_group_is_held_whatever_the_reconcile_order() {
        for older_first in [true, false] {
            let claims = GroupClaims::default();
            let older = job("team-a", "orders", Some("shared"), 100);
            let younger = job("team", "a-orders", Some("shared"), 200);
            let (first, second) = if older_first { (&older, &younger) } else { (&younger, &older) };
            claims.claim(first);
            claims.claim(second);
            assert_eq!(claims.claim(&older), None, "the older job keeps its group");
            let problem = claims.claim(&younger).expect("the younger job is held");
            assert!(problem.contains("shared") && problem.contains("team-a/orders"), "{problem}");
            claims.release("team-a", "orders");
            assert_eq!(claims.claim(&younger), None, "free once the older job is gone");
        }
    }

    #[test]
    fn default_groups_of_names_that_collided_do_not_conflict() {
        let claims = GroupClaims::default();
        assert_eq!(claims.claim(&job("team-a", "orders", None, 100)), None);
        assert_eq!(claims.claim(&job("team", "a-orders", None, 200)), None);
        // A user-set group equal to another job's default group does.
        assert!(claims.claim(&job("other", "x", Some("streamjob.team-a.orders"), 300)).is_some());
    }

    #[test]
    fn a_job_that_changes_its_group_leaves_the_old_one() {
        let claims = GroupClaims::default();
        assert_eq!(claims.claim(&job("a", "one", Some("g1"), 100)), None);
        assert_eq!(claims.claim(&job("a", "one", Some("g2"), 100)), None);
        assert_eq!(claims.claim(&job("b", "two", Some("g1"), 200)), None);
    }
}
