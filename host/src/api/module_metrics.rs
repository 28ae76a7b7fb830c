//! `/api/v1/metrics`: what modules record through the `metrics` import, listed by
//! module and read back as series of points.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{Params, WindowRequest};
use super::openapi;
use crate::domain::Millis;
use crate::domain::metrics::{Aggregate, Labels, MetricSeries, parse_label_filter};
use crate::services::metrics::{MAX_SERIES_PER_MODULE, ModuleListing, SeriesPoints, SeriesQuery};

const TAG: &str = "metrics";

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    openapi::tagged(
        TAG,
        "What modules measure: each metric a module records, per set of labels, as a \
         series kept in minute, hour and day rollups.",
    )
    .routes(routes!(list))
    .routes(routes!(series))
}

/// A module's metric history in brief, with its series when one module was asked for.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ModuleMetricsView {
    module: String,
    /// Series the module has (a series: one metric with one set of labels).
    series_count: i64,
    /// The most series a module may have: a sample that would start another is refused
    /// (the module's `observe` gets `rate-limited`) and counted here.
    max_series: u32,
    /// Samples refused so far because they would have started a series past the bound.
    refused_samples: i64,
    /// When the last of those was refused, in milliseconds since the Unix epoch.
    last_refused_at: Option<Millis>,
    /// Only when `module` names one: its metrics, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<Vec<MetricView>>,
}

/// One metric of a module and its series.
#[derive(Debug, Serialize, ToSchema)]
struct MetricView {
    name: String,
    /// By labels.
    series: Vec<SeriesView>,
}

/// One series: a metric with one set of labels.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct SeriesView {
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    labels: Labels,
    /// When its first sample was recorded.
    created_at: Millis,
    /// The latest sample's value; `null` once its history was pruned.
    last_value: Option<f64>,
    /// The latest sample's time, in milliseconds since the Unix epoch.
    last_at: Option<Millis>,
}

#[derive(Debug, Serialize, ToSchema)]
struct MetricsListing {
    items: Vec<ModuleMetricsView>,
}

impl From<ModuleListing> for ModuleMetricsView {
    fn from(listing: ModuleListing) -> Self {
        let summary = listing.summary;
        Self {
            module: summary.module,
            series_count: summary.series,
            max_series: MAX_SERIES_PER_MODULE,
            refused_samples: summary.refusals.samples,
            last_refused_at: summary.refusals.last_at,
            metrics: listing.series.map(by_metric),
        }
    }
}

/// `series` (ordered by name) grouped by metric.
fn by_metric(series: Vec<MetricSeries>) -> Vec<MetricView> {
    let mut metrics: Vec<MetricView> = Vec::new();
    for s in series {
        let view = SeriesView {
            labels: s.labels,
            created_at: s.created_at,
            last_value: s.last.map(|(value, _)| value),
            last_at: s.last.map(|(_, at)| at),
        };
        match metrics.last_mut() {
            Some(metric) if metric.name == s.name => metric.series.push(view),
            _ => metrics.push(MetricView {
                name: s.name,
                series: vec![view],
            }),
        }
    }
    metrics
}

/// List module metrics
///
/// Without `module`: every module that has recorded metrics, in brief (series, refused
/// samples). With `module`: that module, with each of its metrics, their series (label
/// sets) and each series' latest value. A module keeps its metric history when it is
/// deleted.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = TAG,
    operation_id = "listMetrics",
    params(
        ("module" = Option<String>, Query, description = "Only this module, with its series. It must be installed or have recorded metrics."),
    ),
    responses(
        (status = 200, description = "The modules, by name.", body = MetricsListing),
        (status = 400, description = "`module` names no module that is installed or has recorded metrics.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn list(
    State(state): State<ApiState>,
    params: Params,
) -> Result<Json<MetricsListing>, ApiError> {
    let listings = state.services.metrics.list(params.text("module")).await?;
    Ok(Json(MetricsListing {
        items: listings.into_iter().map(ModuleMetricsView::from).collect(),
    }))
}

/// One point: the aggregate of the samples of one step.
#[derive(Debug, Serialize, ToSchema)]
struct Point {
    /// The start of the step, in milliseconds since the Unix epoch.
    t: Millis,
    value: f64,
}

/// One series of an answer.
#[derive(Debug, Serialize, ToSchema)]
struct PointsView {
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    labels: Labels,
    /// A point for each step that has samples, oldest first; a step without samples
    /// has none.
    points: Vec<Point>,
}

/// The points of a metric's series.
#[derive(Debug, Serialize, ToSchema)]
struct SeriesAnswer {
    module: String,
    name: String,
    agg: Aggregate,
    /// The window, rounded out to whole steps: `[from, to)`, in milliseconds since the
    /// Unix epoch.
    from: Millis,
    to: Millis,
    /// Milliseconds.
    step: Millis,
    /// Every series of the metric that has all the labels asked for, by labels.
    series: Vec<PointsView>,
}

/// Read a metric's series
///
/// The points of every series of metric `name` of `module` that carries each label
/// asked for with `label` (all of them, whatever other labels it has), from `from` to
/// `to` in steps of `step`; each point is `agg` of the samples of its step. A query
/// that would read too much is refused, naming what to change (`step` or `label`).
#[utoipa::path(
    get,
    path = "/metrics/{name}/series",
    tag = TAG,
    operation_id = "getMetricSeries",
    params(
        ("name" = String, Path, description = "The metric's name."),
        ("module" = String, Query, description = "The module that records it."),
        ("label" = Option<Vec<String>>, Query, style = Form, explode, description = "Only series with this label, as `key:value` (split at the first `:`); repeat for several (`label=region:eu&label=env:prod`)."),
        WindowRequest,
        ("agg" = Option<Aggregate>, Query, description = "What a point says of its step's samples (default `avg`)."),
    ),
    responses(
        (status = 200, description = "The series and their points.", body = SeriesAnswer),
        (status = 400, description = "A missing or unknown `module`, a malformed `label`, `from`, `to`, `step` or `agg`, a window backwards, or a query that would read too much; `details.field` names the parameter.", body = ErrorBody),
        (status = 404, description = "The module has no metric of that name.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn series(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    params: Params,
) -> Result<Json<SeriesAnswer>, ApiError> {
    let query = series_query(name, &params)?;
    let series = state.services.metrics.query(&query).await?;
    Ok(Json(SeriesAnswer {
        module: query.module,
        name: query.name,
        agg: query.agg,
        from: query.window.from,
        to: query.window.to,
        step: query.window.step,
        series: series.into_iter().map(points_view).collect(),
    }))
}

fn points_view(series: SeriesPoints) -> PointsView {
    PointsView {
        labels: series.labels,
        points: series
            .points
            .into_iter()
            .map(|(t, value)| Point { t, value })
            .collect(),
    }
}

/// The query `params` ask of metric `name`.
fn series_query(name: String, params: &Params) -> Result<SeriesQuery, ApiError> {
    let module = params.text("module").ok_or_else(|| {
        ApiError::field(
            ErrorCode::InvalidField,
            "module",
            "module: missing; name the module that records the metric (module=...)",
        )
    })?;
    let labels = params
        .repeated("label")
        .map(|text| {
            parse_label_filter(text).map_err(|message| {
                ApiError::field(
                    ErrorCode::InvalidField,
                    "label",
                    format!("label: {message}"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let agg = match params.text("agg") {
        None => Aggregate::Avg,
        Some(text) => Aggregate::parse(text).ok_or_else(|| {
            let allowed: Vec<&str> = Aggregate::ALL.iter().map(|a| a.as_str()).collect();
            ApiError::field(
                ErrorCode::InvalidField,
                "agg",
                format!(
                    "agg: `{text}` is not an aggregate; use one of {}",
                    allowed.join(", ")
                ),
            )
            .with_detail("allowed", allowed)
        })?,
    };
    Ok(SeriesQuery {
        module: module.to_owned(),
        name,
        labels,
        window: params.window()?,
        agg,
    })
}
