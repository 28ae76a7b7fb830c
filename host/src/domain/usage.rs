//! What runs consume, in the shapes the usage rollups keep: a log-scale histogram whose
//! buckets add up exactly (so minute points merge into hours and days without losing
//! percentiles), and the tally of one run's outbound requests per host.

use std::collections::BTreeMap;

/// Buckets per doubling. Bucket `b` holds values in `(2^((b-1)/8), 2^(b/8)]`
/// milliseconds: each bucket is 9 % wider than the one below, and a percentile read as
/// a bucket's geometric middle is within [`PERCENTILE_ERROR`] of the true value.
/// Coarser buckets would be cheaper to store (8 per doubling keep a run's histogram in
/// a handful of rows: most runs of a job take similar times) but lose the difference
/// between a p95 of 100 and of 120 ms that an operator acts on.
const BUCKETS_PER_DOUBLING: f64 = 8.0;

/// The most a percentile read from a histogram is off, relative to the true value:
/// half a bucket's width on the log scale, `2^(1/16) - 1` (4.43 %), rounded up. The API
/// documents it as "within 4.5 %".
#[cfg(test)]
pub(crate) const PERCENTILE_ERROR: f64 = 0.045;

/// Times below this (one microsecond) share the lowest bucket.
const SMALLEST_MS: f64 = 0.001;
/// Times above this (about 12 days) share the highest bucket.
const LARGEST_MS: f64 = 1.0e9;

/// The bucket of a duration in milliseconds.
pub(crate) fn bucket_of(ms: f64) -> i32 {
    let ms = if ms.is_nan() {
        SMALLEST_MS
    } else {
        ms.clamp(SMALLEST_MS, LARGEST_MS)
    };
    // Within i32 by the clamp: log2 of the bounds is about -10 and 30.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the clamp bounds the value to about -80..240"
    )]
    let bucket = (ms.log2() * BUCKETS_PER_DOUBLING).ceil() as i32;
    bucket
}

/// The value a bucket stands for: its geometric middle.
pub(crate) fn bucket_value(bucket: i32) -> f64 {
    2f64.powf((f64::from(bucket) - 0.5) / BUCKETS_PER_DOUBLING)
}

/// A histogram of durations: bucket → count. Adding two is adding their counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram(BTreeMap<i32, i64>);

impl Histogram {
    pub(crate) fn record(&mut self, ms: f64) {
        self.add(bucket_of(ms), 1);
    }

    pub(crate) fn add(&mut self, bucket: i32, count: i64) {
        *self.0.entry(bucket).or_default() += count;
    }

    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (bucket, count) in &other.0 {
            self.add(*bucket, *count);
        }
    }

    pub(crate) fn count(&self) -> i64 {
        self.0.values().sum()
    }

    pub(crate) fn buckets(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.0.iter().map(|(b, c)| (*b, *c))
    }

    /// The `q` quantile (`0.95` for p95): the value of the bucket holding the
    /// `ceil(q × n)`-th smallest value, capped at `max` (the largest value seen, which
    /// the rollups keep exactly), and `max` itself for the largest. `None` when empty.
    pub(crate) fn quantile(&self, q: f64, max: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_precision_loss,
            reason = "counts far below 2^52; the rank is a whole number in 1..=total"
        )]
        let rank = ((q * total as f64).ceil() as i64).clamp(1, total);
        if rank == total {
            return Some(max);
        }
        let mut seen = 0;
        for (bucket, count) in &self.0 {
            seen += count;
            if seen >= rank {
                return Some(bucket_value(*bucket).min(max));
            }
        }
        None
    }
}

/// How an outbound request ended, as the usage figures count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseClass {
    /// A response with this status (100–599).
    Status(u16),
    /// No response: the connection, a timeout, a size cap or the end of the run cut it.
    Error,
    /// The policy refused it; nothing was sent.
    Denied,
}

/// One run's outbound requests to one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundTally {
    pub host: String,
    pub requests: i64,
    pub responses_2xx: i64,
    pub responses_3xx: i64,
    pub responses_4xx: i64,
    /// 5xx, and the rare 1xx final status a server should not send.
    pub responses_5xx: i64,
    pub errors: i64,
    pub denied: i64,
    pub bytes_sent: i64,
    pub bytes_received: i64,
    /// From the request's start to its end, of the requests that were sent.
    pub latency: Histogram,
}

impl OutboundTally {
    pub(crate) fn new(host: &str) -> Self {
        Self {
            host: host.to_owned(),
            ..Self::default()
        }
    }

    /// Counts one request; `latency_ms` is `None` for a request never sent.
    pub(crate) fn count(
        &mut self,
        class: ResponseClass,
        bytes_sent: u64,
        bytes_received: u64,
        latency_ms: Option<f64>,
    ) {
        self.requests += 1;
        match class {
            ResponseClass::Status(status) => match status {
                200..=299 => self.responses_2xx += 1,
                300..=399 => self.responses_3xx += 1,
                400..=499 => self.responses_4xx += 1,
                _ => self.responses_5xx += 1,
            },
            ResponseClass::Error => self.errors += 1,
            ResponseClass::Denied => self.denied += 1,
        }
        self.bytes_sent += i64::try_from(bytes_sent).unwrap_or(i64::MAX);
        self.bytes_received += i64::try_from(bytes_received).unwrap_or(i64::MAX);
        if let Some(ms) = latency_ms {
            self.latency.record(ms);
        }
    }

    /// Adds `other`'s requests (of the same host) to these.
    pub(crate) fn absorb(&mut self, other: &OutboundTally) {
        self.requests += other.requests;
        self.responses_2xx += other.responses_2xx;
        self.responses_3xx += other.responses_3xx;
        self.responses_4xx += other.responses_4xx;
        self.responses_5xx += other.responses_5xx;
        self.errors += other.errors;
        self.denied += other.denied;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.latency.merge(&other.latency);
    }
}

/// What a module's routes requested of outbound hosts in one minute. Routes have no
/// run to be counted with, so their requests are counted on their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteOutbound {
    pub module: String,
    /// The start of the minute the requests ended in.
    pub minute: super::Millis,
    /// One per host.
    pub tallies: Vec<OutboundTally>,
}

/// Which rollups a question reads: `[from, to)` at the rollup step `tier`, cut into
/// points of `step` (a multiple of `tier`), or one total per group when `step` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub from: super::Millis,
    pub to: super::Millis,
    pub step: Option<super::Millis>,
    pub tier: super::Millis,
    pub module: Option<String>,
    /// Runs: only this job. Outbound: ignored.
    pub job_id: Option<String>,
    /// Outbound: only this host. Runs: ignored.
    pub host: Option<String>,
    /// Runs: one group per job instead of per module.
    pub by_job: bool,
}

/// What runs consumed, summed over a set of rollup points.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunTotals {
    pub runs: i64,
    pub completed: i64,
    pub failed: i64,
    pub timed_out: i64,
    pub cancelled: i64,
    pub duration_ms_sum: f64,
    pub duration_ms_max: f64,
    pub cpu_time_ms: f64,
    pub fuel_consumed: i64,
    pub memory_peak_bytes: i64,
    pub log_bytes: i64,
    pub outbound_requests: i64,
    pub durations: Histogram,
}

impl RunTotals {
    /// Adds `other`'s runs to these.
    pub(crate) fn merge(&mut self, other: &RunTotals) {
        self.runs += other.runs;
        self.completed += other.completed;
        self.failed += other.failed;
        self.timed_out += other.timed_out;
        self.cancelled += other.cancelled;
        self.duration_ms_sum += other.duration_ms_sum;
        self.duration_ms_max = self.duration_ms_max.max(other.duration_ms_max);
        self.cpu_time_ms += other.cpu_time_ms;
        self.fuel_consumed += other.fuel_consumed;
        self.memory_peak_bytes = self.memory_peak_bytes.max(other.memory_peak_bytes);
        self.log_bytes += other.log_bytes;
        self.outbound_requests += other.outbound_requests;
        self.durations.merge(&other.durations);
    }
}

/// The runs of one group (a module, or a job of it) at one point (or in total).
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    pub t: Option<super::Millis>,
    pub module: String,
    pub job_id: Option<String>,
    pub job: Option<String>,
    pub totals: RunTotals,
}

/// The outbound requests of one module to one host at one point (or in total).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundRow {
    pub t: Option<super::Millis>,
    pub module: String,
    pub totals: OutboundTally,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_is_within_the_stated_error_of_its_bucket() {
        let mut ms = 0.0013;
        while ms < 5.0e8 {
            let read = bucket_value(bucket_of(ms));
            let error = (read - ms).abs() / ms;
            assert!(error <= PERCENTILE_ERROR, "{ms} read as {read}");
            ms *= 1.37;
        }
    }

    #[test]
    fn buckets_order_like_their_values() {
        assert!(bucket_of(0.5) < bucket_of(1.0));
        assert!(bucket_of(1.0) < bucket_of(1.1));
        assert_eq!(bucket_of(-3.0), bucket_of(0.0));
        assert_eq!(bucket_of(f64::NAN), bucket_of(0.0));
        assert_eq!(bucket_of(1.0e12), bucket_of(1.0e9));
    }

    #[test]
    fn quantiles_come_from_merged_counts_and_never_pass_the_max() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for i in 1..=90 {
            a.record(f64::from(i));
        }
        for _ in 0..10 {
            b.record(1000.0);
        }
        a.merge(&b);
        assert_eq!(a.count(), 100);
        let p50 = a.quantile(0.5, 1000.0).unwrap();
        assert!((p50 - 50.0).abs() / 50.0 <= PERCENTILE_ERROR, "{p50}");
        let p95 = a.quantile(0.95, 1000.0).unwrap();
        assert!((p95 - 1000.0).abs() / 1000.0 <= PERCENTILE_ERROR, "{p95}");
        assert_eq!(a.quantile(1.0, 1000.0), Some(1000.0));
        assert_eq!(a.quantile(0.5, 20.0), Some(20.0), "capped at the max");
        assert_eq!(Histogram::default().quantile(0.5, 1.0), None);
    }

    #[test]
    fn requests_are_counted_by_class() {
        let mut tally = OutboundTally::new("api.example.com");
        tally.count(ResponseClass::Status(200), 10, 100, Some(3.0));
        tally.count(ResponseClass::Status(404), 0, 20, Some(2.0));
        tally.count(ResponseClass::Status(503), 0, 0, Some(1.0));
        tally.count(ResponseClass::Error, 5, 0, Some(9.0));
        tally.count(ResponseClass::Denied, 0, 0, None);
        assert_eq!(tally.requests, 5);
        assert_eq!(
            (
                tally.responses_2xx,
                tally.responses_4xx,
                tally.responses_5xx,
                tally.errors,
                tally.denied
            ),
            (1, 1, 1, 1, 1)
        );
        assert_eq!((tally.bytes_sent, tally.bytes_received), (15, 120));
        assert_eq!(tally.latency.count(), 4);
    }
}
