//! The `StreamJob` API (`streamjob.io/v1alpha1`).
//!
//! Doc comments on fields become the `kubectl explain` text, so they are written for users.
//! Rules that span several fields are CEL rules (`x-kubernetes-validations`) declared next to the
//! type they constrain; the lists and strings they touch are bounded so a real API server accepts
//! the rules' estimated cost.
//!
//! Over 400 lines because it is one schema: the spec, its stages and the status are read
//! together (their doc comments are what `kubectl explain` prints), and splitting them by type
//! would scatter the CEL rules that span them.

// kube's derive takes one `printcolumn(...)` per column, which clippy reads as duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rules;

/// Most pipeline stages a job may declare.
pub const MAX_STAGES: usize = 16;
/// Most source topics a job may read.
pub const MAX_SOURCE_TOPICS: usize = 16;
/// Kafka's own limit on a topic name.
pub const MAX_TOPIC_NAME_LENGTH: usize = 249;
/// Most entries kept in `status.lag.perPartition`.
pub const MAX_REPORTED_PARTITIONS: usize = 64;

/// A stream-processing job: workers consume `source` as one consumer group, run `pipeline` on
/// every record and write the results to `sink`, scaled from consumer-group lag when
/// `autoscaling` is enabled.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "streamjob.io",
    version = "v1alpha1",
    kind = "StreamJob",
    namespaced,
    shortname = "sj",
    category = "streaming",
    status = "StreamJobStatus",
    derive = "PartialEq",
    doc = "A StreamJob runs a declared stream-processing pipeline over a Kafka topic as a scaled group of workers.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "What the job is doing now"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.ready",
        description = "Ready workers / desired workers"
    ),
    printcolumn(
        name = "Partitions",
        type_ = "integer",
        json_path = ".status.partitions",
        description = "Partitions of the source topics"
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.lag.total",
        description = "Records not yet processed, over all partitions"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Group",
        type_ = "string",
        json_path = ".status.consumerGroup",
        priority = "1",
        description = "Kafka consumer group"
    ),
    printcolumn(
        name = "Last Scale",
        type_ = "string",
        json_path = ".status.lastScale.summary",
        priority = "1",
        description = "The last scaling decision"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = rules::spec_rules)]
pub struct StreamJobSpec {
    /// Worker container image. Defaults to the operator's `--worker-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub image: Option<String>,

    /// When the kubelet pulls the worker image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// Number of workers while autoscaling is off. This is the field the scale subresource
    /// (`kubectl scale`, an HPA, KEDA) drives; with autoscaling on the operator ignores it and
    /// never writes it.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// Stop all workers (scale to 0) and keep the consumer group's offsets, to resume later.
    #[serde(default)]
    pub suspend: bool,

    /// Where records come from.
    pub source: SourceSpec,

    /// The processing stages, applied in order to every record.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub pipeline: Vec<PipelineStage>,

    /// Where results go.
    pub sink: SinkSpec,

    /// Delivery guarantee. `atLeastOnce`: nothing is lost, a result may be written twice after a
    /// crash. `exactlyOnce`: results and input offsets are committed in one Kafka transaction, so
    /// `read_committed` readers of the sink see each result once.
    #[serde(default)]
    pub delivery: DeliveryGuarantee,

    /// Lag-driven autoscaling of the workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// Compute resources of each worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Extra environment variables of each worker container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// Node labels a worker pod's node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the worker pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Scheduling affinity of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// ServiceAccount of the worker pods. Workers need no Kubernetes API access; its token is
    /// not mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub service_account_name: Option<String>,

    /// Extra labels on the worker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,

    /// Extra annotations on the worker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,

    /// What happens to the Kafka consumer group when the StreamJob is deleted. `Retain` keeps
    /// its committed offsets; `DeleteConsumerGroup` deletes the group.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

fn default_replicas() -> i32 {
    1
}

/// When the kubelet pulls an image.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// The Kafka topics a job consumes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// Comma-separated `host:port` list of Kafka brokers.
    #[schemars(length(min = 1, max = 2048))]
    pub bootstrap_servers: String,

    /// Topics to consume; all must exist. Their partitions are spread over the workers.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$")))]
    pub topics: Vec<String>,

    /// Kafka consumer group of the workers. Defaults to `streamjob.<namespace>.<name>` (a job that
    /// ran under the older `streamjob-<namespace>-<name>` keeps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub consumer_group: Option<String>,

    /// Where to begin when the consumer group has no committed offset for a partition.
    #[serde(default)]
    pub start_from: StartFrom,

    /// How record values are decoded. `json`: one JSON object per record. `text`: UTF-8 text,
    /// seen by the pipeline as the field `value`. `bytes`: raw bytes, seen as the field `value`
    /// (base64 when written as JSON).
    #[serde(default)]
    pub format: SourceFormat,

    /// Static group membership: each worker keeps its partitions across restarts
    /// (`group.instance.id` = pod name), avoiding a rebalance per restart. The price: a removed
    /// worker's partitions wait for the session timeout before moving.
    #[serde(default)]
    pub static_membership: bool,

    /// Authentication to the brokers. Credentials come only from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<KafkaAuth>,
}

/// Where to begin without a committed offset.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StartFrom {
    /// The oldest retained record: nothing already in the topic is skipped.
    #[default]
    Earliest,
    /// Only records produced after the job starts.
    Latest,
}

/// How source records are decoded.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SourceFormat {
    #[default]
    Json,
    Text,
    Bytes,
}

/// SASL authentication and TLS to the brokers. Every Secret it names must carry the label
/// `streamjob.io/kafka-credentials: "true"`, or the job is refused (`SecretNotOptedIn`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// `!has(self.tls.enabled)`: the API server validates after defaulting, the client-side validator
// before, and `enabled` defaults to true.
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.mechanism != 'PLAIN' || (has(self.tls) && (!has(self.tls.enabled) || self.tls.enabled)) || (has(self.allowInsecure) && self.allowInsecure)",
    "message": "mechanism PLAIN sends the password in clear text: enable tls, or set allowInsecure: true to accept that"
}]))]
pub struct KafkaAuth {
    /// SASL mechanism.
    pub mechanism: SaslMechanism,
    /// The Secret holding the username and password.
    pub secret_ref: CredentialsSecretRef,
    /// TLS to the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Allow mechanism `PLAIN` without TLS, which sends the password in clear text to the
    /// brokers and anyone on the path. Refused unless set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure: bool,
}

/// A SASL mechanism.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The name librdkafka's `sasl.mechanism` expects.
    pub fn as_kafka_name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A Secret in the job's namespace holding Kafka credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the username in the Secret.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1, max = 253))]
    pub username_key: String,
    /// Key of the password in the Secret.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".to_owned()
}

fn default_password_key() -> String {
    "password".to_owned()
}

/// TLS to the brokers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Use TLS.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A Secret whose key `ca.crt` holds the CA bundle that signs the brokers' certificates.
    /// Without it, the system's trusted CAs are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretName>,
}

/// A Secret in the job's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretName {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

fn default_true() -> bool {
    true
}

/// One processing stage. Exactly one of its fields is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.filter), has(self.map), has(self.split), has(self.keyBy), has(self.window)].filter(x, x).size() == 1",
    "message": "a pipeline stage must set exactly one of filter, map, split, keyBy, window"
}]))]
pub struct PipelineStage {
    /// Keep only the records for which the condition holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterStage>,
    /// Reshape each record: `select`, then `rename`, then `set`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapStage>,
    /// Split a text field into one record per piece (the word-count step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitStage>,
    /// Key records by a field: the sink key, and the grouping key of a later window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_by: Option<KeyByStage>,
    /// Aggregate the records of each key over time windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowStage>,
}

/// The operation one stage performs, as a Rust enum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StageOperation<'a> {
    Filter(&'a FilterStage),
    Map(&'a MapStage),
    Split(&'a SplitStage),
    KeyBy(&'a KeyByStage),
    Window(&'a WindowStage),
}

impl PipelineStage {
    /// The stage's one operation, or `None` when it sets none or several (the schema rejects
    /// both; this guards objects that bypassed it).
    pub fn operation(&self) -> Option<StageOperation<'_>> {
        let set: Vec<StageOperation<'_>> = [
            self.filter.as_ref().map(StageOperation::Filter),
            self.map.as_ref().map(StageOperation::Map),
            self.split.as_ref().map(StageOperation::Split),
            self.key_by.as_ref().map(StageOperation::KeyBy),
            self.window.as_ref().map(StageOperation::Window),
        ]
        .into_iter()
        .flatten()
        .collect();
        match set.as_slice() {
            [only] => Some(*only),
            _ => None,
        }
    }
}

/// A dotted path to a field of a JSON record, for example `user.id`.
pub type FieldPath = String;

/// A filter condition: `<field> <op> <value>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// `string(v) == v` tests that `v` is a string: kube's client-side CEL has no `type()`, and the
// API server compares a string with an int as unequal.
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.op == 'exists' || has(self.value) || has(self.numberValue) || has(self.boolValue)", "message": "filter.value is required unless filter.op is exists"},
    {"rule": "self.op != 'matches' || !(has(self.numberValue) || has(self.boolValue) || (has(self.value) && string(self.value) != self.value))", "message": "filter.value must be a regular expression string when filter.op is matches"},
    {"rule": "[has(self.value), has(self.numberValue), has(self.boolValue)].filter(x, x).size() <= 1", "message": "filter sets at most one of value, numberValue, boolValue"}
]))]
pub struct FilterStage {
    /// The field the condition reads (dotted path).
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"))]
    pub field: FieldPath,
    /// The comparison. `lt`, `le`, `gt`, `ge` compare numbers (or strings when either side is
    /// not a number); `contains` tests a substring or list element; `matches` a regular
    /// expression; `exists` that the field is present and not null.
    pub op: FilterOperator,
    /// The value to compare with: a string or a whole number. For a fractional number use
    /// `numberValue`, for a boolean `boolValue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::int_or_string")]
    pub value: Option<serde_json::Value>,
    /// The value to compare with, as a number such as `0.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_value: Option<serde_json::Number>,
    /// The value to compare with, as a boolean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bool_value: Option<bool>,
}

impl FilterStage {
    /// The value the condition compares with, from whichever of `value`, `numberValue`,
    /// `boolValue` is set.
    pub fn comparison_value(&self) -> Option<serde_json::Value> {
        let number = self.number_value.clone().map(serde_json::Value::Number);
        let boolean = self.bool_value.map(serde_json::Value::Bool);
        self.value.clone().or(number).or(boolean)
    }
}

/// Filter comparison operators.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FilterOperator {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Exists,
    Contains,
    Matches,
}

/// Reshape a record.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.select) || has(self.rename) || has(self.set)",
    "message": "map needs at least one of select, rename, set"
}]))]
pub struct MapStage {
    /// Keep only these fields (dotted paths); drop the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub select: Option<Vec<FieldPath>>,
    /// Rename fields: old path → new path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rename: Option<BTreeMap<FieldPath, FieldPath>>,
    /// Set fields to constant values: path → value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::map_of_any")]
    pub set: Option<BTreeMap<FieldPath, serde_json::Value>>,
}

/// Split a text field into pieces, one record each.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SplitStage {
    /// The text field to split; each output record has this field set to one piece.
    #[serde(default = "default_value_field")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"))]
    pub field: FieldPath,
    /// The separator. Without it, the text is split on runs of whitespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub separator: Option<String>,
    /// Lower-case each piece (so `The` and `the` count as one word).
    #[serde(default)]
    pub lowercase: bool,
}

fn default_value_field() -> String {
    "value".to_owned()
}

/// Key records by a field.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyByStage {
    /// The field whose value becomes the record's key (dotted path).
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"))]
    pub field: FieldPath,
}

/// Aggregate each key's records over time windows. A `keyBy` stage must come before it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "duration(self.size) > duration('0s')", "message": "window.size must be greater than 0"},
    {"rule": "self.type != 'sliding' || has(self.slide)", "message": "window.slide is required for a sliding window"},
    {"rule": "self.type != 'tumbling' || !has(self.slide)", "message": "window.slide applies only to a sliding window"},
    {"rule": "!has(self.slide) || (duration(self.slide) > duration('0s') && duration(self.slide) <= duration(self.size))", "message": "window.slide must be greater than 0 and at most window.size"}
]))]
pub struct WindowStage {
    /// `tumbling`: back-to-back windows of `size`. `sliding`: windows of `size` starting every
    /// `slide`, so a record counts in `size / slide` windows.
    #[serde(rename = "type", default)]
    pub kind: WindowKind,
    /// Window length, as a duration such as `10s`, `1m`, `1h30m`.
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub size: String,
    /// How often a sliding window starts (a duration no longer than `size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub slide: Option<String>,
    /// The field holding each record's event time (RFC 3339 text, or epoch milliseconds).
    /// Without it, the Kafka record timestamp is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"))]
    pub time_field: Option<FieldPath>,
    /// How late a record may arrive after its window's end and still count. Later records are
    /// counted as late and sent to the dead-letter topic when one is set.
    #[serde(default = "default_zero_duration")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub allowed_lateness: String,
    /// The value computed for each key and window.
    pub aggregate: Aggregate,
}

fn default_zero_duration() -> String {
    "0s".to_owned()
}

/// Window shapes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WindowKind {
    #[default]
    Tumbling,
    Sliding,
}

/// An aggregate over a window's records.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.__function__ == 'count' || has(self.field)",
    "message": "aggregate.field is required for sum, min, max and avg"
}]))]
pub struct Aggregate {
    /// `count` counts records; `sum`, `min`, `max`, `avg` read the numeric `field`.
    pub function: AggregateFunction,
    /// The numeric field aggregated (dotted path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"))]
    pub field: Option<FieldPath>,
}

/// Aggregate functions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AggregateFunction {
    Count,
    Sum,
    Min,
    Max,
    Avg,
}

/// Where results are written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SinkSpec {
    /// The output topic. It must not be one of the source topics.
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub topic: String,
    /// Brokers of the output topic. Defaults to the source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub bootstrap_servers: Option<String>,
    /// Authentication to the sink's brokers when `bootstrapServers` names another cluster than
    /// the source's (same shape as `source.auth`). Without it that cluster gets no credentials;
    /// the source's are never sent to it. On the source's cluster the source's auth applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<KafkaAuth>,
    /// How results are encoded: `json` objects, or `text` lines.
    #[serde(default)]
    pub format: SinkFormat,
    /// Records that fail to decode or process (and late records) go here, with headers naming
    /// the error. Without it, they are logged and counted, then skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub dead_letter_topic: Option<String>,
}

/// How results are encoded.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SinkFormat {
    #[default]
    Json,
    Text,
}

/// Delivery guarantees.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DeliveryGuarantee {
    #[default]
    AtLeastOnce,
    ExactlyOnce,
}

/// What happens to the consumer group when the job is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    DeleteConsumerGroup,
}

/// Lag-driven autoscaling. Names follow KEDA's Kafka scaler where the meaning is the same.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.minReplicas <= self.maxReplicas", "message": "autoscaling.minReplicas must be less than or equal to autoscaling.maxReplicas"},
    {"rule": "self.lagThreshold > 0", "message": "autoscaling.lagThreshold must be greater than 0"}
]))]
pub struct AutoscalingSpec {
    /// Scale the workers from consumer-group lag. While on, `spec.replicas` is ignored.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Fewest workers. 0 allows scale to zero when there is no lag.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    /// Most workers.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Target lag (records) per worker.
    #[serde(default = "default_lag_threshold")]
    pub lag_threshold: i64,
    /// Lag above which a job scaled to zero wakes up.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub activation_lag_threshold: i64,
    /// Drain a backlog within this many seconds, from measured rates, while keeping up with
    /// the input.
    #[serde(default = "default_target_catch_up_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub target_catch_up_seconds: i32,
    /// Seconds between lag measurements.
    #[serde(default = "default_poll_interval_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub poll_interval_seconds: i32,
    /// How fast to add workers.
    #[serde(default)]
    pub scale_up: ScaleUpBehavior,
    /// How fast to remove workers.
    #[serde(default)]
    pub scale_down: ScaleDownBehavior,
    /// Allow more workers than partitions (the extra ones sit idle).
    #[serde(default)]
    pub allow_idle_consumers: bool,
    /// Workers to run once lag could not be measured for `failureThreshold` polls in a row
    /// (broker unreachable, credentials refused), as KEDA's `fallback`. Without it the workers
    /// stay as they are while lag cannot be measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<AutoscalingFallback>,
}

/// KEDA's `fallback`: a replica count for when the metric source fails.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingFallback {
    /// Failed lag measurements in a row before `replicas` applies (KEDA's `failureThreshold`).
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: i32,
    /// Workers to run meanwhile, kept within minReplicas..maxReplicas (KEDA's `replicas`).
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
}

fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    10
}
fn default_lag_threshold() -> i64 {
    1000
}
fn default_target_catch_up_seconds() -> i32 {
    60
}
fn default_poll_interval_seconds() -> i32 {
    10
}

/// Scale-up pacing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleUpBehavior {
    /// Add workers only when every recommendation over this window asks for them (0: at once).
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_seconds: i32,
    /// Most workers added by one decision. Without it, no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_step: Option<i32>,
}

/// Scale-down pacing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDownBehavior {
    /// Remove workers only when every recommendation over this window allows it.
    #[serde(default = "default_scale_down_stabilization_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_seconds: i32,
    /// Most workers removed by one decision. Without it, no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_step: Option<i32>,
}

fn default_scale_down_stabilization_seconds() -> i32 {
    120
}

impl Default for ScaleDownBehavior {
    fn default() -> Self {
        Self { stabilization_seconds: default_scale_down_stabilization_seconds(), max_step: None }
    }
}

/// What the operator observed and decided.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamJobStatus {
    /// The `metadata.generation` the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What the job is doing now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Worker pods that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Worker pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Workers the operator wants: `spec.replicas`, the autoscaler's decision, or 0 when
    /// suspended.
    #[serde(default)]
    pub desired_replicas: i32,
    /// Ready / desired workers, for display (`3/4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// The worker pods' label selector, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The consumer group the workers use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_group: Option<String>,
    /// Partitions of the source topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// Consumer-group lag at the last measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<LagStatus>,
    /// Records consumed per second at the last measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<f64>,
    /// The last scaling decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale: Option<ScaleEvent>,
    /// Ready, Progressing, Degraded, ConfigValid, Suspended, AutoscalerDegraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Lifecycle phases.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted; workers not running yet.
    Pending,
    /// All desired workers are ready.
    Running,
    /// Workers are being added or removed.
    Scaling,
    /// `spec.suspend` is true; no workers run.
    Suspended,
    /// Workers are failing (see the Degraded condition).
    Degraded,
    /// The job cannot run as specified (see the ConfigValid condition).
    Failed,
}

/// Consumer-group lag.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LagStatus {
    /// Lag summed over all partitions.
    pub total: i64,
    /// Lag of each partition, largest first, at most 64 entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_partition: Vec<PartitionLag>,
    /// When the lag was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_at: Option<Time>,
}

/// Lag of one partition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct PartitionLag {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// Records between the committed offset and the high watermark.
    pub lag: i64,
}

/// A scaling decision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ScaleEvent {
    /// When it was made.
    pub time: Time,
    /// Workers before.
    pub from: i32,
    /// Workers after.
    pub to: i32,
    /// Why, with the numbers.
    pub reason: String,
    /// `from → to`, for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}
