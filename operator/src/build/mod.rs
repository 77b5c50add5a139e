//! Pure functions from a StreamJob to the Kubernetes objects that run it, one builder per
//! object. The controller applies exactly what these return; `streamjob-operator render` prints
//! it.

mod config_map;
mod credentials;
mod pdb;
mod service;
mod statefulset;
mod worker_config;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use streamjob_crds::fingerprint::{fingerprint_label, pipeline_fingerprint};
use streamjob_crds::StreamJob;

pub use config_map::{build_config_map, config_map_name};
pub use pdb::build_pod_disruption_budget;
pub use service::build_service;
pub use statefulset::{
    build_stateful_set, restricted_container_security_context, TERMINATION_GRACE_SECONDS, WORKER_UID,
};
pub use worker_config::{config_checksum, worker_config, worker_config_yaml};

/// Label keys every child carries.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const WORKER_NAME: &str = "streamjob-worker";
pub const FIELD_MANAGER: &str = "streamjob-operator";
/// Pod annotation whose change rolls the workers when their configuration changes.
pub const CONFIG_CHECKSUM_ANNOTATION: &str = "checksum/config";
/// Pod annotation whose change rolls the workers when a Secret they use changes (rotation).
pub const CREDENTIALS_CHECKSUM_ANNOTATION: &str = "checksum/credentials";
/// Pod annotation naming the pipeline fingerprint the workers run (see
/// `streamjob_crds::fingerprint` and `controller/drain.rs`): a change drains the workers
/// instead of rolling them.
pub const PIPELINE_FINGERPRINT_ANNOTATION: &str = "streamjob.io/pipeline-fingerprint";
/// Port of the worker's `/healthz`, `/readyz` and `/metrics`.
pub const WORKER_HTTP_PORT: i32 = 9090;

/// What the builders need besides the job.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// Image used when the job names none.
    pub default_worker_image: String,
    /// Workers to run (see [`crate::replicas::desired_replicas`]).
    pub replicas: i32,
    /// Digest of the versions of the Secrets the workers use
    /// ([`crate::secrets::SecretsCheck::checksum`]); `None` without Secrets (or in `render`).
    pub credentials_checksum: Option<String>,
}

/// The four children of a job.
#[derive(Clone, Debug, Serialize)]
pub struct Children {
    pub config_map: ConfigMap,
    pub service: Service,
    pub stateful_set: StatefulSet,
    pub pod_disruption_budget: PodDisruptionBudget,
}

/// Builds all four children.
pub fn build_children(job: &StreamJob, context: &BuildContext) -> Children {
    let config_yaml = worker_config_yaml(job);
    let mut stateful_set = build_stateful_set(job, context, &config_checksum(&config_yaml));
    let fingerprint = fingerprint_label(pipeline_fingerprint(&job.spec));
    let template = stateful_set.spec.as_mut().and_then(|spec| spec.template.metadata.as_mut());
    if let Some(metadata) = template {
        metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(PIPELINE_FINGERPRINT_ANNOTATION.to_owned(), fingerprint);
    }
    Children {
        config_map: build_config_map(job, &config_yaml),
        service: build_service(job),
        stateful_set,
        pod_disruption_budget: build_pod_disruption_budget(job),
    }
}

/// A pod template's annotation `key`.
pub fn template_annotation<'a>(stateful_set: &'a StatefulSet, key: &str) -> Option<&'a str> {
    let metadata = stateful_set.spec.as_ref()?.template.metadata.as_ref()?;
    metadata.annotations.as_ref()?.get(key).map(String::as_str)
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use streamjob_crds::{parse_manifest, worker_paths};

    pub(crate) fn job(extra_spec: &str) -> StreamJob {
        let yaml = format!(
            "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata: {{name: j, namespace: ns}}\nspec:\n  \
             source: {{bootstrapServers: 'k:9092', topics: [in]}}\n  sink: {{topic: out}}\n{extra_spec}"
        );
        parse_manifest(&yaml).expect("valid test job")
    }

    fn context(replicas: i32) -> BuildContext {
        BuildContext { default_worker_image: "img:1".to_owned(), replicas, credentials_checksum: None }
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
    fn the_template_names_the_pipeline_fingerprint() {
        let fingerprint = |job: &StreamJob| {
            let children = build_children(job, &context(1));
            template_annotation(&children.stateful_set, PIPELINE_FINGERPRINT_ANNOTATION).map(str::to_owned)
        };
        assert_eq!(fingerprint(&job("")).as_deref(), Some("none"), "no window");
        let windowed = |size: &str| {
            job(&format!(
                "  pipeline:\n  - keyBy: {{field: k}}\n  - window: {{size: {size}, aggregate: {{function: count}}}}\n"
            ))
        };
        let ten = fingerprint(&windowed("10s")).expect("an annotation");
        assert_eq!(ten.len(), 16, "{ten}");
        assert_ne!(Some(ten), fingerprint(&windowed("20s")));
    }

    #[test]
    fn credentials_come_from_the_secret_and_never_reach_the_config_map() {
        let mut job = job("  env: [{name: EXTRA, value: '1'}]\n");
        let auth =
            r#"{mechanism: SCRAM-SHA-256, secretRef: {name: kafka-secret, usernameKey: user, passwordKey: pass}}"#;
        job.spec.source.auth = Some(serde_yaml::from_str(auth).expect("valid auth"));
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

    /// (source auth, sink) → the Secret references of the pod: env (variable → Secret/key) and
    /// CA volumes (mount → Secret). Another sink cluster gets its own, never the source's.
    #[test]
    fn each_cluster_gets_its_own_secret_references() {
        let source = "  source: {bootstrapServers: 'k:9093', topics: [in], auth: {mechanism: SCRAM-SHA-512, \
                      secretRef: {name: src}, tls: {caSecretRef: {name: src-ca}}}}\n";
        let cases = [
            (
                "  sink: {topic: out}\n",
                vec!["STREAMJOB_KAFKA_USERNAME=src/username", "STREAMJOB_KAFKA_PASSWORD=src/password"],
                vec!["/etc/streamjob/kafka-ca=src-ca"],
            ),
            (
                "  sink: {topic: out, bootstrapServers: 'other:9092'}\n",
                vec!["STREAMJOB_KAFKA_USERNAME=src/username", "STREAMJOB_KAFKA_PASSWORD=src/password"],
                vec!["/etc/streamjob/kafka-ca=src-ca"],
            ),
            (
                "  sink: {topic: out, bootstrapServers: 'other:9093', auth: {mechanism: SCRAM-SHA-256, \
                 secretRef: {name: dst, usernameKey: u, passwordKey: p}, tls: {caSecretRef: {name: dst-ca}}}}\n",
                vec![
                    "STREAMJOB_KAFKA_USERNAME=src/username",
                    "STREAMJOB_KAFKA_PASSWORD=src/password",
                    "STREAMJOB_SINK_KAFKA_USERNAME=dst/u",
                    "STREAMJOB_SINK_KAFKA_PASSWORD=dst/p",
                ],
                vec!["/etc/streamjob/kafka-ca=src-ca", "/etc/streamjob/sink-kafka-ca=dst-ca"],
            ),
        ];
        for (sink, env, mounts) in cases {
            let yaml = format!(
                "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata: {{name: j, namespace: ns}}\nspec:\n{source}{sink}"
            );
            let job = parse_manifest(&yaml).expect("valid test job");
            let children = build_children(&job, &context(1));
            let pod = pod_spec(&children);
            let found_env: Vec<String> = pod.containers[0]
                .env
                .iter()
                .flatten()
                .filter_map(|e| {
                    let selector = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
                    Some(format!("{}={}/{}", e.name, selector.name, selector.key))
                })
                .collect();
            assert_eq!(found_env, env, "{sink}");
            let volumes = pod.volumes.iter().flatten();
            let secret_of = |name: &str| {
                volumes.clone().find(|v| v.name == name).and_then(|v| v.secret.as_ref()?.secret_name.clone())
            };
            let found_mounts: Vec<String> = pod.containers[0]
                .volume_mounts
                .iter()
                .flatten()
                .filter_map(|m| Some(format!("{}={}", m.mount_path, secret_of(&m.name)?)))
                .collect();
            assert_eq!(found_mounts, mounts, "{sink}");
        }
    }

    #[test]
    fn a_credentials_checksum_goes_on_the_pod_template() {
        let with = BuildContext { credentials_checksum: Some("abc".to_owned()), ..context(1) };
        let children = build_children(&job(""), &with);
        let template = &children.stateful_set.spec.as_ref().expect("spec").template;
        let annotations = template.metadata.as_ref().and_then(|m| m.annotations.as_ref()).expect("annotations");
        assert_eq!(annotations.get(CREDENTIALS_CHECKSUM_ANNOTATION).map(String::as_str), Some("abc"));
        let without = build_children(&job(""), &context(1));
        let template = &without.stateful_set.spec.as_ref().expect("spec").template;
        let annotations = template.metadata.as_ref().and_then(|m| m.annotations.as_ref()).expect("annotations");
        assert!(!annotations.contains_key(CREDENTIALS_CHECKSUM_ANNOTATION));
    }
}
