//! The `map` stage: select, rename and set fields.

use serde_json::{Map, Value};
use streamjob_crds::MapStage;

use crate::liveness::Fields;
use crate::record::FieldPath;

#[derive(Debug)]
pub struct MapOperator {
    select: Option<Vec<FieldPath>>,
    /// No selected path lies in another: each value can move out instead of being copied.
    select_moves: bool,
    rename: Vec<(FieldPath, FieldPath)>,
    set: Vec<(FieldPath, Value)>,
}

impl MapOperator {
    pub(super) fn compile(spec: &MapStage, _stage: String) -> Self {
        let select: Option<Vec<FieldPath>> =
            spec.select.as_ref().map(|paths| paths.iter().map(|p| FieldPath::parse(p)).collect());
        let select_moves = select
            .as_ref()
            .is_some_and(|paths| paths.iter().enumerate().all(|(i, a)| paths[i + 1..].iter().all(|b| !a.overlaps(b))));
        Self {
            select,
            select_moves,
            rename: spec
                .rename
                .iter()
                .flatten()
                .map(|(from, to)| (FieldPath::parse(from), FieldPath::parse(to)))
                .collect(),
            set: spec.set.iter().flatten().map(|(path, value)| (FieldPath::parse(path), value.clone())).collect(),
        }
    }

    /// What the map and the stages after it (which read `after`) need of its input.
    pub(super) fn needs(&self, after: Fields) -> Fields {
        match &self.select {
            Some(select) => select.iter().fold(Fields::none(), Fields::with),
            None => self.rename.iter().fold(after, |fields, (from, _)| fields.with(from)),
        }
    }

    pub(super) fn apply(&self, fields: &mut Value) {
        if let Some(select) = &self.select {
            let mut selected = Value::Object(Map::new());
            for path in select {
                let value = if self.select_moves { path.remove(fields) } else { path.get(fields).cloned() };
                if let Some(value) = value {
                    path.set(&mut selected, value);
                }
            }
            *fields = selected;
        }
        for (from, to) in &self.rename {
            if let Some(value) = from.remove(fields) {
                to.set(fields, value);
            }
        }
        for (path, value) in &self.set {
            path.set(fields, value.clone());
        }
    }
}
