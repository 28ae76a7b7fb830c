//! Consumption budgets of modules: setting them (admins), reading each one's current
//! window, and counting what they cap, on every node through the database's counters.
//!
//! A module's budgets travel with its record, so the catalog hands each node the current
//! list with the module's code ([`super::modules::Runnable::budgets`]) and a change
//! reaches every node as any change of a module does, within the catalog's time to live.
//! A module without budgets costs nothing: the worker and the request path test one
//! `Option`.
//!
//! Every budget is counted, `alert` and `enforce` alike; only an `enforce` budget refuses.
//! Runs are counted when a run starts, outbound requests before they are sent, fuel when
//! a run's result is recorded (it is known only then), so a run starts only while its
//! window's fuel is below the limit and the run that crosses it finishes.

use std::sync::Arc;

use super::{ServiceError, Services};
use crate::domain::budget::{
    Budget, BudgetAction, BudgetCounter, BudgetMetric, BudgetStatus, Exhausted, check_budgets,
};
use crate::domain::{HostName, Millis, now_millis};
use crate::runtime::{BudgetRefusal, OutboundBudget};
use crate::store::{Store, StoreError};

/// The budgets of one module, sorted by what each counts, as runs and requests consult
/// them.
#[derive(Debug)]
pub(crate) struct ModuleBudgets {
    module: String,
    /// Runs budgets (charged one run each) and enforced fuel budgets (checked).
    at_start: Vec<Budget>,
    /// Every fuel budget: added to when a run's result is recorded.
    fuel: Vec<Budget>,
    /// Every outbound requests budget.
    outbound: Vec<Budget>,
}

impl ModuleBudgets {
    /// The budgets of `module` as its runs consult them; `None` when it has none.
    pub(crate) fn of(module: &str, budgets: &[Budget]) -> Option<Arc<Self>> {
        if budgets.is_empty() {
            return None;
        }
        let with =
            |keep: fn(&Budget) -> bool| budgets.iter().filter(|b| keep(b)).cloned().collect();
        Some(Arc::new(Self {
            module: module.to_owned(),
            at_start: with(|b| {
                b.metric == BudgetMetric::Runs
                    || (b.metric == BudgetMetric::Fuel && b.action == BudgetAction::Enforce)
            }),
            fuel: with(|b| b.metric == BudgetMetric::Fuel),
            outbound: with(|b| b.metric == BudgetMetric::OutboundRequests),
        }))
    }

    /// The runtime's port for this module's outbound requests; `None` when no budget
    /// counts them.
    pub(crate) fn outbound_port(
        self: &Arc<Self>,
        store: &Arc<dyn Store>,
    ) -> Option<Arc<dyn OutboundBudget>> {
        (!self.outbound.is_empty()).then(|| {
            Arc::new(StoreOutboundBudget {
                store: store.clone(),
                budgets: self.clone(),
            }) as Arc<dyn OutboundBudget>
        })
    }

    /// Counts a run about to start at `now`: refused when an enforced runs budget is
    /// used up, or an enforced fuel budget's window already reached its limit.
    pub(crate) async fn admit_run(
        &self,
        store: &dyn Store,
        now: Millis,
    ) -> Result<Result<(), Exhausted>, StoreError> {
        let charges: Vec<(BudgetCounter, i64)> = self
            .at_start
            .iter()
            .map(|budget| {
                let amount = i64::from(budget.metric == BudgetMetric::Runs);
                (counter(&self.module, budget, now), amount)
            })
            .collect();
        if charges.is_empty() {
            return Ok(Ok(()));
        }
        Ok(refusal(
            &self.at_start,
            store.charge_budgets(&charges).await?,
            now,
        ))
    }

    /// Adds a finished run's fuel to the module's fuel budgets.
    pub(crate) async fn record_fuel(
        &self,
        store: &dyn Store,
        fuel: u64,
        now: Millis,
    ) -> Result<(), StoreError> {
        if self.fuel.is_empty() || fuel == 0 {
            return Ok(());
        }
        let amount = i64::try_from(fuel).unwrap_or(i64::MAX);
        let amounts: Vec<(BudgetCounter, i64)> = self
            .fuel
            .iter()
            .map(|budget| (counter(&self.module, budget, now), amount))
            .collect();
        store.add_budget_usage(&amounts).await
    }
}

/// The counter of `budget` in the window of `now`. A budget only watched never refuses:
/// its counter has no limit.
fn counter(module: &str, budget: &Budget, now: Millis) -> BudgetCounter {
    let mut counter = budget.counter(module, now);
    if budget.action == BudgetAction::Alert {
        counter.limit = i64::MAX;
    }
    counter
}

/// Which budget refused a charge, and until when.
fn refusal(budgets: &[Budget], refused: Option<usize>, now: Millis) -> Result<(), Exhausted> {
    match refused.and_then(|index| budgets.get(index)) {
        None => Ok(()),
        Some(budget) => Err(Exhausted {
            metric: budget.metric,
            until: budget.per.window(now).1,
        }),
    }
}

/// Outbound requests of one module counted in the database.
struct StoreOutboundBudget {
    store: Arc<dyn Store>,
    budgets: Arc<ModuleBudgets>,
}

#[async_trait::async_trait]
impl OutboundBudget for StoreOutboundBudget {
    async fn take(&self, host: &HostName, port: u16) -> Result<(), BudgetRefusal> {
        let now = now_millis();
        let over: Vec<Budget> = (self.budgets.outbound.iter())
            .filter(|budget| budget.counts_request(host, port))
            .cloned()
            .collect();
        if over.is_empty() {
            return Ok(());
        }
        let charges: Vec<(BudgetCounter, i64)> = over
            .iter()
            .map(|budget| (counter(&self.budgets.module, budget, now), 1))
            .collect();
        let refused = self
            .store
            .charge_budgets(&charges)
            .await
            .map_err(|err| BudgetRefusal::Unavailable(err.to_string()))?;
        refusal(&over, refused, now).map_err(|exhausted| BudgetRefusal::Exhausted {
            until: exhausted.until,
        })
    }
}

impl Services {
    /// Module `name`'s budgets, each with its current window.
    pub async fn module_budgets(&self, name: &str) -> Result<Vec<BudgetStatus>, ServiceError> {
        let record = self.get_module(name).await?;
        self.statuses(name, record.budgets, now_millis()).await
    }

    /// Replaces module `name`'s budgets (`[]` removes them). Counting starts at once on
    /// this node and within the module catalog's time to live on the others; what was
    /// counted in the current windows stays, so lowering a limit below the count stops
    /// at once what it caps.
    pub async fn set_module_budgets(
        &self,
        name: &str,
        budgets: Vec<Budget>,
    ) -> Result<Vec<BudgetStatus>, ServiceError> {
        let budgets: Vec<Budget> = budgets
            .into_iter()
            .map(|budget| Budget {
                host: budget.host.map(|host| host.trim().to_owned()),
                ..budget
            })
            .collect();
        check_budgets(&budgets)
            .map_err(|(field, message)| ServiceError::unprocessable(field, message))?;
        let record = self
            .store
            .set_module_budgets(name, &budgets, now_millis())
            .await?
            .ok_or_else(|| ServiceError::not_found("module", name))?;
        self.modules.invalidate(name);
        self.keep_budget_rules(name, &record.budgets).await?;
        tracing::info!(module = %name, budgets = record.budgets.len(), "module budgets set");
        self.statuses(name, record.budgets, now_millis()).await
    }

    /// How much of each of module `name`'s budgets its current window used: what alert
    /// rules read (at 80 % and 100 % of `ratio`, say), for `alert` and `enforce` budgets
    /// alike. One read of the counters per call; an unknown module has no budgets.
    pub async fn budget_usage(&self, module: &str) -> Result<Vec<BudgetStatus>, ServiceError> {
        match self.store.get_module(module).await? {
            Some(record) => self.statuses(module, record.budgets, now_millis()).await,
            None => Ok(Vec::new()),
        }
    }

    async fn statuses(
        &self,
        module: &str,
        budgets: Vec<Budget>,
        now: Millis,
    ) -> Result<Vec<BudgetStatus>, ServiceError> {
        let counters: Vec<BudgetCounter> = budgets.iter().map(|b| b.counter(module, now)).collect();
        let used = self.store.budget_usage(&counters).await?;
        Ok(budgets
            .into_iter()
            .zip(used)
            .map(|(budget, used)| {
                let (window_start, window_end) = budget.per.window(now);
                BudgetStatus {
                    budget,
                    window_start,
                    window_end,
                    used,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::budget::BudgetPeriod;

    fn budget(metric: BudgetMetric, action: BudgetAction) -> Budget {
        Budget {
            metric,
            host: None,
            per: BudgetPeriod::Hour,
            limit: 3,
            action,
        }
    }

    #[test]
    fn a_module_without_budgets_has_nothing_to_consult() {
        assert!(ModuleBudgets::of("m", &[]).is_none());
    }

    #[test]
    fn budgets_are_sorted_by_when_they_count() {
        let budgets = ModuleBudgets::of(
            "m",
            &[
                budget(BudgetMetric::Runs, BudgetAction::Alert),
                budget(BudgetMetric::Fuel, BudgetAction::Alert),
                budget(BudgetMetric::OutboundRequests, BudgetAction::Enforce),
            ],
        )
        .unwrap();
        assert_eq!(
            budgets.at_start.len(),
            1,
            "a watched fuel budget stops no run"
        );
        assert_eq!(budgets.fuel.len(), 1);
        assert_eq!(budgets.outbound.len(), 1);
    }

    #[test]
    fn only_an_enforced_budget_has_a_limit_to_refuse_at() {
        let watched = counter("m", &budget(BudgetMetric::Runs, BudgetAction::Alert), 0);
        assert_eq!(watched.limit, i64::MAX);
        let enforced = counter("m", &budget(BudgetMetric::Runs, BudgetAction::Enforce), 0);
        assert_eq!(enforced.limit, 3);
    }
}
