//! Kafka access from the operator: client properties with credentials read from the job's
//! Secret, and consumer-group deletion.

use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use streamjob_crds::kafka::{connection_properties, CaBundle, Credentials};
use streamjob_crds::{worker_paths, StreamJob};

use crate::controller::ConsumerGroupDeleter;

fn secret_string(secret: &Secret, key: &str) -> Result<String, String> {
    let name = secret.name_any();
    let bytes =
        secret.data.as_ref().and_then(|data| data.get(key)).ok_or_else(|| format!("Secret {name} has no key {key}"))?;
    String::from_utf8(bytes.0.clone()).map_err(|_| format!("Secret {name} key {key} is not UTF-8"))
}

/// librdkafka properties for the job's source cluster, reading credentials and the CA bundle
/// from the Secrets the job references.
pub async fn source_client_config(client: &Client, job: &StreamJob) -> Result<ClientConfig, String> {
    let namespace = job.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let source = &job.spec.source;
    let mut credentials = None;
    let mut ca = None;
    if let Some(auth) = &source.auth {
        let reference = &auth.secret_ref;
        let secret =
            secrets.get(&reference.name).await.map_err(|e| format!("reading Secret {}: {e}", reference.name))?;
        credentials = Some(Credentials {
            username: secret_string(&secret, &reference.username_key)?,
            password: secret_string(&secret, &reference.password_key)?,
        });
        if let Some(ca_ref) = auth.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
            let secret = secrets.get(&ca_ref.name).await.map_err(|e| format!("reading Secret {}: {e}", ca_ref.name))?;
            ca = Some(CaBundle::Pem(secret_string(&secret, worker_paths::CA_FILE_NAME)?));
        }
    }
    let mut config = ClientConfig::new();
    for (key, value) in connection_properties(&source.bootstrap_servers, source, credentials.as_ref(), ca.as_ref()) {
        config.set(key, value);
    }
    Ok(config)
}

/// Deletes consumer groups with librdkafka's admin client.
pub struct KafkaGroupDeleter {
    client: Client,
}

impl KafkaGroupDeleter {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

/// Deletes `group` on the cluster `config` reaches.
pub async fn delete_consumer_group(config: &ClientConfig, group: &str) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> =
        config.create().map_err(|e| format!("creating admin client: {e}"))?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let results = admin.delete_groups(&[group], &options).await.map_err(|e| e.to_string())?;
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::GroupIdNotFound)) => {}
            Err((name, code)) => return Err(format!("deleting consumer group {name}: {code}")),
        }
    }
    Ok(())
}

impl ConsumerGroupDeleter for KafkaGroupDeleter {
    fn delete_group<'a>(&'a self, job: &'a StreamJob) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let config = source_client_config(&self.client, job).await?;
            delete_consumer_group(&config, &job.consumer_group()).await
        })
    }
}
