//! The consumption monitor's questions: what runs consumed over time, per module or job
//! (series), in total over a window (the consumption report), and how hard each module
//! drives each outbound host. Everything comes from the usage rollups the record path
//! writes (see `store/shared/usage.rs`), never from executions, so an answer costs the
//! same however long the deployment has run and outlives retention.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use super::{ServiceError, Services};
use crate::domain::Millis;
use crate::domain::usage::{
    OutboundRow, OutboundTally, RouteOutbound, RunTotals, UsageQuery, UsageRow,
};
use crate::domain::window::{DAY, HOUR, MINUTE, Window, rollup_step_for, round_up};

/// What a usage question selects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UsageFilter {
    pub module: Option<String>,
    pub job_id: Option<String>,
    pub host: Option<String>,
    /// One group per job instead of per module.
    pub by_job: bool,
}

impl UsageFilter {
    /// The rollups this filter selects in `[from, to)` at the rollup step `tier`, cut
    /// into points of `step` (`None`: one total per group).
    fn query(&self, from: Millis, to: Millis, step: Option<Millis>, tier: Millis) -> UsageQuery {
        UsageQuery {
            from,
            to,
            step,
            tier,
            module: self.module.clone(),
            job_id: self.job_id.clone(),
            host: self.host.clone(),
            by_job: self.by_job,
        }
    }

    /// The rollups this filter selects over `window`, at the coarsest step that serves it.
    fn over(&self, window: &Window) -> UsageQuery {
        self.query(
            window.from,
            window.to,
            Some(window.step),
            rollup_step_for(window.step),
        )
    }
}

/// One group's runs at every point of a window, oldest first, a point without runs
/// included as zeros.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UsageSeries {
    pub module: String,
    pub job_id: Option<String>,
    pub job: Option<String>,
    pub points: Vec<(Millis, RunTotals)>,
}

/// One module's requests to one host at every point of a window.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OutboundSeries {
    pub module: String,
    pub host: String,
    pub points: Vec<(Millis, OutboundTally)>,
}

/// `[from, to)` (whole minutes) as the fewest rollup reads that cover it exactly: minute
/// rows up to the first whole hour, hour rows up to the first whole day, day rows for
/// the whole days, and back down at the other end. A month's report reads about 30 day
/// rows per job, not 43,200 minute rows.
fn segments(from: Millis, to: Millis) -> Vec<(Millis, Millis, Millis)> {
    let mut segments = Vec::new();
    let mut at = from;
    for tier in [MINUTE, HOUR] {
        let next = round_up(at, tier * if tier == MINUTE { 60 } else { 24 });
        if at < next.min(to) {
            segments.push((at, next.min(to), tier));
            at = next.min(to);
        }
    }
    let whole_days_end = to - to.rem_euclid(DAY);
    if at < whole_days_end {
        segments.push((at, whole_days_end, DAY));
        at = whole_days_end;
    }
    let whole_hours_end = to - to.rem_euclid(HOUR);
    if at < whole_hours_end {
        segments.push((at, whole_hours_end, HOUR));
        at = whole_hours_end;
    }
    if at < to {
        segments.push((at, to, MINUTE));
    }
    segments
}

impl Services {
    /// Runs over `window`, one series per module (or job), every point present.
    pub(crate) async fn usage_series(
        &self,
        window: &Window,
        filter: &UsageFilter,
    ) -> Result<Vec<UsageSeries>, ServiceError> {
        let rows = self.store.usage_runs(&filter.over(window)).await?;
        self.check_known(filter, rows.is_empty()).await?;
        let mut series: Vec<UsageSeries> = Vec::new();
        for row in rows {
            let same_group = series
                .last()
                .is_some_and(|s| s.module == row.module && s.job_id == row.job_id);
            if !same_group {
                series.push(UsageSeries {
                    module: row.module.clone(),
                    job_id: row.job_id.clone(),
                    job: row.job.clone(),
                    points: Vec::new(),
                });
            }
            if let (Some(last), Some(t)) = (series.last_mut(), row.t) {
                last.points.push((t, row.totals));
            }
        }
        for one in &mut series {
            one.points = dense(window, std::mem::take(&mut one.points));
        }
        Ok(series)
    }

    /// Runs over `[from, to)` in total, one row per module (or job), unsorted.
    pub(crate) async fn usage_totals(
        &self,
        from: Millis,
        to: Millis,
        filter: &UsageFilter,
    ) -> Result<Vec<UsageRow>, ServiceError> {
        let mut totals: BTreeMap<(String, Option<String>), UsageRow> = BTreeMap::new();
        for (from, to, tier) in segments(from, to) {
            for row in self
                .store
                .usage_runs(&filter.query(from, to, None, tier))
                .await?
            {
                match totals.entry((row.module.clone(), row.job_id.clone())) {
                    std::collections::btree_map::Entry::Occupied(mut entry) => {
                        entry.get_mut().totals.merge(&row.totals);
                    }
                    std::collections::btree_map::Entry::Vacant(entry) => {
                        entry.insert(row);
                    }
                }
            }
        }
        self.check_known(filter, totals.is_empty()).await?;
        Ok(totals.into_values().collect())
    }

    /// Outbound requests over `[from, to)` (whole minutes) in total, over every module
    /// and host the filter selects.
    pub(crate) async fn outbound_totals(
        &self,
        from: Millis,
        to: Millis,
        filter: &UsageFilter,
    ) -> Result<OutboundTally, ServiceError> {
        let mut total = OutboundTally::default();
        for (from, to, tier) in segments(from, to) {
            for row in self
                .store
                .usage_outbound(&filter.query(from, to, None, tier))
                .await?
            {
                total.absorb(&row.totals);
            }
        }
        Ok(total)
    }

    /// Outbound requests over `window`, one series per module and host.
    pub(crate) async fn outbound_series(
        &self,
        window: &Window,
        filter: &UsageFilter,
    ) -> Result<Vec<OutboundSeries>, ServiceError> {
        let rows: Vec<OutboundRow> = self.store.usage_outbound(&filter.over(window)).await?;
        self.check_known(filter, rows.is_empty()).await?;
        let mut series: Vec<OutboundSeries> = Vec::new();
        for row in rows {
            let same = series
                .last()
                .is_some_and(|s| s.module == row.module && s.host == row.totals.host);
            if !same {
                series.push(OutboundSeries {
                    module: row.module.clone(),
                    host: row.totals.host.clone(),
                    points: Vec::new(),
                });
            }
            if let (Some(last), Some(t)) = (series.last_mut(), row.t) {
                last.points.push((t, row.totals));
            }
        }
        for one in &mut series {
            let host = one.host.clone();
            one.points = dense_with(window, std::mem::take(&mut one.points), || {
                OutboundTally::new(&host)
            });
        }
        Ok(series)
    }

    /// When a question named a module or job and found nothing, whether it exists at
    /// all: a name that never had a run and is not installed is a mistake to report, not
    /// an empty answer. (A deleted module or job keeps its history, so it is looked up
    /// only when there is none.)
    async fn check_known(
        &self,
        filter: &UsageFilter,
        found_nothing: bool,
    ) -> Result<(), ServiceError> {
        if !found_nothing {
            return Ok(());
        }
        if let Some(module) = &filter.module
            && self.store.get_module(module).await?.is_none()
        {
            return Err(ServiceError::bad(
                "module",
                format!("no module `{module}` is installed or has recorded usage"),
            ));
        }
        if let Some(job_id) = &filter.job_id
            && self.store.get_job(job_id).await?.is_none()
        {
            return Err(ServiceError::bad(
                "jobId",
                format!("no job `{job_id}` exists or has recorded usage"),
            ));
        }
        Ok(())
    }
}

/// `points` with a zero point at every step of `window` that has none.
fn dense(window: &Window, points: Vec<(Millis, RunTotals)>) -> Vec<(Millis, RunTotals)> {
    dense_with(window, points, RunTotals::default)
}

fn dense_with<T>(
    window: &Window,
    points: Vec<(Millis, T)>,
    zero: impl Fn() -> T,
) -> Vec<(Millis, T)> {
    let mut given = points.into_iter().peekable();
    let mut all = Vec::with_capacity(usize::try_from(window.points()).unwrap_or(0));
    let mut t = window.from;
    while t < window.to {
        match given.peek() {
            Some((at, _)) if *at == t => {
                if let Some(point) = given.next() {
                    all.push(point);
                }
            }
            _ => all.push((t, zero())),
        }
        t += window.step;
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_covered_exactly_by_few_segments() {
        let day0 = 20_000 * DAY;
        let from = day0 + 5 * HOUR + 7 * MINUTE;
        let to = day0 + 3 * DAY + 2 * HOUR + 9 * MINUTE;
        let got = segments(from, to);
        assert_eq!(
            got,
            vec![
                (from, day0 + 6 * HOUR, MINUTE),
                (day0 + 6 * HOUR, day0 + DAY, HOUR),
                (day0 + DAY, day0 + 3 * DAY, DAY),
                (day0 + 3 * DAY, day0 + 3 * DAY + 2 * HOUR, HOUR),
                (day0 + 3 * DAY + 2 * HOUR, to, MINUTE),
            ]
        );
        // Contiguous, each aligned to its tier.
        for pair in got.windows(2) {
            assert_eq!(pair[0].1, pair[1].0);
        }
        for (a, b, tier) in &got {
            assert_eq!(a % tier, 0, "{a}");
            assert_eq!(b % tier, 0, "{b}");
        }
        // Within one hour: minutes only.
        assert_eq!(
            segments(day0 + MINUTE, day0 + 5 * MINUTE),
            vec![(day0 + MINUTE, day0 + 5 * MINUTE, MINUTE)]
        );
        // Whole days: days only.
        assert_eq!(
            segments(day0, day0 + 2 * DAY),
            vec![(day0, day0 + 2 * DAY, DAY)]
        );
    }

    #[test]
    fn missing_points_are_zeros() {
        let window = Window {
            from: 0,
            to: 4 * MINUTE,
            step: MINUTE,
        };
        let one = RunTotals {
            runs: 3,
            ..RunTotals::default()
        };
        let got = dense(&window, vec![(MINUTE, one.clone())]);
        let runs: Vec<(Millis, i64)> = got.iter().map(|(t, p)| (*t, p.runs)).collect();
        assert_eq!(
            runs,
            vec![(0, 0), (MINUTE, 3), (2 * MINUTE, 0), (3 * MINUTE, 0)]
        );
    }
}

/// How often the outbound requests of module routes are counted. A route has no
/// execution to be recorded with, and writing once per request would put a write on
/// every proxied call; a second's worth is merged per module, host and minute into a
/// few rows instead. What a crash loses is that second (the requests stay in the server
/// log and in `/metrics`, which counts them at once).
pub(crate) const ROUTE_OUTBOUND_FLUSH: Duration = Duration::from_secs(1);

/// Outbound requests of module routes, merged per (module, minute) and host, waiting
/// to be counted.
#[derive(Debug, Default)]
pub(crate) struct PendingRouteOutbound {
    pending: Mutex<BTreeMap<(String, Millis), BTreeMap<String, OutboundTally>>>,
}

impl PendingRouteOutbound {
    /// Adds the requests one route request of `module` made, ended at `at`.
    pub(crate) fn add(&self, module: &str, at: Millis, tallies: &[OutboundTally]) {
        if tallies.is_empty() {
            return;
        }
        let minute = at - at.rem_euclid(MINUTE);
        let mut pending = self.pending.lock().expect("route outbound lock");
        let hosts = pending.entry((module.to_owned(), minute)).or_default();
        for tally in tallies {
            hosts
                .entry(tally.host.clone())
                .or_insert_with(|| OutboundTally::new(&tally.host))
                .absorb(tally);
        }
    }

    /// Everything waiting, leaving nothing.
    fn take(&self) -> Vec<RouteOutbound> {
        let pending = std::mem::take(&mut *self.pending.lock().expect("route outbound lock"));
        pending
            .into_iter()
            .map(|((module, minute), hosts)| RouteOutbound {
                module,
                minute,
                tallies: hosts.into_values().collect(),
            })
            .collect()
    }

    /// Puts back what could not be counted, to go with the next flush.
    fn restore(&self, requests: Vec<RouteOutbound>) {
        for minute in requests {
            self.add(&minute.module, minute.minute, &minute.tallies);
        }
    }
}

impl Services {
    /// Counts the route requests waiting in the rollups; on failure they wait for the
    /// next flush.
    pub(crate) async fn flush_route_outbound(&self) {
        let requests = self.route_outbound.take();
        if requests.is_empty() {
            return;
        }
        if let Err(err) = self.store.count_route_outbound(&requests).await {
            tracing::warn!(error = %err, "counting module routes' outbound requests failed; retrying with the next flush");
            self.route_outbound.restore(requests);
        }
    }
}

/// Counts module routes' outbound requests every [`ROUTE_OUTBOUND_FLUSH`] until `stop`
/// turns true, then once more. Started by `app`.
pub(crate) async fn count_route_outbound(services: Services, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(ROUTE_OUTBOUND_FLUSH) => services.flush_route_outbound().await,
            _ = stop.changed() => break,
        }
    }
    services.flush_route_outbound().await;
}
