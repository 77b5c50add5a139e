//! What a worker says of its own speed, for the operator's autoscaler: the records it processes
//! per second of processing time (its true rate, what it could do if never kept waiting) and the
//! share of its time it was busy. Workers write it as the commit metadata of the source
//! partitions they commit; the operator's lag probe reads it back with the committed offsets, so
//! it travels through Kafka, under the same credentials, with no network path from the operator
//! to the pods.

/// One worker's measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct CapacityReport {
    /// The worker (its instance id, the pod name) that measured it.
    pub worker: String,
    /// Source records processed per second of busy time.
    pub records_per_busy_second: f64,
    /// Busy time ÷ wall time over the measurement window, 0..=1.
    pub busy_share: f64,
    /// When it was measured, milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// Marks the metadata as a report, and its format's version.
const PREFIX: &str = "streamjob-capacity/1";

impl CapacityReport {
    /// The commit-metadata text: `streamjob-capacity/1;worker=…;rate=…;busy=…;at=…`.
    pub fn encode(&self) -> String {
        format!(
            "{PREFIX};worker={};rate={:.1};busy={:.4};at={}",
            self.worker, self.records_per_busy_second, self.busy_share, self.at_ms
        )
    }

    /// The report in commit metadata; `None` for any other metadata (an aggregating stage's
    /// checkpoint, another client's text) or a malformed report.
    pub fn decode(metadata: &str) -> Option<Self> {
        let mut fields = metadata.split(';');
        if fields.next()? != PREFIX {
            return None;
        }
        let (mut worker, mut rate, mut busy, mut at) = (None, None, None, None);
        for field in fields {
            match field.split_once('=')? {
                ("worker", value) => worker = Some(value.to_owned()),
                ("rate", value) => rate = value.parse::<f64>().ok(),
                ("busy", value) => busy = value.parse::<f64>().ok(),
                ("at", value) => at = value.parse::<i64>().ok(),
                _ => {}
            }
        }
        let report = Self { worker: worker?, records_per_busy_second: rate?, busy_share: busy?, at_ms: at? };
        let plausible = report.records_per_busy_second.is_finite()
            && report.records_per_busy_second > 0.0
            && (0.0..=1.0).contains(&report.busy_share);
        plausible.then_some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> CapacityReport {
        CapacityReport {
            worker: "wordcount-worker-2".into(),
            records_per_busy_second: 57_665.25,
            busy_share: 0.035,
            at_ms: 1_764_650_000_123,
        }
    }

    #[test]
    fn a_report_reads_back_as_written_to_a_tenth_of_a_record() {
        let text = report().encode();
        assert_eq!(text, "streamjob-capacity/1;worker=wordcount-worker-2;rate=57665.2;busy=0.0350;at=1764650000123");
        let decoded = CapacityReport::decode(&text).expect("decodes");
        assert_eq!(decoded.worker, "wordcount-worker-2");
        assert!((decoded.records_per_busy_second - 57_665.2).abs() < 1e-9);
        assert_eq!((decoded.busy_share, decoded.at_ms), (0.035, 1_764_650_000_123));
    }

    #[test]
    fn other_metadata_and_malformed_reports_are_not_reports() {
        for metadata in [
            "",
            "v2;s=in/0:17:1000",
            "streamjob-capacity/2;worker=w;rate=1;busy=0.5;at=1",
            "streamjob-capacity/1;worker=w;rate=1;busy=0.5",
            "streamjob-capacity/1;worker=w;rate=fast;busy=0.5;at=1",
            "streamjob-capacity/1;worker=w;rate=0;busy=0.5;at=1",
            "streamjob-capacity/1;worker=w;rate=10;busy=1.5;at=1",
            "streamjob-capacity/1;worker=w;rate=NaN;busy=0.5;at=1",
            "streamjob-capacity/1;worker",
        ] {
            assert_eq!(CapacityReport::decode(metadata), None, "{metadata:?}");
        }
    }
}
