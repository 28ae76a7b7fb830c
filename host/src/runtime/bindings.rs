//! Generated bindings for the `runcell:module` contract. Private to the runtime: the rest
//! of the crate sees domain types, never these.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "runcell:module/job-module",
    imports: { default: async | trappable },
    exports: { default: async },
    require_store_data_send: true,
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
    },
    trappable_error_type: {
        "runcell:module/kv.error" => crate::runtime::host::kv::KvFailure,
        "runcell:module/events.error" => crate::runtime::host::events::PublishFailure,
        "runcell:module/metrics.error" => crate::runtime::host::metrics::ObserveFailure,
    },
});

pub(crate) use self::runcell::module::{config, events, kv, log, metrics, types};
