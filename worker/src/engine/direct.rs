//! The stage of a job without a window: each record runs through the stages and its results
//! go to the sink, holding the record's offset until they are acknowledged.

use streamjob_crds::{SinkFormat, SourceFormat};

use super::{record_size, Checkpoint, Destination, Input, Job, Outbox, Output, Stage};
use crate::offsets::PartitionProgress;
use crate::pipeline::{self, CompiledPipeline, Reason, StageError};

/// Keeps nothing between records: all it reads is in the job.
pub(super) struct DirectStage;

impl Stage for DirectStage {
    fn on_record(&mut self, input: &Input<'_>, out: &mut Outbox<'_>) {
        out.count_input();
        match out.poisoned.get(input.topic, input.partition, input.offset).cloned() {
            Some(poison) => out.read_poisoned(input, poison),
            None if out.job.forward_input => forward(input, out),
            None => process(input, out),
        }
    }

    fn checkpoint(&self, _progress: &PartitionProgress, _include_unacknowledged: bool, _job: &Job) -> Checkpoint {
        Checkpoint::default()
    }
}

fn process(input: &Input<'_>, out: &mut Outbox<'_>) {
    let job = out.job;
    let results = input
        .decode(job.settings.source_format, &job.pipeline.input_fields)
        .and_then(|r| pipeline::run_stateless(&job.pipeline.before_window, r));
    let results = results.map(|records| {
        let encoded: Vec<(Option<Vec<u8>>, Vec<u8>)> = records
            .into_iter()
            .map(|r| (pipeline::encode(job.settings.sink_format, &r), r.key))
            .map(|(p, k)| (k, p))
            .collect();
        encoded
    });
    let results = results.and_then(|encoded| {
        let largest = encoded.iter().map(|(key, payload)| record_size(key.as_deref(), payload, &[])).max();
        match largest {
            Some(size) if size > job.limits.sink => Err(too_large(size, job.limits.sink)),
            _ => Ok(encoded),
        }
    });
    match results {
        Ok(encoded) => {
            let ticket = out.ticket(input.offset, input.timestamp_ms, Destination::Sink);
            out.progress.hold(input.offset, encoded.len() as u32);
            for (key, payload) in encoded {
                out.push(Output::to_sink(key, payload, ticket));
            }
        }
        Err(error) => out.reject(input, &error, 1, false, || input.offset),
    }
}

/// A result the sink topic would refuse for its size: the input is dead-lettered instead.
fn too_large(size: usize, limit: usize) -> StageError {
    StageError::new(
        "sink",
        Reason::TooLarge,
        format!("the result takes {size} bytes, more than the sink topic takes (max.message.bytes {limit})"),
    )
}

/// A record no stage changes goes to the sink as it came, key and value, once it is valid in
/// the source format and passes the filters.
fn forward(input: &Input<'_>, out: &mut Outbox<'_>) {
    let job = out.job;
    let passes = if job.pipeline.before_window.is_empty() {
        pipeline::validate(job.settings.source_format, input.payload).map(|()| true)
    } else {
        input
            .decode(job.settings.source_format, &job.forward_fields)
            .and_then(|r| pipeline::run_stateless(&job.pipeline.before_window, r))
            .map(|records| !records.is_empty())
    };
    let payload = input.payload.unwrap_or_default();
    let passes = passes.and_then(|passes| match record_size(input.key, payload, &[]) {
        size if passes && size > job.limits.sink => Err(too_large(size, job.limits.sink)),
        _ => Ok(passes),
    });
    match passes {
        Ok(true) => {
            let ticket = out.ticket(input.offset, input.timestamp_ms, Destination::Sink);
            out.progress.hold(input.offset, 1);
            out.push(Output::to_sink(input.key.map(<[u8]>::to_vec), payload.to_vec(), ticket));
        }
        Ok(false) => {}
        Err(error) => out.reject(input, &error, 1, false, || input.offset),
    }
}

/// Whether every record leaves exactly as it came: no window, only filters, and a sink that
/// writes the source's format (JSON to JSON, text to text).
pub(super) fn forwards_input_unchanged(pipeline: &CompiledPipeline, source: SourceFormat, sink: SinkFormat) -> bool {
    let same_format =
        matches!((source, sink), (SourceFormat::Json, SinkFormat::Json) | (SourceFormat::Text, SinkFormat::Text));
    same_format
        && pipeline.window.is_none()
        && pipeline.before_window.iter().all(|operator| matches!(operator, pipeline::Operator::Filter(_)))
}
