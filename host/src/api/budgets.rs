//! `/api/v1/modules/{name}/budgets`: a module's consumption budgets, replaced as a whole
//! by an admin and read with their current windows by anyone signed in.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use super::openapi;
use crate::domain::budget::{Budget, BudgetAction, BudgetMetric, BudgetPeriod, BudgetStatus};
use crate::domain::{Millis, Page, Principal};
use crate::services::ServiceError;

const TAG: &str = "budgets";

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    openapi::tagged(
        TAG,
        "Caps on how much a module may use per UTC hour or day, across every node: runs, \
         fuel, outbound requests (to one host pattern or all). An `enforce` budget refuses \
         what would pass it; an `alert` budget is only watched.",
    )
    .routes(routes!(list, replace))
}

/// A budget as a client sends it. `metric`, `per` and `action` are checked by the
/// server, so that a value it does not know is named in a `422` like any other.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = BudgetInput)]
struct BudgetInput {
    /// `runs`, `fuel` or `outboundRequests`.
    metric: String,
    /// For `outboundRequests` only: a host pattern as in outbound grants
    /// (`api.example.com`, `*.example.com`, `host:8443`); absent counts every host.
    #[serde(default)]
    host: Option<String>,
    /// `hour` or `day`: the UTC calendar window counted in.
    per: String,
    /// The most one window may use; a positive integer.
    limit: u64,
    /// `enforce` refuses past the limit; `alert` only watches.
    action: String,
}

impl BudgetInput {
    fn into_budget(self, index: usize) -> Result<Budget, ServiceError> {
        let unknown = |field: &str, value: &str, known: &str| {
            ServiceError::unprocessable(
                format!("[{index}].{field}"),
                format!("unknown {field} `{value}`; one of {known}"),
            )
        };
        Ok(Budget {
            metric: BudgetMetric::parse(&self.metric)
                .ok_or_else(|| unknown("metric", &self.metric, "runs, fuel, outboundRequests"))?,
            per: BudgetPeriod::parse(&self.per)
                .ok_or_else(|| unknown("per", &self.per, "hour, day"))?,
            action: BudgetAction::parse(&self.action)
                .ok_or_else(|| unknown("action", &self.action, "alert, enforce"))?,
            host: self.host,
            limit: self.limit,
        })
    }
}

/// A budget and its current window.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ModuleBudget)]
struct BudgetView {
    #[serde(flatten)]
    budget: Budget,
    window: WindowView,
}

/// What a budget's current window used.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = BudgetWindow)]
struct WindowView {
    /// Milliseconds since the Unix epoch.
    #[schema(value_type = i64)]
    start: Millis,
    /// Milliseconds since the Unix epoch; the next window starts here.
    #[schema(value_type = i64)]
    end: Millis,
    used: u64,
    limit: u64,
    /// `used / limit`: 1 and above is used up.
    ratio: f64,
    /// When the budget is available again, while it is used up (an `enforce` budget
    /// refuses until then); `null` otherwise.
    #[schema(value_type = Option<i64>)]
    exhausted_until: Option<Millis>,
}

impl From<BudgetStatus> for BudgetView {
    fn from(status: BudgetStatus) -> Self {
        Self {
            window: WindowView {
                start: status.window_start,
                end: status.window_end,
                used: status.used,
                limit: status.budget.limit,
                ratio: status.ratio(),
                exhausted_until: status.exhausted_until(),
            },
            budget: status.budget,
        }
    }
}

fn page(statuses: Vec<BudgetStatus>) -> Page<BudgetView> {
    Page {
        items: statuses.into_iter().map(BudgetView::from).collect(),
        next_cursor: None,
    }
}

/// List a module's budgets
///
/// Each budget with its current window: how much of it is used and, while it is used up,
/// until when. One page holds them all.
#[utoipa::path(
    get,
    path = "/modules/{name}/budgets",
    tag = TAG,
    operation_id = "listModuleBudgets",
    params(("name" = String, Path, description = "The module's name.")),
    responses(
        (status = 200, description = "The module's budgets.", body = Page<BudgetView>),
        (status = 404, description = "No module by that name.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn list(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Page<BudgetView>>, ApiError> {
    Ok(Json(page(state.services.module_budgets(&name).await?)))
}

/// Replace a module's budgets
///
/// The list given becomes the module's budgets (`[]` removes them all). What the current
/// windows counted so far stays: a limit lowered below it refuses at once. Every node
/// applies the change within a second or so. Admins only; recorded in the audit trail.
#[utoipa::path(
    put,
    path = "/modules/{name}/budgets",
    tag = TAG,
    operation_id = "replaceModuleBudgets",
    params(("name" = String, Path, description = "The module's name.")),
    request_body = Vec<BudgetInput>,
    responses(
        (status = 200, description = "The module's budgets, as they now are.", body = Page<BudgetView>),
        (status = 400, description = "Not a JSON list of budgets, or a field of the wrong type or unknown.", body = ErrorBody),
        (status = 403, description = "Not an admin.", body = ErrorBody),
        (status = 404, description = "No module by that name.", body = ErrorBody),
        (status = 422, description = "An unknown metric, window or action, a limit of 0, a host on a budget other than `outboundRequests`, or two budgets counting the same thing; `field` names it.", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry later.", body = ErrorBody),
    ),
)]
async fn replace(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    ApiJson(inputs): ApiJson<Vec<BudgetInput>>,
) -> Result<Json<Page<BudgetView>>, ApiError> {
    let budgets = inputs
        .into_iter()
        .enumerate()
        .map(|(index, input)| input.into_budget(index))
        .collect::<Result<Vec<_>, _>>()?;
    let statuses = state.services.set_module_budgets(&name, budgets).await?;
    let set: Vec<&Budget> = statuses.iter().map(|status| &status.budget).collect();
    state
        .auth
        .audit(
            &principal.actor(),
            "module.budgets.set",
            &name,
            json!({ "budgets": set }),
        )
        .await;
    Ok(Json(page(statuses)))
}
