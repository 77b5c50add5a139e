//! librdkafka properties for reaching a job's brokers, shared by the operator (lag probe,
//! consumer-group deletion) and the worker.

use crate::types::SourceSpec;

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

/// The connection properties for `bootstrap_servers` with the source's auth settings.
pub fn connection_properties(
    bootstrap_servers: &str,
    source: &SourceSpec,
    credentials: Option<&Credentials>,
    ca: Option<&CaBundle>,
) -> Vec<(String, String)> {
    let mut properties = vec![("bootstrap.servers".to_owned(), bootstrap_servers.to_owned())];
    let Some(auth) = &source.auth else {
        return properties;
    };
    let tls = auth.tls.as_ref().is_some_and(|t| t.enabled);
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
