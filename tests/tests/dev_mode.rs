//! `streamjob-operator dev`, headless, against a broker in its own process: a known input
//! replayed with a load spike, the word counts in the sink checked against an independent
//! count, at least one scale-up, and a clean stop on Ctrl-C.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use streamjob_e2e::{broker, repo_root, unique, workspace_binary};
use streamjob_worker::topic_io::{ReadRecord, TopicReader};

/// A deterministic text of `count` lines.
fn input_lines(count: usize) -> Vec<String> {
    const WORDS: [&str; 8] = ["Alpha", "beta", "gamma", "delta", "alpha", "epsilon", "zeta", "eta"];
    (0..count)
        .map(|i| (0..(2 + i % 4)).map(|j| WORDS[(i * 5 + j * 3) % WORDS.len()]).collect::<Vec<_>>().join(" "))
        .collect()
}

/// Occurrences of each lowercased word: what the sink's windows must add up to.
fn word_totals(lines: &[String]) -> BTreeMap<String, i64> {
    let mut totals = BTreeMap::new();
    for line in lines {
        for word in line.split_whitespace() {
            *totals.entry(word.to_lowercase()).or_insert(0) += 1;
        }
    }
    totals
}

/// Per word, the sum over windows of each window's count (a window emitted twice after a
/// rebalance carries the same value, so it counts once).
fn sink_totals(records: &[ReadRecord]) -> BTreeMap<String, i64> {
    let mut per_window: BTreeMap<(String, String), i64> = BTreeMap::new();
    for record in records {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&record.value) else { continue };
        let window = value["windowStart"].as_str().unwrap_or_default().to_owned();
        let word = value["key"].as_str().unwrap_or_default().to_owned();
        per_window.insert((window, word), value["count"].as_i64().unwrap_or(-1));
    }
    let mut totals = BTreeMap::new();
    for ((_, word), count) in per_window {
        *totals.entry(word).or_insert(0) += count;
    }
    totals
}

#[test]
fn dev_mode_counts_a_known_input_exactly_and_scales_up_under_a_spike() {
    let (lines_topic, counts_topic, group) = (unique("lines"), unique("word-counts"), unique("wordcount"));
    let broker = broker(&[(&lines_topic, 4), (&counts_topic, 4), (&format!("{group}-repartition"), 4)]);

    let example = std::fs::read_to_string(repo_root().join("examples/wordcount.yaml")).expect("example");
    let manifest_text = example
        .replace("topics: [lines]", &format!("topics: [{lines_topic}]\n    consumerGroup: {group}"))
        .replace("topic: word-counts", &format!("topic: {counts_topic}"))
        .replace("lagThreshold: 20000", "lagThreshold: 2000")
        .replace("pollIntervalSeconds: 5", "pollIntervalSeconds: 2");
    assert!(manifest_text.contains("lagThreshold: 2000\n"), "the example's autoscaling section changed");
    let manifest = std::env::temp_dir().join(format!("{group}.yaml"));
    std::fs::write(&manifest, manifest_text).expect("manifest written");
    let lines = input_lines(60_000);
    let input = std::env::temp_dir().join(format!("{group}.txt"));
    std::fs::write(&input, lines.join("\n") + "\n").expect("input written");

    // Runs until Ctrl-C: the test stops it once the sink holds every count (or after a limit).
    let stdout_path = std::env::temp_dir().join(format!("{group}.out"));
    let mut dev = Command::new(workspace_binary("streamjob-operator"))
        .args(["dev", &manifest.display().to_string(), "--bootstrap", &broker.bootstrap])
        .args(["--input", &input.display().to_string(), "--load", "500/s,10000/s@6s"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .spawn()
        .expect("streamjob-operator runs (cargo build --bins first)");

    let want = word_totals(&lines);
    let mut sink = TopicReader::new(&broker.bootstrap, &counts_topic, false).expect("sink reader");
    let complete = sink.read_until(Duration::from_secs(120), |records| sink_totals(records) == want);
    let interrupted = Command::new("kill").args(["-INT", &dev.id().to_string()]).status().expect("kill -INT");
    assert!(interrupted.success(), "Ctrl-C delivered");
    let status = dev.wait().expect("dev exits");
    let stdout = std::fs::read_to_string(&stdout_path).expect("dev output");
    eprintln!("{stdout}");
    assert!(complete, "word totals: want {want:?}, got {:?}", sink_totals(&sink.records));
    assert!(status.success(), "dev exits 0 on Ctrl-C: {status:?}");
    assert!(stdout.contains("phase=Running"), "status lines are printed");
    let scale_up = stdout.lines().find(|l| l.contains("ScaledUp: lag")).expect("a scale-up under the spike");
    assert!(scale_up.contains("target 2000 per replica") && scale_up.contains("1 → "), "{scale_up}");
    let summary = stdout.lines().find(|l| l.starts_with("Summary after")).expect("a summary");
    assert!(summary.contains(&format!("produced {}", lines.len())), "{summary}");
    assert!(stdout.contains("  sink: "), "sink records are shown");
}
