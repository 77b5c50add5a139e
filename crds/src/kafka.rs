//! librdkafka properties for reaching a job's brokers, shared by the operator (lag probe,
//! consumer-group deletion) and the worker, and which credentials each cluster gets.

use crate::types::{KafkaAuth, StreamJobSpec};

/// The label a Secret carries to let the operator and the worker pods use it: a job may name
/// only Secrets that opted in. The value must be `"true"`.
pub const CREDENTIALS_SECRET_LABEL: &str = "streamjob.io/kafka-credentials";

/// SASL credentials, read from the Secret the job references.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

/// Where the CA bundle for TLS comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaBundle {
    /// A PEM file on disk (the worker's mounted Secret).
    File(String),
    /// PEM text (read by the operator from the Secret).
    Pem(String),
}

/// The two clusters a job may talk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cluster {
    /// `spec.source.bootstrapServers`: consumer, repartition topic, and the sink when it has no
    /// brokers of its own.
    Source,
    /// `spec.sink.bootstrapServers` when it names another cluster.
    Sink,
}

impl StreamJobSpec {
    /// Whether the sink is on another cluster than the source (`sink.bootstrapServers` set and
    /// different): only then does `sink.auth` apply.
    pub fn sink_on_other_cluster(&self) -> bool {
        self.sink.bootstrap_servers.as_ref().is_some_and(|sink| *sink != self.source.bootstrap_servers)
    }

    /// The auth settings for `cluster`: the source's for the source cluster, `sink.auth` (maybe
    /// none) for another sink cluster. The source's credentials never reach another cluster.
    pub fn auth_for(&self, cluster: Cluster) -> Option<&KafkaAuth> {
        match cluster {
            Cluster::Sink if self.sink_on_other_cluster() => self.sink.auth.as_ref(),
            _ => self.source.auth.as_ref(),
        }
    }

    /// The clusters whose auth the workers use, with their settings.
    pub fn authenticated_clusters(&self) -> Vec<(Cluster, &KafkaAuth)> {
        let mut clusters = Vec::new();
        if let Some(auth) = &self.source.auth {
            clusters.push((Cluster::Source, auth));
        }
        if let Some(auth) = self.sink.auth.as_ref().filter(|_| self.sink_on_other_cluster()) {
            clusters.push((Cluster::Sink, auth));
        }
        clusters
    }

    /// Every Secret the job would use, with the field naming it, in spec order; a Secret named
    /// twice is listed twice (each field is reported).
    pub fn credential_secrets(&self) -> Vec<SecretUse<'_>> {
        let mut uses = Vec::new();
        for (cluster, auth) in self.authenticated_clusters() {
            let prefix = match cluster {
                Cluster::Source => "spec.source.auth",
                Cluster::Sink => "spec.sink.auth",
            };
            uses.push(SecretUse { field: format!("{prefix}.secretRef"), name: &auth.secret_ref.name });
            if let Some(ca) = ca_secret(auth) {
                uses.push(SecretUse { field: format!("{prefix}.tls.caSecretRef"), name: ca });
            }
        }
        uses
    }
}

/// A Secret a job names, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretUse<'a> {
    /// The spec field that names it, e.g. `spec.source.auth.secretRef`.
    pub field: String,
    pub name: &'a str,
}

/// Whether TLS is on for `auth`.
pub fn tls_enabled(auth: &KafkaAuth) -> bool {
    auth.tls.as_ref().is_some_and(|t| t.enabled)
}

/// The CA Secret of `auth`, when TLS is on and one is named.
pub fn ca_secret(auth: &KafkaAuth) -> Option<&str> {
    let tls = auth.tls.as_ref().filter(|t| t.enabled)?;
    tls.ca_secret_ref.as_ref().map(|secret| secret.name.as_str())
}

/// The connection properties for `bootstrap_servers` with `auth` (none: plaintext, no SASL).
pub fn connection_properties(
    bootstrap_servers: &str,
    auth: Option<&KafkaAuth>,
    credentials: Option<&Credentials>,
    ca: Option<&CaBundle>,
) -> Vec<(String, String)> {
    let mut properties = vec![("bootstrap.servers".to_owned(), bootstrap_servers.to_owned())];
    let Some(auth) = auth else {
        return properties;
    };
    let tls = tls_enabled(auth);
    let protocol = if tls { "SASL_SSL" } else { "SASL_PLAINTEXT" };
    properties.push(("security.protocol".to_owned(), protocol.to_owned()));
    properties.push(("sasl.mechanism".to_owned(), auth.mechanism.as_kafka_name().to_owned()));
    if let Some(credentials) = credentials {
        properties.push(("sasl.username".to_owned(), credentials.username.clone()));
        properties.push(("sasl.password".to_owned(), credentials.password.clone()));
    }
    match ca {
        Some(CaBundle::File(path)) if tls => properties.push(("ssl.ca.location".to_owned(), path.clone())),
        Some(CaBundle::Pem(pem)) if tls => properties.push(("ssl.ca.pem".to_owned(), pem.clone())),
        _ => {}
    }
    properties
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_manifest;

    fn spec(source_extra: &str, sink: &str) -> StreamJobSpec {
        let yaml = format!(
            "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata: {{name: j}}\nspec:\n  \
             source: {{bootstrapServers: 'src:9093', topics: [in]{source_extra}}}\n  sink: {sink}\n"
        );
        match parse_manifest(&yaml) {
            Ok(job) => job.spec,
            Err(error) => panic!("test job {yaml}: {error}"),
        }
    }

    const SCRAM_TLS: &str = ", auth: {mechanism: SCRAM-SHA-512, secretRef: {name: src-creds}, \
                             tls: {caSecretRef: {name: src-ca}}}";

    /// The properties a cluster gets, as `key=value`, the password shown as `*`.
    fn properties(spec: &StreamJobSpec, cluster: Cluster) -> Vec<String> {
        let bootstrap = match cluster {
            Cluster::Sink => {
                spec.sink.bootstrap_servers.clone().unwrap_or_else(|| spec.source.bootstrap_servers.clone())
            }
            Cluster::Source => spec.source.bootstrap_servers.clone(),
        };
        let credentials = Credentials { username: "user".into(), password: "secret".into() };
        let ca = CaBundle::File("/ca.crt".into());
        let auth = spec.auth_for(cluster);
        connection_properties(&bootstrap, auth, auth.map(|_| &credentials), Some(&ca))
            .into_iter()
            .map(|(key, value)| if key == "sasl.password" { format!("{key}=*") } else { format!("{key}={value}") })
            .collect()
    }

    /// (source auth, sink, cluster) → the properties that cluster's clients get.
    #[test]
    fn each_cluster_gets_only_its_own_auth() {
        let sasl_ssl = |bootstrap: &str, mechanism: &str| {
            vec![
                format!("bootstrap.servers={bootstrap}"),
                "security.protocol=SASL_SSL".into(),
                format!("sasl.mechanism={mechanism}"),
                "sasl.username=user".into(),
                "sasl.password=*".into(),
                "ssl.ca.location=/ca.crt".into(),
            ]
        };
        let cases: Vec<(&str, &str, &str, Cluster, Vec<String>)> = vec![
            ("no auth anywhere", "", "{topic: out}", Cluster::Sink, vec!["bootstrap.servers=src:9093".into()]),
            ("sink on the source's cluster", SCRAM_TLS, "{topic: out}", Cluster::Sink, sasl_ssl("src:9093", "SCRAM-SHA-512")),
            (
                "sink naming the source's brokers again",
                SCRAM_TLS,
                "{topic: out, bootstrapServers: 'src:9093'}",
                Cluster::Sink,
                sasl_ssl("src:9093", "SCRAM-SHA-512"),
            ),
            (
                "another sink cluster without sink.auth: nothing of the source's",
                SCRAM_TLS,
                "{topic: out, bootstrapServers: 'other:9092'}",
                Cluster::Sink,
                vec!["bootstrap.servers=other:9092".into()],
            ),
            (
                "another sink cluster with its own auth",
                SCRAM_TLS,
                "{topic: out, bootstrapServers: 'other:9093', auth: {mechanism: SCRAM-SHA-256, secretRef: {name: sink-creds}, tls: {}}}",
                Cluster::Sink,
                sasl_ssl("other:9093", "SCRAM-SHA-256"),
            ),
            (
                "the source keeps its own auth when the sink has another",
                SCRAM_TLS,
                "{topic: out, bootstrapServers: 'other:9093', auth: {mechanism: SCRAM-SHA-256, secretRef: {name: sink-creds}}}",
                Cluster::Source,
                sasl_ssl("src:9093", "SCRAM-SHA-512"),
            ),
            (
                "PLAIN without TLS, allowed explicitly: no CA",
                ", auth: {mechanism: PLAIN, secretRef: {name: c}, allowInsecure: true}",
                "{topic: out}",
                Cluster::Source,
                vec![
                    "bootstrap.servers=src:9093".into(),
                    "security.protocol=SASL_PLAINTEXT".into(),
                    "sasl.mechanism=PLAIN".into(),
                    "sasl.username=user".into(),
                    "sasl.password=*".into(),
                ],
            ),
        ];
        for (case, source_extra, sink, cluster, expected) in cases {
            assert_eq!(properties(&spec(source_extra, sink), cluster), expected, "{case}");
        }
    }

    /// (spec) → the Secrets it names, with their fields.
    #[test]
    fn credential_secrets_name_every_field_that_is_used() {
        let cases = [
            ("", "{topic: out}", vec![]),
            (SCRAM_TLS, "{topic: out}", vec!["spec.source.auth.secretRef=src-creds", "spec.source.auth.tls.caSecretRef=src-ca"]),
            (
                ", auth: {mechanism: SCRAM-SHA-256, secretRef: {name: c}, tls: {enabled: false, caSecretRef: {name: unused}}}",
                "{topic: out}",
                vec!["spec.source.auth.secretRef=c"],
            ),
            (
                SCRAM_TLS,
                "{topic: out, bootstrapServers: 'other:9093', auth: {mechanism: SCRAM-SHA-256, secretRef: {name: sink-creds}, tls: {caSecretRef: {name: sink-ca}}}}",
                vec![
                    "spec.source.auth.secretRef=src-creds",
                    "spec.source.auth.tls.caSecretRef=src-ca",
                    "spec.sink.auth.secretRef=sink-creds",
                    "spec.sink.auth.tls.caSecretRef=sink-ca",
                ],
            ),
        ];
        for (source_extra, sink, expected) in cases {
            let spec = spec(source_extra, sink);
            let found: Vec<String> =
                spec.credential_secrets().iter().map(|u| format!("{}={}", u.field, u.name)).collect();
            assert_eq!(found, expected, "{source_extra} {sink}");
        }
    }

    /// PLAIN needs TLS or `allowInsecure`; `sink.auth` needs another cluster.
    #[test]
    fn the_schema_refuses_clear_text_passwords_and_misplaced_sink_auth() {
        let manifest = |source_extra: &str, sink: &str| {
            format!(
                "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata: {{name: j}}\nspec:\n  \
                 source: {{bootstrapServers: 'src:9093', topics: [in]{source_extra}}}\n  sink: {sink}\n"
            )
        };
        let cases = [
            (", auth: {mechanism: PLAIN, secretRef: {name: c}}", "{topic: out}", Some("clear text")),
            (
                ", auth: {mechanism: PLAIN, secretRef: {name: c}, tls: {enabled: false}}",
                "{topic: out}",
                Some("clear text"),
            ),
            (", auth: {mechanism: PLAIN, secretRef: {name: c}, tls: {}}", "{topic: out}", None),
            (", auth: {mechanism: PLAIN, secretRef: {name: c}, allowInsecure: true}", "{topic: out}", None),
            (", auth: {mechanism: SCRAM-SHA-256, secretRef: {name: c}}", "{topic: out}", None),
            (
                "",
                "{topic: out, auth: {mechanism: SCRAM-SHA-256, secretRef: {name: c}}}",
                Some("sink.auth applies only"),
            ),
            (
                "",
                "{topic: out, bootstrapServers: 'src:9093', auth: {mechanism: SCRAM-SHA-256, secretRef: {name: c}}}",
                Some("sink.auth applies only"),
            ),
            ("", "{topic: out, bootstrapServers: 'o:1', auth: {mechanism: SCRAM-SHA-256, secretRef: {name: c}}}", None),
            (
                "",
                "{topic: out, bootstrapServers: 'o:1', auth: {mechanism: PLAIN, secretRef: {name: c}}}",
                Some("clear text"),
            ),
        ];
        for (source_extra, sink, expected) in cases {
            let verdict = parse_manifest(&manifest(source_extra, sink));
            match expected {
                None => assert!(verdict.is_ok(), "{source_extra} {sink}: {verdict:?}"),
                Some(needle) => {
                    assert!(verdict.as_ref().is_err_and(|e| e.mentions(needle)), "{source_extra} {sink}: {verdict:?}")
                }
            }
        }
    }
}
