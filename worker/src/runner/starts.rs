//! Where assigned partitions start (see [`crate::partition_start`]), read off the loop.
//!
//! Every assigned partition is held (assigned and paused) until its start is known. A thread of
//! its own, with a client that never joins the group, reads the group's committed offsets
//! (with `read_committed`, so an open transaction's offsets are waited for: the broker answers
//! UNSTABLE_OFFSET_COMMIT until that transaction ends) and looks up the logical ends; the loop
//! then seeks, resumes and hands the partition to the engine with its commit metadata. A read
//! that fails is tried again with back-off, and the partition stays held: never started from
//! `startFrom` because an answer did not come. The same thread watches the source topics'
//! partition counts, so the windows wait for partitions added while the job runs.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};

use super::clients::client_config;
use super::*;
use crate::partition_start::{start_at, Ask, CommittedRead, StartAt};

/// One committed-offset read waits at most this long (librdkafka retries UNSTABLE_OFFSET_COMMIT
/// within it); the partition stays held and is asked again after a back-off.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the source topics' partition counts are read, for the windows' expected sources.
pub(super) const SOURCE_REFRESH: Duration = Duration::from_secs(2);

/// A partition's resolved start: a concrete offset, and the metadata committed with it.
#[derive(Debug, Clone)]
pub(super) struct Resolved {
    pub offset: i64,
    pub metadata: Option<String>,
    pub how: &'static str,
}

pub(super) enum Answer {
    Starts(Vec<(Ask, Result<Resolved, String>)>),
    /// Every partition of the source topics, as [`source_id`]s, when the count changed.
    Sources(Vec<String>),
}

/// The loop's side of the thread.
pub(super) struct StartReader {
    asks: Sender<Vec<Ask>>,
    answers: Receiver<Answer>,
}

impl StartReader {
    /// Starts the thread. `watch_sources`: the job is windowed and its windows wait for every
    /// source partition, starting with `sources`.
    pub(super) fn start(config: &WorkerConfig, watch_sources: Option<Vec<String>>) -> Result<Self, WorkerError> {
        let mut client = client_config(config, Cluster::Source);
        client
            .set("group.id", &config.consumer_group)
            .set("enable.auto.commit", "false")
            // Offsets committed in a transaction still open are waited for.
            .set("isolation.level", "read_committed");
        let reader: BaseConsumer =
            client.create().map_err(|source| WorkerError::Client { client: "committed-offset reader", source })?;
        let (asks, asked) = mpsc::channel::<Vec<Ask>>();
        let (answer, answers) = mpsc::channel();
        let job = ReaderJob {
            reader,
            start_from: config.job.spec.source.start_from,
            repartition_topic: Some(config.repartition_topic()).filter(|_| watch_sources.is_some()),
            source_topics: config.job.spec.source.topics.clone(),
            sources: watch_sources,
        };
        std::thread::Builder::new()
            .name("partition-starts".into())
            .spawn(move || job.run(&asked, &answer))
            .map_err(|error| WorkerError::Thread(error.to_string()))?;
        Ok(Self { asks, answers })
    }

    pub(super) fn ask(&self, asks: Vec<Ask>) {
        if self.asks.send(asks).is_err() {
            tracing::error!("the partition-start reader stopped; held partitions stay held");
        }
    }

    pub(super) fn answers(&self) -> Vec<Answer> {
        self.answers.try_iter().collect()
    }
}

struct ReaderJob {
    reader: BaseConsumer,
    start_from: StartFrom,
    repartition_topic: Option<String>,
    source_topics: Vec<String>,
    sources: Option<Vec<String>>,
}

impl ReaderJob {
    fn run(mut self, asked: &Receiver<Vec<Ask>>, answer: &Sender<Answer>) {
        loop {
            match asked.recv_timeout(SOURCE_REFRESH) {
                Ok(asks) => {
                    let starts = self.resolve(&asks);
                    if answer.send(Answer::Starts(starts)).is_err() {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if let Some(grown) = self.grown_sources() {
                if answer.send(Answer::Sources(grown)).is_err() {
                    return;
                }
            }
        }
    }

    /// The source partitions, when there are more than last time (windowed jobs only).
    fn grown_sources(&mut self) -> Option<Vec<String>> {
        let known = self.sources.as_ref()?;
        let mut now = Vec::new();
        for topic in &self.source_topics {
            let count = match self.partition_count(topic) {
                Ok(count) => count,
                Err(error) => {
                    tracing::debug!(%error, topic, "could not read the source topic's partitions");
                    return None;
                }
            };
            now.extend((0..count).map(|partition| source_id(topic, partition)));
        }
        if now.len() <= known.len() {
            return None;
        }
        tracing::info!(before = known.len(), after = now.len(), "source partitions added: windows wait for them too");
        self.sources = Some(now.clone());
        Some(now)
    }

    fn partition_count(&self, topic: &str) -> Result<i32, String> {
        let metadata = self.reader.fetch_metadata(Some(topic), REQUEST_TIMEOUT).map_err(|e| e.to_string())?;
        let found = metadata.topics().iter().find(|t| t.name() == topic).ok_or("topic not in the metadata")?;
        if let Some(error) = found.error() {
            return Err(format!("{:?}", RDKafkaErrorCode::from(error)));
        }
        Ok(found.partitions().len() as i32)
    }

    /// Reads the committed offsets of every partition of the asked partitions' topics (to know
    /// whether the group committed on a topic at all), and the logical ends where needed.
    fn resolve(&self, asks: &[Ask]) -> Vec<(Ask, Result<Resolved, String>)> {
        let mut topics: Vec<&str> = asks.iter().map(|(topic, _, _)| topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        let mut list = TopicPartitionList::new();
        let mut failed_topics: HashMap<&str, String> = HashMap::new();
        for topic in &topics {
            match self.partition_count(topic) {
                Ok(count) => {
                    for partition in 0..count {
                        list.add_partition(topic, partition);
                    }
                }
                Err(error) => {
                    failed_topics.insert(topic, format!("cannot read the partitions of {topic}: {error}"));
                }
            }
            // An asked partition the metadata does not show yet is asked for all the same.
            for (_, partition, _) in asks.iter().filter(|(t, _, _)| t == topic) {
                if list.find_partition(topic, *partition).is_none() {
                    list.add_partition(topic, *partition);
                }
            }
        }
        let committed = self.reader.committed_offsets(list, READ_TIMEOUT).map_err(|error| {
            format!(
                "cannot read the committed offsets (an open transaction of a worker that died is waited for): {error}"
            )
        });
        asks.iter()
            .map(|ask| {
                let outcome = match (&committed, failed_topics.get(ask.0.as_str())) {
                    (Err(error), _) => Err(error.clone()),
                    (_, Some(error)) => Err(error.clone()),
                    (Ok(committed), None) => self.start_of(committed, &ask.0, ask.1),
                };
                (ask.clone(), outcome)
            })
            .collect()
    }

    fn start_of(&self, committed: &TopicPartitionList, topic: &str, partition: i32) -> Result<Resolved, String> {
        let element = committed.find_partition(topic, partition).ok_or("no answer for the partition")?;
        element.error().map_err(|error| format!("cannot read the committed offset: {error}"))?;
        let read = match element.offset() {
            Offset::Offset(offset) => {
                CommittedRead::At { offset, metadata: Some(element.metadata().to_owned()).filter(|m| !m.is_empty()) }
            }
            _ => CommittedRead::Nothing,
        };
        let topic_has_commits = committed
            .elements_for_topic(topic)
            .iter()
            .any(|element| element.error().is_ok() && matches!(element.offset(), Offset::Offset(_)));
        let repartition = Some(topic) == self.repartition_topic.as_deref();
        let start = start_at(read, topic_has_commits, repartition, self.start_from);
        let how = start.reason();
        let offset = match start {
            StartAt::Committed { offset, metadata } => return Ok(Resolved { offset, metadata, how }),
            StartAt::Beginning | StartAt::End => {
                let (low, high) = self
                    .reader
                    .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
                    .map_err(|error| format!("cannot read the partition's ends: {error}"))?;
                if start == StartAt::Beginning {
                    low
                } else {
                    high
                }
            }
        };
        Ok(Resolved { offset, metadata: None, how })
    }
}
