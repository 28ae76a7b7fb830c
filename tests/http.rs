//! Outbound HTTP from a real guest against a real server on 127.0.0.1: what is granted
//! is reached, what is not is refused before any traffic, redirects are checked hop by
//! hop, bodies are capped, time is bounded, and every request leaves one log line.
//!
//! Nothing here sends a packet beyond loopback: refusals of public names happen before
//! resolution, and the test server is the only thing ever connected to.

#[path = "support/guests.rs"]
mod guests;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use runcell::embed::{
    EngineSettings, HostServices, IpNetwork, LoadedModule, OutboundSettings, OutboundTls,
    RunRequest, Runtime, RuntimeConfig,
};
use runcell::embed::{FailureKind, Grants, Limits, LogEntry, LogLevel, Outcome, RunReport};
use serde_json::{Value, json};

/// The response cap the tests run under, small so that exceeding it is cheap.
const CAP: u64 = 64 * 1024;
const GREETING: &str = "hello from the test server";

/// A server on an ephemeral port of 127.0.0.1 that records the paths it was asked for.
struct TestServer {
    port: u16,
    hits: Arc<Mutex<Vec<String>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TestServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/hello", get(|| async { GREETING }))
            .route("/redirect-loopback", get(redirect_to_loopback))
            .route(
                "/redirect-away",
                get(|| async { redirect("http://api.example.org/hello") }),
            )
            .route("/redirect-here", get(redirect_here))
            .route("/big", get(|| async { "x".repeat(4 * CAP as usize) }))
            .route("/big-stream", get(big_stream))
            .route("/slow", get(slow))
            .route("/stall", get(stall))
            .layer(axum::middleware::from_fn_with_state(
                hits.clone(),
                record_hit,
            ))
            .with_state(port);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            port,
            hits,
            _stop: stop,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }
}

async fn record_hit(
    State(hits): State<Arc<Mutex<Vec<String>>>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    hits.lock().unwrap().push(request.uri().path().to_owned());
    next.run(request).await
}

fn redirect(location: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, location.to_owned())]).into_response()
}

async fn redirect_to_loopback(State(port): State<u16>) -> Response {
    redirect(&format!("http://127.0.0.2:{port}/hello"))
}

async fn redirect_here(State(port): State<u16>) -> Response {
    redirect(&format!("http://127.0.0.1:{port}/hello"))
}

/// Over the cap, without a declared length: the cap must hold while streaming.
async fn big_stream() -> Body {
    let chunks = (0..16).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 16 * 1024]));
    Body::from_stream(futures_util::stream::iter(chunks))
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(10)).await;
    "too late"
}

/// Sends a first chunk, then nothing for a long time.
async fn stall() -> Body {
    let first = futures_util::stream::once(async { Ok::<_, std::io::Error>(b"first".to_vec()) });
    let never = futures_util::stream::once(async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, std::io::Error>(b"second".to_vec())
    });
    Body::from_stream(futures_util::StreamExt::chain(first, never))
}

/// Loopback opened for 127.0.0.1 only, as a test server needs; everything else closed.
fn loopback_only() -> OutboundSettings {
    OutboundSettings {
        allowed_networks: vec!["127.0.0.1".parse::<IpNetwork>().unwrap()],
        max_response_bytes: CAP,
        ..OutboundSettings::default()
    }
}

async fn client(settings: OutboundSettings) -> (Runtime, Arc<LoadedModule>) {
    let config = RuntimeConfig {
        engine: EngineSettings {
            max_concurrent_instances: 4,
            ..Default::default()
        },
        cache_dir: None,
        outbound: settings,
    };
    let runtime = Runtime::new(config, HostServices::in_memory()).expect("runtime starts");
    let module = runtime
        .load(Arc::from(guests::guest_bytes("http-client")))
        .await
        .expect("http-client loads");
    (runtime, module)
}

async fn fetch(
    runtime: &Runtime,
    module: &Arc<LoadedModule>,
    hosts: &[String],
    input: Value,
    limits: Limits,
) -> RunReport {
    let mut request = RunRequest::new("fetch", input.to_string(), limits);
    request.grants = Arc::new(Grants {
        outbound_hosts: hosts.to_vec(),
        ..Grants::default()
    });
    runtime.run(module, request).await
}

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(10),
        ..Limits::default()
    }
}

fn output(report: &RunReport) -> &Value {
    match &report.outcome {
        Outcome::Completed { output } => output,
        other => panic!(
            "expected completion, got {other:?}; logs: {:#?}",
            report.logs
        ),
    }
}

/// The message of a transient failure: how the fixture reports what the host told it.
fn guest_error(report: &RunReport) -> &str {
    match &report.outcome {
        Outcome::Failed {
            kind: FailureKind::Transient,
            message,
        } => message,
        other => panic!(
            "expected a transient failure, got {other:?}; logs: {:#?}",
            report.logs
        ),
    }
}

fn http_lines(report: &RunReport) -> Vec<&LogEntry> {
    report
        .logs
        .iter()
        .filter(|line| line.message.starts_with("http "))
        .collect()
}

#[tokio::test]
async fn an_allowed_host_is_reached_and_every_request_is_logged() {
    let server = TestServer::start().await;
    let (runtime, module) = client(loopback_only()).await;
    let grant = [format!("127.0.0.1:{}", server.port)];
    let report = fetch(
        &runtime,
        &module,
        &grant,
        json!({ "url": server.url("/hello") }),
        limits(),
    )
    .await;
    let out = output(&report);
    assert_eq!(out["status"], 200);
    assert_eq!(out["body"], GREETING);
    assert_eq!(server.hits(), ["/hello"]);

    let lines = http_lines(&report);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let line = lines[0];
    assert_eq!(line.message, "http GET 127.0.0.1 -> 200");
    assert_eq!(line.level, LogLevel::Info);
    assert_eq!(line.fields["method"], "GET");
    assert_eq!(line.fields["host"], "127.0.0.1");
    assert_eq!(line.fields["port"], server.port);
    assert_eq!(line.fields["status"], 200);
    assert_eq!(line.fields["bytes"], GREETING.len());
    assert!(line.fields["ms"].as_u64().unwrap() < 5_000);
    assert!(!line.fields.contains_key("denied"));
}

#[tokio::test]
async fn hosts_and_ports_outside_the_grant_are_denied_before_any_traffic() {
    let server = TestServer::start().await;
    let (runtime, module) = client(loopback_only()).await;
    let grant = [format!("127.0.0.1:{}", server.port)];
    let other_port = if server.port == 65535 {
        1
    } else {
        server.port + 1
    };
    for (url, shown, port) in [
        (
            "http://api.example.com/hello".to_owned(),
            "api.example.com",
            80,
        ),
        (
            format!("http://127.0.0.1:{other_port}/hello"),
            "127.0.0.1",
            other_port,
        ),
    ] {
        let report = fetch(&runtime, &module, &grant, json!({ "url": url }), limits()).await;
        assert!(
            guest_error(&report).ends_with("HttpRequestDenied"),
            "{:?}",
            report.outcome
        );
        let lines = http_lines(&report);
        assert_eq!(lines.len(), 1);
        assert_eq!(
            lines[0].message,
            format!(
                "http GET {shown} -> denied: `{shown}:{port}` is not among the module's granted outbound hosts"
            )
        );
        assert_eq!(lines[0].level, LogLevel::Warn);
        assert_eq!(lines[0].fields["port"], port);
        assert!(lines[0].fields.contains_key("denied"));
    }
    assert!(server.hits().is_empty());
}

#[tokio::test]
async fn nothing_is_reachable_without_a_grant() {
    let server = TestServer::start().await;
    let (runtime, module) = client(loopback_only()).await;
    let report = fetch(
        &runtime,
        &module,
        &[],
        json!({ "url": server.url("/hello") }),
        limits(),
    )
    .await;
    assert!(guest_error(&report).ends_with("HttpRequestDenied"));
    assert!(server.hits().is_empty());
}

#[tokio::test]
async fn a_granted_host_at_a_forbidden_address_is_denied() {
    let server = TestServer::start().await;
    let port = server.port;
    // Granted by name and address, but loopback is closed by default.
    // Granted by name and address, or by `*`: the address policy alone refuses, and the
    // guest is told so rather than to ask for a host it already has.
    let (runtime, module) = client(OutboundSettings::default()).await;
    let named = [format!("127.0.0.1:{port}"), format!("localhost:{port}")];
    let any = ["*".to_owned()];
    for grant in [&named[..], &any[..]] {
        for (url, host) in [
            (server.url("/hello"), "127.0.0.1"),
            (format!("http://localhost:{port}/hello"), "localhost"),
        ] {
            let report = fetch(&runtime, &module, grant, json!({ "url": url }), limits()).await;
            let error = guest_error(&report);
            assert!(error.ends_with("DestinationIpProhibited"), "{error}");
            let lines = http_lines(&report);
            let message = &lines[0].message;
            assert!(
                message.starts_with(&format!("http GET {host} -> denied: `{host}` is ")),
                "{message}"
            );
            assert!(
                message.contains("a loopback address, which this server does not allow"),
                "{message}"
            );
            assert!(message.contains("--outbound-allow"), "{message}");
        }
    }
    assert!(server.hits().is_empty());
}

#[tokio::test]
async fn a_name_is_resolved_by_the_host_and_reached_when_its_addresses_are_allowed() {
    let server = TestServer::start().await;
    let port = server.port;
    let (runtime, module) = client(OutboundSettings {
        allow_private: true,
        ..OutboundSettings::default()
    })
    .await;
    let report = fetch(
        &runtime,
        &module,
        &[format!("localhost:{port}")],
        json!({ "url": format!("http://LOCALHOST.:{port}/hello") }),
        limits(),
    )
    .await;
    assert_eq!(output(&report)["body"], GREETING);
    assert_eq!(http_lines(&report)[0].message, "http GET localhost -> 200");
}

#[tokio::test]
async fn the_servers_own_address_is_never_reachable() {
    let server = TestServer::start().await;
    let own: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let (runtime, module) = client(OutboundSettings {
        own_addresses: vec![own],
        ..loopback_only()
    })
    .await;
    let report = fetch(
        &runtime,
        &module,
        &[own.to_string()],
        json!({ "url": server.url("/hello") }),
        limits(),
    )
    .await;
    assert!(guest_error(&report).ends_with("DestinationIpProhibited"));
    assert!(
        http_lines(&report)[0]
            .message
            .ends_with("this server's own address"),
        "{:?}",
        report.logs
    );
    assert!(server.hits().is_empty());
}

#[tokio::test]
async fn redirects_reach_the_guest_and_each_hop_is_checked_again() {
    let server = TestServer::start().await;
    let port = server.port;
    let (runtime, module) = client(loopback_only()).await;
    // 127.0.0.2 is granted too, so only the address policy stands in the way.
    let grant = [format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}")];

    let not_followed = fetch(
        &runtime,
        &module,
        &grant,
        json!({ "url": server.url("/redirect-loopback") }),
        limits(),
    )
    .await;
    assert_eq!(
        output(&not_followed)["status"],
        302,
        "the host does not follow"
    );

    let followed = fetch(
        &runtime,
        &module,
        &grant,
        json!({ "url": server.url("/redirect-loopback"), "followRedirects": true }),
        limits(),
    )
    .await;
    let message = guest_error(&followed);
    assert!(
        message.ends_with(&format!(
            "http://127.0.0.2:{port}/hello: ErrorCode::DestinationIpProhibited"
        )),
        "{message}"
    );
    let lines = http_lines(&followed);
    assert_eq!(lines[0].message, "http GET 127.0.0.1 -> 302");
    assert!(
        lines[1].message.starts_with(
            "http GET 127.0.0.2 -> denied: `127.0.0.2` is 127.0.0.2, a loopback address, \
             which this server does not allow"
        ),
        "{}",
        lines[1].message
    );

    let away = fetch(
        &runtime,
        &module,
        &grant,
        json!({ "url": server.url("/redirect-away"), "followRedirects": true }),
        limits(),
    )
    .await;
    assert!(
        guest_error(&away).contains("http://api.example.org/hello: ErrorCode::HttpRequestDenied")
    );
    assert!(
        http_lines(&away)[1]
            .message
            .contains("not among the module's granted outbound hosts")
    );

    let allowed = fetch(
        &runtime,
        &module,
        &grant,
        json!({ "url": server.url("/redirect-here"), "followRedirects": true }),
        limits(),
    )
    .await;
    assert_eq!(output(&allowed)["body"], GREETING);

    assert_eq!(
        server.hits(),
        [
            "/redirect-loopback",
            "/redirect-loopback",
            "/redirect-away",
            "/redirect-here",
            "/hello"
        ],
        "no denied hop reached a server"
    );
}

#[tokio::test]
async fn a_response_over_the_size_cap_fails_the_body_stream() {
    let server = TestServer::start().await;
    let (runtime, module) = client(loopback_only()).await;
    let grant = [format!("127.0.0.1:{}", server.port)];
    for path in ["/big", "/big-stream"] {
        let report = fetch(
            &runtime,
            &module,
            &grant,
            json!({ "url": server.url(path) }),
            limits(),
        )
        .await;
        let message = guest_error(&report);
        assert!(
            message.ends_with(&format!(
                "HTTP response body size exceeds limit: {CAP} bytes"
            )),
            "{path}: {message}"
        );
        let line = http_lines(&report)[0];
        assert_eq!(
            line.message,
            "http GET 127.0.0.1 -> 200, then failed: the response body is larger than the limit of 64.0 KiB"
        );
        assert!(line.fields["bytes"].as_u64().unwrap() <= CAP, "{path}");
    }
}

#[tokio::test]
async fn a_guest_timeout_shorter_than_the_deadline_fails_the_request_inside_the_guest() {
    let server = TestServer::start().await;
    let (runtime, module) = client(loopback_only()).await;
    let grant = [format!("127.0.0.1:{}", server.port)];
    let report = fetch(
        &runtime,
        &module,
        &grant,
        json!({ "url": server.url("/slow"), "firstByteTimeoutMs": 200 }),
        limits(),
    )
    .await;
    assert!(
        guest_error(&report).ends_with("ConnectionReadTimeout"),
        "{:?}",
        report.outcome
    );
    assert!(
        report.usage.wall_time < Duration::from_secs(3),
        "{:?}",
        report.usage.wall_time
    );
    assert_eq!(
        http_lines(&report)[0].message,
        "http GET 127.0.0.1 -> failed: connection read timeout"
    );

    let report = fetch(
        &runtime,
        &module,
        &grant,
        json!({ "url": server.url("/stall"), "betweenBytesTimeoutMs": 200 }),
        limits(),
    )
    .await;
    assert!(
        guest_error(&report).ends_with("connection read timeout"),
        "{:?}",
        report.outcome
    );
    let line = http_lines(&report)[0];
    assert_eq!(
        line.message,
        "http GET 127.0.0.1 -> 200, then failed: no data for 200ms between chunks of the body"
    );
    assert_eq!(line.fields["bytes"], 5);
}

#[tokio::test]
async fn a_response_slower_than_the_deadline_ends_the_run_timed_out() {
    let server = TestServer::start().await;
    let (runtime, module) = client(loopback_only()).await;
    let grant = [format!("127.0.0.1:{}", server.port)];
    let timeout = Duration::from_millis(500);
    let report = fetch(
        &runtime,
        &module,
        &grant,
        json!({ "url": server.url("/slow") }),
        Limits {
            timeout,
            ..limits()
        },
    )
    .await;
    assert_eq!(report.outcome, Outcome::TimedOut { timeout });
    assert!(
        report.usage.wall_time < timeout + Duration::from_millis(500),
        "{:?}",
        report.usage.wall_time
    );
    let line = http_lines(&report)[0];
    assert_eq!(
        line.message,
        "http GET 127.0.0.1 -> unfinished: the run hit its deadline"
    );
    assert!(line.fields["ms"].as_u64().unwrap() >= 400);
}

/// A certificate authority made for one test, and an https server on 127.0.0.1 whose
/// certificate it signed for the names given.
struct TlsFixture {
    ca_pem: String,
    port: u16,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Accepts TLS connections for `axum::serve`; a client refusing the certificate ends
/// its handshake, which is expected here, so failed handshakes are skipped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl TlsFixture {
    async fn start(names: &[&str]) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let server_cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![server_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        };
        let app = Router::new().route("/hello", get(|| async { GREETING }));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            ca_pem: ca_cert.pem(),
            port,
            _stop: stop,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Loopback opened, and this fixture's CA trusted besides the public roots.
    fn settings(&self) -> OutboundSettings {
        OutboundSettings {
            tls: OutboundTls::with_extra_roots_pem(self.ca_pem.as_bytes()).unwrap(),
            ..loopback_only()
        }
    }
}

#[tokio::test]
async fn https_reaches_a_server_whose_certificate_the_trusted_roots_vouch_for() {
    let server = TlsFixture::start(&["127.0.0.1"]).await;
    let (runtime, module) = client(server.settings()).await;
    let grant = [format!("127.0.0.1:{}", server.port)];
    let report = fetch(
        &runtime,
        &module,
        &grant,
        json!({ "url": server.url("/hello") }),
        limits(),
    )
    .await;
    let out = output(&report);
    assert_eq!(out["status"], 200);
    assert_eq!(out["body"], GREETING);
    let lines = http_lines(&report);
    assert_eq!(lines[0].message, "http GET 127.0.0.1 -> 200");
}

#[tokio::test]
async fn https_refuses_an_unknown_authority_or_a_certificate_for_another_name() {
    // The public roots alone do not vouch for a private CA.
    let server = TlsFixture::start(&["127.0.0.1"]).await;
    let (runtime, module) = client(loopback_only()).await;
    let grant = [format!("127.0.0.1:{}", server.port)];
    let report = fetch(
        &runtime,
        &module,
        &grant,
        json!({ "url": server.url("/hello") }),
        limits(),
    )
    .await;
    assert!(
        guest_error(&report).ends_with("TlsCertificateError"),
        "{}",
        guest_error(&report)
    );
    let line = &http_lines(&report)[0];
    assert!(
        line.message.contains("TLS handshake with 127.0.0.1 failed")
            && line.message.contains("UnknownIssuer"),
        "{}",
        line.message
    );

    // A trusted CA, but the certificate names another host.
    let elsewhere = TlsFixture::start(&["elsewhere.example"]).await;
    let (runtime, module) = client(elsewhere.settings()).await;
    let grant = [format!("127.0.0.1:{}", elsewhere.port)];
    let report = fetch(
        &runtime,
        &module,
        &grant,
        json!({ "url": elsewhere.url("/hello") }),
        limits(),
    )
    .await;
    assert!(guest_error(&report).ends_with("TlsCertificateError"));
    let line = &http_lines(&report)[0];
    assert!(
        line.message
            .contains("certificate not valid for name \"127.0.0.1\""),
        "{}",
        line.message
    );
}

#[tokio::test]
async fn requests_in_flight_at_once_are_capped() {
    let server = TestServer::start().await;
    let (runtime, module) = client(OutboundSettings {
        max_requests_in_flight: 2,
        ..loopback_only()
    })
    .await;
    let grant = [format!("127.0.0.1:{}", server.port)];
    let within = fetch(
        &runtime,
        &module,
        &grant,
        json!({ "url": server.url("/hello"), "parallel": 2 }),
        limits(),
    )
    .await;
    assert_eq!(*output(&within), json!([200, 200]));

    let over = fetch(
        &runtime,
        &module,
        &grant,
        json!({ "url": server.url("/hello"), "parallel": 3 }),
        limits(),
    )
    .await;
    let message = guest_error(&over);
    assert!(
        message.ends_with("ErrorCode::ConnectionLimitReached"),
        "{message}"
    );
    let refused: Vec<_> = http_lines(&over)
        .into_iter()
        .filter(|line| line.fields.contains_key("error"))
        .collect();
    assert_eq!(refused.len(), 1, "{:#?}", over.logs);
    assert!(
        refused[0]
            .message
            .starts_with("http GET 127.0.0.1 -> failed: 2 requests already in flight"),
        "{}",
        refused[0].message
    );
    assert_eq!(
        server.hits().len(),
        4,
        "two requests per run reached the server"
    );
}
