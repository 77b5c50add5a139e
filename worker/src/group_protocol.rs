//! Which consumer group protocol the worker speaks: the classic one (JoinGroup/SyncGroup, the
//! cooperative-sticky assignor in the client, every member stopping for each rebalance's
//! barrier) or KIP-848's consumer protocol (the broker assigns, members reconcile on their
//! own heartbeats, no group-wide barrier). `auto` asks the brokers which they offer.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

/// The broker setting that lists the group protocols the coordinator accepts (Kafka 3.7+;
/// `classic,consumer` by default from Kafka 4.0).
const REBALANCE_PROTOCOLS: &str = "group.coordinator.rebalance.protocols";
/// The consumer protocol's session timeout and heartbeat interval, set on the brokers.
const CONSUMER_SESSION_TIMEOUT: &str = "group.consumer.session.timeout.ms";
const CONSUMER_HEARTBEAT_INTERVAL: &str = "group.consumer.heartbeat.interval.ms";
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The worker's `--group-protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum GroupProtocolChoice {
    /// The consumer protocol where the brokers accept it and it is no slower (see [`resolve`]),
    /// else classic.
    Auto,
    /// The default: in the fault suite's coordinator-kill row, the one loss it still shows came
    /// in 3 of 4 runs under the consumer protocol and in none of 3 under classic (small samples,
    /// but the default must be the one proven safe).
    #[default]
    Classic,
    Consumer,
}

/// The protocol a consumer is created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupProtocol {
    Classic,
    Consumer,
}

impl GroupProtocol {
    /// librdkafka's `group.protocol` value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Consumer => "consumer",
        }
    }
}

/// What the brokers said of the group protocols, or why they could not be asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerGroupSettings {
    /// The value of `group.coordinator.rebalance.protocols`; `None` when the broker has no such
    /// setting (before Kafka 3.7).
    pub rebalance_protocols: Option<String>,
    pub consumer_session_timeout_ms: Option<String>,
    pub consumer_heartbeat_interval_ms: Option<String>,
}

/// What else decides `auto`: the worker's own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerGroupSettings {
    /// `--session-timeout`: how long a dead worker may keep its partitions.
    pub session_timeout: Duration,
    pub static_membership: bool,
}

/// The longest consumer-protocol heartbeat interval `auto` accepts. That protocol moves a
/// partition on heartbeats (the old owner learns of the move on one, the new owner on the
/// next after it let go), so a move takes up to two intervals; the classic protocol moves
/// partitions in about a second (librdkafka rejoins at most once a second). Kafka's default
/// is 5 s.
pub const MAX_CONSUMER_HEARTBEAT: Duration = Duration::from_secs(1);

/// The protocol for `choice`, given the worker's settings and what the brokers answered, and
/// why, for the log. `auto` takes the consumer protocol only where it is no slower: the
/// brokers accept it, their heartbeat interval is at most [`MAX_CONSUMER_HEARTBEAT`], their
/// session timeout is no longer than the worker's, and membership is not static (under the
/// consumer protocol a restarted pod is refused while its old self is still a member, where
/// the classic one fences the old self).
pub fn resolve(
    choice: GroupProtocolChoice,
    worker: WorkerGroupSettings,
    brokers: &Result<BrokerGroupSettings, String>,
) -> (GroupProtocol, &'static str) {
    use GroupProtocol::{Classic, Consumer};
    let settings = match (choice, brokers) {
        (GroupProtocolChoice::Classic, _) => return (Classic, "chosen"),
        (GroupProtocolChoice::Consumer, _) => return (Consumer, "chosen"),
        (GroupProtocolChoice::Auto, _) if worker.static_membership => {
            return (Classic, "static membership: the consumer protocol refuses a restarted member")
        }
        (GroupProtocolChoice::Auto, Err(_)) => return (Classic, "the brokers' group settings could not be read"),
        (GroupProtocolChoice::Auto, Ok(settings)) => settings,
    };
    let Some(protocols) = &settings.rebalance_protocols else {
        return (Classic, "the brokers predate the consumer protocol");
    };
    if !protocols.split(',').any(|p| p.trim().eq_ignore_ascii_case("consumer")) {
        return (Classic, "the brokers do not accept the consumer protocol");
    }
    let millis = |value: &Option<String>| value.as_deref().and_then(|v| v.trim().parse::<u64>().ok());
    match (millis(&settings.consumer_heartbeat_interval_ms), millis(&settings.consumer_session_timeout_ms)) {
        (Some(heartbeat), _) if heartbeat > MAX_CONSUMER_HEARTBEAT.as_millis() as u64 => {
            (Classic, "the brokers' consumer heartbeat interval is too long: partitions would move slower")
        }
        (_, Some(session)) if session > worker.session_timeout.as_millis() as u64 => {
            (Classic, "the brokers' consumer session timeout is longer than the worker's: failover would be slower")
        }
        (Some(_), Some(_)) => (Consumer, "the brokers accept it, with a short heartbeat and session timeout"),
        _ => (Classic, "the brokers' consumer heartbeat interval or session timeout is unknown"),
    }
}

/// The protocol for `choice`, asking the brokers `client` reaches when it is `auto`; logs
/// which and why.
pub fn choose(choice: GroupProtocolChoice, worker: WorkerGroupSettings, client: &ClientConfig) -> GroupProtocol {
    let brokers = match choice {
        GroupProtocolChoice::Auto => broker_group_settings(client),
        _ => Err("not asked".to_owned()),
    };
    let (protocol, reason) = resolve(choice, worker, &brokers);
    match &brokers {
        Ok(settings) => tracing::info!(
            protocol = protocol.name(),
            reason,
            broker_protocols = settings.rebalance_protocols.as_deref().unwrap_or("-"),
            broker_session_timeout_ms = settings.consumer_session_timeout_ms.as_deref().unwrap_or("-"),
            broker_heartbeat_interval_ms = settings.consumer_heartbeat_interval_ms.as_deref().unwrap_or("-"),
            "consumer group protocol"
        ),
        Err(error) => tracing::info!(protocol = protocol.name(), reason, detail = %error, "consumer group protocol"),
    }
    protocol
}

/// Asks one of the brokers `client` reaches for its group protocol settings.
pub fn broker_group_settings(client: &ClientConfig) -> Result<BrokerGroupSettings, String> {
    let admin: AdminClient<DefaultClientContext> = client.create().map_err(|e| e.to_string())?;
    let metadata = admin.inner().fetch_metadata(None, PROBE_TIMEOUT).map_err(|e| e.to_string())?;
    let broker = metadata.brokers().first().map(|b| b.id()).ok_or("the metadata lists no broker")?;
    let options = AdminOptions::new().request_timeout(Some(PROBE_TIMEOUT));
    let results = futures::executor::block_on(admin.describe_configs([&ResourceSpecifier::Broker(broker)], &options))
        .map_err(|e| e.to_string())?;
    let resource = results
        .into_iter()
        .next()
        .ok_or("no DescribeConfigs result")?
        .map_err(|code| format!("DescribeConfigs: {code}"))?;
    let value = |name: &str| resource.get(name).and_then(|entry| entry.value.clone());
    Ok(BrokerGroupSettings {
        rebalance_protocols: value(REBALANCE_PROTOCOLS),
        consumer_session_timeout_ms: value(CONSUMER_SESSION_TIMEOUT),
        consumer_heartbeat_interval_ms: value(CONSUMER_HEARTBEAT_INTERVAL),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brokers(protocols: Option<&str>, heartbeat: &str, session: &str) -> Result<BrokerGroupSettings, String> {
        Ok(BrokerGroupSettings {
            rebalance_protocols: protocols.map(str::to_owned),
            consumer_heartbeat_interval_ms: Some(heartbeat.to_owned()).filter(|v| !v.is_empty()),
            consumer_session_timeout_ms: Some(session.to_owned()).filter(|v| !v.is_empty()),
        })
    }

    #[test]
    fn auto_takes_the_consumer_protocol_only_where_it_is_no_slower() {
        use GroupProtocol::{Classic, Consumer};
        use GroupProtocolChoice::{Auto, Classic as ForceClassic, Consumer as ForceConsumer};
        let tuned = brokers(Some("classic,consumer"), "250", "10000");
        let cases = [
            // (choice, session timeout s, static membership, brokers, want)
            (Auto, 10, false, tuned.clone(), Consumer),
            (Auto, 10, false, brokers(Some("classic, consumer,streams"), "1000", "6000"), Consumer),
            (Auto, 10, false, brokers(Some("classic,consumer,streams"), "5000", "45000"), Classic),
            (Auto, 10, false, brokers(Some("classic,consumer"), "1001", "10000"), Classic),
            (Auto, 6, false, tuned.clone(), Classic),
            (Auto, 10, true, tuned.clone(), Classic),
            (Auto, 10, false, brokers(Some("classic,consumer"), "", "10000"), Classic),
            (Auto, 10, false, brokers(Some("classic"), "250", "10000"), Classic),
            (Auto, 10, false, brokers(None, "", ""), Classic),
            (Auto, 10, false, Err("timed out".to_owned()), Classic),
            (ForceClassic, 10, false, tuned.clone(), Classic),
            (ForceConsumer, 10, false, brokers(Some("classic"), "5000", "45000"), Consumer),
            (ForceConsumer, 10, true, Err("timed out".to_owned()), Consumer),
        ];
        for (choice, session, static_membership, brokers, want) in cases {
            let worker = WorkerGroupSettings { session_timeout: Duration::from_secs(session), static_membership };
            assert_eq!(resolve(choice, worker, &brokers).0, want, "{choice:?} {worker:?} {brokers:?}");
        }
    }
}
