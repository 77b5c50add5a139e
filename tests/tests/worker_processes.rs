//! The worker as separate `streamjob-worker` processes against a broker in its own process:
//! `streamjob-mock-broker` (librdkafka's mock cluster on local TCP ports), or the Kafka named by
//! `STREAMJOB_TEST_BOOTSTRAP`. Word count, then a `kill -9` and a restart.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use streamjob_e2e::{broker, free_port, repo_root, unique, workspace_binary, ChildGuard};
use streamjob_worker::topic_io::{
    expected_word_counts, final_word_counts, produce_all, word_count_differences, NewRecord, TopicReader,
};

const LIMIT: Duration = Duration::from_secs(120);
/// The wordcount example's window size.
const WINDOW_MS: i64 = 10_000;

/// The wordcount example with its topics renamed, so a shared Kafka gets fresh ones.
fn manifest(lines: &str, counts: &str) -> PathBuf {
    let example = std::fs::read_to_string(repo_root().join("examples/wordcount.yaml")).expect("example");
    let text = example
        .replace("topics: [lines]", &format!("topics: [{lines}]"))
        .replace("topic: word-counts", &format!("topic: {counts}"));
    let path = std::env::temp_dir().join(format!("{lines}.yaml"));
    std::fs::write(&path, text).expect("manifest written");
    path
}

fn worker(manifest: &std::path::Path, bootstrap: &str, group: &str, port: u16) -> ChildGuard {
    let child = Command::new(workspace_binary("streamjob-worker"))
        .args(["--config", &manifest.display().to_string(), "--bootstrap", bootstrap, "--group", group])
        .args(["--instance-id", "wordcount-0", "--http-address", &format!("127.0.0.1:{port}"), "--log-format", "text"])
        .args(["--commit-interval", "200ms", "--idle-timeout", "4s", "--session-timeout", "3s"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("streamjob-worker starts (cargo build --bins first)");
    ChildGuard(child)
}

fn lines(range: std::ops::Range<usize>, start_ms: i64) -> Vec<NewRecord> {
    const WORDS: [&str; 9] = ["alpha", "beta", "gamma", "delta", "Alpha", "epsilon", "zeta", "eta", "theta"];
    range
        .map(|i| NewRecord {
            key: Some(format!("line-{i}")),
            value: (0..(2 + i % 4))
                .map(|j| WORDS[(i * 7 + j * 3) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
                .into_bytes(),
            timestamp_ms: Some(start_ms + (i as i64 % 300) * 3),
        })
        .collect()
}

/// The sum of `streamjob_worker_records_in_total` for `topic`, read from the worker's /metrics.
fn records_in(port: u16, topic: &str) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body.lines()
        .filter(|line| {
            line.starts_with("streamjob_worker_records_in_total") && line.contains(&format!("topic=\"{topic}\""))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn wait_for(condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn worker_processes_count_words_exactly_across_a_kill_9() {
    let (lines_topic, counts_topic) = (unique("lines"), unique("word-counts"));
    let broker = broker(&[(&lines_topic, 4), (&counts_topic, 4)]);
    let manifest = manifest(&lines_topic, &counts_topic);
    let group = unique("wordcount");

    let now = streamjob_worker::runner::now_ms();
    let first_half = lines(0..300, now);
    produce_all(&broker.bootstrap, &lines_topic, &first_half).expect("first half");
    let port = free_port().expect("a free port");
    let mut first = worker(&manifest, &broker.bootstrap, &group, port);
    assert!(wait_for(|| records_in(port, &lines_topic) >= 150), "the worker never got going");
    first.0.kill().expect("kill -9");
    let _ = first.0.wait();

    let second_half = lines(300..600, streamjob_worker::runner::now_ms());
    produce_all(&broker.bootstrap, &lines_topic, &second_half).expect("second half");
    let _second = worker(&manifest, &broker.bootstrap, &group, free_port().expect("a free port"));
    let want = expected_word_counts(&[first_half, second_half].concat(), WINDOW_MS);
    let mut sink = TopicReader::new(&broker.bootstrap, &counts_topic, false).expect("reader");
    let complete = sink.read_until(LIMIT, |records| final_word_counts(records).is_ok_and(|counts| counts == want));
    let got = final_word_counts(&sink.records).unwrap_or_else(|error| panic!("{error}"));
    let wrong = word_count_differences(&want, &got);
    assert!(complete, "counts after kill -9 and restart differ: {wrong:?}");
}
