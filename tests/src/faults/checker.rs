//! What the sink and the dead-letter topic should hold, and the counts of what they do.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use streamjob_testkit::kafka::{expected_word_counts, NewRecord, WordCounts};
use streamjob_worker::topic_io::ReadRecord;

use super::{Job, Tally, WINDOW_MS};

// The checker.

/// What the sink and the dead-letter topic should hold, from what the input topic holds.
pub enum Expected {
    /// The passthrough: each `seq` once in the sink.
    Records(BTreeSet<u64>),
    /// The word count: each (window, word) once, with its count.
    Counts(WordCounts),
}

pub struct Checker {
    pub expected: Expected,
    /// Keys of the records that must be dead-lettered.
    pub poison: BTreeSet<String>,
}

impl Checker {
    pub fn new(job: Job, input: &[NewRecord]) -> Self {
        let (poison, valid): (Vec<&NewRecord>, Vec<&NewRecord>) =
            input.iter().partition(|r| r.key.as_deref().is_some_and(|k| k.starts_with("poison-")));
        let poison = poison.iter().filter_map(|r| r.key.clone()).collect();
        let expected = match job {
            Job::Passthrough => Expected::Records(valid.iter().filter_map(|r| key_number(r.key.as_deref())).collect()),
            Job::WordCount => {
                let lines: Vec<NewRecord> = valid.into_iter().cloned().collect();
                Expected::Counts(expected_word_counts(&lines, WINDOW_MS))
            }
        };
        Self { expected, poison }
    }

    pub fn tally(&self, sink: &[ReadRecord], dead_letters: &[ReadRecord]) -> Tally {
        let mut tally = match &self.expected {
            Expected::Records(seqs) => tally_records(seqs, sink),
            Expected::Counts(counts) => tally_counts(counts, sink),
        };
        tally.sink = sink.len();
        self.tally_dead_letters(dead_letters, &mut tally);
        tally
    }

    /// A poison record missing from the dead-letter topic is lost; a record there that is not
    /// poison is unexpected.
    fn tally_dead_letters(&self, dead_letters: &[ReadRecord], tally: &mut Tally) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for letter in dead_letters {
            match letter.key.as_deref().filter(|key| self.poison.contains(*key)) {
                Some(key) => *seen.entry(key).or_default() += 1,
                None => tally.unexpected += 1,
            }
        }
        tally.poison = self.poison.len();
        tally.input += self.poison.len();
        tally.dead_lettered = seen.len();
        tally.lost += self.poison.len() - seen.len();
        tally.duplicated += seen.values().map(|copies| copies - 1).sum::<usize>();
    }

    /// A few of the wrong outcomes, for a failed row.
    pub fn explain(&self, sink: &[ReadRecord], dead_letters: &[ReadRecord]) -> Vec<String> {
        let mut details = match &self.expected {
            Expected::Records(seqs) => explain_records(seqs, sink),
            Expected::Counts(counts) => explain_counts(counts, sink),
        };
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        for letter in dead_letters.iter().filter(|l| !l.key.as_ref().is_some_and(|k| self.poison.contains(k))) {
            let error = letter.headers.get("streamjob.error").cloned().unwrap_or_default();
            *errors.entry(error.chars().take(120).collect()).or_default() += 1;
        }
        details.extend(errors.into_iter().take(3).map(|(error, n)| format!("{n} dead-lettered: {error}")));
        details
    }
}

fn explain_records(expected: &BTreeSet<u64>, sink: &[ReadRecord]) -> Vec<String> {
    let seen: HashSet<u64> =
        sink.iter().filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.value).ok()?["seq"].as_u64()).collect();
    let lost: Vec<&u64> = expected.iter().filter(|seq| !seen.contains(seq)).take(10).collect();
    if lost.is_empty() {
        return Vec::new();
    }
    vec![format!("lost seq (first 10): {lost:?}")]
}

fn explain_counts(expected: &WordCounts, sink: &[ReadRecord]) -> Vec<String> {
    let mut emitted: HashMap<(i64, String), Vec<i64>> = HashMap::new();
    for (key, count) in sink.iter().filter_map(word_count_result) {
        emitted.entry(key).or_default().push(count);
    }
    let wrong = expected.iter().filter(|(key, want)| emitted.get(*key).is_none_or(|counts| counts != &vec![**want]));
    wrong
        .take(5)
        .map(|((window, word), want)| {
            let got = emitted.get(&(*window, word.clone()));
            format!("window {window} {word}: want {want}, emitted {got:?}")
        })
        .collect()
}

/// `rec-17` → 17.
pub fn key_number(key: Option<&str>) -> Option<u64> {
    key?.rsplit_once('-')?.1.parse().ok()
}

fn tally_records(expected: &BTreeSet<u64>, sink: &[ReadRecord]) -> Tally {
    let mut copies: BTreeMap<u64, usize> = BTreeMap::new();
    let mut unexpected = 0;
    for record in sink {
        let seq = serde_json::from_str::<serde_json::Value>(&record.value).ok().and_then(|v| v["seq"].as_u64());
        match seq.filter(|seq| expected.contains(seq)) {
            Some(seq) => *copies.entry(seq).or_default() += 1,
            None => unexpected += 1,
        }
    }
    Tally {
        input: expected.len(),
        lost: expected.len() - copies.len(),
        duplicated: copies.values().map(|c| c - 1).sum(),
        unexpected,
        ..Tally::default()
    }
}

fn tally_counts(expected: &WordCounts, sink: &[ReadRecord]) -> Tally {
    let mut emitted: HashMap<(i64, String), Vec<i64>> = HashMap::new();
    let mut unexpected = 0;
    for record in sink {
        match word_count_result(record) {
            Some((key, count)) => emitted.entry(key).or_default().push(count),
            None => unexpected += 1,
        }
    }
    let (mut lost, mut duplicated) = (0, 0);
    for (key, want) in expected {
        let counts = emitted.remove(key).unwrap_or_default();
        let right = counts.iter().filter(|count| *count == want).count();
        unexpected += counts.len() - right;
        match right {
            0 => lost += 1,
            n => duplicated += n - 1,
        }
    }
    unexpected += emitted.values().map(Vec::len).sum::<usize>();
    Tally { input: expected.len(), lost, duplicated, unexpected, ..Tally::default() }
}

/// ((window start, word), count) of a word-count sink record.
pub fn word_count_result(record: &ReadRecord) -> Option<((i64, String), i64)> {
    let value: serde_json::Value = serde_json::from_str(&record.value).ok()?;
    let start = chrono::DateTime::parse_from_rfc3339(value["windowStart"].as_str()?).ok()?.timestamp_millis();
    Some(((start, value["key"].as_str()?.to_owned()), value["count"].as_i64()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_record(key: &str, value: &str) -> ReadRecord {
        ReadRecord {
            partition: 0,
            offset: 0,
            key: Some(key.to_owned()),
            value: value.to_owned(),
            headers: HashMap::new(),
        }
    }

    /// The checker itself: each kind of wrong outcome lands in its own column.
    #[test]
    fn the_checker_counts_lost_duplicated_unexpected_and_dead_lettered() {
        let input: Vec<NewRecord> =
            [0, 1, 2, 3].into_iter().map(|i| super::super::record(Job::Passthrough, i, false)).collect();
        let poison = NewRecord { key: Some("poison-9".into()), value: b"{".to_vec(), timestamp_ms: Some(0) };
        let checker = Checker::new(Job::Passthrough, &[input, vec![poison]].concat());
        let sink = [r#"{"seq": 0}"#, r#"{"seq": 1}"#, r#"{"seq": 1}"#, r#"{"seq": 7}"#, "{"];
        let sink: Vec<ReadRecord> = sink.iter().map(|value| read_record("k", value)).collect();
        let dead = [read_record("poison-9", "{"), read_record("rec-3", r#"{"seq": 3}"#)];
        let want = Tally { input: 5, sink: 5, lost: 2, duplicated: 1, unexpected: 3, dead_lettered: 1, poison: 1 };
        assert_eq!(checker.tally(&sink, &dead), want);

        let line = |i: usize, ts: i64| NewRecord {
            key: Some(format!("line-{i}")),
            value: b"a b a".to_vec(),
            timestamp_ms: Some(ts),
        };
        let checker = Checker::new(Job::WordCount, &[line(0, 0), line(1, 10_001)]);
        let result = |start: &str, word: &str, count: i64| {
            read_record(word, &format!(r#"{{"windowStart": "{start}", "key": "{word}", "count": {count}}}"#))
        };
        let epoch = "1970-01-01T00:00:00.000Z";
        let later = "1970-01-01T00:00:10.000Z";
        let sink = [result(epoch, "a", 2), result(epoch, "a", 2), result(epoch, "b", 1), result(later, "a", 1)];
        let want = Tally { input: 4, sink: 4, lost: 2, duplicated: 1, unexpected: 1, dead_lettered: 0, poison: 0 };
        assert_eq!(checker.tally(&sink, &[]), want);
    }
}
