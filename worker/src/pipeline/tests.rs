use serde_json::{json, Value};
use streamjob_crds::PipelineStage;

use super::*;
use crate::liveness::Fields;

fn compile(pipeline: &str) -> CompiledPipeline {
    let stages: Vec<PipelineStage> = serde_yaml::from_str(pipeline).expect("pipeline");
    CompiledPipeline::compile(&stages).expect("compiles")
}

fn only(fields: &[&str]) -> Fields {
    Fields::Only(fields.iter().map(|f| f.to_string()).collect())
}

fn run(pipeline: &CompiledPipeline, fields: Value) -> Vec<Record> {
    let record = Record { fields, key: Some(b"input-key".to_vec()), timestamp_ms: 0 };
    run_stateless(&pipeline.before_window, record).expect("runs")
}

fn key_of(record: &Record) -> Option<&str> {
    record.key.as_deref().map(|key| std::str::from_utf8(key).expect("text key"))
}

#[test]
fn only_the_input_fields_some_stage_reads_are_decoded() {
    let filter_then_select =
        compile("[{filter: {field: type, op: eq, value: click}}, {map: {select: [user, amount.value], set: {x: 1}}}]");
    assert_eq!(filter_then_select.input_fields, only(&["amount", "type", "user"]));
    let window = compile(
        "[{keyBy: {field: user.id}}, {window: {size: 10s, timeField: ts, aggregate: {function: sum, field: n}}}]",
    );
    assert_eq!(window.input_fields, only(&["n", "ts", "user"]));
    assert_eq!(compile("[{filter: {field: type, op: exists}}]").input_fields, Fields::All, "the sink writes all");
    assert_eq!(compile("[{map: {rename: {a: b}}}]").input_fields, Fields::All);
}

#[test]
fn key_by_moves_a_value_into_the_key_only_when_no_later_stage_reads_it() {
    let read_later = compile("[{keyBy: {field: user}}, {filter: {field: user, op: eq, value: a}}]");
    let records = run(&read_later, json!({"user": "a", "n": 1}));
    assert_eq!((key_of(&records[0]), &records[0].fields), (Some("a"), &json!({"user": "a", "n": 1})));

    let counted = compile("[{keyBy: {field: user}}, {window: {size: 10s, aggregate: {function: count}}}]");
    let records = run(&counted, json!({"user": 7, "n": 1}));
    assert_eq!((key_of(&records[0]), &records[0].fields), (Some("7"), &json!({"n": 1})));
    let missing = run_stateless(&counted.before_window, Record { fields: json!({"user": null}), ..Record::default() });
    assert!(missing.is_err_and(|e| e.message == "keyBy field user is missing"));
}

#[test]
fn select_keeps_exactly_the_selected_paths_whether_or_not_they_overlap() {
    let input = json!({"user": {"id": 1, "name": "x", "age": 3}, "amount": 2, "z": 0});
    let disjoint = compile("[{map: {select: [user.id, user.name, amount, missing], set: {source: web}}}]");
    assert_eq!(
        run(&disjoint, input.clone())[0].fields,
        json!({"user": {"id": 1, "name": "x"}, "amount": 2, "source": "web"})
    );
    let overlapping = compile("[{map: {select: [user.id, user]}}]");
    assert_eq!(run(&overlapping, input)[0].fields, json!({"user": {"id": 1, "name": "x", "age": 3}}));
}

#[test]
fn split_drops_empty_pieces_and_lowercases_any_script() {
    let at_commas = compile("[{split: {field: text, separator: ',', lowercase: true}}]");
    let pieces: Vec<_> = run(&at_commas, json!({"text": "ÉTÉ,,Wind, x"})).into_iter().map(|r| r.fields).collect();
    assert_eq!(pieces, [json!({"text": "été"}), json!({"text": "wind"}), json!({"text": " x"})]);
    let at_whitespace = compile("[{split: {field: text}}]");
    let pieces: Vec<_> = run(&at_whitespace, json!({"text": " A \t b\n"})).into_iter().map(|r| r.fields).collect();
    assert_eq!(pieces, [json!({"text": "A"}), json!({"text": "b"})]);
    let lowered = compile("[{split: {field: text, lowercase: true}}]");
    let pieces: Vec<_> =
        run(&lowered, json!({"text": "Été\u{3000}WIND already"})).into_iter().map(|r| r.fields).collect();
    assert_eq!(pieces, [json!({"text": "été"}), json!({"text": "wind"}), json!({"text": "already"})]);
}

#[test]
fn split_copies_the_other_fields_and_the_key_only_when_a_later_stage_reads_them() {
    let summed = compile(
        "[{split: {field: text}}, {keyBy: {field: text}}, {window: {size: 10s, aggregate: {function: sum, field: n}}}]",
    );
    let records = run(&summed, json!({"text": "a b", "n": 2, "other": true}));
    let pieces: Vec<_> = records.iter().map(|r| (key_of(r), &r.fields)).collect();
    assert_eq!(pieces, [(Some("a"), &json!({"n": 2, "other": true})), (Some("b"), &json!({"n": 2, "other": true}))]);

    let counted = compile(
        "[{split: {field: text}}, {keyBy: {field: text}}, {window: {size: 10s, aggregate: {function: count}}}]",
    );
    assert_eq!(counted.before_window.len(), 1, "the split makes its pieces the keys itself");
    let records = run(&counted, json!({"text": "a b", "n": 2}));
    let pieces: Vec<_> = records.iter().map(|r| (key_of(r), &r.fields)).collect();
    assert_eq!(pieces, [(Some("a"), &json!({})), (Some("b"), &json!({}))]);

    let to_sink = compile("[{split: {field: text}}]");
    let records = run(&to_sink, json!({"text": "a", "n": 2}));
    assert_eq!((key_of(&records[0]), &records[0].fields), (Some("input-key"), &json!({"text": "a", "n": 2})));
}
