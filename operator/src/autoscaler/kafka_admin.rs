//! One Kafka client per cluster and credentials for the lag probe: the partitions of the topics
//! (metadata), and over librdkafka's admin API a group's committed offsets
//! (ListConsumerGroupOffsets) and many partitions' log-start and end offsets (ListOffsets), each
//! one asynchronous request. rust-rdkafka 0.39 wraps neither (fede1024/rust-rdkafka#785
//! is still open), and its consumer reads committed offsets only for its own `group.id`, which
//! cost one client (threads, connections) per job; so this file calls librdkafka's C functions
//! directly. All `unsafe` of the probe is here, each block beside the rule it relies on.
//!
//! Requests are answered on one queue per client, drained by one thread, which turns each
//! result event into owned values and hands them to the waiting request by its id.

use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::ClientConfig;
use streamjob_runtime::sync::lock;
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("creating the Kafka admin client: {0}")]
    Client(rdkafka::error::KafkaError),
    #[error("starting the admin client's result thread: {0}")]
    Thread(std::io::Error),
    #[error("{0} contains a NUL byte")]
    Name(String),
    #[error("{request}: {message}")]
    Request { request: &'static str, message: String },
    #[error("{request}: no answer within {timeout:?}")]
    Timeout { request: &'static str, timeout: Duration },
}

/// A topic's partition ids, or why it has none.
pub type TopicPartitions = Result<Vec<i32>, String>;

/// One partition's answer: its offset, or the error the broker gave for it.
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: Result<i64, String>,
    /// The commit's metadata (ListConsumerGroupOffsets only).
    pub metadata: Option<String>,
}

/// Which end of each partition's log ListOffsets reads.
#[derive(Clone, Copy, Debug)]
pub enum LogEnd {
    Start,
    End,
}

/// What a result event carried, as owned values.
enum Answer {
    Offsets(Vec<PartitionOffset>),
    Failed(String),
}

type Waiting = Mutex<HashMap<usize, oneshot::Sender<Answer>>>;

/// A librdkafka queue pointer. librdkafka's queues are thread-safe, and the pointer lives until
/// `ClusterAdmin` drops it after its thread has stopped.
struct Queue(*mut rd::rd_kafka_queue_t);
// SAFETY: see the type's comment: librdkafka queues may be used from any thread.
unsafe impl Send for Queue {}
// SAFETY: as above.
unsafe impl Sync for Queue {}

/// The admin client of one cluster and credentials.
pub struct ClusterAdmin {
    queue: Arc<Queue>,
    waiting: Arc<Waiting>,
    next_id: AtomicUsize,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Bounds the blocking metadata reads in flight, so the threads they run on do not grow with
    /// the number of jobs polled at once (300 jobs held 239 threads without it).
    metadata_reads: tokio::sync::Semaphore,
    // Dropped last: the queue and the requests belong to its librdkafka handle.
    client: BaseConsumer,
}

/// The group id of the probe's client. librdkafka 2.12's OffsetFetch answer handler asks the
/// client's own group to look for a coordinator again on NOT_COORDINATOR and the like, through
/// a null pointer in a client without a group: a segfault (seen in CI; also
/// confluentinc/confluent-kafka-javascript#374). A consumer-type client with a group id has one;
/// it never subscribes, so it never joins that group.
const PROBE_GROUP: &str = "streamjob-operator-lag-probe";

/// Metadata reads of one client in flight at once (each takes milliseconds).
const METADATA_READS: usize = 4;

impl ClusterAdmin {
    pub fn new(config: &ClientConfig) -> Result<Self, AdminError> {
        let mut config = config.clone();
        config
            .set("group.id", PROBE_GROUP)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("allow.auto.create.topics", "false");
        let client: BaseConsumer = config.create().map_err(AdminError::Client)?;
        // SAFETY: the handle is valid while `client` lives, which outlives the queue (field order
        // and Drop below).
        let queue = Arc::new(Queue(unsafe { rd::rd_kafka_queue_new(client.client().native_ptr()) }));
        let waiting: Arc<Waiting> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("lag-probe-admin".to_owned())
            .spawn({
                let (queue, waiting, stop) = (queue.clone(), waiting.clone(), stop.clone());
                move || answer_events(&queue, &waiting, &stop)
            })
            .map_err(AdminError::Thread)?;
        Ok(Self {
            queue,
            waiting,
            next_id: AtomicUsize::new(1),
            stop,
            thread: Some(thread),
            metadata_reads: tokio::sync::Semaphore::new(METADATA_READS),
            client,
        })
    }

    /// The partition ids of each topic, from the cluster's metadata (librdkafka's mock cluster,
    /// which `dev` runs on, does not answer DescribeTopics).
    pub async fn describe_topics(
        self: &Arc<Self>,
        topics: &[String],
        timeout: Duration,
    ) -> Result<Vec<(String, TopicPartitions)>, AdminError> {
        const REQUEST: &str = "Metadata";
        let _slot = self
            .metadata_reads
            .acquire()
            .await
            .map_err(|error| AdminError::Request { request: REQUEST, message: error.to_string() })?;
        let (admin, topics) = (self.clone(), topics.to_vec());
        let described = tokio::task::spawn_blocking(move || {
            topics
                .iter()
                .map(|topic| {
                    let metadata = admin.client.fetch_metadata(Some(topic), timeout).map_err(|error| {
                        AdminError::Request { request: REQUEST, message: format!("topic {topic}: {error}") }
                    })?;
                    let found = metadata.topics().iter().find(|t| t.name() == topic).map(|found| match found.error() {
                        Some(error) => Err(rdkafka::types::RDKafkaErrorCode::from(error).to_string()),
                        None => Ok(found.partitions().iter().map(|p| p.id()).collect()),
                    });
                    Ok((topic.clone(), found.unwrap_or_else(|| Err("not in the cluster's metadata".to_owned()))))
                })
                .collect::<Result<Vec<_>, AdminError>>()
        })
        .await
        .map_err(|error| AdminError::Request { request: REQUEST, message: error.to_string() })?;
        described
    }

    /// The group's committed offsets (and their metadata) of `partitions`; a partition the group
    /// never committed has `Ok(-1001)` (librdkafka's invalid offset).
    pub async fn committed_offsets(
        &self,
        group: &str,
        partitions: &[(String, i32)],
        timeout: Duration,
    ) -> Result<Vec<PartitionOffset>, AdminError> {
        const REQUEST: &str = "ListConsumerGroupOffsets";
        let waiting = {
            let group = CString::new(group).map_err(|_| AdminError::Name(format!("group {group}")))?;
            let list = PartitionList::new(partitions, None)?;
            self.send(timeout, |rk, options, queue| {
                // SAFETY: `group` and `list` are valid for the call; librdkafka copies both into
                // the request object, and copies that before returning, so we destroy it after.
                unsafe {
                    let mut request = rd::rd_kafka_ListConsumerGroupOffsets_new(group.as_ptr(), list.0);
                    rd::rd_kafka_ListConsumerGroupOffsets(rk, &mut request, 1, options, queue);
                    rd::rd_kafka_ListConsumerGroupOffsets_destroy(request);
                }
            })
        };
        let answer = self.answer(REQUEST, timeout, waiting).await?;
        offsets_of(REQUEST, answer)
    }

    /// The log-start or end offset (high watermark) of each partition, in one request.
    pub async fn log_offsets(
        &self,
        partitions: &[(String, i32)],
        end: LogEnd,
        timeout: Duration,
    ) -> Result<Vec<PartitionOffset>, AdminError> {
        const REQUEST: &str = "ListOffsets";
        let spec = match end {
            LogEnd::Start => rd::rd_kafka_OffsetSpec_t::RD_KAFKA_OFFSET_SPEC_EARLIEST,
            LogEnd::End => rd::rd_kafka_OffsetSpec_t::RD_KAFKA_OFFSET_SPEC_LATEST,
        };
        let waiting = {
            let list = PartitionList::new(partitions, Some(spec as i64))?;
            self.send(timeout, |rk, options, queue| {
                // SAFETY: `list` is valid for the call; librdkafka copies it.
                unsafe { rd::rd_kafka_ListOffsets(rk, list.0, options, queue) }
            })
        };
        let answer = self.answer(REQUEST, timeout, waiting).await?;
        offsets_of(REQUEST, answer)
    }

    /// Sends one request: `call` calls the librdkafka function with the handle, options
    /// carrying this request's id, and the queue. Returns what `answer` waits on.
    fn send(
        &self,
        timeout: Duration,
        call: impl FnOnce(*mut rd::rd_kafka_t, *mut rd::rd_kafka_AdminOptions_t, *mut rd::rd_kafka_queue_t),
    ) -> Pending {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        lock(&self.waiting).insert(id, sender);
        let rk = self.client.client().native_ptr();
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `rk` is this client's live handle; the options are created, used by `call`
        // (librdkafka copies them into the request) and destroyed here. The opaque is a plain
        // number, never dereferenced.
        unsafe {
            let options = rd::rd_kafka_AdminOptions_new(rk, rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_ANY);
            let mut error = [0 as std::ffi::c_char; 256];
            rd::rd_kafka_AdminOptions_set_request_timeout(options, timeout_ms, error.as_mut_ptr(), error.len());
            rd::rd_kafka_AdminOptions_set_opaque(options, id as *mut c_void);
            call(rk, options, self.queue.0);
            rd::rd_kafka_AdminOptions_destroy(options);
        }
        Pending { id, receiver }
    }

    /// Waits for a sent request's answer.
    async fn answer(&self, request: &'static str, timeout: Duration, pending: Pending) -> Result<Answer, AdminError> {
        // librdkafka answers every request by its request timeout; the margin covers the queue.
        let answer = tokio::time::timeout(timeout + Duration::from_secs(1), pending.receiver).await;
        lock(&self.waiting).remove(&pending.id);
        match answer {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(AdminError::Request { request, message: "the client closed".to_owned() }),
            Err(_) => Err(AdminError::Timeout { request, timeout }),
        }
    }
}

/// A sent request: its id and where its answer arrives.
struct Pending {
    id: usize,
    receiver: oneshot::Receiver<Answer>,
}

impl Drop for ClusterAdmin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // SAFETY: the thread that polled the queue has stopped and the handle (`client`, dropped
        // after this) is still alive.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.0) };
    }
}

fn offsets_of(request: &'static str, answer: Answer) -> Result<Vec<PartitionOffset>, AdminError> {
    match answer {
        Answer::Offsets(offsets) => Ok(offsets),
        Answer::Failed(message) => Err(AdminError::Request { request, message }),
    }
}

/// An owned librdkafka topic-partition list.
struct PartitionList(*mut rd::rd_kafka_topic_partition_list_t);

impl PartitionList {
    /// The partitions, each with `offset` when given (ListOffsets reads its spec from there).
    fn new(partitions: &[(String, i32)], offset: Option<i64>) -> Result<Self, AdminError> {
        let size = i32::try_from(partitions.len()).unwrap_or(i32::MAX);
        // SAFETY: a new list is ours until Drop destroys it.
        let list = Self(unsafe { rd::rd_kafka_topic_partition_list_new(size) });
        for (topic, partition) in partitions {
            let topic = CString::new(topic.as_str()).map_err(|_| AdminError::Name(format!("topic {topic}")))?;
            // SAFETY: the list is live and librdkafka copies the topic name; the element it
            // returns is valid until the list changes again.
            unsafe {
                let element = rd::rd_kafka_topic_partition_list_add(list.0, topic.as_ptr(), *partition);
                if let Some(offset) = offset {
                    (*element).offset = offset;
                }
            }
        }
        Ok(list)
    }
}

impl Drop for PartitionList {
    fn drop(&mut self) {
        // SAFETY: the list was created by `new` and is destroyed once.
        unsafe { rd::rd_kafka_topic_partition_list_destroy(self.0) }
    }
}

/// The result thread: polls the queue until `stop`, answering each result event's request.
fn answer_events(queue: &Queue, waiting: &Waiting, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: the queue is live until ClusterAdmin's Drop, which stops this loop first.
        let event = unsafe { rd::rd_kafka_queue_poll(queue.0, 200) };
        if event.is_null() {
            continue;
        }
        // SAFETY: `event` is a live event from the queue, read here and destroyed once.
        let (id, answer) = unsafe {
            let id = rd::rd_kafka_event_opaque(event) as usize;
            let answer = read_event(event);
            rd::rd_kafka_event_destroy(event);
            (id, answer)
        };
        if let Some(sender) = lock(waiting).remove(&id) {
            let _ = sender.send(answer);
        }
    }
}

/// The owned contents of one admin result event.
///
/// # Safety
/// `event` must be a live event; the values read from it are copied before it is destroyed.
unsafe fn read_event(event: *mut rd::rd_kafka_event_t) -> Answer {
    if rd::rd_kafka_event_error(event) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Answer::Failed(text(rd::rd_kafka_event_error_string(event)));
    }
    match rd::rd_kafka_event_type(event) {
        rd::RD_KAFKA_EVENT_LISTCONSUMERGROUPOFFSETS_RESULT => {
            let result = rd::rd_kafka_event_ListConsumerGroupOffsets_result(event);
            let mut count = 0;
            let groups = slice(rd::rd_kafka_ListConsumerGroupOffsets_result_groups(result, &mut count), count);
            let Some(group) = groups.first() else { return Answer::Failed("no group in the answer".to_owned()) };
            let error = rd::rd_kafka_group_result_error(*group);
            if !error.is_null() {
                return Answer::Failed(text(rd::rd_kafka_error_string(error)));
            }
            let list = rd::rd_kafka_group_result_partitions(*group);
            if list.is_null() {
                return Answer::Offsets(Vec::new());
            }
            let elements = slice((*list).elems, usize::try_from((*list).cnt).unwrap_or(0));
            Answer::Offsets(elements.iter().map(|element| read_partition(element)).collect())
        }
        rd::RD_KAFKA_EVENT_LISTOFFSETS_RESULT => {
            let result = rd::rd_kafka_event_ListOffsets_result(event);
            let mut count = 0;
            let infos = slice(rd::rd_kafka_ListOffsets_result_infos(result, &mut count), count);
            Answer::Offsets(
                infos
                    .iter()
                    .map(|info| read_partition(&*rd::rd_kafka_ListOffsetsResultInfo_topic_partition(*info)))
                    .collect(),
            )
        }
        other => Answer::Failed(format!("an unexpected event of type {other}")),
    }
}

/// # Safety
/// `element` must point into a live result's partition list.
unsafe fn read_partition(element: &rd::rd_kafka_topic_partition_t) -> PartitionOffset {
    let offset = if element.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(element.offset)
    } else {
        Err(text(rd::rd_kafka_err2str(element.err)))
    };
    let metadata = (!element.metadata.is_null() && element.metadata_size > 0).then(|| {
        let bytes = std::slice::from_raw_parts(element.metadata.cast::<u8>(), element.metadata_size);
        String::from_utf8_lossy(bytes).into_owned()
    });
    PartitionOffset { topic: text(element.topic), partition: element.partition, offset, metadata }
}

/// # Safety
/// `items` must be null or point to `count` live items.
unsafe fn slice<'a, T>(items: *mut T, count: usize) -> &'a [T] {
    if items.is_null() || count == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(items, count)
    }
}

/// # Safety
/// `value` must be null or a live NUL-terminated string.
unsafe fn text(value: *const std::ffi::c_char) -> String {
    if value.is_null() {
        String::new()
    } else {
        CStr::from_ptr(value).to_string_lossy().into_owned()
    }
}
