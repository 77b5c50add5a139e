//! The worker's configuration: the StreamJob manifest the operator renders into the ConfigMap,
//! the pod's identity and credentials from the environment, and overrides for local use.

use std::path::Path;
use std::time::Duration;

use streamjob_crds::kafka::{ca_secret, connection_properties, CaBundle, Cluster, Credentials};
use streamjob_crds::{worker_paths, DeliveryGuarantee, KafkaAuth, StreamJob};

use crate::group_protocol::GroupProtocolChoice;
use crate::pipeline::{CompileError, CompiledPipeline};

/// The auth settings, credentials and CA file the worker uses for one cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterAccess {
    pub auth: Option<KafkaAuth>,
    pub credentials: Option<Credentials>,
    pub ca: Option<CaBundle>,
}

impl ClusterAccess {
    /// `auth` with the credentials from the environment variables the operator sets for
    /// `cluster`, and the CA file where it mounts that cluster's CA Secret.
    fn from_env(
        auth: Option<&KafkaAuth>,
        cluster: Cluster,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let Some(auth) = auth else {
            return Ok(Self::default());
        };
        let (username, password) = worker_paths::credential_env(cluster);
        let credentials =
            Credentials { username: required_env(env, username)?, password: required_env(env, password)? };
        let ca = ca_secret(auth)
            .map(|_| CaBundle::File(format!("{}/{}", worker_paths::ca_dir(cluster), worker_paths::CA_FILE_NAME)));
        Ok(Self { auth: Some(auth.clone()), credentials: Some(credentials), ca })
    }

    /// librdkafka's connection properties for `bootstrap` with these settings.
    pub fn properties(&self, bootstrap: &str) -> Vec<(String, String)> {
        connection_properties(bootstrap, self.auth.as_ref(), self.credentials.as_ref(), self.ca.as_ref())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Invalid { path: String, source: streamjob_crds::ManifestErrors },
    #[error("{path}: {source}")]
    Pipeline { path: String, source: CompileError },
    #[error("spec.source.auth or spec.sink.auth is set but the environment variable {0} is empty")]
    MissingCredential(&'static str),
    #[error("spec.delivery: exactlyOnce needs the sink on the source's brokers (spec.sink.bootstrapServers differs)")]
    ExactlyOnceAcrossClusters,
}

/// Settings a local run may override; `None` keeps what the manifest and environment say.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub bootstrap_servers: Option<String>,
    pub consumer_group: Option<String>,
    pub instance_id: Option<String>,
}

/// Timing knobs; the defaults suit production.
#[derive(Debug, Clone)]
pub struct Timings {
    /// How often offsets are committed (or transactions committed).
    pub commit_interval: Duration,
    /// How often partial aggregates are sent to the repartition topic.
    pub flush_interval: Duration,
    /// A source partition quiet this long stops holding windows back.
    pub idle_timeout: Duration,
    /// Longest wait for acknowledgements before a commit on revocation or shutdown (the
    /// operator gives pods 60 s to stop).
    pub shutdown_timeout: Duration,
    /// The group session timeout: how long a dead worker keeps its partitions (and, with
    /// static membership, how long a removed worker's partitions wait before moving).
    pub session_timeout: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            commit_interval: Duration::from_secs(1),
            flush_interval: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(50),
            session_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub job: StreamJob,
    pub source_bootstrap: String,
    pub sink_bootstrap: String,
    pub consumer_group: String,
    /// This worker's identity: the pod name in Kubernetes. It is the static member id, and its
    /// ordinal is part of the transactional id.
    pub instance_id: String,
    /// The job's namespace: `$POD_NAMESPACE`, else the manifest's, else `default`.
    pub namespace: String,
    /// How the worker reaches the source cluster.
    pub source: ClusterAccess,
    /// How the worker reaches the sink cluster: [`Self::source`]'s when the sink is on it.
    pub sink: ClusterAccess,
    pub timings: Timings,
    /// The consumer group protocol; `auto` asks the brokers.
    pub group_protocol: GroupProtocolChoice,
}

impl WorkerConfig {
    /// Reads and checks the manifest at `path`; `env` looks up environment variables.
    pub fn load(path: &Path, overrides: &Overrides, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        let job = streamjob_crds::parse_manifest(&text)
            .map_err(|source| ConfigError::Invalid { path: shown.clone(), source })?;
        Self::from_job(job, overrides, env).map_err(|error| match error {
            ConfigError::Pipeline { source, .. } => ConfigError::Pipeline { path: shown, source },
            other => other,
        })
    }

    pub fn from_job(
        job: StreamJob,
        overrides: &Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        CompiledPipeline::compile(&job.spec.pipeline)
            .map_err(|source| ConfigError::Pipeline { path: "manifest".into(), source })?;
        let source_bootstrap =
            overrides.bootstrap_servers.clone().unwrap_or_else(|| job.spec.source.bootstrap_servers.clone());
        let sink_bootstrap = match (&overrides.bootstrap_servers, &job.spec.sink.bootstrap_servers) {
            (None, Some(sink)) => sink.clone(),
            _ => source_bootstrap.clone(),
        };
        if job.spec.delivery == DeliveryGuarantee::ExactlyOnce && sink_bootstrap != source_bootstrap {
            return Err(ConfigError::ExactlyOnceAcrossClusters);
        }
        let source = ClusterAccess::from_env(job.spec.source.auth.as_ref(), Cluster::Source, &env)?;
        // Another sink cluster gets `sink.auth` or nothing, never the source's credentials.
        let sink = if sink_bootstrap != source_bootstrap {
            ClusterAccess::from_env(job.spec.sink.auth.as_ref(), Cluster::Sink, &env)?
        } else {
            source.clone()
        };
        let instance_id = overrides
            .instance_id
            .clone()
            .or_else(|| env(worker_paths::POD_NAME_ENV).filter(|name| !name.is_empty()))
            .unwrap_or_else(|| format!("{}-local", job.metadata.name.clone().unwrap_or_default()));
        let consumer_group = overrides.consumer_group.clone().unwrap_or_else(|| job.consumer_group());
        let namespace = env(worker_paths::POD_NAMESPACE_ENV)
            .filter(|namespace| !namespace.is_empty())
            .or_else(|| job.metadata.namespace.clone())
            .unwrap_or_else(|| "default".to_owned());
        Ok(Self {
            job,
            source_bootstrap,
            sink_bootstrap,
            consumer_group,
            instance_id,
            namespace,
            source,
            sink,
            timings: Timings::default(),
            group_protocol: GroupProtocolChoice::default(),
        })
    }

    /// The brokers of `cluster` (the sink's are the source's unless it names others).
    pub fn bootstrap(&self, cluster: Cluster) -> &str {
        match cluster {
            Cluster::Source => &self.source_bootstrap,
            Cluster::Sink => &self.sink_bootstrap,
        }
    }

    /// How the worker reaches `cluster`.
    pub fn access(&self, cluster: Cluster) -> &ClusterAccess {
        match cluster {
            Cluster::Source => &self.source,
            Cluster::Sink => &self.sink,
        }
    }

    pub fn job_name(&self) -> String {
        self.job.metadata.name.clone().unwrap_or_default()
    }

    /// `streamjob.<namespace>.<job>/<ordinal>` ([`streamjob_crds::names::transactional_id`]):
    /// unique per worker of a job and across jobs of any namespaces and names, so no job fences
    /// another's transactions. The ordinal is the instance id's last `-` part when it is a
    /// number (a StatefulSet pod's), else the whole id.
    pub fn transactional_id(&self) -> String {
        let ordinal = self
            .instance_id
            .rsplit_once('-')
            .map(|(_, last)| last)
            .filter(|last| !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
            .unwrap_or(&self.instance_id);
        streamjob_crds::names::transactional_id(&self.namespace, &self.job_name(), ordinal)
    }

    pub fn repartition_topic(&self) -> String {
        streamjob_crds::names::repartition_topic(&self.consumer_group)
    }

    pub fn exactly_once(&self) -> bool {
        self.job.spec.delivery == DeliveryGuarantee::ExactlyOnce
    }
}

fn required_env(env: &impl Fn(&str) -> Option<String>, name: &'static str) -> Result<String, ConfigError> {
    env(name).filter(|value| !value.is_empty()).ok_or(ConfigError::MissingCredential(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(extra: &str) -> StreamJob {
        let yaml = format!(
            "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata: {{name: wc, namespace: data}}\n\
             spec:\n  source: {{bootstrapServers: 'k:9092', topics: [lines]}}\n  sink: {{topic: out}}\n{extra}"
        );
        match streamjob_crds::parse_manifest(&yaml) {
            Ok(job) => job,
            Err(error) => panic!("test manifest is invalid: {error}"),
        }
    }

    #[test]
    fn defaults_come_from_the_manifest_and_the_pod() {
        let env = |name: &str| (name == "POD_NAME").then(|| "wc-2".to_owned());
        let config = WorkerConfig::from_job(job(""), &Overrides::default(), env).expect("valid");
        assert_eq!(config.consumer_group, "streamjob.data.wc");
        assert_eq!(config.instance_id, "wc-2");
        assert_eq!(config.repartition_topic(), "streamjob.data.wc-repartition");
        assert_eq!(config.transactional_id(), "streamjob.data.wc/2");
        assert_eq!(config.sink_bootstrap, "k:9092");
    }

    /// Two jobs of one name in two namespaces, and two workers of one job, have four
    /// transactional ids.
    #[test]
    fn transactional_ids_name_the_namespace_the_job_and_the_ordinal() {
        let ids: std::collections::HashSet<String> =
            [("data", "wc-0"), ("data", "wc-1"), ("ops", "wc-0"), ("ops", "wc-1")]
                .into_iter()
                .map(|(namespace, pod)| {
                    let env = |name: &str| match name {
                        "POD_NAME" => Some(pod.to_owned()),
                        "POD_NAMESPACE" => Some(namespace.to_owned()),
                        _ => None,
                    };
                    WorkerConfig::from_job(job(""), &Overrides::default(), env).expect("valid").transactional_id()
                })
                .collect();
        assert_eq!(ids.len(), 4, "{ids:?}");
        assert!(ids.contains("streamjob.ops.wc/1"), "{ids:?}");
        let overrides = Overrides { instance_id: Some("laptop".into()), ..Overrides::default() };
        let local = WorkerConfig::from_job(job(""), &overrides, |_| None).expect("valid");
        assert_eq!(local.transactional_id(), "streamjob.data.wc/laptop");
    }

    #[test]
    fn overrides_win() {
        let overrides = Overrides {
            bootstrap_servers: Some("localhost:1".into()),
            consumer_group: Some("g".into()),
            instance_id: Some("me".into()),
        };
        let config = WorkerConfig::from_job(job(""), &overrides, |_| None).expect("valid");
        assert_eq!((config.source_bootstrap.as_str(), config.consumer_group.as_str()), ("localhost:1", "g"));
        assert_eq!(config.instance_id, "me");
    }

    #[test]
    fn missing_credentials_name_the_variable() {
        let auth = "  delivery: atLeastOnce\n";
        let mut job = job(auth);
        job.spec.source.auth = Some(streamjob_crds::KafkaAuth {
            mechanism: streamjob_crds::SaslMechanism::Plain,
            secret_ref: streamjob_crds::CredentialsSecretRef {
                name: "s".into(),
                username_key: "u".into(),
                password_key: "p".into(),
            },
            tls: None,
            allow_insecure: true,
        });
        let error = WorkerConfig::from_job(job, &Overrides::default(), |_| None).expect_err("no credentials");
        assert!(error.to_string().contains("STREAMJOB_KAFKA_USERNAME"), "{error}");
    }

    /// (source auth, sink) → what the source's and the sink's clients get, from the variables the
    /// operator sets: another sink cluster never gets the source's credentials.
    #[test]
    fn the_sink_cluster_gets_sink_auth_or_nothing() {
        let env = |name: &str| match name {
            "STREAMJOB_KAFKA_USERNAME" => Some("src-user".to_owned()),
            "STREAMJOB_KAFKA_PASSWORD" => Some("src-pass".to_owned()),
            "STREAMJOB_SINK_KAFKA_USERNAME" => Some("sink-user".to_owned()),
            "STREAMJOB_SINK_KAFKA_PASSWORD" => Some("sink-pass".to_owned()),
            _ => None,
        };
        let source_auth = "auth: {mechanism: SCRAM-SHA-512, secretRef: {name: s}, tls: {caSecretRef: {name: ca}}}";
        // (source auth, sink, source user and CA, sink bootstrap, user and CA)
        let cases = [
            ("", "{topic: out}", None, "k:9092", None),
            (source_auth, "{topic: out}", Some("src-user"), "k:9092", Some("src-user")),
            (source_auth, "{topic: out, bootstrapServers: 'k:9092'}", Some("src-user"), "k:9092", Some("src-user")),
            (source_auth, "{topic: out, bootstrapServers: 'other:9092'}", Some("src-user"), "other:9092", None),
            (
                source_auth,
                "{topic: out, bootstrapServers: 'other:9093', auth: {mechanism: SCRAM-SHA-256, secretRef: {name: t}, tls: {caSecretRef: {name: tca}}}}",
                Some("src-user"),
                "other:9093",
                Some("sink-user"),
            ),
            ("", "{topic: out, bootstrapServers: 'other:9093', auth: {mechanism: SCRAM-SHA-256, secretRef: {name: t}}}", None, "other:9093", Some("sink-user")),
        ];
        for (source, sink, source_user, sink_bootstrap, sink_user) in cases {
            let yaml = format!(
                "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata: {{name: wc, namespace: data}}\nspec:\n  \
                 source: {{bootstrapServers: 'k:9092', topics: [in], {source}}}\n  sink: {sink}\n"
            );
            let job = streamjob_crds::parse_manifest(&yaml).expect("valid test job");
            let config = WorkerConfig::from_job(job, &Overrides::default(), env).expect("valid");
            let property = |cluster: Cluster, key: &str| {
                config
                    .access(cluster)
                    .properties(config.bootstrap(cluster))
                    .into_iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v)
            };
            let case = format!("{source} / {sink}");
            assert_eq!(property(Cluster::Source, "sasl.username").as_deref(), source_user, "{case}");
            assert_eq!(property(Cluster::Sink, "bootstrap.servers").as_deref(), Some(sink_bootstrap), "{case}");
            assert_eq!(property(Cluster::Sink, "sasl.username").as_deref(), sink_user, "{case}");
            let sink_password = property(Cluster::Sink, "sasl.password");
            assert_eq!(sink_password.is_some(), sink_user.is_some(), "{case}");
            if sink_user == Some("sink-user") {
                assert_eq!(sink_password.as_deref(), Some("sink-pass"), "{case}");
                let ca = property(Cluster::Sink, "ssl.ca.location");
                let expected_ca = sink.contains("tca").then_some("/etc/streamjob/sink-kafka-ca/ca.crt");
                assert_eq!(ca.as_deref(), expected_ca, "{case}");
            }
            if source_user.is_some() {
                let ca = property(Cluster::Source, "ssl.ca.location");
                assert_eq!(ca.as_deref(), Some("/etc/streamjob/kafka-ca/ca.crt"), "{case}");
            }
        }
    }

    #[test]
    fn a_bad_manifest_names_the_field() {
        let dir = std::env::temp_dir().join(format!("streamjob-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("job.yaml");
        std::fs::write(
            &path,
            "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata: {name: x}\n\
             spec:\n  source: {bootstrapServers: 'k:9092', topics: [a]}\n  sink: {topic: b}\n  \
             pipeline: [{window: {size: 1s, aggregate: {function: count}}}]\n",
        )
        .expect("write");
        let error = WorkerConfig::load(&path, &Overrides::default(), |_| None).expect_err("invalid");
        assert!(error.to_string().contains("keyBy"), "{error}");
    }
}
