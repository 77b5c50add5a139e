//! The stage of a job without a window: each record runs through the stages and its results
//! go to the sink, holding the record's offset until they are acknowledged.

use streamjob_crds::{SinkFormat, SourceFormat};

use super::{Checkpoint, Destination, Input, Job, Outbox, Output, Stage};
use crate::offsets::PartitionProgress;
use crate::pipeline::{self, CompiledPipeline};

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
    match results {
        Ok(records) => {
            let ticket = out.ticket(input.offset, input.timestamp_ms, Destination::Sink);
            out.progress.hold(input.offset, records.len() as u32);
            for record in records {
                out.send_result(record, ticket);
            }
        }
        Err(error) => out.reject(input, &error, 1, false, || input.offset),
    }
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
    match passes {
        Ok(true) => {
            let ticket = out.ticket(input.offset, input.timestamp_ms, Destination::Sink);
            out.progress.hold(input.offset, 1);
            out.push(Output {
                destination: Destination::Sink,
                key: input.key.map(<[u8]>::to_vec),
                payload: input.payload.unwrap_or_default().to_vec(),
                headers: Vec::new(),
                ticket: Some(ticket),
            });
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
