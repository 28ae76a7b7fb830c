//! The port through which a module's outbound requests are counted against its enforced
//! budgets, which every node shares (the server backs it with the database). Only a run
//! of a module that has such a budget is given one: every other request pays nothing.

use crate::domain::{HostName, Millis};

/// Why a budget did not let a request go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetRefusal {
    /// A budget over this request is used up until `until` (the end of its window).
    Exhausted { until: Millis },
    /// The count could not be taken (the database is away). The request is refused: a
    /// budget is a promise about a paid API, and an uncounted request could break it.
    Unavailable(String),
}

/// Counts outbound requests against the budgets of one module.
#[async_trait::async_trait]
pub trait OutboundBudget: Send + Sync {
    /// Called once per request that passed the grant, before anything is resolved or
    /// sent: takes one request from every budget over `host` and `port`, or none and
    /// says why.
    async fn take(&self, host: &HostName, port: u16) -> Result<(), BudgetRefusal>;
}
