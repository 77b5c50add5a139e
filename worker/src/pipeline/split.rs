//! The `split` stage: one record per piece of a text field.

use serde_json::{Map, Value};
use streamjob_crds::SplitStage;

use super::{run_stateless_into, Emit, Operator, Reason, StageError};
use crate::record::{FieldPath, Record};

#[derive(Debug)]
pub struct Split {
    pub(super) field: FieldPath,
    separator: Option<String>,
    lowercase: bool,
    /// Some later stage reads fields other than the split one: each piece gets a copy of them.
    pub(super) copy_rest: bool,
    /// Some later stage reads the key.
    pub(super) copy_key: bool,
    /// Each piece is the key of an empty record (see the planner's `fuse_splits_into_keys`).
    pub(super) pieces_become_keys: bool,
    stage: String,
}

impl Split {
    pub(super) fn compile(spec: &SplitStage, stage: String) -> Self {
        Self {
            field: FieldPath::parse(&spec.field),
            separator: spec.separator.clone(),
            lowercase: spec.lowercase,
            copy_rest: true,
            copy_key: true,
            pieces_become_keys: false,
            stage,
        }
    }

    /// The non-empty pieces of `text`: split at the separator, else at whitespace.
    fn pieces<'a>(&'a self, text: &'a str) -> PiecesAt<'a> {
        match &self.separator {
            Some(separator) => PiecesAt::Separator(text.split(separator.as_str())),
            // The same pieces for ASCII text, found without decoding characters.
            None if text.is_ascii() => PiecesAt::AsciiWhitespace(text.split_ascii_whitespace()),
            None => PiecesAt::Whitespace(text.split_whitespace()),
        }
    }

    pub(super) fn apply(&self, mut record: Record, rest: &[Operator], emit: &mut impl Emit) -> Result<(), StageError> {
        let text = match self.field.remove(&mut record.fields) {
            Some(Value::String(text)) => text,
            Some(other) if !other.is_null() => {
                return Err(StageError::new(
                    &self.stage,
                    Reason::TypeMismatch,
                    format!("split needs text in {}, found {other}", self.field.as_str()),
                ))
            }
            _ => {
                return Err(StageError::new(
                    &self.stage,
                    Reason::MissingField,
                    format!("split field {} is missing", self.field.as_str()),
                ))
            }
        };
        if !self.copy_rest {
            record.fields = Value::Object(Map::new());
        }
        if !self.copy_key {
            record.key = None;
        }
        let mut lowered = String::new();
        // Each piece is the record with the field replaced; the record without the field is
        // what gets copied (for text sources, an empty object).
        let mut pieces = self.pieces(&text).peekable();
        while let Some(piece) = pieces.next() {
            let piece = if self.lowercase { lowercase_into(piece, &mut lowered) } else { piece };
            if self.pieces_become_keys {
                match rest {
                    [] => emit.key_only(piece, record.timestamp_ms)?,
                    _ => run_stateless_into(rest, Record::key_only(Some(piece), record.timestamp_ms), emit)?,
                }
                continue;
            }
            let mut copy = if pieces.peek().is_some() { record.clone() } else { std::mem::take(&mut record) };
            self.field.set(&mut copy.fields, Value::String(piece.to_owned()));
            run_stateless_into(rest, copy, emit)?;
        }
        Ok(())
    }
}

/// The pieces of a text, split at what a split stage names.
enum PiecesAt<'a> {
    Separator(std::str::Split<'a, &'a str>),
    AsciiWhitespace(std::str::SplitAsciiWhitespace<'a>),
    Whitespace(std::str::SplitWhitespace<'a>),
}

impl<'a> Iterator for PiecesAt<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        match self {
            Self::Separator(pieces) => pieces.find(|piece| !piece.is_empty()),
            Self::AsciiWhitespace(pieces) => pieces.next(),
            Self::Whitespace(pieces) => pieces.next(),
        }
    }
}

/// `text` in lower case: itself when it has no upper case, else written into `buffer`
/// (reused from piece to piece).
fn lowercase_into<'a>(text: &'a str, buffer: &'a mut String) -> &'a str {
    if text.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        return text;
    }
    buffer.clear();
    if text.is_ascii() {
        buffer.push_str(text);
        buffer.make_ascii_lowercase();
    } else {
        buffer.push_str(&text.to_lowercase());
    }
    buffer
}
