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

/// What a window's aggregate takes from a record: a finite number, or a string holding one;
/// anything else is an error of the window stage with its reason, and never reaches a partial.
#[test]
fn an_aggregated_field_must_be_a_finite_number() {
    let summed = compile("[{keyBy: {field: k}}, {window: {size: 10s, aggregate: {function: sum, field: amount}}}]");
    let window = summed.window.as_ref().expect("a window");
    let cases: &[(Value, Result<f64, Reason>)] = &[
        (json!({"amount": 100}), Ok(100.0)),
        (json!({"amount": "100"}), Ok(100.0)),
        (json!({"amount": "1e3"}), Ok(1000.0)),
        (json!({"amount": "7"}), Ok(7.0)),
        (json!({"amount": "9"}), Ok(9.0)),
        (json!({"amount": "abc"}), Err(Reason::TypeMismatch)),
        (json!({"amount": true}), Err(Reason::TypeMismatch)),
        (json!({"amount": "NaN"}), Err(Reason::NonFinite)),
        (json!({"amount": "Infinity"}), Err(Reason::NonFinite)),
        (json!({"amount": "-Infinity"}), Err(Reason::NonFinite)),
        (json!({"amount": null}), Err(Reason::MissingField)),
        (json!({}), Err(Reason::MissingField)),
    ];
    for (fields, want) in cases {
        let record = Record { fields: fields.clone(), key: Some(b"k".to_vec()), timestamp_ms: 0 };
        let got = window.accumulate(&record).map(|a| a.sum).map_err(|e| e.reason);
        assert_eq!(got, *want, "{fields}");
    }
    let error = window.accumulate(&Record { fields: json!({"amount": "NaN"}), ..Record::default() });
    assert_eq!(error.map_err(|e| e.message), Err(r#"aggregate field amount is "NaN", not a finite number"#.to_owned()));
}

#[test]
fn a_time_field_that_is_missing_or_no_time_is_an_error_with_its_reason() {
    let timed = compile("[{keyBy: {field: k}}, {window: {size: 10s, timeField: ts, aggregate: {function: count}}}]");
    let window = timed.window.as_ref().expect("a window");
    let reason = |fields: Value| window.event_time(&Record { fields, ..Record::default() }).map_err(|e| e.reason);
    assert_eq!(reason(json!({"ts": 1_000})), Ok(1_000));
    assert_eq!(reason(json!({"ts": "2026-01-01T00:00:00Z"})), Ok(1_767_225_600_000));
    assert_eq!(reason(json!({"ts": "yesterday"})), Err(Reason::TypeMismatch));
    assert_eq!(reason(json!({"ts": true})), Err(Reason::TypeMismatch));
    assert_eq!(reason(json!({"ts": null})), Err(Reason::MissingField));
    assert_eq!(reason(json!({})), Err(Reason::MissingField));
}
