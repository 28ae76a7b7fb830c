//! Reads a `/metrics` answer the way a scraper does: with a strict OpenMetrics parser
//! (`openmetrics-parser`, which passes the OpenMetrics test suite), so an exposition that
//! a real Prometheus would refuse fails the test that scraped it.

use std::collections::HashMap;

use openmetrics_parser::{MetricFamily, MetricsExposition, OpenMetricsType, OpenMetricsValue};

/// A parsed exposition.
pub(crate) struct Metrics {
    exposition: MetricsExposition<OpenMetricsType, OpenMetricsValue>,
}

impl Metrics {
    /// Parses `text`, failing the test (with the text) if it is not valid OpenMetrics.
    pub(crate) fn parse(text: &str) -> Self {
        let exposition = openmetrics_parser::openmetrics::parse_openmetrics(text)
            .unwrap_or_else(|err| panic!("not valid OpenMetrics: {err:?}\n{text}"));
        Self { exposition }
    }

    fn family(&self, name: &str) -> Option<&MetricFamily<OpenMetricsType, OpenMetricsValue>> {
        self.exposition.families.get(name)
    }

    /// Whether the family `name` is there, with its type.
    pub(crate) fn family_type(&self, name: &str) -> Option<OpenMetricsType> {
        self.family(name).map(|family| family.family_type)
    }

    /// Every sample of family `name`: its labels and its value (a counter's total, a
    /// gauge's value, a histogram's count; 1 for an info).
    pub(crate) fn samples(&self, name: &str) -> Vec<(HashMap<String, String>, f64)> {
        let Some(family) = self.family(name) else {
            return Vec::new();
        };
        family
            .iter_samples()
            .map(|sample| {
                let labels = sample
                    .get_labelset()
                    .expect("a parsed sample belongs to its family")
                    .iter()
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect();
                let value = match &sample.value {
                    OpenMetricsValue::Counter(counter) => counter.value.as_f64(),
                    OpenMetricsValue::Gauge(value) | OpenMetricsValue::Unknown(value) => {
                        value.as_f64()
                    }
                    OpenMetricsValue::Histogram(histogram) => {
                        histogram.count.expect("a histogram has a count") as f64
                    }
                    OpenMetricsValue::Info => 1.0,
                    other => panic!("{name}: unexpected value {other:?}"),
                };
                (labels, value)
            })
            .collect()
    }

    /// The sum over the samples of family `name` whose labels include every pair of
    /// `matching`; 0 when none does.
    pub(crate) fn sum(&self, name: &str, matching: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .into_iter()
            .filter(|(labels, _)| {
                matching
                    .iter()
                    .all(|(key, value)| labels.get(*key).map(String::as_str) == Some(*value))
            })
            .map(|(_, value)| value)
            .sum()
    }

    /// The histogram sample of family `name` with exactly the labels `labels`: its sum
    /// and its buckets (upper bound, cumulative count).
    pub(crate) fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> (f64, Vec<(f64, f64)>) {
        let family = self
            .family(name)
            .unwrap_or_else(|| panic!("no family {name}"));
        let sample = family
            .iter_samples()
            .find(|sample| {
                let set = sample.get_labelset().expect("bound to its family");
                labels
                    .iter()
                    .all(|(key, value)| set.get_label_value(key) == Some(*value))
            })
            .unwrap_or_else(|| panic!("no {name} sample with {labels:?}"));
        let OpenMetricsValue::Histogram(histogram) = &sample.value else {
            panic!("{name} is no histogram");
        };
        let buckets = histogram
            .buckets
            .iter()
            .map(|bucket| (bucket.upper_bound, bucket.count.as_f64()))
            .collect();
        (histogram.sum.map_or(0.0, |sum| sum.as_f64()), buckets)
    }
}
