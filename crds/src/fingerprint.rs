//! The pipeline fingerprint: what the partial aggregates of a windowed job mean. Two
//! configurations with the same fingerprint make partials that may be merged; a different one
//! means a different window, aggregate, key, or records feeding them. The operator drains a job
//! whose fingerprint changes instead of rolling it (see the operator's `controller/drain.rs`),
//! and the worker carries the fingerprint in every repartition message and checkpoint, and
//! discards another fingerprint's (see the worker's `engine/aggregate/`).
//!
//! It covers the source topics (sorted) and format and every stage up to and including the
//! window: the stages after the window work on emitted results, so changing them changes no
//! partial. Stages are compared as written (`10s` and `10000ms` differ), which errs towards a
//! drain.

use serde::Serialize;

use crate::{PipelineStage, SourceFormat, StreamJobSpec};

/// The fingerprint of a windowed job's stateful part, never 0; `None` for a job without a
/// window (it keeps no state between records).
pub fn pipeline_fingerprint(spec: &StreamJobSpec) -> Option<u64> {
    let window = spec.pipeline.iter().position(|stage| stage.window.is_some())?;
    #[derive(Serialize)]
    struct Stateful<'a> {
        topics: Vec<&'a str>,
        format: SourceFormat,
        stages: &'a [PipelineStage],
    }
    let mut topics: Vec<&str> = spec.source.topics.iter().map(String::as_str).collect();
    topics.sort_unstable();
    let stateful = Stateful { topics, format: spec.source.format, stages: &spec.pipeline[..=window] };
    let encoded = match serde_json::to_vec(&stateful) {
        Ok(encoded) => encoded,
        Err(error) => unreachable!("pipeline stages always serialize: {error}"),
    };
    Some(fnv1a(&encoded).max(1))
}

/// The fingerprint as the operator writes it on the pod template: 16 hex digits, or `none`
/// for a job without a window.
pub fn fingerprint_label(fingerprint: Option<u64>) -> String {
    fingerprint.map_or_else(|| "none".to_owned(), |f| format!("{f:016x}"))
}

/// FNV-1a, 64 bits: the same value in every process and release.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_manifest;

    fn spec(topics: &str, format: &str, pipeline: &str) -> StreamJobSpec {
        let yaml = format!(
            "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata: {{name: j, namespace: ns}}\nspec:\n  \
             source: {{bootstrapServers: 'k:9092', topics: {topics}, format: {format}}}\n  sink: {{topic: out}}\n  \
             pipeline: {pipeline}\n"
        );
        parse_manifest(&yaml).expect("valid test job").spec
    }

    const COUNT: &str = "[{split: {}}, {keyBy: {field: value}}, \
        {window: {type: tumbling, size: 10s, aggregate: {function: count}}}]";

    /// Which changes make partials of another meaning, and which do not.
    #[test]
    fn the_fingerprint_changes_exactly_with_the_stateful_part() {
        let base = pipeline_fingerprint(&spec("[a, b]", "text", COUNT));
        assert!(base.is_some_and(|f| f != 0));
        let cases: &[(&str, StreamJobSpec, bool)] = &[
            ("the same job", spec("[a, b]", "text", COUNT), false),
            ("topics in another order", spec("[b, a]", "text", COUNT), false),
            (
                "a stage after the window",
                spec(
                    "[a, b]",
                    "text",
                    "[{split: {}}, {keyBy: {field: value}}, \
                     {window: {type: tumbling, size: 10s, aggregate: {function: count}}}, \
                     {filter: {field: count, op: gt, value: 1}}]",
                ),
                false,
            ),
            ("another window size", spec("[a, b]", "text", &COUNT.replace("10s", "20s")), true),
            ("another aggregate", spec("[a, b]", "text", &COUNT.replace("count}", "sum, field: n}")), true),
            ("a stage before the window", spec("[a, b]", "text", &COUNT.replace("{}", "{lowercase: true}")), true),
            ("another topic", spec("[a, c]", "text", COUNT), true),
            ("another format", spec("[a, b]", "json", COUNT), true),
        ];
        for (what, spec, changes) in cases {
            assert_eq!(pipeline_fingerprint(spec) != base, *changes, "{what}");
        }
        assert_eq!(pipeline_fingerprint(&spec("[a]", "text", "[{split: {}}]")), None, "no window, no state");
        assert_eq!(fingerprint_label(None), "none");
        assert_eq!(fingerprint_label(Some(0xab)), "00000000000000ab");
    }
}
