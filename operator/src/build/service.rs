//! The headless Service that names the workers and carries their metrics port.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use streamjob_crds::StreamJob;

use super::{child_meta, selector_labels, WORKER_HTTP_PORT};

pub fn build_service(job: &StreamJob) -> Service {
    Service {
        metadata: child_meta(job, job.name_any()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: Some(selector_labels(&job.name_any())),
            ports: Some(vec![ServicePort {
                name: Some("http-metrics".to_owned()),
                port: WORKER_HTTP_PORT,
                target_port: Some(IntOrString::String("http-metrics".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
