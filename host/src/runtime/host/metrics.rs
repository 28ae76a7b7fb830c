//! The `metrics` capability: numeric samples into the module's time series.

use std::sync::Mutex;

use crate::domain::MetricSample as Sample;
use crate::domain::metrics::{
    MAX_LABEL_VALUE_BYTES, MAX_LABELS, MAX_NAME_BYTES, is_valid_metric_name,
};
use crate::runtime::bindings::metrics;

use super::{BackendError, HostContext};

/// A run that needs more samples than this should aggregate before recording.
pub(crate) const MAX_SAMPLES_PER_RUN: u32 = 1_000;

/// What a sink did with a sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Stored,
    /// Not stored, by a rule the guest is told of (its module's bound of series); the
    /// message says which.
    Refused(String),
}

/// Where samples go. Called once per accepted `observe`.
#[async_trait::async_trait]
pub trait MetricsSink: Send + Sync + 'static {
    async fn record(&self, module: &str, sample: Sample) -> Result<Recorded, BackendError>;
}

/// Keeps samples in this process, for local runs and tests.
#[derive(Debug, Default)]
pub struct MemoryMetricsSink {
    samples: Mutex<Vec<(String, Sample)>>,
}

impl MemoryMetricsSink {
    pub fn take(&self) -> Vec<(String, Sample)> {
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait::async_trait]
impl MetricsSink for MemoryMetricsSink {
    async fn record(&self, module: &str, sample: Sample) -> Result<Recorded, BackendError> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((module.into(), sample));
        Ok(Recorded::Stored)
    }
}

/// Checks a sample against the contract's rules, naming the first problem.
fn check_sample(name: &str, value: f64, labels: &[metrics::Label]) -> Result<(), String> {
    if !is_valid_metric_name(name) {
        return Err(format!(
            "`{}` is not a metric name: letters, digits, `_`, `.` and `:`, 1 to {MAX_NAME_BYTES} bytes",
            crate::runtime::logs::truncate(name, MAX_NAME_BYTES)
        ));
    }
    if !value.is_finite() {
        return Err(format!("the value of `{name}` is not finite"));
    }
    if labels.len() > MAX_LABELS {
        return Err(format!("at most {MAX_LABELS} labels per sample"));
    }
    if let Some(label) = labels
        .iter()
        .find(|l| !is_valid_metric_name(&l.key) || l.value.len() > MAX_LABEL_VALUE_BYTES)
    {
        return Err(format!(
            "label `{}` is malformed: keys like metric names, values at most {MAX_LABEL_VALUE_BYTES} bytes",
            crate::runtime::logs::truncate(&label.key, MAX_NAME_BYTES)
        ));
    }
    // A series is a set of labels: a key given twice would make one of its values
    // silently lost.
    let repeated = labels
        .iter()
        .enumerate()
        .find_map(|(i, l)| labels[..i].iter().any(|e| e.key == l.key).then_some(l));
    if let Some(label) = repeated {
        return Err(format!("label `{}` is given twice", label.key));
    }
    Ok(())
}

#[derive(Debug)]
pub(crate) enum ObserveFailure {
    Refused(metrics::Error),
    Trap(wasmtime::Error),
}

impl From<wasmtime::Error> for ObserveFailure {
    fn from(err: wasmtime::Error) -> Self {
        ObserveFailure::Trap(err)
    }
}

impl metrics::Host for HostContext {
    async fn observe(
        &mut self,
        name: String,
        value: f64,
        labels: Vec<metrics::Label>,
    ) -> Result<(), ObserveFailure> {
        check_sample(&name, value, &labels)
            .map_err(|reason| ObserveFailure::Refused(metrics::Error::Invalid(reason)))?;
        if self.samples_recorded >= MAX_SAMPLES_PER_RUN {
            return Err(ObserveFailure::Refused(metrics::Error::RateLimited(
                format!("a run may record at most {MAX_SAMPLES_PER_RUN} samples"),
            )));
        }
        self.samples_recorded += 1;
        let sample = Sample {
            name,
            value,
            labels: labels.into_iter().map(|l| (l.key, l.value)).collect(),
            ts_ms: crate::domain::now_millis(),
        };
        let sink = self.services.metrics.clone();
        match self
            .bounded("metrics.observe", sink.record(&self.module, sample))
            .await?
        {
            Ok(Recorded::Stored) => Ok(()),
            Ok(Recorded::Refused(reason)) => {
                Err(ObserveFailure::Refused(metrics::Error::RateLimited(reason)))
            }
            Err(err) => {
                // Monitoring is best-effort: a lost sample must not fail the job.
                tracing::warn!(error = %err, "metrics backend failed");
                self.logs.push(
                    crate::domain::LogLevel::Warn,
                    "a metric sample was lost: the metrics backend is unavailable",
                    Default::default(),
                );
                Ok(())
            }
        }
    }

    fn convert_error(&mut self, err: ObserveFailure) -> wasmtime::Result<metrics::Error> {
        match err {
            ObserveFailure::Refused(error) => Ok(error),
            ObserveFailure::Trap(trap) => Err(trap),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(key: &str, value: &str) -> metrics::Label {
        metrics::Label {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn well_formed_samples_pass() {
        assert_eq!(
            check_sample("http.latency_ms", 12.0, &[label("endpoint", "api")]),
            Ok(())
        );
    }

    #[test]
    fn malformed_samples_are_refused_with_the_reason() {
        assert!(
            check_sample("bad name", 1.0, &[])
                .unwrap_err()
                .contains("not a metric name")
        );
        assert!(
            check_sample("x", f64::NAN, &[])
                .unwrap_err()
                .contains("not finite")
        );
        let many: Vec<_> = (0..9).map(|i| label(&format!("k{i}"), "v")).collect();
        assert!(
            check_sample("x", 1.0, &many)
                .unwrap_err()
                .contains("at most 8")
        );
        assert!(
            check_sample("x", 1.0, &[label("a b", "v")])
                .unwrap_err()
                .contains("malformed")
        );
        assert!(
            check_sample(
                "x",
                1.0,
                &[label("k", "a"), label("j", "b"), label("k", "c")]
            )
            .unwrap_err()
            .contains("label `k` is given twice")
        );
    }
}
