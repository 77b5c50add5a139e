//! The planner: a pipeline's stages compiled into operators, with what each one's successors
//! read worked out once (see [`crate::liveness`]) and a split fused into the `keyBy` after it.

use streamjob_crds::{PipelineStage, StageOperation};

use super::{Filter, KeyBy, MapOperator, Operator, Split, WindowOperator};
use crate::liveness::{Fields, Liveness};

/// A pipeline definition the worker cannot run.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("spec.pipeline[{index}]: {message}")]
    Stage { index: usize, message: String },
}

#[derive(Debug)]
pub struct CompiledPipeline {
    pub before_window: Vec<Operator>,
    /// Shared, so processing a record takes it without copying it.
    pub window: Option<std::sync::Arc<WindowOperator>>,
    pub after_window: Vec<Operator>,
    /// The input's fields some stage reads: the rest need not be decoded.
    pub input_fields: Fields,
}

impl CompiledPipeline {
    pub fn compile(stages: &[PipelineStage]) -> Result<Self, CompileError> {
        let mut pipeline =
            Self { before_window: Vec::new(), window: None, after_window: Vec::new(), input_fields: Fields::All };
        for (index, stage) in stages.iter().enumerate() {
            let error = |message: String| CompileError::Stage { index, message };
            let operation = stage
                .operation()
                .ok_or_else(|| error("set exactly one of filter, map, split, keyBy, window".into()))?;
            let name = format!("pipeline[{index}] ({})", operation_name(&operation));
            let operator = match operation {
                StageOperation::Filter(filter) => Operator::Filter(Filter::compile(filter, name).map_err(error)?),
                StageOperation::Map(map) => Operator::Map(MapOperator::compile(map, name)),
                StageOperation::Split(split) => Operator::Split(Split::compile(split, name)),
                StageOperation::KeyBy(key_by) => Operator::KeyBy(KeyBy::compile(&key_by.field, name)),
                StageOperation::Window(window) => {
                    if pipeline.window.is_some() {
                        return Err(error("a pipeline may contain at most one window stage".into()));
                    }
                    if !pipeline.before_window.iter().any(|op| matches!(op, Operator::KeyBy(_))) {
                        return Err(error("a window stage needs a keyBy stage before it".into()));
                    }
                    pipeline.window = Some(std::sync::Arc::new(WindowOperator::compile(window, name).map_err(error)?));
                    continue;
                }
            };
            match pipeline.window {
                Some(_) => pipeline.after_window.push(operator),
                None => pipeline.before_window.push(operator),
            }
        }
        let window_reads = match &pipeline.window {
            Some(window) => Liveness { fields: window.reads(), key: true },
            None => Liveness::sink(),
        };
        pipeline.input_fields = mark_liveness(&mut pipeline.before_window, window_reads).fields;
        mark_liveness(&mut pipeline.after_window, Liveness::sink());
        fuse_splits_into_keys(&mut pipeline.before_window);
        fuse_splits_into_keys(&mut pipeline.after_window);
        Ok(pipeline)
    }
}

/// A split whose pieces only feed a `keyBy` on the same field, which nothing after reads,
/// makes each piece the key of an otherwise empty record itself: the same records, without
/// building a field only to move it out again.
fn fuse_splits_into_keys(operators: &mut Vec<Operator>) {
    let mut index = 0;
    while index + 1 < operators.len() {
        let fusable = match (&operators[index], &operators[index + 1]) {
            (Operator::Split(split), Operator::KeyBy(key_by)) => {
                key_by.take_value && !split.copy_rest && split.field == key_by.field
            }
            _ => false,
        };
        if fusable {
            operators.remove(index + 1);
            if let Operator::Split(split) = &mut operators[index] {
                split.pieces_become_keys = true;
            }
        }
        index += 1;
    }
}

/// Tells each operator, from the last back, what the ones after it read; returns what the
/// first one needs of its input.
fn mark_liveness(operators: &mut [Operator], at_end: Liveness) -> Liveness {
    operators.iter_mut().rev().fold(at_end, |after, operator| {
        match operator {
            Operator::KeyBy(key_by) => key_by.take_value = !after.fields.reads(&key_by.field),
            Operator::Split(split) => {
                split.copy_rest = !after.fields.at_most(&split.field);
                split.copy_key = after.key;
            }
            Operator::Filter(_) | Operator::Map(_) => {}
        }
        operator.needs(after)
    })
}

/// The fields `operators` read, when nothing after them reads the record.
pub fn fields_read_by(operators: &[Operator]) -> Fields {
    let nothing = Liveness { fields: Fields::none(), key: false };
    operators.iter().rev().fold(nothing, |after, operator| operator.needs(after)).fields
}

fn operation_name(operation: &StageOperation<'_>) -> &'static str {
    match operation {
        StageOperation::Filter(_) => "filter",
        StageOperation::Map(_) => "map",
        StageOperation::Split(_) => "split",
        StageOperation::KeyBy(_) => "keyBy",
        StageOperation::Window(_) => "window",
    }
}
