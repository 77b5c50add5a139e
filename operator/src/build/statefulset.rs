//! The StatefulSet that runs the workers: the pod template, its one container, its environment
//! and its volumes.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use streamjob_crds::{worker_paths, StreamJob, StreamJobSpec};

use super::credentials::{ca_mounts, ca_volumes, credential_env};
use super::{
    child_labels, child_meta, config_map_name, selector_labels, BuildContext, CONFIG_CHECKSUM_ANNOTATION,
    CREDENTIALS_CHECKSUM_ANNOTATION, WORKER_HTTP_PORT,
};

/// Time a worker gets to stop fetching, drain, flush and commit.
pub const TERMINATION_GRACE_SECONDS: i64 = 60;
/// UID and GID the worker image runs as (distroless `nonroot`).
pub const WORKER_UID: i64 = 65532;

const CONFIG_VOLUME: &str = "config";
const TMP_VOLUME: &str = "tmp";

/// The StatefulSet; `checksum` is the worker configuration's (see [`super::config_checksum`]).
pub fn build_stateful_set(job: &StreamJob, context: &BuildContext, checksum: &str) -> StatefulSet {
    let name = job.name_any();
    let mut pod_labels = job.spec.pod_labels.clone();
    pod_labels.extend(child_labels(&name));
    let mut pod_annotations = job.spec.pod_annotations.clone();
    pod_annotations.insert(CONFIG_CHECKSUM_ANNOTATION.to_owned(), checksum.to_owned());
    if let Some(credentials) = &context.credentials_checksum {
        pod_annotations.insert(CREDENTIALS_CHECKSUM_ANNOTATION.to_owned(), credentials.clone());
    }
    StatefulSet {
        metadata: child_meta(job, name.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(context.replicas),
            service_name: Some(name.clone()),
            pod_management_policy: Some("Parallel".to_owned()),
            selector: LabelSelector { match_labels: Some(selector_labels(&name)), ..LabelSelector::default() },
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                ..StatefulSetUpdateStrategy::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(build_pod_spec(job, context)),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

fn build_pod_spec(job: &StreamJob, context: &BuildContext) -> PodSpec {
    let spec = &job.spec;
    PodSpec {
        service_account_name: spec.service_account_name.clone(),
        automount_service_account_token: Some(false),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(WORKER_UID),
            run_as_group: Some(WORKER_UID),
            fs_group: Some(WORKER_UID),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), ..SeccompProfile::default() }),
            ..PodSecurityContext::default()
        }),
        containers: vec![build_worker_container(job, context)],
        volumes: Some(build_volumes(job)),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        affinity: spec.affinity.clone(),
        ..PodSpec::default()
    }
}

/// The restricted Pod Security Standard's container settings.
pub fn restricted_container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), ..Capabilities::default() }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), ..SeccompProfile::default() }),
        ..SecurityContext::default()
    }
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http-metrics".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".to_owned())),
            ("memory".to_owned(), Quantity("128Mi".to_owned())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), Quantity("512Mi".to_owned()))])),
        ..ResourceRequirements::default()
    }
}

fn build_worker_container(job: &StreamJob, context: &BuildContext) -> Container {
    let spec = &job.spec;
    let mut volume_mounts = vec![
        VolumeMount {
            name: CONFIG_VOLUME.to_owned(),
            mount_path: worker_paths::CONFIG_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount { name: TMP_VOLUME.to_owned(), mount_path: "/tmp".to_owned(), ..VolumeMount::default() },
    ];
    volume_mounts.extend(ca_mounts(spec));
    Container {
        name: "worker".to_owned(),
        image: Some(spec.image.clone().unwrap_or_else(|| context.default_worker_image.clone())),
        image_pull_policy: spec.image_pull_policy.map(|policy| format!("{policy:?}")),
        args: Some(vec!["--config".to_owned(), worker_paths::config_file()]),
        env: Some(build_env(spec)),
        ports: Some(vec![ContainerPort {
            name: Some("http-metrics".to_owned()),
            container_port: WORKER_HTTP_PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(restricted_container_security_context()),
        volume_mounts: Some(volume_mounts),
        ..Container::default()
    }
}

fn field_ref_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Downward-API identity, Kafka credentials by Secret reference, then the job's own env.
fn build_env(spec: &StreamJobSpec) -> Vec<EnvVar> {
    let mut env = vec![
        field_ref_env(worker_paths::POD_NAME_ENV, "metadata.name"),
        field_ref_env(worker_paths::POD_NAMESPACE_ENV, "metadata.namespace"),
    ];
    env.extend(credential_env(spec));
    env.extend(spec.env.iter().cloned());
    env
}

fn build_volumes(job: &StreamJob) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: CONFIG_VOLUME.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(&job.name_any()),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume { name: TMP_VOLUME.to_owned(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() },
    ];
    volumes.extend(ca_volumes(&job.spec));
    volumes
}
