//! The start of the tests of outbound requests: a server that may reach loopback, a
//! local HTTP server answering `200 hello`, and the `http-client` module uploaded (not
//! yet approved).

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use serde_json::Value;

use crate::server::{Server, ServerOptions};
use crate::{guests, peers};

pub(crate) struct HttpClientSetup {
    pub server: Server,
    /// The hello server's port.
    pub port: u16,
    /// `127.0.0.1:{port}`, as a host pattern to grant.
    pub local: String,
    /// Requests the hello server answered.
    pub served: Arc<AtomicUsize>,
    /// The upload's answer.
    pub installed: Value,
}

pub(crate) fn http_client_beside_a_hello_server() -> HttpClientSetup {
    http_client_beside_a_hello_server_with(&[])
}

/// The same, the server started with `env` as well.
pub(crate) fn http_client_beside_a_hello_server_with(env: &[(&str, &str)]) -> HttpClientSetup {
    let (port, served) = peers::hello_server();
    let mut env: Vec<(String, String)> = env
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    env.push(("RUNCELL_OUTBOUND_ALLOW".into(), "127.0.0.1".into()));
    let server = Server::start_with(ServerOptions {
        env,
        ..ServerOptions::default()
    });
    let client = std::fs::read(guests::guest("http-client")).unwrap();
    let installed = server.post_bytes("/api/v1/modules", "application/wasm", &client);
    assert_eq!(installed.status, 201, "{}", installed.body);
    HttpClientSetup {
        server,
        port,
        local: format!("127.0.0.1:{port}"),
        served,
        installed: installed.body,
    }
}
