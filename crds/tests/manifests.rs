//! The schema as users meet it: the committed CRD, the examples they copy, and the mistakes
//! they make.

use std::path::{Path, PathBuf};

use kube::core::cel::{analyze_rule, compile_schema, ScopeContext, WarningKind};
use kube::CustomResourceExt;
use serde_json::Value;
use streamjob_crds::{crd_yaml, parse_manifest, validate::openapi_schema, StreamJob};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn committed_crd_is_generated_from_the_types() {
    let committed =
        std::fs::read_to_string(repo_root().join("crds/streamjob.yaml")).expect("crds/streamjob.yaml exists");
    assert!(
        committed == crd_yaml(),
        "crds/streamjob.yaml is stale: run `cargo run -q -p streamjob-operator -- crd > crds/streamjob.yaml`"
    );
}

#[test]
fn crd_declares_names_subresources_and_columns() {
    let crd = StreamJob::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("streamjobs.streamjob.io"));
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["sj".to_owned()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["streaming".to_owned()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    let subresources = version.subresources.as_ref().expect("subresources");
    assert!(subresources.status.is_some());
    let scale = subresources.scale.as_ref().expect("scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(scale.label_selector_path.as_deref(), Some(".status.selector"));
    let columns: Vec<(String, i32)> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.clone(), c.priority.unwrap_or(0)))
        .collect();
    let expected =
        [("Phase", 0), ("Ready", 0), ("Partitions", 0), ("Lag", 0), ("Age", 0), ("Group", 1), ("Last Scale", 1)];
    let expected: Vec<(String, i32)> = expected.iter().map(|(n, p)| (n.to_string(), *p)).collect();
    assert_eq!(columns, expected);
}

/// Every `x-kubernetes-validations` rule in the schema, with the path of the node carrying it.
fn all_rules(schema: &Value, path: &str, out: &mut Vec<(String, Value)>) {
    if let Some(rules) = schema.get("x-kubernetes-validations").and_then(Value::as_array) {
        for rule in rules {
            out.push((path.to_owned(), rule.clone()));
        }
    }
    for (name, child) in schema.get("properties").and_then(Value::as_object).into_iter().flatten() {
        all_rules(child, &format!("{path}.{name}"), out);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = schema.get(key).filter(|c| c.is_object()) {
            all_rules(child, &format!("{path}[]"), out);
        }
    }
}

#[test]
fn every_cel_rule_compiles_and_fits_the_cost_budget() {
    let schema = openapi_schema();
    let compiled = compile_schema(schema);
    let mut rules = Vec::new();
    all_rules(schema, "", &mut rules);
    assert!(rules.len() >= 12, "expected the CEL rules of the API, found {}", rules.len());
    let mut nodes = vec![&compiled];
    while let Some(node) = nodes.pop() {
        assert!(!node.has_errors(), "a CEL rule does not compile: {:?}", node.compilation_errors());
        nodes.extend(node.properties.values());
        nodes.extend(node.items.as_deref());
        nodes.extend(node.additional_properties.as_deref());
    }
    let spec = compile_schema(&schema["properties"]["spec"]);
    for (path, rule) in &rules {
        let text = rule["rule"].as_str().expect("rule text");
        let bound = comprehension_variables(text);
        let warnings: Vec<_> = analyze_rule(text, &spec, ScopeContext::CrdValidation)
            .into_iter()
            .filter(|w| {
                !(w.kind == WarningKind::WrongScope
                    && bound.iter().any(|v| w.message.contains(&format!("variable '{v}'"))))
            })
            .collect();
        assert!(warnings.is_empty(), "rule at {path} ({text}) draws warnings: {warnings:?}");
    }
}

/// kube's client-side CEL is untyped; the API server compiles each rule against the type it
/// derives from the schema and refuses the CRD when a rule reads a field that type lacks.
#[test]
fn every_cel_rule_reads_only_fields_the_api_server_types() {
    let problems = streamjob_crds::cel_fields::undefined_field_references(openapi_schema());
    assert!(problems.is_empty(), "the API server would refuse these rules:\n  {}", problems.join("\n  "));
}

/// Variables bound by CEL macros such as `list.filter(s, ...)`, and CEL's type names: in scope,
/// though the analyzer only knows the root variables.
fn comprehension_variables(rule: &str) -> Vec<String> {
    let mut names: Vec<String> = ["string", "int", "double", "bool", "list", "map"].map(String::from).to_vec();
    for macro_name in [".filter(", ".all(", ".exists(", ".exists_one(", ".map("] {
        for (start, _) in rule.match_indices(macro_name) {
            let rest = &rule[start + macro_name.len()..];
            if let Some(comma) = rest.find(',') {
                names.push(rest[..comma].trim().to_owned());
            }
        }
    }
    names
}

#[test]
fn every_cel_rule_has_a_message() {
    let mut rules = Vec::new();
    all_rules(openapi_schema(), "", &mut rules);
    for (path, rule) in rules {
        let message = rule["message"].as_str().unwrap_or_default();
        assert!(message.len() > 10, "rule at {path} has no message for the user: {rule}");
    }
}

#[test]
fn every_example_validates() {
    let examples = yaml_files(&repo_root().join("examples"));
    let names: Vec<String> =
        examples.iter().map(|p| p.file_name().expect("name").to_string_lossy().into_owned()).collect();
    for required in ["wordcount.yaml", "clicks-per-user.yaml", "passthrough-exactly-once.yaml"] {
        assert!(names.iter().any(|n| n == required), "examples/{required} is missing");
    }
    for path in examples {
        let text = std::fs::read_to_string(&path).expect("example readable");
        if let Err(errors) = parse_manifest(&text) {
            panic!("{} is rejected: {errors}", path.display());
        }
    }
}

#[test]
fn examples_decode_into_the_intended_jobs() {
    let text = std::fs::read_to_string(repo_root().join("examples/wordcount.yaml")).expect("wordcount");
    let job = parse_manifest(&text).expect("wordcount validates");
    assert_eq!(job.spec.pipeline.len(), 3);
    assert!(job.spec.pipeline.iter().all(|stage| stage.operation().is_some()));
    assert_eq!(job.spec.source.format, streamjob_crds::SourceFormat::Text);
    assert_eq!(job.consumer_group(), "streamjob.default.wordcount");

    let text = std::fs::read_to_string(repo_root().join("examples/clicks-per-user.yaml")).expect("clicks");
    let job = parse_manifest(&text).expect("clicks validates");
    let autoscaling = job.spec.autoscaling.as_ref().expect("autoscaling");
    assert!(job.autoscaling_enabled());
    assert_eq!(autoscaling.max_replicas, 12);
    assert_eq!(autoscaling.scale_up.stabilization_seconds, 0, "schema default applied");
    assert_eq!(autoscaling.scale_down.max_step, Some(2));
}

#[test]
fn defaults_are_declared_in_the_schema() {
    let job = parse_manifest(
        "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata: {name: d, namespace: team}\n\
         spec:\n  source: {bootstrapServers: 'k:9092', topics: [a]}\n  sink: {topic: b}\n  autoscaling: {}\n",
    )
    .expect("minimal job validates");
    assert_eq!(job.spec.replicas, 1);
    assert_eq!(job.spec.delivery, streamjob_crds::DeliveryGuarantee::AtLeastOnce);
    assert_eq!(job.spec.deletion_policy, streamjob_crds::DeletionPolicy::Retain);
    let autoscaling = job.spec.autoscaling.expect("autoscaling");
    assert_eq!((autoscaling.min_replicas, autoscaling.max_replicas), (1, 10));
    assert_eq!(autoscaling.scale_down.stabilization_seconds, 120);
    assert_eq!(autoscaling.poll_interval_seconds, 10);
    let spec = &openapi_schema()["properties"]["spec"]["properties"];
    assert_eq!(spec["replicas"]["default"], 1);
    assert_eq!(spec["delivery"]["default"], "atLeastOnce");
}

#[test]
fn every_invalid_manifest_is_rejected_with_its_message() {
    let fixtures = yaml_files(&repo_root().join("examples/invalid"));
    assert!(fixtures.len() >= 12, "at least 12 invalid manifests, found {}", fixtures.len());
    for path in fixtures {
        let text = std::fs::read_to_string(&path).expect("fixture readable");
        let expected = text
            .lines()
            .find_map(|line| line.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()));
        match parse_manifest(&text) {
            Ok(_) => panic!("{} was accepted; expected: {expected}", path.display()),
            Err(errors) => assert!(
                errors.mentions(expected),
                "{}: expected a message containing {expected:?}, got {errors}",
                path.display()
            ),
        }
    }
}

fn one_stage_job(stage: &str) -> String {
    format!(
        "apiVersion: streamjob.io/v1alpha1\nkind: StreamJob\nmetadata: {{name: s}}\nspec:\n  \
         source: {{bootstrapServers: 'k:9092', topics: [a]}}\n  sink: {{topic: b}}\n  pipeline:\n    - {stage}\n"
    )
}

#[test]
fn a_filter_compares_with_whichever_typed_value_is_set() {
    let cases = [
        ("{field: a, op: eq, value: click}", serde_json::json!("click")),
        ("{field: a, op: gt, value: 1700000000000}", serde_json::json!(1_700_000_000_000_i64)),
        ("{field: a, op: gt, numberValue: 0.5}", serde_json::json!(0.5)),
        ("{field: a, op: eq, boolValue: false}", serde_json::json!(false)),
    ];
    for (filter, expected) in cases {
        let job = parse_manifest(&one_stage_job(&format!("filter: {filter}")))
            .unwrap_or_else(|errors| panic!("{filter} is rejected: {errors}"));
        let stage = job.spec.pipeline[0].filter.as_ref().expect("a filter stage");
        assert_eq!(stage.comparison_value(), Some(expected), "{filter}");
    }
}

#[test]
fn map_set_keeps_any_json_value() {
    let job = parse_manifest(&one_stage_job("map: {set: {seen: true, score: 0.5, tag: web, at: {a: [1, null]}}}"))
        .unwrap_or_else(|errors| panic!("map.set is rejected: {errors}"));
    let set = job.spec.pipeline[0].map.as_ref().and_then(|m| m.set.clone()).expect("map.set");
    let expected = serde_json::json!({"seen": true, "score": 0.5, "tag": "web", "at": {"a": [1, null]}});
    assert_eq!(serde_json::to_value(set).expect("serializable"), expected);
}

#[test]
fn a_null_filter_value_counts_as_absent_as_on_the_api_server() {
    let errors = parse_manifest(&one_stage_job("filter: {field: a, op: eq, value: null}")).expect_err("rejected");
    assert!(errors.mentions("filter.value is required unless filter.op is exists"), "{errors}");
}
