//! Why a reconcile failed: one variant per step, so the metric and the event name the step.

/// A failed reconcile step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("StreamJob {0} has no namespace")]
    MissingNamespace(String),
    #[error("applying {kind} {name}: {source}")]
    ApplyChild { kind: String, name: String, source: kube::Error },
    #[error("listing the worker pods: {0}")]
    ListPods(#[source] kube::Error),
    #[error("writing the status: {0}")]
    PatchStatus(#[source] kube::Error),
    #[error("updating the finalizers: {0}")]
    Finalizer(#[source] kube::Error),
    #[error("reading the job that holds the consumer group: {0}")]
    ReadJob(#[source] kube::Error),
    #[error("stopping the workers before deleting the consumer group: {0}")]
    StopWorkers(#[source] kube::Error),
    #[error("reading the metadata of the job's Secrets: {0}")]
    ReadSecrets(#[source] kube::Error),
    #[error("draining the workers for a pipeline change: {0}")]
    Drain(#[source] kube::Error),
}

impl Error {
    /// The step that failed, as the `step` label of `reconcile_errors`.
    pub fn category(&self) -> &'static str {
        match self {
            Error::MissingNamespace(_) => "MissingNamespace",
            Error::ApplyChild { .. } => "ApplyChild",
            Error::ListPods(_) => "ListPods",
            Error::PatchStatus(_) => "PatchStatus",
            Error::Finalizer(_) => "Finalizer",
            Error::ReadJob(_) => "ReadJob",
            Error::StopWorkers(_) => "StopWorkers",
            Error::ReadSecrets(_) => "ReadSecrets",
            Error::Drain(_) => "Drain",
        }
    }

    /// What the API server answered (`Api409`, `Api429`, …), `ApiUnavailable` when it did not
    /// answer, else the step: the `reason` label of `reconcile_errors`.
    pub fn reason(&self) -> String {
        match self.kube_error() {
            Some(kube::Error::Api(status)) => format!("Api{}", status.code),
            Some(_) => "ApiUnavailable".to_owned(),
            None => self.category().to_owned(),
        }
    }

    fn kube_error(&self) -> Option<&kube::Error> {
        match self {
            Error::MissingNamespace(_) => None,
            Error::ApplyChild { source, .. } => Some(source),
            Error::ListPods(source)
            | Error::PatchStatus(source)
            | Error::Finalizer(source)
            | Error::ReadJob(source)
            | Error::StopWorkers(source)
            | Error::ReadSecrets(source) => Some(source),
            Error::Drain(source) => Some(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status::failure("refused", "Conflict").with_code(code)))
    }

    #[test]
    fn the_reason_is_the_api_answer_and_the_category_the_step() {
        let cases = [
            (Error::MissingNamespace("j".into()), "MissingNamespace", "MissingNamespace"),
            (
                Error::ApplyChild { kind: "StatefulSet".into(), name: "j".into(), source: api_error(409) },
                "ApplyChild",
                "Api409",
            ),
            (Error::ListPods(api_error(429)), "ListPods", "Api429"),
            (Error::PatchStatus(api_error(422)), "PatchStatus", "Api422"),
            (Error::Finalizer(kube::Error::LinesCodecMaxLineLengthExceeded), "Finalizer", "ApiUnavailable"),
        ];
        for (error, category, reason) in cases {
            assert_eq!((error.category(), error.reason().as_str()), (category, reason), "{error}");
        }
    }
}
