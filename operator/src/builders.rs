//! Pure functions from a StreamJob to the Kubernetes objects that run it. The controller applies
//! exactly what these return; `streamjob-operator render` prints it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use sha2::{Digest, Sha256};
use streamjob_crds::{worker_paths, StreamJob, StreamJobSpec};

/// Label keys every child carries.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const WORKER_NAME: &str = "streamjob-worker";
pub const FIELD_MANAGER: &str = "streamjob-operator";
/// Pod annotation whose change rolls the workers when their configuration changes.
pub const CONFIG_CHECKSUM_ANNOTATION: &str = "checksum/config";
/// Port of the worker's `/healthz`, `/readyz` and `/metrics`.
pub const WORKER_HTTP_PORT: i32 = 9090;
/// Time a worker gets to stop fetching, drain, flush and commit.
pub const TERMINATION_GRACE_SECONDS: i64 = 60;
/// UID and GID the worker image runs as (distroless `nonroot`).
pub const WORKER_UID: i64 = 65532;

const CONFIG_VOLUME: &str = "config";
const CA_VOLUME: &str = "kafka-ca";
const TMP_VOLUME: &str = "tmp";

/// What the builders need besides the job.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// Image used when the job names none.
    pub default_worker_image: String,
    /// Workers to run (see [`desired_replicas`]).
    pub replicas: i32,
}

/// The four children of a job.
#[derive(Clone, Debug, Serialize)]
pub struct Children {
    pub config_map: ConfigMap,
    pub service: Service,
    pub stateful_set: StatefulSet,
    pub pod_disruption_budget: PodDisruptionBudget,
}

/// Workers the operator runs: 0 when suspended; the autoscaler's decision (or `minReplicas`
/// before its first decision) when autoscaling is on; else `spec.replicas`.
pub fn desired_replicas(job: &StreamJob, autoscaler_decision: Option<i32>) -> i32 {
    if job.spec.suspend {
        return 0;
    }
    match &job.spec.autoscaling {
        Some(autoscaling) if autoscaling.enabled => autoscaler_decision
            .unwrap_or(autoscaling.min_replicas)
            .clamp(autoscaling.min_replicas, autoscaling.max_replicas),
        _ => job.spec.replicas.max(0),
    }
}

/// Labels that select a job's worker pods.
pub fn selector_labels(job_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(NAME_LABEL.to_owned(), WORKER_NAME.to_owned()), (INSTANCE_LABEL.to_owned(), job_name.to_owned())])
}

/// The selector as the string the scale subresource wants (`status.selector`).
pub fn selector_string(job_name: &str) -> String {
    selector_labels(job_name).iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join(",")
}

fn child_labels(job_name: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(job_name);
    labels.insert(MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned());
    labels
}

fn child_meta(job: &StreamJob, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: job.namespace(),
        labels: Some(child_labels(&job.name_any())),
        owner_references: owner_reference(job).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

/// The controller owner reference; absent for a job not yet stored (no UID), as in `render`.
fn owner_reference(job: &StreamJob) -> Option<OwnerReference> {
    job.controller_owner_ref(&())
}

/// Name of the ConfigMap holding the worker configuration.
pub fn config_map_name(job_name: &str) -> String {
    format!("{job_name}-config")
}

/// The configuration the worker reads: the job itself, reduced to what a worker needs (no pod
/// settings, no autoscaling, never a credential) and with the consumer group resolved.
pub fn worker_config(job: &StreamJob) -> StreamJob {
    let mut source = job.spec.source.clone();
    source.consumer_group = Some(job.consumer_group());
    let spec = StreamJobSpec {
        image: None,
        image_pull_policy: None,
        replicas: 1,
        suspend: false,
        source,
        pipeline: job.spec.pipeline.clone(),
        sink: job.spec.sink.clone(),
        delivery: job.spec.delivery,
        autoscaling: None,
        resources: None,
        env: Vec::new(),
        node_selector: BTreeMap::new(),
        tolerations: Vec::new(),
        affinity: None,
        service_account_name: None,
        pod_labels: BTreeMap::new(),
        pod_annotations: BTreeMap::new(),
        deletion_policy: job.spec.deletion_policy,
    };
    let mut config = StreamJob::new(&job.name_any(), spec);
    config.metadata.namespace = job.namespace();
    config
}

/// The worker configuration as the YAML file in the ConfigMap.
pub fn worker_config_yaml(job: &StreamJob) -> String {
    match serde_yaml::to_string(&worker_config(job)) {
        Ok(yaml) => yaml,
        Err(error) => unreachable!("a StreamJob always serializes to YAML: {error}"),
    }
}

/// SHA-256 of the worker configuration, hex encoded.
pub fn config_checksum(config_yaml: &str) -> String {
    Sha256::digest(config_yaml.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Builds all four children.
pub fn build_children(job: &StreamJob, context: &BuildContext) -> Children {
    let config_yaml = worker_config_yaml(job);
    Children {
        config_map: build_config_map(job, &config_yaml),
        service: build_service(job),
        stateful_set: build_stateful_set(job, context, &config_checksum(&config_yaml)),
        pod_disruption_budget: build_pod_disruption_budget(job),
    }
}

fn build_config_map(job: &StreamJob, config_yaml: &str) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(job, config_map_name(&job.name_any())),
        data: Some(BTreeMap::from([(worker_paths::CONFIG_FILE_NAME.to_owned(), config_yaml.to_owned())])),
        ..ConfigMap::default()
    }
}

fn build_service(job: &StreamJob) -> Service {
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

fn build_pod_disruption_budget(job: &StreamJob) -> PodDisruptionBudget {
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

fn build_stateful_set(job: &StreamJob, context: &BuildContext, checksum: &str) -> StatefulSet {
    let name = job.name_any();
    let mut pod_labels = job.spec.pod_labels.clone();
    pod_labels.extend(child_labels(&name));
    let mut pod_annotations = job.spec.pod_annotations.clone();
    pod_annotations.insert(CONFIG_CHECKSUM_ANNOTATION.to_owned(), checksum.to_owned());
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
    if ca_secret_name(spec).is_some() {
        volume_mounts.push(VolumeMount {
            name: CA_VOLUME.to_owned(),
            mount_path: worker_paths::CA_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
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

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: Some(false),
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
    if let Some(auth) = &spec.source.auth {
        let secret = &auth.secret_ref;
        env.push(secret_env(worker_paths::USERNAME_ENV, &secret.name, &secret.username_key));
        env.push(secret_env(worker_paths::PASSWORD_ENV, &secret.name, &secret.password_key));
    }
    env.extend(spec.env.iter().cloned());
    env
}

fn ca_secret_name(spec: &StreamJobSpec) -> Option<&str> {
    let tls = spec.source.auth.as_ref()?.tls.as_ref()?;
    if !tls.enabled {
        return None;
    }
    tls.ca_secret_ref.as_ref().map(|secret| secret.name.as_str())
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
    if let Some(secret_name) = ca_secret_name(&job.spec) {
        volumes.push(Volume {
            name: CA_VOLUME.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name.to_owned()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    volumes
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamjob_crds::parse_manifest;

    fn job(extra_spec: &str) -> StreamJob {
        let yaml = format!(
            "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata: {{name: j, namespace: ns}}\nspec:\n  \
             source: {{bootstrapServers: 'k:9092', topics: [in]}}\n  sink: {{topic: out}}\n{extra_spec}"
        );
        parse_manifest(&yaml).expect("valid test job")
    }

    fn context(replicas: i32) -> BuildContext {
        BuildContext { default_worker_image: "img:1".to_owned(), replicas }
    }

    fn pod_spec(children: &Children) -> &PodSpec {
        children.stateful_set.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod spec")
    }

    fn checksum(children: &Children) -> String {
        let template = &children.stateful_set.spec.as_ref().expect("spec").template;
        template.metadata.as_ref().and_then(|m| m.annotations.as_ref()).expect("annotations")
            [CONFIG_CHECKSUM_ANNOTATION]
            .clone()
    }

    #[test]
    fn desired_replicas_follows_suspend_autoscaling_and_spec() {
        let cases = [
            ("  replicas: 3\n", None, 3),
            ("  replicas: 3\n  suspend: true\n", None, 0),
            ("  autoscaling: {minReplicas: 2, maxReplicas: 6}\n", None, 2),
            ("  autoscaling: {minReplicas: 2, maxReplicas: 6}\n", Some(5), 5),
            ("  autoscaling: {minReplicas: 2, maxReplicas: 6}\n", Some(9), 6),
            ("  autoscaling: {minReplicas: 0, maxReplicas: 6}\n", Some(0), 0),
            ("  autoscaling: {enabled: false, maxReplicas: 6}\n  replicas: 4\n", Some(1), 4),
            ("  autoscaling: {maxReplicas: 6}\n  suspend: true\n", Some(5), 0),
        ];
        for (spec, decision, expected) in cases {
            assert_eq!(desired_replicas(&job(spec), decision), expected, "{spec} with decision {decision:?}");
        }
    }

    #[test]
    fn every_container_runs_restricted() {
        let children = build_children(&job(""), &context(1));
        let pod = pod_spec(&children);
        let pod_security = pod.security_context.as_ref().expect("pod security context");
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_eq!(pod_security.seccomp_profile.as_ref().map(|p| p.type_.as_str()), Some("RuntimeDefault"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        for container in &pod.containers {
            assert_eq!(container.security_context, Some(restricted_container_security_context()));
        }
    }

    #[test]
    fn checksum_changes_exactly_when_the_worker_config_changes() {
        let base = checksum(&build_children(&job(""), &context(1)));
        assert_eq!(base, checksum(&build_children(&job(""), &context(4))), "replicas are not config");
        assert_eq!(
            base,
            checksum(&build_children(&job("  podLabels: {a: b}\n"), &context(1))),
            "pod labels are not config"
        );
        assert_ne!(base, checksum(&build_children(&job("  delivery: exactlyOnce\n"), &context(1))));
        let with_stage = job("  pipeline:\n  - filter: {field: x, op: exists}\n");
        assert_ne!(base, checksum(&build_children(&with_stage, &context(1))));
    }

    #[test]
    fn credentials_come_from_the_secret_and_never_reach_the_config_map() {
        let spec = "  env: [{name: EXTRA, value: '1'}]\n";
        let mut job = job(spec);
        job.spec.source.auth = Some(streamjob_crds::KafkaAuth {
            mechanism: streamjob_crds::SaslMechanism::ScramSha256,
            secret_ref: streamjob_crds::CredentialsSecretRef {
                name: "kafka-secret".into(),
                username_key: "user".into(),
                password_key: "pass".into(),
            },
            tls: None,
        });
        let children = build_children(&job, &context(1));
        let config = &children.config_map.data.as_ref().expect("data")[worker_paths::CONFIG_FILE_NAME];
        assert!(!config.contains("STREAMJOB_KAFKA"), "no credential variables in the config");
        let env = pod_spec(&children).containers[0].env.as_ref().expect("env");
        let password = env.iter().find(|e| e.name == worker_paths::PASSWORD_ENV).expect("password env");
        let selector = password.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).expect("secret ref");
        assert_eq!((selector.name.as_str(), selector.key.as_str()), ("kafka-secret", "pass"));
        assert!(password.value.is_none());
        assert!(env.iter().any(|e| e.name == "EXTRA"), "the job's own env is kept");
        assert!(env.iter().any(|e| e.name == worker_paths::POD_NAME_ENV));
    }

    #[test]
    fn worker_config_is_the_job_with_the_group_resolved() {
        let config = worker_config(&job("  replicas: 7\n  podLabels: {a: b}\n"));
        assert_eq!(config.spec.source.consumer_group.as_deref(), Some("streamjob-ns-j"));
        assert!(config.spec.pod_labels.is_empty());
        let yaml = worker_config_yaml(&job(""));
        let reparsed = parse_manifest(&yaml).expect("the worker config is itself a valid StreamJob");
        assert_eq!(reparsed.spec.sink.topic, "out");
    }
}
