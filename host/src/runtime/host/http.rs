//! Outbound HTTP (`wasi:http/outgoing-handler`). Nothing is reachable unless granted; a
//! refused request fails inside the guest with `HTTP-request-denied` and is noted in the
//! execution log.

use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

use super::super::logs::LogCollector;
use crate::domain::LogLevel;

/// Decides each outbound request of one execution.
pub(crate) struct OutboundHttp {
    logs: LogCollector,
}

impl OutboundHttp {
    pub(crate) fn new(logs: LogCollector) -> Self {
        Self { logs }
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

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> ResponseFuture {
        let host = request.uri().host().unwrap_or("").to_owned();
        self.logs.push(
            LogLevel::Warn,
            &format!(
                "denied: outbound HTTP {} to `{host}`: this host is not among the module's granted outbound hosts",
                request.method()
            ),
            Default::default(),
        );
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}
