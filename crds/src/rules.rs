//! CEL rules that span the whole spec, added to its schema by a schemars transform.

use schemars::Schema;
use serde_json::{json, Value};

use crate::types::MAX_STAGES;

/// Adds the spec-level `x-kubernetes-validations` to the `StreamJobSpec` schema.
pub fn spec_rules(schema: &mut Schema) {
    schema.insert("x-kubernetes-validations".to_owned(), Value::Array(spec_level_rules()));
}

fn rule(rule: &str, message: &str) -> Value {
    json!({ "rule": rule, "message": message })
}

fn spec_level_rules() -> Vec<Value> {
    vec![
        rule(
            "!(self.sink.topic in self.source.topics)",
            "sink.topic must not be one of source.topics: the job would consume its own output",
        ),
        rule(
            "!has(self.sink.deadLetterTopic) || !(self.sink.deadLetterTopic in self.source.topics)",
            "sink.deadLetterTopic must not be one of source.topics",
        ),
        rule(
            "!has(self.sink.deadLetterTopic) || self.sink.deadLetterTopic != self.sink.topic",
            "sink.deadLetterTopic must differ from sink.topic",
        ),
        rule(
            "!has(self.pipeline) || self.pipeline.filter(s, has(s.window)).size() <= 1",
            "pipeline may contain at most one window stage",
        ),
        rule(&key_by_before_window_rule(MAX_STAGES), "a window stage needs a keyBy stage before it in the pipeline"),
        rule(
            "self.delivery != 'exactlyOnce' || !has(self.sink.bootstrapServers) || \
             self.sink.bootstrapServers == self.source.bootstrapServers",
            "delivery: exactlyOnce needs the sink on the source's brokers (a Kafka transaction cannot span two \
             clusters): leave sink.bootstrapServers unset",
        ),
        rule(
            "!has(self.sink.auth) || (has(self.sink.bootstrapServers) && \
             self.sink.bootstrapServers != self.source.bootstrapServers)",
            "sink.auth applies only to another cluster than the source's: set sink.bootstrapServers to it, or \
             remove sink.auth (on the source's cluster the source's auth is used)",
        ),
    ]
}

/// "Every window stage has a keyBy stage at a lower index", spelled out index by index: CEL as
/// served by Kubernetes 1.25 has no list index functions, and the pipeline is at most
/// `max_stages` long.
fn key_by_before_window_rule(max_stages: usize) -> String {
    let per_index: Vec<String> = (0..max_stages)
        .map(|i| {
            let mut allowed = vec![format!("size(self.pipeline) <= {i}"), format!("!has(self.pipeline[{i}].window)")];
            allowed.extend((0..i).map(|j| format!("has(self.pipeline[{j}].keyBy)")));
            format!("({})", allowed.join(" || "))
        })
        .collect();
    format!("!has(self.pipeline) || ({})", per_index.join(" && "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_by_rule_for_two_stages_checks_each_index() {
        assert_eq!(
            key_by_before_window_rule(2),
            "!has(self.pipeline) || ((size(self.pipeline) <= 0 || !has(self.pipeline[0].window)) && \
             (size(self.pipeline) <= 1 || !has(self.pipeline[1].window) || has(self.pipeline[0].keyBy)))"
        );
    }
}
