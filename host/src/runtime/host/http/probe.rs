//! One request made by the server itself rather than by a guest: an endpoint monitor's
//! check. It goes out the way a guest's request does — the operator's address policy
//! decides on the URL and on every address its host resolves to, the connection goes to
//! a checked address and is never resolved again, TLS is checked against the same roots
//! — with the grant of a module allowed `*`: which hosts are checked is the monitor's
//! definition, and the address policy still keeps loopback, private and metadata
//! addresses closed unless the operator opened them (`--outbound-allow`).
//!
//! Redirects are never followed: a 3xx is the answer. So a public URL that redirects to
//! an internal address makes one request, to the public URL, and nothing more.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use super::client::{connect, resolve, speak_http1};
use super::policy::{OutboundPolicy, OutboundSettings};
use crate::domain::{Grants, HostName, Millis};

/// The most of a response body a check reads: conditions look at a health document,
/// not at a download.
const MAX_PROBE_BODY_BYTES: usize = 1024 * 1024;

/// The `User-Agent` of checks, unless the monitor sets its own.
const USER_AGENT: &str = concat!("runcell-endpoint-monitor/", env!("CARGO_PKG_VERSION"));

/// A request to make.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    pub method: http::Method,
    /// An `http://` or `https://` URL.
    pub url: String,
    /// Headers to send, secret values included (the caller opened them).
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    /// For the whole exchange: resolving, connecting, TLS, the answer and its body.
    pub timeout: Duration,
}

/// What the server answered.
#[derive(Debug, Clone)]
pub(crate) struct ProbeAnswer {
    pub status: u16,
    /// The body's first [`MAX_PROBE_BODY_BYTES`] bytes.
    pub body: Bytes,
    /// From the start (the name lookup) to the end of the body, or of what was read.
    pub elapsed: Duration,
    /// When the server's certificate expires (https only).
    pub certificate_not_after: Option<Millis>,
}

/// Why there is no answer. The text says it in words, for the check's record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProbeFailure {
    /// The address policy (or the URL itself) refused it; nothing was sent.
    #[error("refused: {0}")]
    Refused(String),
    /// It was attempted and failed: no connection, a TLS failure, a broken answer.
    #[error("{0}")]
    Failed(String),
    #[error("no answer within {} ms", .0.as_millis())]
    TimedOut(Duration),
}

/// Makes `probe` under the operator's outbound `settings`.
pub(crate) async fn probe(
    settings: &Arc<OutboundSettings>,
    probe: &Probe,
) -> Result<ProbeAnswer, ProbeFailure> {
    let started = Instant::now();
    match tokio::time::timeout(probe.timeout, exchange(settings, probe, started)).await {
        Ok(answer) => answer,
        Err(_) => Err(ProbeFailure::TimedOut(probe.timeout)),
    }
}

async fn exchange(
    settings: &Arc<OutboundSettings>,
    probe: &Probe,
    started: Instant,
) -> Result<ProbeAnswer, ProbeFailure> {
    let url = url::Url::parse(&probe.url)
        .map_err(|err| ProbeFailure::Refused(format!("`{}` is not a URL: {err}", probe.url)))?;
    let scheme = url.scheme().to_owned();
    let raw_host = url.host_str().unwrap_or("");
    let host = HostName::parse(raw_host)
        .map_err(|_| ProbeFailure::Refused(format!("`{raw_host}` is not a valid host")))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let everywhere = Arc::new(Grants {
        outbound_hosts: vec!["*".to_owned()],
        ..Grants::default()
    });
    let policy = OutboundPolicy::new(everywhere, settings.clone());
    policy
        .check_target(&scheme, &host, port)
        .map_err(|denial| ProbeFailure::Refused(denial.to_string()))?;
    let addrs = resolve(&host, port).await.map_err(failed)?;
    policy
        .check_addresses(&host, &addrs)
        .map_err(|denial| ProbeFailure::Refused(denial.to_string()))?;
    let stream = connect(&addrs).await.map_err(failed)?;
    let request = build_request(probe, &url, &host)?;
    let options = Some(RequestOptions {
        connect_timeout: None,
        first_byte_timeout: None,
        between_bytes_timeout: None,
    });
    let far = tokio::time::Instant::now() + probe.timeout;
    let (response, certificate_not_after, connection) = if scheme == "https" {
        let stream = settings
            .tls
            .connect(&host, stream)
            .await
            .map_err(|(reason, _)| ProbeFailure::Failed(reason))?;
        let not_after = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| super::certificate::not_after(leaf));
        let (response, connection) = speak_http1(stream, request, options, far)
            .await
            .map_err(failed)?;
        (response, not_after, connection)
    } else {
        let (response, connection) = speak_http1(stream, request, options, far)
            .await
            .map_err(failed)?;
        (response, None, connection)
    };
    // The connection must be driven while the body is read; it ends with this task.
    let driver = tokio::spawn(connection);
    let status = response.status().as_u16();
    let body = read_capped(response.into_body()).await;
    driver.abort();
    Ok(ProbeAnswer {
        status,
        body: body?,
        elapsed: started.elapsed(),
        certificate_not_after,
    })
}

fn build_request(
    probe: &Probe,
    url: &url::Url,
    host: &HostName,
) -> Result<http::Request<WasiBody>, ProbeFailure> {
    // `Url::port` is `None` for the scheme's default port, which `Host` leaves out.
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let mut builder = http::Request::builder()
        .method(probe.method.clone())
        .uri(url.as_str())
        .header(http::header::HOST, authority);
    let has = |name: &http::header::HeaderName| {
        probe
            .headers
            .iter()
            .any(|(given, _)| given.eq_ignore_ascii_case(name.as_str()))
    };
    if !has(&http::header::USER_AGENT) {
        builder = builder.header(http::header::USER_AGENT, USER_AGENT);
    }
    for (name, value) in &probe.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let body = Full::new(Bytes::from(probe.body.clone().unwrap_or_default()))
        .map_err(|never| match never {})
        .boxed_unsync();
    // The header's name may be printed, never its value: it may be a secret.
    builder
        .body(body)
        .map_err(|_| ProbeFailure::Refused("a header's name or value is not valid in HTTP".into()))
}

/// The body's first [`MAX_PROBE_BODY_BYTES`]; the rest is not read.
async fn read_capped(mut body: hyper::body::Incoming) -> Result<Bytes, ProbeFailure> {
    let mut read = BytesMut::new();
    while read.len() < MAX_PROBE_BODY_BYTES {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = MAX_PROBE_BODY_BYTES - read.len();
                    read.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Some(Err(err)) => {
                return Err(ProbeFailure::Failed(format!(
                    "the response body broke off: {}",
                    describe(&super::client::response_error(&err))
                )));
            }
        }
    }
    Ok(read.freeze())
}

fn failed(error: Error) -> ProbeFailure {
    ProbeFailure::Failed(describe(&error))
}

/// A connection error in words.
fn describe(error: &Error) -> String {
    match error {
        Error::DnsError { .. } | Error::DnsTimeout => "the name could not be resolved".to_owned(),
        Error::ConnectionRefused => "connection refused".to_owned(),
        Error::ConnectionTimeout => "connecting timed out".to_owned(),
        Error::ConnectionTerminated => "the server closed the connection".to_owned(),
        Error::DestinationUnavailable => "the address cannot be reached".to_owned(),
        Error::HttpResponseIncomplete => "the answer was cut short".to_owned(),
        Error::HttpProtocolError => "the answer is not valid HTTP/1.1".to_owned(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::host::http::{IpNetwork, OutboundTls};

    /// An https server on 127.0.0.1 whose certificate, for `127.0.0.1`, expires on
    /// 2040-06-01 and is signed by a CA of its own; answers every request `200 ok`.
    /// Returns its port and the CA's PEM.
    async fn tls_server() -> (u16, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2040, 6, 1);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = [0u8; 4096];
                    let _ = tls.read(&mut head).await;
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (port, ca_pem)
    }

    fn get(url: String) -> Probe {
        Probe {
            method: http::Method::GET,
            url,
            headers: Vec::new(),
            body: None,
            timeout: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn an_https_answer_carries_the_certificate_expiry() {
        let (port, ca_pem) = tls_server().await;
        let settings = Arc::new(OutboundSettings {
            allowed_networks: vec!["127.0.0.1".parse::<IpNetwork>().unwrap()],
            tls: OutboundTls::with_extra_roots_pem(ca_pem.as_bytes()).unwrap(),
            ..OutboundSettings::default()
        });
        let answer = probe(&settings, &get(format!("https://127.0.0.1:{port}/")))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(&answer.body[..], b"ok");
        let expected = chrono::NaiveDate::from_ymd_opt(2040, 6, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis();
        assert_eq!(answer.certificate_not_after, Some(expected));
    }

    #[tokio::test]
    async fn the_address_policy_refuses_before_anything_is_sent() {
        let (port, _) = tls_server().await;
        let closed = Arc::new(OutboundSettings::default());
        for url in [
            format!("https://127.0.0.1:{port}/"),
            format!("http://localhost:{port}/"),
            "http://169.254.169.254/".to_owned(),
            "ftp://example.com/".to_owned(),
        ] {
            let failure = probe(&closed, &get(url.clone())).await.unwrap_err();
            assert!(
                matches!(failure, ProbeFailure::Refused(_)),
                "{url}: {failure}"
            );
        }
        // Opened, the same server is reached; an untrusted certificate is a failure.
        let opened = Arc::new(OutboundSettings {
            allowed_networks: vec!["127.0.0.1".parse::<IpNetwork>().unwrap()],
            ..OutboundSettings::default()
        });
        let failure = probe(&opened, &get(format!("https://127.0.0.1:{port}/")))
            .await
            .unwrap_err();
        assert!(matches!(failure, ProbeFailure::Failed(_)), "{failure}");
        assert!(failure.to_string().contains("TLS handshake"), "{failure}");
    }
}
