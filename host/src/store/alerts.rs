//! What alerting asks of the database: rules, channels and silences; a rule's transition
//! written whole and fenced by the lease; the history; and the notification outbox the
//! delivery loop drains. Reached through [`Store::alerts`](super::Store::alerts), so the
//! one [`Store`](super::Store) trait does not carry every alerting call.

use crate::domain::alert::{
    AlertRule, Attempt, Channel, HistoryEntry, Notification, Silence, Transition,
};
use crate::domain::{Millis, Page};

use super::{LeaseToken, StoreError};

/// How an attempt to send a notification ended, for [`AlertStore::record_attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    /// Try again at this time.
    RetryAt(Millis),
    /// No more tries: past its expiry, or its channel is gone.
    Expired,
}

/// The lease a fenced write checks: its name, its holder and the token it was taken
/// with, unexpired at `now`.
#[derive(Debug, Clone, Copy)]
pub struct Fence<'a> {
    pub lease: &'a str,
    pub holder: &'a str,
    pub token: LeaseToken,
    pub now: Millis,
}

#[async_trait::async_trait]
pub trait AlertStore: Send + Sync {
    /// Creates a rule; `Conflict` if its name is taken.
    async fn insert_rule(&self, rule: &AlertRule) -> Result<(), StoreError>;

    async fn get_rule(&self, id: &str) -> Result<Option<AlertRule>, StoreError>;

    /// Every rule, by id (creation).
    async fn list_rules(&self) -> Result<Vec<AlertRule>, StoreError>;

    /// Replaces a rule's definition, leaving its state alone; `false` if it does not
    /// exist, `Conflict` if renamed onto another's name.
    async fn update_rule(&self, rule: &AlertRule) -> Result<bool, StoreError>;

    /// Removes a rule and its notifications not yet sent; its history stays.
    async fn delete_rule(&self, id: &str) -> Result<bool, StoreError>;

    /// Writes `transition` whole: the rule's new state (only if the rule is still in
    /// `transition.from`), its history entry and its outbox rows, only while the fence's
    /// lease holds. `None` without the lease, `Some(false)` when the rule moved or went
    /// meanwhile; nothing is written in either case.
    async fn record_transition(
        &self,
        transition: &Transition,
        fence: Fence<'_>,
    ) -> Result<Option<bool>, StoreError>;

    /// Transitions at `[from, to)`, newest first, at most `limit`, older than the entry
    /// with id `cursor`; only of `rule_id` when given.
    async fn history(
        &self,
        from: Millis,
        to: Millis,
        rule_id: Option<&str>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<HistoryEntry>, StoreError>;

    /// Creates a channel; `Conflict` if its name is taken.
    async fn insert_channel(&self, channel: &Channel) -> Result<(), StoreError>;

    async fn get_channel(&self, id: &str) -> Result<Option<Channel>, StoreError>;

    async fn list_channels(&self) -> Result<Vec<Channel>, StoreError>;

    /// `false` if it does not exist, `Conflict` if renamed onto another's name.
    async fn update_channel(&self, channel: &Channel) -> Result<bool, StoreError>;

    async fn delete_channel(&self, id: &str) -> Result<bool, StoreError>;

    async fn insert_silence(&self, silence: &Silence) -> Result<(), StoreError>;

    /// Every silence, expired ones included (until they are pruned), newest first.
    async fn list_silences(&self) -> Result<Vec<Silence>, StoreError>;

    async fn delete_silence(&self, id: &str) -> Result<bool, StoreError>;

    /// Adds one outbox row outside any transition (a channel's test message).
    async fn insert_notification(&self, notification: &Notification) -> Result<(), StoreError>;

    /// Pending outbox rows due at `now`, longest due first, at most `limit`.
    async fn due_notifications(
        &self,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError>;

    /// Appends `attempt` to a pending row and settles it by `outcome`, only while the
    /// fence's lease holds (`None` otherwise, writing nothing). `Some(false)` when the
    /// row is no longer pending.
    async fn record_attempt(
        &self,
        id: &str,
        attempt: &Attempt,
        outcome: AttemptOutcome,
        fence: Fence<'_>,
    ) -> Result<Option<bool>, StoreError>;

    async fn get_notification(&self, id: &str) -> Result<Option<Notification>, StoreError>;

    /// Notifications newest first, at most `limit`, only of `rule_id` when given.
    async fn notifications(
        &self,
        rule_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError>;

    /// Deletes up to `limit` history entries from before `before`, notifications created
    /// before it that are no longer pending, and silences that ended before it; returns
    /// how many rows went.
    async fn prune_alerts(&self, before: Millis, limit: i64) -> Result<u64, StoreError>;
}
