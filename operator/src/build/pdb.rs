//! The PodDisruptionBudget: voluntary disruptions (node drains) take one worker at a time.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use streamjob_crds::StreamJob;

use super::{child_meta, selector_labels};

pub fn build_pod_disruption_budget(job: &StreamJob) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(job, job.name_any()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&job.name_any())),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}
