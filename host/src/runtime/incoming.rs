//! Serving a module's HTTP routes: one request is one call of the module's
//! `wasi:http/incoming-handler.handle` on a fresh instance, under the same limits as a
//! job run (fuel, wall-clock deadline, memory, log caps). The request body arrives whole
//! (the caller caps it); the response body is read while the guest writes it, up to a
//! cap, so a guest streaming a large body neither blocks on a full pipe nor grows the
//! host's memory past the cap.

use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use wasmtime::component::{ComponentExportIndex, Resource};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};

use super::bindings::JobModulePre;
use super::clock::RunClock;
use super::cpu::CpuMeter;
use super::cpu_permits::CpuPermits;
use super::execution::{self, ExecutionState, RunRequest};
use super::{LoadedModule, Shared, lanes};
use crate::domain::usage::OutboundTally;
use crate::domain::{
    FailureKind, Limits, LogEntry, Manifest, ManifestError, Outcome, RouteAccess, Usage,
};

/// The interface a module exports to serve routes, any 0.2.x version.
const HANDLER_INTERFACE: &str = "wasi:http/incoming-handler@0.2.";

/// Where a component's `handle` function is, if it exports the incoming handler.
pub(crate) fn find_handler(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> Option<ComponentExportIndex> {
    let interface = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .find(|name| name.starts_with(HANDLER_INTERFACE))?;
    let instance = component.get_export_index(None, interface.as_str())?;
    component.get_export_index(Some(&instance), "handle")
}

/// A manifest that asks for routes needs the export that serves them; one that asks for
/// none may still export it (and serves nothing).
pub(crate) fn check_routes_export(
    manifest: &Manifest,
    exports_handler: bool,
) -> Result<(), ManifestError> {
    if exports_handler || manifest.capabilities.routes == RouteAccess::None {
        return Ok(());
    }
    Err(ManifestError::Invalid {
        field: "capabilities.routes".into(),
        reason: "the module declares HTTP routes but does not export \
                 `wasi:http/incoming-handler`; build it against the \
                 `job-module-with-routes` world (runcell-sdk's `routes:` entry does this)"
            .into(),
    })
}

/// What serving one request came to.
#[derive(Debug)]
pub struct ServedRequest {
    /// The module's response, or why there is none (`TimedOut`, or `Failed` with the
    /// kind: a trap, fuel, memory, `OutputTooLarge` for a response over the cap,
    /// `InvalidOutput` for a handler that never answered).
    pub response: Result<http::Response<Bytes>, Outcome>,
    pub usage: Usage,
    pub logs: Vec<LogEntry>,
    pub dropped_log_lines: u64,
    /// The outbound requests the handler made, per host.
    pub outbound: Vec<OutboundTally>,
}

/// How the guest's half of a request ended.
struct HandlerEnd {
    result: wasmtime::Result<()>,
    usage: Usage,
    memory_limit_hit: bool,
    outbound: Vec<OutboundTally>,
}

/// What the guest's half of a request runs under: the CPU permits, the run's clock, the
/// meter of its CPU time.
struct Under<'a> {
    permits: &'a CpuPermits,
    clock: &'a RunClock,
    cpu: &'a CpuMeter,
}

/// The guest's half of a request: instantiate, call `handle`, note what it used. The
/// store is dropped at the end, which closes a response body the guest left open.
async fn call_handler(
    mut store: wasmtime::Store<ExecutionState>,
    pre: &JobModulePre<ExecutionState>,
    handler: &ComponentExportIndex,
    request: Resource<HostIncomingRequest>,
    outparam: Resource<HostResponseOutparam>,
    run: &RunRequest,
    under: Under<'_>,
) -> HandlerEnd {
    let started = Instant::now();
    let result = {
        let call = async {
            let instance = pre.instance_pre().instantiate_async(&mut store).await?;
            let handle = instance.get_typed_func::<(
                Resource<HostIncomingRequest>,
                Resource<HostResponseOutparam>,
            ), ()>(&mut store, handler)?;
            handle.call_async(&mut store, (request, outparam)).await
        };
        let call = std::pin::pin!(call);
        tokio::select! {
            biased;
            result = under.permits.run(under.clock, under.cpu, call) => result,
            () = under.clock.expired(execution::HOST_CALL_GRACE) => Err(execution::deadline_passed()),
        }
    };
    let (usage, memory_limit_hit, outbound) =
        execution::conclude(&store, &run.limits, started, &result);
    HandlerEnd {
        result,
        usage,
        memory_limit_hit,
        outbound,
    }
}

/// Why the response could not be passed on, when the guest's call itself succeeded.
enum ResponseProblem {
    NeverAnswered,
    Refused(ErrorCode),
    TooLarge,
    BodyFailed(String),
    TimedOut,
}

impl ResponseProblem {
    fn outcome(self, limits: &Limits, max_response_bytes: u64) -> Outcome {
        let failed = |kind, message| Outcome::Failed { kind, message };
        match self {
            ResponseProblem::TimedOut => Outcome::TimedOut {
                timeout: limits.timeout,
            },
            ResponseProblem::NeverAnswered => failed(
                FailureKind::InvalidOutput,
                "the handler returned without setting a response".into(),
            ),
            ResponseProblem::Refused(code) => failed(
                FailureKind::Permanent,
                format!("the handler answered with an error: {code:?}"),
            ),
            ResponseProblem::TooLarge => failed(
                FailureKind::OutputTooLarge,
                format!(
                    "the response body is larger than the limit of {}",
                    bytesize::ByteSize(max_response_bytes).display().iec()
                ),
            ),
            ResponseProblem::BodyFailed(reason) => failed(
                FailureKind::InvalidOutput,
                format!("the response body broke off: {reason}"),
            ),
        }
    }
}

/// The host's half: wait for the response head, then read the body up to `cap` bytes.
async fn read_response(
    answer: tokio::sync::oneshot::Receiver<
        Result<hyper::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>, ErrorCode>,
    >,
    cap: u64,
    clock: &RunClock,
) -> Result<http::Response<Bytes>, ResponseProblem> {
    let read = async {
        let response = match answer.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => return Err(ResponseProblem::Refused(code)),
            Err(_) => return Err(ResponseProblem::NeverAnswered),
        };
        let (parts, body) = response.into_parts();
        let limit = usize::try_from(cap).unwrap_or(usize::MAX);
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(http::Response::from_parts(parts, collected.to_bytes())),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => {
                Err(ResponseProblem::TooLarge)
            }
            Err(err) => Err(ResponseProblem::BodyFailed(err.to_string())),
        }
    };
    tokio::select! {
        biased;
        read = read => read,
        () = clock.expired(execution::HOST_CALL_GRACE) => Err(ResponseProblem::TimedOut),
    }
}

/// Serves `request` (its URI absolute, its path already relative to the module's
/// prefix) on a fresh instance of `module`, which should export the handler, with
/// `run`'s limits and grants; the response body may hold at most `max_response_bytes`.
pub(super) async fn serve(
    shared: &Shared,
    module: &LoadedModule,
    run: RunRequest,
    request: http::Request<Bytes>,
    max_response_bytes: u64,
) -> ServedRequest {
    let seat = lanes::take_seat(&shared.lanes);
    let in_lane = &module.lanes[seat.index];
    let Some(handler) = &in_lane.handler else {
        return ServedRequest {
            response: Err(Outcome::Failed {
                kind: FailureKind::HostError,
                message: format!("module `{}` serves no HTTP routes", module.manifest.name),
            }),
            usage: Usage::default(),
            logs: Vec::new(),
            dropped_log_lines: 0,
            outbound: Vec::new(),
        };
    };
    let limits = run.limits;
    let (mut store, logs, clock) = execution::new_store(seat.lane(), in_lane.name.clone(), &run);
    let (parts, body) = request.into_parts();
    let request = hyper::Request::from_parts(
        parts,
        Full::new(body).map_err(|never| -> wasmtime_wasi_http::Error { match never {} }),
    );
    let (sender, answer) = tokio::sync::oneshot::channel();
    let resources = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)
        .and_then(|request| {
            let outparam = store.data_mut().http().new_response_outparam(sender)?;
            Ok((request, outparam))
        });
    let (incoming, outparam) = match resources {
        Ok(resources) => resources,
        Err(err) => {
            let (logs, dropped_log_lines) = logs.finish();
            return ServedRequest {
                response: Err(Outcome::Failed {
                    kind: FailureKind::HostError,
                    message: format!("the request could not be handed to the module: {err:#}"),
                }),
                usage: Usage::default(),
                logs,
                dropped_log_lines,
                outbound: Vec::new(),
            };
        }
    };
    let cpu = CpuMeter::default();
    let under = Under {
        permits: &shared.cpu,
        clock: &clock,
        cpu: &cpu,
    };
    let (handler_end, response) = tokio::join!(
        call_handler(
            store,
            &in_lane.pre,
            handler,
            incoming,
            outparam,
            &run,
            under
        ),
        read_response(answer, max_response_bytes, &clock),
    );
    let HandlerEnd {
        result,
        mut usage,
        memory_limit_hit,
        outbound,
    } = handler_end;
    usage.cpu_time = cpu.spent();
    let (entries, dropped_log_lines) = logs.finish();
    let response = match (result, response) {
        // Checked first: a guest whose write hit the closed pipe may trap afterwards.
        (_, Err(problem @ ResponseProblem::TooLarge)) => {
            Err(problem.outcome(&limits, max_response_bytes))
        }
        // A guest that fails after answering (while streaming the body, say) still
        // broke its response: report the failure, not half a body.
        (Err(error), _) => Err(execution::classify_error(
            &error,
            memory_limit_hit,
            &limits,
            &entries,
        )),
        (Ok(()), response) => {
            response.map_err(|problem| problem.outcome(&limits, max_response_bytes))
        }
    };
    ServedRequest {
        response,
        usage,
        logs: entries,
        dropped_log_lines,
        outbound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Capabilities;

    fn manifest(routes: RouteAccess) -> Manifest {
        Manifest {
            name: "m".into(),
            version: "1.0.0".into(),
            description: String::new(),
            jobs: Vec::new(),
            capabilities: Capabilities {
                routes,
                ..Capabilities::default()
            },
            settings: Vec::new(),
        }
    }

    #[test]
    fn routes_asked_for_need_the_handler_export() {
        for access in [RouteAccess::Authenticated, RouteAccess::Public] {
            let error = check_routes_export(&manifest(access), false).unwrap_err();
            assert!(
                error.to_string().contains("wasi:http/incoming-handler"),
                "{error}"
            );
            assert!(check_routes_export(&manifest(access), true).is_ok());
        }
        assert!(check_routes_export(&manifest(RouteAccess::None), false).is_ok());
        assert!(check_routes_export(&manifest(RouteAccess::None), true).is_ok());
    }
}
