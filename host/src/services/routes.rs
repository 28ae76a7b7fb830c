//! Module-served HTTP routes (`/m/{module}/...`): which module answers, who may call it,
//! and how many requests it serves at once. Each request runs on a fresh instance of the
//! module's current version, with the module's grants and the route limits, so a new
//! version answers the next request and a disabled module answers none.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::modules::{Runnable, Unrunnable};
use super::{ServiceError, Services};
use crate::domain::{Grants, Limits, LogLevel, RouteAccess, now_millis};
use crate::runtime::{LoadedModule, ServedRequest};

/// What a request to a module's routes may use.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    /// Fuel, wall clock and memory of one request; log and output caps as for jobs.
    pub limits: Limits,
    /// Requests one module serves at once; more are refused with "busy".
    pub per_module_concurrency: usize,
    /// Requests all modules together serve at once (each holds an instance slot).
    pub total_concurrency: usize,
    /// Largest request body passed to a module.
    pub max_request_bytes: usize,
    /// Largest response body passed back.
    pub max_response_bytes: u64,
}

impl Default for RouteSettings {
    /// A request is interactive: ten seconds and about a second of CPU at most. Its log
    /// lines go to the server log, so fewer of them are kept than for a job.
    fn default() -> Self {
        Self {
            limits: Limits {
                timeout: Duration::from_secs(10),
                max_log_lines: 100,
                max_log_bytes: 64 * 1024,
                ..Limits::default()
            },
            per_module_concurrency: 16,
            total_concurrency: 64,
            max_request_bytes: 2 * 1024 * 1024,
            max_response_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Bounds the requests served at once, per module and in total.
#[derive(Debug)]
pub struct RouteGate {
    total: Arc<Semaphore>,
    per_module: Mutex<HashMap<String, Arc<Semaphore>>>,
    per_module_limit: usize,
}

/// Held while a request is served; dropping it frees the places.
#[derive(Debug)]
pub(crate) struct RoutePermit {
    _module: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl RouteGate {
    pub fn new(settings: &RouteSettings) -> Self {
        Self {
            total: Arc::new(Semaphore::new(settings.total_concurrency)),
            per_module: Mutex::default(),
            per_module_limit: settings.per_module_concurrency,
        }
    }

    /// A place for one more request to `module`, or the reason there is none. Refusing
    /// at once keeps a slow module from queueing requests without bound.
    fn enter(&self, module: &str) -> Result<RoutePermit, ServiceError> {
        let semaphore = self
            .per_module
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(module.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_module_limit)))
            .clone();
        let module_permit = semaphore.try_acquire_owned().map_err(|_| {
            ServiceError::Busy(format!(
                "module `{module}` is already serving its limit of {} concurrent requests; retry shortly",
                self.per_module_limit
            ))
        })?;
        let total_permit = self.total.clone().try_acquire_owned().map_err(|_| {
            ServiceError::Busy(
                "the server is serving its limit of concurrent module requests; retry shortly"
                    .into(),
            )
        })?;
        Ok(RoutePermit {
            _module: module_permit,
            _total: total_permit,
        })
    }
}

/// A module ready to answer a request, and who may call it.
#[derive(Clone)]
pub struct RouteTarget {
    pub module: Arc<LoadedModule>,
    pub grants: Arc<Grants>,
    pub access: RouteAccess,
    /// Counts its outbound requests against the module's budgets, as its runs' are.
    pub(crate) outbound_budget: Option<Arc<dyn crate::runtime::OutboundBudget>>,
}

impl std::fmt::Debug for RouteTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTarget")
            .field("module", &self.module.manifest.name)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

impl Services {
    /// The module that answers `/m/{name}/...`: its current version, if it is enabled,
    /// approved, and serves routes.
    pub async fn route_target(&self, name: &str) -> Result<RouteTarget, ServiceError> {
        let resolved = self
            .modules
            .resolve(name)
            .await
            .map_err(|reason| match reason {
                Unrunnable::Missing(_) => ServiceError::not_found("module", name),
                Unrunnable::Disabled(_) => ServiceError::NotServed(format!(
                    "module `{name}` is disabled; enable it to serve its routes"
                )),
                Unrunnable::Unapproved { missing, .. } => ServiceError::Forbidden(format!(
                    "module `{name}` is not served until an admin approves it: {}",
                    missing.join(", ")
                )),
                Unrunnable::Broken { reason, .. } => ServiceError::Unavailable(format!(
                    "module `{name}` could not be loaded: {reason}"
                )),
                Unrunnable::Unavailable(reason) => ServiceError::Unavailable(reason),
            })?;
        let Runnable {
            module,
            grants,
            budgets,
        } = resolved;
        let access = module.manifest.capabilities.routes;
        if access == RouteAccess::None || !module.serves_routes() {
            return Err(ServiceError::NotServed(format!(
                "module `{name}` serves no HTTP routes"
            )));
        }
        Ok(RouteTarget {
            module,
            grants,
            access,
            outbound_budget: budgets.and_then(|budgets| budgets.outbound_port(&self.store)),
        })
    }

    /// Serves one request on a fresh instance of `target`. `request` carries the path
    /// the module sees (below `/m/{module}`) in an absolute URI. Refused with "busy" when
    /// the module or the server is at its concurrency limit.
    pub async fn serve_route(
        &self,
        target: &RouteTarget,
        request: http::Request<Bytes>,
    ) -> Result<ServedRequest, ServiceError> {
        let name = target.module.manifest.name.as_str();
        let _permit = self.routes.enter(name)?;
        let settings = &self.settings.routes;
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let served = self
            .runtime
            .serve_http(
                &target.module,
                request,
                settings.limits,
                target.grants.clone(),
                target.outbound_budget.clone(),
                settings.max_response_bytes,
            )
            .await;
        log_request(name, &method, &path, &served);
        for tally in &served.outbound {
            self.telemetry.record_outbound(name, tally);
        }
        self.route_outbound
            .add(name, now_millis(), &served.outbound);
        Ok(served)
    }
}

/// One server log line per request, and the module's own lines with it: a route has no
/// execution record to hold them.
fn log_request(module: &str, method: &http::Method, path: &str, served: &ServedRequest) {
    for entry in &served.logs {
        let fields = serde_json::Value::Object(entry.fields.clone());
        let message = entry.message.as_str();
        match entry.level {
            LogLevel::Error => tracing::error!(module, %fields, "module route log: {message}"),
            LogLevel::Warn => tracing::warn!(module, %fields, "module route log: {message}"),
            LogLevel::Info => tracing::info!(module, %fields, "module route log: {message}"),
            LogLevel::Debug | LogLevel::Trace => {
                tracing::debug!(module, %fields, "module route log: {message}");
            }
        }
    }
    let ms = served.usage.wall_time.as_secs_f64() * 1000.0;
    let fuel = served.usage.fuel_consumed;
    match &served.response {
        Ok(response) => tracing::info!(
            module,
            %method,
            path,
            status = response.status().as_u16(),
            ms,
            fuel,
            "module route served"
        ),
        Err(outcome) => {
            let failure = outcome.summary();
            tracing::warn!(module, %method, path, ms, fuel, %failure, "module route failed");
        }
    }
}
