//! Outbound HTTP (`wasi:http/outgoing-handler`), enforced on the host side. A request
//! goes out only if its host and port are within the module's grant and every address
//! the host resolves to is allowed by the operator's address policy; it then travels
//! over HTTP/1.1 on a connection to a checked address. Everything else fails inside the
//! guest with `HTTP-request-denied`.
//!
//! Every request, allowed or not, leaves one structured line in the execution log:
//! `http GET api.example.com -> 200` with `method`, `host`, `port`, `status`, `bytes`,
//! `ms`, and `denied` or `error` when it did not complete.
//!
//! Time: the operator's connect timeout and the guest's `request-options` (connect,
//! first byte, between bytes) fail the request inside the guest; the smaller wins. No
//! request outlives its run: when the run's deadline passes first, the run ends
//! `TIMED_OUT`, as for any host call, and the request is recorded as unfinished.
//! Response bodies are capped and so is the number of requests under way at once.
//!
//! `https://` is spoken with rustls against the public web's roots plus any the operator
//! adds ([`OutboundTls`]); the certificate must be valid for the host the guest named.
//!
//! The server's own requests (endpoint monitors' checks, [`probe`]) take the same path
//! through the address policy, the resolver, the connection and TLS.

mod body;
mod budget;
mod certificate;
mod client;
mod exchange;
mod policy;
mod probe;
mod tls;

use std::sync::Arc;

use http_body_util::BodyExt;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

use super::super::clock::RunClock;
use super::super::logs::LogCollector;
use crate::domain::usage::OutboundTally;
use crate::domain::{Grants, HostName};

pub(crate) use budget::{BudgetRefusal, OutboundBudget};
pub(crate) use policy::{Denial, OutboundPolicy};
pub use policy::{IpNetwork, OutboundSettings};
pub(crate) use probe::{Probe, ProbeFailure, probe};
pub use tls::OutboundTls;

use body::{MeteredBody, SentBody};
use client::Target;
use exchange::{Ending, Journal};

/// Decides and carries out the outbound requests of one execution.
pub(crate) struct OutboundHttp {
    policy: OutboundPolicy,
    journal: Journal,
    clock: Arc<RunClock>,
    /// The module's enforced outbound budgets; `None` when it has none.
    budget: Option<Arc<dyn OutboundBudget>>,
}

impl OutboundHttp {
    pub(crate) fn new(
        grants: Arc<Grants>,
        settings: Arc<OutboundSettings>,
        logs: LogCollector,
        clock: Arc<RunClock>,
        budget: Option<Arc<dyn OutboundBudget>>,
    ) -> Self {
        Self {
            policy: OutboundPolicy::new(grants, settings),
            journal: Journal::new(logs),
            clock,
            budget,
        }
    }

    /// Records the requests still under way when the run ended, and returns the run's
    /// requests counted per host. Called once, after the guest returned or was stopped
    /// and before the log is taken.
    pub(crate) fn finish(&self, why: &str) -> Vec<OutboundTally> {
        self.journal.close(why)
    }
}

type ResponseFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
            )>,
        > + Send,
>;

fn denied(denial: &Denial) -> ResponseFuture {
    let code = error_code(denial);
    Box::new(async move { Err(code) })
}

/// The `wasi:http` error code a guest is given for `denial`: an address the operator's
/// policy closes is `destination-ip-prohibited`, whatever the module's grant says, so that
/// the guest (and its author) is not told to ask for a host it was already granted.
pub(crate) fn error_code(denial: &Denial) -> wasmtime_wasi_http::Error {
    match denial {
        Denial::Address { .. } | Denial::OwnAddress { .. } => {
            wasmtime_wasi_http::Error::DestinationIpProhibited
        }
        Denial::NotGranted { .. }
        | Denial::UnsupportedScheme(_)
        | Denial::BadHost(_)
        | Denial::Budget { .. } => wasmtime_wasi_http::Error::HttpRequestDenied,
    }
}

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> ResponseFuture {
        let method = request.method().to_string();
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
        let raw_host = uri.host().unwrap_or("").to_owned();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let host = HostName::parse(&raw_host);
        let shown = host
            .as_ref()
            .map_or_else(|_| raw_host.clone(), ToString::to_string);
        let busy = self.journal.in_flight();
        let exchange = self.journal.start(&method, &shown, port);
        let limit = self.policy.settings().max_requests_in_flight;
        if busy >= limit {
            exchange.end(Ending::Failed(&format!(
                "{limit} requests already in flight, the most a run may have; read or drop earlier responses first"
            )));
            return Box::new(async { Err(wasmtime_wasi_http::Error::ConnectionLimitReached) });
        }
        let Ok(host) = host else {
            let denial = Denial::BadHost(raw_host);
            exchange.end(Ending::Denied(&denial));
            return denied(&denial);
        };
        if let Err(denial) = self.policy.check_target(&scheme, &host, port) {
            exchange.end(Ending::Denied(&denial));
            return denied(&denial);
        }

        let meter = exchange.sent_meter();
        let request = request.map(|body| SentBody::new(body, meter).boxed_unsync());
        let policy = self.policy.clone();
        let clock = self.clock.clone();
        let budget = self.budget.clone();
        Box::new(async move {
            if let Some(budget) = budget {
                let Some(taken) = clock.bound(budget.take(&host, port)).await else {
                    // The run is over; see below.
                    return std::future::pending().await;
                };
                match taken {
                    Ok(()) => {}
                    Err(BudgetRefusal::Exhausted { until }) => {
                        let denial = Denial::Budget { until };
                        exchange.end(Ending::Denied(&denial));
                        return Err(error_code(&denial));
                    }
                    Err(BudgetRefusal::Unavailable(reason)) => {
                        exchange.end(Ending::Failed(&format!(
                            "the module's outbound budget could not be counted: {reason}"
                        )));
                        return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
                    }
                }
            }
            let target = Target {
                host,
                port,
                tls: scheme == "https",
            };
            let sent = clock
                .bound(client::send(request, &target, options, &policy, &exchange))
                .await;
            let Some(sent) = sent else {
                // The run is over: the runtime is about to stop it as timed out and
                // record this request as unfinished. Answering the guest now would
                // only let it run past its deadline.
                return std::future::pending().await;
            };
            match sent {
                Ok((response, connection)) => {
                    exchange.responded(response.status().as_u16());
                    let limit = policy.settings().max_response_bytes;
                    let between_bytes = options.and_then(|o| o.between_bytes_timeout);
                    let response = response.map(|body| {
                        MeteredBody::new(body, exchange, limit, between_bytes).boxed_unsync()
                    });
                    Ok((response, Box::new(connection) as Box<_>))
                }
                Err(error) => {
                    exchange.end(Ending::Failed(&error.to_string()));
                    Err(error)
                }
            }
        })
    }
}
