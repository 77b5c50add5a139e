//! Kafka access from the operator: client properties with credentials read from the job's
//! Secret, the members of a job's consumer group, and the deletion of its consumer group and
//! repartition topic.

use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use streamjob_crds::kafka::{
    ca_secret, connection_properties, CaBundle, Cluster, Credentials, CREDENTIALS_SECRET_LABEL,
};
use streamjob_crds::{worker_paths, StreamJob};

use crate::controller::{ConsumerGroupDeleter, GroupCleanup, GroupDeletionError};
use crate::secrets::opted_in;

/// Why the client properties of a job's cluster could not be put together.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error("reading Secret {name}: {source}")]
    ReadSecret { name: String, source: kube::Error },
    #[error(
        "Secret {name} has not opted in to be used by StreamJobs (label {label}=true): not read",
        label = CREDENTIALS_SECRET_LABEL
    )]
    NotOptedIn { name: String },
    #[error("Secret {name} has no key {key}")]
    MissingKey { name: String, key: String },
    #[error("Secret {name} key {key} is not UTF-8")]
    NotUtf8 { name: String, key: String },
}

/// Why a consumer group could not be deleted.
#[derive(Debug, thiserror::Error)]
pub enum DeleteGroupError {
    #[error(transparent)]
    ClientConfig(#[from] ClientConfigError),
    #[error("creating admin client: {0}")]
    AdminClient(#[source] KafkaError),
    #[error("{0}")]
    Request(#[source] KafkaError),
    #[error("deleting consumer group {group}: {code}")]
    Group { group: String, code: RDKafkaErrorCode },
    #[error("deleting repartition topic {topic}: {code}")]
    Topic { topic: String, code: RDKafkaErrorCode },
    #[error("describing consumer group {group}: {source}")]
    Describe { group: String, source: KafkaError },
    #[error("describing consumer group {group}: the describe task failed: {reason}")]
    DescribeTask { group: String, reason: String },
}

fn secret_string(secret: &Secret, key: &str) -> Result<String, ClientConfigError> {
    let name = secret.name_any();
    let Some(bytes) = secret.data.as_ref().and_then(|data| data.get(key)) else {
        return Err(ClientConfigError::MissingKey { name, key: key.to_owned() });
    };
    String::from_utf8(bytes.0.clone()).map_err(|_| ClientConfigError::NotUtf8 { name, key: key.to_owned() })
}

/// Reads a Secret that opted in: its metadata first, and its data only when it carries the
/// label (checked again on the full object, in case it was removed in between).
async fn read_secret(secrets: &Api<Secret>, name: &str) -> Result<Secret, ClientConfigError> {
    let read_error = |source| ClientConfigError::ReadSecret { name: name.to_owned(), source };
    let metadata = secrets.get_metadata(name).await.map_err(read_error)?;
    if !opted_in(&metadata.metadata) {
        return Err(ClientConfigError::NotOptedIn { name: name.to_owned() });
    }
    let secret = secrets.get(name).await.map_err(read_error)?;
    if !opted_in(&secret.metadata) {
        return Err(ClientConfigError::NotOptedIn { name: name.to_owned() });
    }
    Ok(secret)
}

/// librdkafka properties for the job's source cluster (the lag probe, the consumer-group
/// deletion, the dead-letter topic's check), reading credentials and the CA bundle from the
/// opted-in Secrets the job references.
pub async fn source_client_config(client: &Client, job: &StreamJob) -> Result<ClientConfig, ClientConfigError> {
    client_config(client, job, Cluster::Source).await
}

/// librdkafka properties for the job's sink cluster (the output check): its own bootstrap
/// servers and `sink.auth` when it names another cluster, never the source's credentials; the
/// source's otherwise.
pub async fn sink_client_config(client: &Client, job: &StreamJob) -> Result<ClientConfig, ClientConfigError> {
    client_config(client, job, Cluster::Sink).await
}

async fn client_config(client: &Client, job: &StreamJob, cluster: Cluster) -> Result<ClientConfig, ClientConfigError> {
    let namespace = job.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let bootstrap = match cluster {
        Cluster::Sink if job.spec.sink_on_other_cluster() => {
            job.spec.sink.bootstrap_servers.as_deref().unwrap_or(&job.spec.source.bootstrap_servers)
        }
        _ => &job.spec.source.bootstrap_servers,
    };
    let auth = job.spec.auth_for(cluster);
    let mut credentials = None;
    let mut ca = None;
    if let Some(auth) = auth {
        let reference = &auth.secret_ref;
        let secret = read_secret(&secrets, &reference.name).await?;
        credentials = Some(Credentials {
            username: secret_string(&secret, &reference.username_key)?,
            password: secret_string(&secret, &reference.password_key)?,
        });
        if let Some(ca_name) = ca_secret(auth) {
            let secret = read_secret(&secrets, ca_name).await?;
            ca = Some(CaBundle::Pem(secret_string(&secret, worker_paths::CA_FILE_NAME)?));
        }
    }
    let mut config = ClientConfig::new();
    for (key, value) in connection_properties(bootstrap, auth, credentials.as_ref(), ca.as_ref()) {
        config.set(key, value);
    }
    Ok(config)
}

/// Describes and deletes consumer groups and repartition topics with librdkafka's admin client.
pub struct KafkaGroupDeleter {
    client: Client,
}

impl KafkaGroupDeleter {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Deletes `group` on the cluster `config` reaches; a group that does not exist is no error.
pub async fn delete_consumer_group(config: &ClientConfig, group: &str) -> Result<(), DeleteGroupError> {
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(DeleteGroupError::AdminClient)?;
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let results = admin.delete_groups(&[group], &options).await.map_err(DeleteGroupError::Request)?;
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
            Err((group, code)) => return Err(DeleteGroupError::Group { group, code }),
        }
    }
    Ok(())
}

/// Deletes `topic`; a topic that does not exist is no error. Returns whether it existed.
pub async fn delete_topic(config: &ClientConfig, topic: &str) -> Result<bool, DeleteGroupError> {
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(DeleteGroupError::AdminClient)?;
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let results = admin.delete_topics(&[topic], &options).await.map_err(DeleteGroupError::Request)?;
    let mut existed = false;
    for result in results {
        match result {
            Ok(_) => existed = true,
            Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => return Err(DeleteGroupError::Topic { topic, code }),
        }
    }
    Ok(existed)
}

/// Members of `group` (0 for a group that is empty or does not exist), from DescribeGroups.
pub async fn consumer_group_members(config: &ClientConfig, group: &str) -> Result<usize, DeleteGroupError> {
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(DeleteGroupError::AdminClient)?;
    let name = group.to_owned();
    let described = tokio::task::spawn_blocking(move || {
        admin
            .inner()
            .fetch_group_list(Some(&name), ADMIN_TIMEOUT)
            .map(|list| list.groups().iter().filter(|g| g.name() == name).map(|g| g.members().len()).sum::<usize>())
    })
    .await;
    match described {
        Ok(Ok(members)) => Ok(members),
        Ok(Err(source)) => Err(DeleteGroupError::Describe { group: group.to_owned(), source }),
        Err(error) => Err(DeleteGroupError::DescribeTask { group: group.to_owned(), reason: error.to_string() }),
    }
}

impl ConsumerGroupDeleter for KafkaGroupDeleter {
    fn group_members<'a>(&'a self, job: &'a StreamJob) -> BoxFuture<'a, Result<usize, GroupDeletionError>> {
        Box::pin(async move {
            let config = source_client_config(&self.client, job).await.map_err(DeleteGroupError::from)?;
            Ok(consumer_group_members(&config, &job.consumer_group()).await?)
        })
    }

    fn delete_group<'a>(&'a self, job: &'a StreamJob) -> BoxFuture<'a, Result<GroupCleanup, GroupDeletionError>> {
        Box::pin(async move {
            let config = source_client_config(&self.client, job).await.map_err(DeleteGroupError::from)?;
            delete_consumer_group(&config, &job.consumer_group()).await?;
            let repartition_topic_existed = delete_topic(&config, &job.repartition_topic()).await?;
            Ok(GroupCleanup { repartition_topic_existed })
        })
    }
}
