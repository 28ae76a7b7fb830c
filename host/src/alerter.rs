//! The alerter: evaluates alert rules every `--alert-every` and delivers the notification
//! outbox. Of all the nodes of a deployment, only the holder of the
//! [`ALERTS_LEASE`] does either (renewed every round, short-lived so that a dead
//! holder's successor takes over within seconds), and each transition and each delivery
//! attempt is written fenced by that lease, so a node that lost it writes nothing.
//! Started by `app`.
//!
//! A transition and its outbox rows commit together, so a node that dies after deciding
//! leaves either both or neither; its successor reads the stored states and carries on
//! without deciding again. A row whose sending node died before recording the answer is
//! sent again by the successor under the same id, which is the message's
//! `Idempotency-Key` (and its event's id): receivers see it at least once, and exactly
//! once by that key.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::domain::{Millis, now_millis};
use crate::services::Services;
use crate::services::alerts::ALERTS_LEASE;
use crate::store::LeaseToken;

/// How often the lease is renewed and the outbox looked at; a due notification is sent
/// at most this late.
const POLL: Duration = Duration::from_millis(250);
/// How long the lease outlives its holder's last renewal (as for the endpoint checker).
const LEASE_TTL: Duration = Duration::from_secs(5);
/// Deliveries under way at once: each waits on a receiver, and a receiver that hangs
/// holds its place for at most the send timeout.
const MAX_DELIVERIES_IN_FLIGHT: usize = 16;

/// Runs until `stop` turns true, evaluating every `every` and delivering while this node
/// (`holder`) holds the lease.
pub(crate) async fn run(
    services: Services,
    holder: String,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let places = Arc::new(Semaphore::new(MAX_DELIVERIES_IN_FLIGHT));
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut deliveries = JoinSet::new();
    let mut leading = false;
    let mut next_evaluation: Millis = 0;
    loop {
        let now = now_millis();
        let ttl = LEASE_TTL.as_millis() as Millis;
        match services
            .store
            .acquire_lease(ALERTS_LEASE, &holder, now, ttl)
            .await
        {
            Ok(Some(token)) => {
                if !leading {
                    tracing::info!(node = %holder, token = token.0, "this node now evaluates alerts");
                    leading = true;
                }
                if now >= next_evaluation {
                    next_evaluation = now + every.as_millis() as Millis;
                    match services.evaluate_alert_rules(&holder, token).await {
                        Ok(true) => {}
                        Ok(false) => tracing::info!("lost the alerts lease mid-round"),
                        Err(err) => {
                            tracing::warn!(error = %err, "alert evaluation failed; retrying");
                        }
                    }
                }
                start_deliveries(
                    &services,
                    &holder,
                    token,
                    &places,
                    &in_flight,
                    &mut deliveries,
                )
                .await;
            }
            Ok(None) => {
                if leading {
                    tracing::info!(node = %holder, "another node now evaluates alerts");
                    leading = false;
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot take the alerts lease; retrying"),
        }
        while deliveries.try_join_next().is_some() {}
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => break,
        }
    }
    // A delivery cut short records nothing: its row stays due and is sent again.
    deliveries.shutdown().await;
    if leading {
        let _ = services.store.release_lease(ALERTS_LEASE, &holder).await;
    }
}

/// Starts sending the due outbox rows not already being sent, as many as there are
/// free places.
async fn start_deliveries(
    services: &Services,
    holder: &str,
    token: LeaseToken,
    places: &Arc<Semaphore>,
    in_flight: &Arc<Mutex<HashSet<String>>>,
    deliveries: &mut JoinSet<()>,
) {
    let free = places.available_permits();
    if free == 0 {
        return;
    }
    let due = match services
        .store
        .alerts()
        .due_notifications(now_millis(), u32::try_from(free * 2).unwrap_or(u32::MAX))
        .await
    {
        Ok(due) => due,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the notification outbox; retrying");
            return;
        }
    };
    for notification in due {
        if !in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(notification.id.clone())
        {
            continue;
        }
        let Ok(place) = places.clone().try_acquire_owned() else {
            in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&notification.id);
            break;
        };
        let services = services.clone();
        let holder = holder.to_owned();
        let in_flight = in_flight.clone();
        deliveries.spawn(async move {
            if let Err(err) = services
                .deliver_notification(&notification, &holder, token)
                .await
            {
                tracing::warn!(notification = %notification.id, error = %err, "cannot record a delivery");
            }
            in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&notification.id);
            drop(place);
        });
    }
}
