//! The endpoint checker: checks each enabled endpoint monitor once per interval. Of all
//! the nodes of a deployment, only the holder of the [`ENDPOINTS_LEASE`] checks (renewed
//! every round, short-lived so that a dead holder's successor takes over within seconds),
//! and it claims each due interval with a write fenced by the lease before it checks
//! (moving the endpoint's next due time forward), so two nodes never both claim one
//! interval; the database's uniqueness on (endpoint, due time) is the final guard on the
//! recorded checks, as (job, cron tick) is for cron. Started by `app`.
//!
//! Checks run here, in the host, rather than as runs of a built-in module: a check costs
//! no instance, no fuel and no execution row; checks must keep working when modules are
//! broken, disabled or being replaced (a monitor that dies with what it monitors is no
//! monitor); and leases and fencing already give exactly-once for periodic work. A module
//! (`example-modules/endpoint-monitor`) remains the way to check with logic of one's own.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::domain::endpoint::next_due;
use crate::domain::{Millis, now_millis};
use crate::services::{ServiceError, Services};
use crate::store::LeaseToken;

/// The lease whose holder checks endpoints.
pub(crate) const ENDPOINTS_LEASE: &str = "endpoints";
/// How often due endpoints are looked for; a check starts at most this late.
const POLL: Duration = Duration::from_millis(250);
/// How long the lease outlives its holder's last renewal: the longest checks pause when
/// the holder dies without releasing it. Many rounds long, so a slow round does not hand
/// the lease over.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(5);
/// Checks under way at once on the holder. Each waits on the network, not the CPU; the
/// bound keeps a deployment with many slow endpoints from opening connections without
/// end. A due check past it waits for a free place (it starts late, never twice).
const MAX_CHECKS_IN_FLIGHT: usize = 64;

/// Runs until `stop` turns true, checking only while this node (`holder`) leads.
pub(crate) async fn run(services: Services, holder: String, mut stop: watch::Receiver<bool>) {
    let places = Arc::new(Semaphore::new(MAX_CHECKS_IN_FLIGHT));
    let mut checks = JoinSet::new();
    let mut leading = false;
    loop {
        let now = now_millis();
        let ttl = LEASE_TTL.as_millis() as Millis;
        match services
            .store
            .acquire_lease(ENDPOINTS_LEASE, &holder, now, ttl)
            .await
        {
            Ok(Some(token)) => {
                if !leading {
                    tracing::info!(node = %holder, token = token.0, "this node now checks endpoints");
                    leading = true;
                }
                let started =
                    start_due_checks(&services, &holder, token, now, &places, &mut checks).await;
                if let Err(err) = started {
                    tracing::warn!(error = %err, "endpoint checker pass failed; retrying");
                }
            }
            Ok(None) => {
                if leading {
                    tracing::info!(node = %holder, "another node now checks endpoints");
                    leading = false;
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot take the endpoints lease; retrying"),
        }
        while checks.try_join_next().is_some() {}
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => break,
        }
    }
    // A check cut short records nothing; its interval stays unchecked, like one missed
    // while no node ran.
    checks.shutdown().await;
    if leading {
        let _ = services.store.release_lease(ENDPOINTS_LEASE, &holder).await;
    }
}

/// Claims the endpoints due at `now` (as many as there are free places) under the lease
/// `token`, and starts their checks; returns how many it started.
async fn start_due_checks(
    services: &Services,
    holder: &str,
    token: LeaseToken,
    now: Millis,
    places: &Arc<Semaphore>,
    checks: &mut JoinSet<()>,
) -> Result<usize, ServiceError> {
    let free = places.available_permits();
    if free == 0 {
        return Ok(0);
    }
    let due = services
        .store
        .due_endpoints(now, u32::try_from(free).unwrap_or(u32::MAX))
        .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let claims: Vec<(String, Millis, Millis)> = due
        .iter()
        .filter_map(|endpoint| {
            let due_at = endpoint.next_check_at?;
            let interval = Millis::from(endpoint.interval_seconds) * 1000;
            Some((endpoint.id.clone(), due_at, next_due(due_at, interval, now)))
        })
        .collect();
    let Some(claimed) = services
        .store
        .claim_endpoint_checks(&claims, ENDPOINTS_LEASE, holder, token, now)
        .await?
    else {
        tracing::info!("lost the endpoints lease mid-round");
        return Ok(0);
    };
    let claimed: HashSet<String> = claimed.into_iter().collect();
    let mut started = 0;
    for endpoint in due {
        let (true, Some(due_at)) = (claimed.contains(&endpoint.id), endpoint.next_check_at) else {
            continue;
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            break;
        };
        let services = services.clone();
        let node = holder.to_owned();
        checks.spawn(async move {
            let check = services.check_endpoint(&endpoint, due_at, &node).await;
            match services.store.record_endpoint_check(&check).await {
                Ok(true) => {}
                Ok(false) => tracing::debug!(
                    endpoint = %endpoint.name,
                    due_at,
                    "this interval was recorded already, or the endpoint is gone"
                ),
                Err(err) => tracing::warn!(
                    endpoint = %endpoint.name,
                    error = %err,
                    "cannot record an endpoint check"
                ),
            }
            drop(place);
        });
        started += 1;
    }
    Ok(started)
}
