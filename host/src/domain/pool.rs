//! The state of a connection pool as a monitor reads it: the store's and the queue's
//! pools report themselves in this shape, so `/metrics` can show them without knowing
//! which database or client is behind them.

/// One connection pool, as it stands when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolState {
    /// Which of its owner's pools (`writer`, `reader`, `claims`, `commands`, ...).
    pub name: &'static str,
    /// The most connections it may open.
    pub max: u32,
    /// Connections open now, idle or lent.
    pub open: u32,
    /// Open connections waiting to be lent.
    pub idle: u32,
    /// Callers waiting for a connection, where the pool counts them.
    pub waiting: Option<u32>,
}
