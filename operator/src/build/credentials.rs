//! The worker container's Kafka credentials: environment variables from the credentials Secret
//! and a volume from the CA Secret, per cluster with auth (the source's; another sink cluster's
//! own `sink.auth`). Only Secret references reach the pod template, never values; the
//! controller renders them only once every Secret opted in (see `crate::secrets`).

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, SecretKeySelector, SecretVolumeSource, Volume, VolumeMount};
use streamjob_crds::kafka::{ca_secret, Cluster};
use streamjob_crds::{worker_paths, StreamJobSpec};

fn ca_volume_name(cluster: Cluster) -> &'static str {
    match cluster {
        Cluster::Source => "kafka-ca",
        Cluster::Sink => "sink-kafka-ca",
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

/// Username and password of each cluster with auth, by Secret reference.
pub fn credential_env(spec: &StreamJobSpec) -> Vec<EnvVar> {
    let mut env = Vec::new();
    for (cluster, auth) in spec.authenticated_clusters() {
        let (username, password) = worker_paths::credential_env(cluster);
        let secret = &auth.secret_ref;
        env.push(secret_env(username, &secret.name, &secret.username_key));
        env.push(secret_env(password, &secret.name, &secret.password_key));
    }
    env
}

/// A volume per CA Secret (TLS on and a CA named).
pub fn ca_volumes(spec: &StreamJobSpec) -> Vec<Volume> {
    let clusters = spec.authenticated_clusters();
    let with_ca = clusters.iter().filter_map(|(cluster, auth)| Some((*cluster, ca_secret(auth)?)));
    with_ca
        .map(|(cluster, secret)| Volume {
            name: ca_volume_name(cluster).to_owned(),
            secret: Some(SecretVolumeSource { secret_name: Some(secret.to_owned()), ..SecretVolumeSource::default() }),
            ..Volume::default()
        })
        .collect()
}

/// Where each CA volume is mounted: the directory the worker reads `ca.crt` from.
pub fn ca_mounts(spec: &StreamJobSpec) -> Vec<VolumeMount> {
    let clusters = spec.authenticated_clusters();
    let with_ca = clusters.iter().filter(|(_, auth)| ca_secret(auth).is_some());
    with_ca
        .map(|(cluster, _)| VolumeMount {
            name: ca_volume_name(*cluster).to_owned(),
            mount_path: worker_paths::ca_dir(*cluster).to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        })
        .collect()
}
