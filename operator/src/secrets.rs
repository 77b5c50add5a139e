//! Secrets by consent: the operator and the worker pods use only Secrets labelled
//! `streamjob.io/kafka-credentials: "true"`. Whoever may create a StreamJob could otherwise name
//! any Secret of the namespace and have its values sent to brokers of their choosing.
//!
//! The operator first reads a Secret's metadata only (the label, the resourceVersion); it reads
//! the data of a Secret only after seeing the label (the lag probe and the finalizer), and
//! renders a reference to it into the pod template only when every Secret the job names opted
//! in.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use sha2::{Digest, Sha256};
use streamjob_crds::kafka::CREDENTIALS_SECRET_LABEL;
use streamjob_crds::StreamJobSpec;

/// Condition reason and event reason of a job naming a Secret that did not opt in.
pub const SECRET_NOT_OPTED_IN: &str = "SecretNotOptedIn";

/// Whether a Secret's metadata carries the opt-in label with the value `"true"`.
pub fn opted_in(metadata: &ObjectMeta) -> bool {
    metadata.labels.as_ref().and_then(|labels| labels.get(CREDENTIALS_SECRET_LABEL)).is_some_and(|v| v == "true")
}

/// A Secret the job names that the operator will not use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotOptedIn { field: String, name: String },
    NotFound { field: String, name: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotOptedIn { field, name } => write!(
                f,
                "Secret {name} ({field}) has not opted in to be used by StreamJobs: label it with \
                 `kubectl label secret {name} {CREDENTIALS_SECRET_LABEL}=true`"
            ),
            Self::NotFound { field, name } => write!(
                f,
                "Secret {name} ({field}) does not exist: create it with the label {CREDENTIALS_SECRET_LABEL}=true"
            ),
        }
    }
}

/// What the operator saw of the Secrets a job names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretsCheck {
    /// The Secrets it will not use; empty when the job may run.
    pub refusals: Vec<Refusal>,
    /// (name, resourceVersion) of every Secret that opted in, sorted.
    pub versions: Vec<(String, String)>,
}

impl SecretsCheck {
    /// The refusals as one condition message.
    pub fn message(&self) -> Option<String> {
        (!self.refusals.is_empty())
            .then(|| self.refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
    }

    /// A digest of the Secrets' versions for the pod template: a rotated Secret (any change to
    /// it) changes it, so the workers roll and read the new values. `None` without Secrets.
    pub fn checksum(&self) -> Option<String> {
        if self.versions.is_empty() {
            return None;
        }
        let text: String = self.versions.iter().map(|(name, version)| format!("{name}={version}\n")).collect();
        Some(Sha256::digest(text.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect())
    }
}

/// Judges the Secrets `spec` names from their metadata (`None`: the Secret does not exist).
pub fn judge<'a>(spec: &StreamJobSpec, mut metadata: impl FnMut(&str) -> Option<&'a ObjectMeta>) -> SecretsCheck {
    let mut check = SecretsCheck::default();
    for use_ in spec.credential_secrets() {
        let (field, name) = (use_.field, use_.name.to_owned());
        match metadata(&name) {
            None => check.refusals.push(Refusal::NotFound { field, name }),
            Some(meta) if !opted_in(meta) => check.refusals.push(Refusal::NotOptedIn { field, name }),
            Some(meta) => check.versions.push((name, meta.resource_version.clone().unwrap_or_default())),
        }
    }
    check.versions.sort();
    check.versions.dedup();
    check
}

/// Reads the metadata (never the data) of the Secrets `spec` names and judges them.
pub async fn check_secrets(secrets: &Api<Secret>, spec: &StreamJobSpec) -> Result<SecretsCheck, kube::Error> {
    let mut found = Vec::new();
    for use_ in spec.credential_secrets() {
        if found.iter().any(|(name, _): &(String, Option<ObjectMeta>)| name == use_.name) {
            continue;
        }
        let metadata = secrets.get_metadata_opt(use_.name).await?.map(|partial| partial.metadata);
        found.push((use_.name.to_owned(), metadata));
    }
    Ok(judge(spec, |name| found.iter().find(|(n, _)| n == name).and_then(|(_, meta)| meta.as_ref())))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn spec(source_extra: &str, sink: &str) -> StreamJobSpec {
        let yaml = format!(
            "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata: {{name: j, namespace: ns}}\nspec:\n  \
             source: {{bootstrapServers: 'k:9093', topics: [in]{source_extra}}}\n  sink: {sink}\n"
        );
        streamjob_crds::parse_manifest(&yaml).expect("valid test job").spec
    }

    fn meta(label: Option<&str>, version: &str) -> ObjectMeta {
        ObjectMeta {
            labels: label.map(|v| BTreeMap::from([(CREDENTIALS_SECRET_LABEL.to_owned(), v.to_owned())])),
            resource_version: Some(version.to_owned()),
            ..ObjectMeta::default()
        }
    }

    /// (the Secrets that exist, with their label) → refusals and versions.
    #[test]
    fn only_labelled_secrets_pass() {
        let both = ", auth: {mechanism: SCRAM-SHA-512, secretRef: {name: creds}, tls: {caSecretRef: {name: ca}}}";
        let sink = "{topic: out, bootstrapServers: 'o:1', auth: {mechanism: SCRAM-SHA-256, secretRef: {name: sink}}}";
        let not_opted = |field: &str, name: &str| Refusal::NotOptedIn { field: field.into(), name: name.into() };
        type Case<'a> = (&'a str, &'a str, Vec<(&'a str, ObjectMeta)>, Vec<Refusal>, Vec<&'a str>);
        let cases: Vec<Case> = vec![
            ("", "{topic: out}", vec![], vec![], vec![]),
            (
                both,
                "{topic: out}",
                vec![("creds", meta(Some("true"), "1")), ("ca", meta(Some("true"), "2"))],
                vec![],
                vec!["ca", "creds"],
            ),
            (
                both,
                "{topic: out}",
                vec![("creds", meta(None, "1")), ("ca", meta(Some("yes"), "2"))],
                vec![
                    not_opted("spec.source.auth.secretRef", "creds"),
                    not_opted("spec.source.auth.tls.caSecretRef", "ca"),
                ],
                vec![],
            ),
            (
                both,
                sink,
                vec![("creds", meta(Some("true"), "1")), ("ca", meta(Some("true"), "2"))],
                vec![Refusal::NotFound { field: "spec.sink.auth.secretRef".into(), name: "sink".into() }],
                vec!["ca", "creds"],
            ),
            (
                ", auth: {mechanism: SCRAM-SHA-512, secretRef: {name: one}, tls: {caSecretRef: {name: one}}}",
                "{topic: out}",
                vec![("one", meta(Some("true"), "7"))],
                vec![],
                vec!["one"],
            ),
        ];
        for (source, sink, existing, refusals, versions) in cases {
            let existing: BTreeMap<&str, ObjectMeta> = existing.into_iter().collect();
            let check = judge(&spec(source, sink), |name| existing.get(name));
            assert_eq!(check.refusals, refusals, "{source} {sink}");
            let names: Vec<&str> = check.versions.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, versions, "{source} {sink}");
            assert_eq!(check.checksum().is_some(), !versions.is_empty());
        }
    }

    #[test]
    fn the_message_says_which_label_to_add_and_the_checksum_follows_the_versions() {
        let spec = spec(", auth: {mechanism: SCRAM-SHA-512, secretRef: {name: creds}}", "{topic: out}");
        let unlabelled = meta(None, "1");
        let message = judge(&spec, |_| Some(&unlabelled)).message().expect("refused");
        assert!(message.contains("kubectl label secret creds streamjob.io/kafka-credentials=true"), "{message}");
        assert!(message.contains("spec.source.auth.secretRef"), "{message}");
        let (v1, v2) = (meta(Some("true"), "1"), meta(Some("true"), "2"));
        let one = judge(&spec, |_| Some(&v1));
        assert_eq!(one.message(), None);
        assert_ne!(one.checksum(), judge(&spec, |_| Some(&v2)).checksum(), "a new resourceVersion rolls the workers");
        assert_eq!(one.checksum(), judge(&spec, |_| Some(&v1)).checksum());
    }
}
