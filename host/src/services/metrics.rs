//! Module metrics: the samples modules record through the `metrics` import, kept as
//! series within a bound per module, and read back as a listing or as points. Owns the
//! bound, what a refusal tells the module and the operator, and the rules of a query
//! (which rollups answer it, how much one may read); the store keeps the rows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ServiceError;
use crate::domain::metrics::{
    Aggregate, Labels, MetricSeries, ModuleMetricsSummary, Rollup, SeriesAdmission, labels_text,
    rollup_start,
};
use crate::domain::window::{Window, format_step, rollup_step_for};
use crate::domain::{MetricSample, Millis};
use crate::runtime::host::{BackendError, MetricsSink, Recorded};
use crate::store::Store;

/// The most series a module may have. A series costs rows for as long as it is kept
/// (three rollups for every minute it has samples) and a line in its module's listing,
/// and a label whose values are identifiers (a user id, a URL with its query) would
/// otherwise make one module grow rows without end. A thousand covers a module watching
/// hundreds of endpoints under a few labels each; past it, a label is an identifier,
/// not a dimension. Samples of the module's existing series are still recorded.
pub(crate) const MAX_SERIES_PER_MODULE: u32 = 1_000;

/// Rollups one series query may read, all its series together. What a query costs is
/// the rollups it reads: about 2 µs each on SQLite and 1 µs on PostgreSQL, measured on
/// the reference machine (`a_30_day_query_at_1h_steps_on_*`: 100,800 minute rollups,
/// a week at 5-minute steps for ten series, took 220 to 280 ms and 110 to 120 ms at the
/// median). This
/// keeps every query near 100 ms at worst, and lets a dashboard draw 30 days of hours
/// for 69 series, a day of minutes for 34, or a week at 5-minute steps for 4 (at 1-hour
/// steps, for hundreds); a query past it is refused with what to change.
pub(crate) const MAX_ROLLUPS_PER_QUERY: i64 = 50_000;

/// How long a node refuses new series of a module at its bound without asking the
/// database again. A module stays at its bound until pruning deletes its stale
/// series; meanwhile one that keeps inventing label values costs one admission a
/// minute (and one warning in the log) rather than one per sample.
const FULL_RECHECK: Duration = Duration::from_secs(60);

/// Bytes of names and labels the cache of known series may hold, this process's
/// modules together. At a module's bound its series take at most about 2 MiB (names
/// and 8 labels of 128 bytes each, at worst), usually a few dozen KiB; past this the
/// cache is emptied and refills, one read per series, as samples come.
const MAX_KNOWN_BYTES: usize = 16 * 1024 * 1024;

/// What a sample costs in the cache besides its name and labels (map entries, an id).
const KNOWN_ENTRY_OVERHEAD: usize = 64;

/// Module metrics over the store: the sink every execution's samples go to, and the
/// queries of the API.
pub struct ModuleMetrics {
    store: Arc<dyn Store>,
    known: Mutex<KnownSeries>,
}

/// The ids of the series this process has written to, so that a sample of a known
/// series costs one write and no lookup. The database's uniqueness of (module, name,
/// labels) stays the truth across nodes; ids never change and are never reused, so a
/// remembered id is wrong only once its series was pruned, which the write reports.
#[derive(Debug, Default)]
struct KnownSeries {
    modules: HashMap<String, ModuleSeries>,
    bytes: usize,
}

#[derive(Debug, Default)]
struct ModuleSeries {
    /// Metric name, then labels text, to the series id.
    ids: HashMap<String, HashMap<String, i64>>,
    /// Until when new series of the module are refused without asking the database.
    full_until: Option<Instant>,
}

/// What the cache knows of a sample's series.
enum Known {
    Series(i64),
    /// The series is not known and the module was at its bound a moment ago.
    Full,
    Unknown,
}

impl KnownSeries {
    fn lookup(&self, module: &str, name: &str, labels: &str, now: Instant) -> Known {
        let Some(series) = self.modules.get(module) else {
            return Known::Unknown;
        };
        if let Some(id) = series.ids.get(name).and_then(|ids| ids.get(labels)) {
            return Known::Series(*id);
        }
        match series.full_until {
            Some(until) if now < until => Known::Full,
            _ => Known::Unknown,
        }
    }

    fn remember(&mut self, module: &str, name: &str, labels: &str, id: i64) {
        let cost = name.len() + labels.len() + KNOWN_ENTRY_OVERHEAD;
        if self.bytes + cost > MAX_KNOWN_BYTES {
            self.modules.clear();
            self.bytes = 0;
        }
        let series = self.modules.entry(module.to_owned()).or_default();
        let ids = series.ids.entry(name.to_owned()).or_default();
        if ids.insert(labels.to_owned(), id).is_none() {
            self.bytes += cost;
        }
    }

    fn mark_full(&mut self, module: &str, until: Instant) {
        self.modules
            .entry(module.to_owned())
            .or_default()
            .full_until = Some(until);
    }

    /// Forgets what is known of `module` (one of its series was pruned).
    fn forget(&mut self, module: &str) {
        if let Some(series) = self.modules.remove(module) {
            let freed: usize = series
                .ids
                .iter()
                .flat_map(|(name, ids)| ids.keys().map(move |l| name.len() + l.len()))
                .map(|bytes| bytes + KNOWN_ENTRY_OVERHEAD)
                .sum();
            self.bytes = self.bytes.saturating_sub(freed);
        }
    }
}

/// What the guest is told when a sample would start a series past the bound.
fn refusal(module: &str) -> String {
    format!(
        "module `{module}` has reached its bound of {MAX_SERIES_PER_MODULE} metric series: \
         samples of its existing series are recorded, a new metric name or label set is \
         not; use labels with few values"
    )
}

/// One module's metrics as listed: its summary and, when asked for one module, its
/// series.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ModuleListing {
    pub summary: ModuleMetricsSummary,
    pub series: Option<Vec<MetricSeries>>,
}

/// A series query: the points of the series of `module`'s metric `name` that carry
/// every label of `labels`, over `window`, each point the `agg` of its step's samples.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SeriesQuery {
    pub module: String,
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub window: Window,
    pub agg: Aggregate,
}

/// One series of an answer: its labels and a point for each step that has samples, in
/// order (a step without samples has no value, so no point).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SeriesPoints {
    pub labels: Labels,
    pub points: Vec<(Millis, f64)>,
}

impl ModuleMetrics {
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            known: Mutex::default(),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, KnownSeries> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `sample` of `module`: into its series if the series exists or the module
    /// may start it, otherwise refused (counted, and logged at most once a minute per
    /// module).
    async fn record_sample(
        &self,
        module: &str,
        sample: &MetricSample,
    ) -> Result<Recorded, ServiceError> {
        let labels = labels_text(&sample.labels.iter().cloned().collect());
        // A second round only when the series was pruned since this process wrote to it.
        for _ in 0..2 {
            let known = self
                .known()
                .lookup(module, &sample.name, &labels, Instant::now());
            let id = match known {
                Known::Series(id) => id,
                Known::Full => {
                    self.store
                        .count_refused_metric_sample(module, sample.ts_ms)
                        .await?;
                    return Ok(Recorded::Refused(refusal(module)));
                }
                Known::Unknown => {
                    let admission = self
                        .store
                        .admit_metric_series(
                            module,
                            &sample.name,
                            &labels,
                            sample.ts_ms,
                            MAX_SERIES_PER_MODULE,
                        )
                        .await?;
                    match admission {
                        SeriesAdmission::Admitted(id) => {
                            self.known().remember(module, &sample.name, &labels, id);
                            id
                        }
                        SeriesAdmission::Refused => {
                            self.known()
                                .mark_full(module, Instant::now() + FULL_RECHECK);
                            tracing::warn!(
                                module,
                                metric = %sample.name,
                                max_series = MAX_SERIES_PER_MODULE,
                                "a module reached its bound of metric series; samples that \
                                 would start a new series are refused and counted"
                            );
                            return Ok(Recorded::Refused(refusal(module)));
                        }
                    }
                }
            };
            if self
                .store
                .add_metric_samples(&[(id, sample.value, sample.ts_ms)])
                .await?
            {
                return Ok(Recorded::Stored);
            }
            self.known().forget(module);
        }
        Err(ServiceError::Internal(format!(
            "a series of module `{module}` vanished twice while a sample was recorded"
        )))
    }

    /// Every module with metric history, in brief; or `module` with its series (`module`
    /// must be installed or have metric history).
    pub(crate) async fn list(
        &self,
        module: Option<&str>,
    ) -> Result<Vec<ModuleListing>, ServiceError> {
        let summaries = self.store.metric_summaries(module).await?;
        let Some(module) = module else {
            return Ok(summaries
                .into_iter()
                .map(|summary| ModuleListing {
                    summary,
                    series: None,
                })
                .collect());
        };
        let summary = match summaries.into_iter().next() {
            Some(summary) => summary,
            None => self.installed_without_history(module).await?,
        };
        let series = self.store.metric_series(module, None).await?;
        Ok(vec![ModuleListing {
            summary,
            series: Some(series),
        }])
    }

    /// The empty summary of a module that has never recorded a metric, or a `400`
    /// naming `module` when no such module is installed either. A deleted module's
    /// history is kept, so a module with history is always known.
    async fn installed_without_history(
        &self,
        module: &str,
    ) -> Result<ModuleMetricsSummary, ServiceError> {
        if self.store.get_module(module).await?.is_none() {
            return Err(ServiceError::bad(
                "module",
                format!(
                    "no module `{module}` is installed or has recorded metrics; \
                     GET /api/v1/metrics lists those that have"
                ),
            ));
        }
        Ok(ModuleMetricsSummary {
            module: module.to_owned(),
            series: 0,
            refusals: Default::default(),
        })
    }

    /// The answer to `query`: each matching series with its points, by labels.
    pub(crate) async fn query(
        &self,
        query: &SeriesQuery,
    ) -> Result<Vec<SeriesPoints>, ServiceError> {
        let filter = label_filter(&query.labels)?;
        if self
            .store
            .metric_summaries(Some(&query.module))
            .await?
            .is_empty()
        {
            self.installed_without_history(&query.module).await?;
        }
        let series = self
            .store
            .metric_series(&query.module, Some(&query.name))
            .await?;
        if series.is_empty() {
            return Err(ServiceError::not_found("metric", query.name.clone()));
        }
        let matching: Vec<MetricSeries> = series
            .into_iter()
            .filter(|s| {
                filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        let window = query.window;
        let width = rollup_step_for(window.step);
        check_cost(matching.len() as i64, &window, width)?;
        let ids: Vec<i64> = matching.iter().map(|s| s.id).collect();
        let rollups = self
            .store
            .metric_rollups(&ids, width, window.from, window.to)
            .await?;
        let mut points = points_by_series(&rollups, &window, query.agg);
        Ok(matching
            .into_iter()
            .map(|s| SeriesPoints {
                points: points.remove(&s.id).unwrap_or_default(),
                labels: s.labels,
            })
            .collect())
    }
}

/// The label filter of a query, each key once.
fn label_filter(labels: &[(String, String)]) -> Result<HashMap<&str, &str>, ServiceError> {
    let mut filter = HashMap::new();
    for (key, value) in labels {
        if filter.insert(key.as_str(), value.as_str()).is_some() {
            return Err(ServiceError::bad(
                "label",
                format!("`{key}` is given twice; a series has one value per label"),
            ));
        }
    }
    Ok(filter)
}

/// Refuses a query that would read more than [`MAX_ROLLUPS_PER_QUERY`] rollups of
/// width `width` for `series` series, naming what to change: `step` when one series
/// alone is too much (a step of whole hours or days reads wider rollups), `label`
/// otherwise.
fn check_cost(series: i64, window: &Window, width: Millis) -> Result<(), ServiceError> {
    let per_series = window.points() * (window.step / width);
    let rollups = per_series.saturating_mul(series);
    if rollups <= MAX_ROLLUPS_PER_QUERY {
        return Ok(());
    }
    if per_series > MAX_ROLLUPS_PER_QUERY {
        return Err(ServiceError::bad(
            "step",
            format!(
                "`{}` over this window reads {per_series} rollups of {} a series, more than \
                 {MAX_ROLLUPS_PER_QUERY}; use a step of whole hours or days, or a shorter \
                 window",
                format_step(window.step),
                format_step(width)
            ),
        ));
    }
    Err(ServiceError::bad(
        "label",
        format!(
            "{series} series match, and each reads {per_series} rollups of {} over this \
             window: more than {MAX_ROLLUPS_PER_QUERY} in all; match fewer series with \
             label=key:value, use a longer step or a shorter window",
            format_step(width)
        ),
    ))
}

/// `rollups` (ordered by series and start) merged into the points of `window`, each the
/// `agg` of its step.
fn points_by_series(
    rollups: &[(i64, Millis, Rollup)],
    window: &Window,
    agg: Aggregate,
) -> HashMap<i64, Vec<(Millis, f64)>> {
    let mut points: HashMap<i64, Vec<(Millis, f64)>> = HashMap::new();
    let mut current: Option<(i64, Millis, Rollup)> = None;
    let mut flush = |(series, t, rollup): (i64, Millis, Rollup)| {
        points
            .entry(series)
            .or_default()
            .push((t, rollup.value(agg)));
    };
    for &(series, start, rollup) in rollups {
        let t = rollup_start(start, window.step);
        match &mut current {
            Some((s, p, merged)) if *s == series && *p == t => merged.merge(&rollup),
            _ => {
                if let Some(done) = current.replace((series, t, rollup)) {
                    flush(done);
                }
            }
        }
    }
    if let Some(done) = current {
        flush(done);
    }
    points
}

#[async_trait::async_trait]
impl MetricsSink for ModuleMetrics {
    async fn record(&self, module: &str, sample: MetricSample) -> Result<Recorded, BackendError> {
        self.record_sample(module, &sample)
            .await
            .map_err(|err| BackendError(err.to_string()))
    }
}

impl std::fmt::Debug for ModuleMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleMetrics").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::domain::window::{DAY, HOUR, MINUTE};
    use crate::store::SqliteStore;

    fn window(from: Millis, to: Millis, step: Millis) -> Window {
        Window { from, to, step }
    }

    #[test]
    fn rollups_fold_into_the_points_of_their_steps_series_by_series() {
        let rollups = [
            (1, 0, Rollup::of(1.0, 10)),
            (1, HOUR, Rollup::of(5.0, HOUR + 10)),
            (1, 3 * HOUR, Rollup::of(2.0, 3 * HOUR)),
            (2, 0, Rollup::of(7.0, 0)),
            (2, 2 * HOUR, Rollup::of(9.0, 2 * HOUR)),
        ];
        let w = window(0, 4 * HOUR, 2 * HOUR);
        let points = points_by_series(&rollups, &w, Aggregate::Sum);
        assert_eq!(points[&1], [(0, 6.0), (2 * HOUR, 2.0)]);
        assert_eq!(points[&2], [(0, 7.0), (2 * HOUR, 9.0)]);
        let last = points_by_series(&rollups, &w, Aggregate::Last);
        assert_eq!(last[&1], [(0, 5.0), (2 * HOUR, 2.0)]);
        let count = points_by_series(&rollups, &w, Aggregate::Count);
        assert_eq!(count[&1], [(0, 2.0), (2 * HOUR, 1.0)]);
    }

    #[test]
    fn a_query_reading_too_many_rollups_names_what_to_change() {
        let month = window(0, 30 * DAY, HOUR);
        assert!(check_cost(1, &month, HOUR).is_ok());
        assert!(check_cost(69, &month, HOUR).is_ok());
        let many = check_cost(70, &month, HOUR).unwrap_err();
        assert!(
            matches!(&many, ServiceError::BadField { field, .. } if field == "label"),
            "{many}"
        );
        let year = window(0, 365 * DAY, 90 * MINUTE);
        let fine = check_cost(1, &year, MINUTE).unwrap_err();
        assert!(
            matches!(&fine, ServiceError::BadField { field, .. } if field == "step"),
            "{fine}"
        );
        assert!(fine.to_string().contains("whole hours or days"), "{fine}");
    }

    #[test]
    fn the_cache_of_known_series_forgets_and_refills_within_its_bound() {
        let mut known = KnownSeries::default();
        let now = Instant::now();
        known.remember("m", "latency", "{}", 7);
        assert!(matches!(
            known.lookup("m", "latency", "{}", now),
            Known::Series(7)
        ));
        assert!(matches!(
            known.lookup("m", "other", "{}", now),
            Known::Unknown
        ));
        known.mark_full("m", now + FULL_RECHECK);
        assert!(matches!(known.lookup("m", "other", "{}", now), Known::Full));
        assert!(matches!(
            known.lookup("m", "latency", "{}", now),
            Known::Series(7)
        ));
        assert!(matches!(
            known.lookup("m", "other", "{}", now + FULL_RECHECK),
            Known::Unknown
        ));
        known.forget("m");
        assert_eq!(known.bytes, 0);
        let labels = "x".repeat(1024 * 1024);
        for id in 0..20 {
            known.remember("m", &format!("n{id}"), &labels, id);
            assert!(known.bytes <= MAX_KNOWN_BYTES);
        }
        assert!(matches!(
            known.lookup("m", "n19", &labels, now),
            Known::Series(19)
        ));
        assert!(matches!(
            known.lookup("m", "n0", &labels, now),
            Known::Unknown
        ));
    }

    /// Series in the generated history, and how many days of it.
    const SERIES: usize = 10;
    const HISTORY_DAYS: i64 = 60;

    /// `SERIES` series of one sample a minute for `HISTORY_DAYS` days up to `end`,
    /// written through the store as the sink writes them, in batches.
    async fn generate_history(store: &dyn Store, end: Millis) -> Vec<i64> {
        let mut ids = Vec::new();
        for n in 0..SERIES {
            let labels = labels_text(&[("n".to_owned(), n.to_string())].into());
            match store
                .admit_metric_series("bench", "latency", &labels, end, MAX_SERIES_PER_MODULE)
                .await
                .unwrap()
            {
                SeriesAdmission::Admitted(id) => ids.push(id),
                SeriesAdmission::Refused => panic!("refused"),
            }
        }
        let start = end - HISTORY_DAYS * DAY;
        let mut batch = Vec::new();
        let mut t = start;
        while t < end {
            for (n, id) in ids.iter().enumerate() {
                batch.push((*id, ((t / MINUTE) % 97 + n as i64) as f64, t + 7));
            }
            if batch.len() >= 2_000 {
                assert!(store.add_metric_samples(&batch).await.unwrap());
                batch.clear();
            }
            t += MINUTE;
        }
        assert!(store.add_metric_samples(&batch).await.unwrap());
        ids
    }

    /// p50 and p99 of `runs` runs of `query`, in milliseconds.
    async fn percentiles<F: Future<Output = ()>>(
        runs: usize,
        mut query: impl FnMut() -> F,
    ) -> (f64, f64) {
        let mut took = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            query().await;
            took.push(started.elapsed().as_secs_f64() * 1_000.0);
        }
        took.sort_by(f64::total_cmp);
        (took[runs / 2], took[runs * 99 / 100 - 1])
    }

    async fn a_30_day_query_at_1h_steps(store: Arc<dyn Store>, backend: &str) {
        let end = crate::domain::now_millis();
        let started = Instant::now();
        let ids = generate_history(&*store, end).await;
        println!(
            "{backend}: {SERIES} series x {HISTORY_DAYS} days of a sample a minute written in {:?}",
            started.elapsed()
        );
        let metrics = ModuleMetrics::new(store.clone());
        let query = |labels: Vec<(String, String)>| SeriesQuery {
            module: "bench".to_owned(),
            name: "latency".to_owned(),
            labels,
            window: Window::parse(
                Some(&(end - 30 * DAY).to_string()),
                Some(&end.to_string()),
                Some("1h"),
                end,
            )
            .unwrap(),
            agg: Aggregate::Avg,
        };
        let one = query(vec![("n".to_owned(), "3".to_owned())]);
        let all = query(Vec::new());
        let answer = metrics.query(&one).await.unwrap();
        assert_eq!(answer.len(), 1);
        assert!(
            (720..=721).contains(&answer[0].points.len()),
            "{}",
            answer[0].points.len()
        );
        let (p50, p99) = percentiles(100, || async {
            metrics.query(&one).await.unwrap();
        })
        .await;
        println!(
            "{backend}: one series, 30 days at 1h (hour rollups): p50 {p50:.2} ms, p99 {p99:.2} ms"
        );
        let (p50, p99) = percentiles(100, || async {
            assert_eq!(metrics.query(&all).await.unwrap().len(), SERIES);
        })
        .await;
        println!(
            "{backend}: all {SERIES} series, 30 days at 1h (hour rollups): p50 {p50:.2} ms, p99 {p99:.2} ms"
        );
        // A week at 5-minute steps for every series: 100,800 minute rollups, more than
        // a query may read; what reading them would cost.
        let week = Window::parse(
            Some(&(end - 7 * DAY).to_string()),
            Some(&end.to_string()),
            Some("5m"),
            end,
        )
        .unwrap();
        assert!(check_cost(SERIES as i64, &week, MINUTE).is_err());
        let (p50, p99) = percentiles(20, || async {
            let rollups = store
                .metric_rollups(&ids, MINUTE, week.from, week.to)
                .await
                .unwrap();
            assert_eq!(
                points_by_series(&rollups, &week, Aggregate::Avg).len(),
                SERIES
            );
        })
        .await;
        println!(
            "{backend}: all {SERIES} series, 7 days at 5m (minute rollups, {} rows): p50 {p50:.2} ms, p99 {p99:.2} ms",
            SERIES * 7 * 1440
        );
        // The same answer from minute rollups alone, as it would be without wider ones.
        let w = one.window;
        let (p50, p99) = percentiles(100, || async {
            let rollups = store
                .metric_rollups(&ids[3..4], MINUTE, w.from, w.to)
                .await
                .unwrap();
            let points = points_by_series(&rollups, &w, Aggregate::Avg);
            assert!(points[&ids[3]].len() >= 720);
        })
        .await;
        println!(
            "{backend}: one series, 30 days at 1h (minute rollups): p50 {p50:.2} ms, p99 {p99:.2} ms"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement; run with --release -- --ignored --nocapture"]
    async fn a_30_day_query_at_1h_steps_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("runcell.db"))
            .await
            .unwrap();
        a_30_day_query_at_1h_steps(Arc::new(store), "sqlite").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement; run with --release -- --ignored --nocapture"]
    async fn a_30_day_query_at_1h_steps_on_postgres() {
        let (store, _database) = crate::store::tests::fresh_postgres().await;
        a_30_day_query_at_1h_steps(Arc::new(store), "postgres").await;
    }
}
