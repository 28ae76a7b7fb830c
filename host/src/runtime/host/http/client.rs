//! Sends one request the grant allowed: resolves its host once, checks every address it
//! resolved to, connects to a checked address (never resolving again, so a DNS answer
//! that changes between check and use — rebinding — changes nothing), and speaks
//! HTTP/1.1 over that connection, inside TLS for `https` (see [`super::tls`]).
//!
//! Redirects are not followed here: the guest receives the 3xx, and any request it makes
//! next comes back through the hooks and is checked like the first.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1;
use tokio::net::TcpStream;
use tokio::time::Instant;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use super::exchange::{Ending, Exchange};
use super::policy::OutboundPolicy;
use crate::domain::HostName;

/// Where a request goes, as the policy judged it.
pub(super) struct Target {
    pub(super) host: HostName,
    pub(super) port: u16,
    /// `https`: the connection is wrapped in TLS for `host`.
    pub(super) tls: bool,
}

/// Drives the connection after the response head arrived, so the body keeps flowing.
pub(super) type Connection = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// Resolves, checks, connects and sends; returns the response head with its body still
/// to come, and the future that drives the connection. A refusal is recorded on
/// `exchange` and returned as `HTTP-request-denied`.
pub(super) async fn send(
    request: http::Request<WasiBody>,
    target: &Target,
    options: Option<RequestOptions>,
    policy: &OutboundPolicy,
    exchange: &Exchange,
) -> Result<(http::Response<Incoming>, Connection), Error> {
    let connect_within = shortest(
        policy.settings().connect_timeout,
        options.and_then(|o| o.connect_timeout),
    );
    let connect_by = Instant::now() + connect_within;

    let addrs = tokio::time::timeout_at(connect_by, resolve(&target.host, target.port))
        .await
        .map_err(|_| Error::DnsTimeout)??;
    if let Err(denial) = policy.check_addresses(&target.host, &addrs) {
        exchange.end(Ending::Denied(&denial));
        return Err(super::error_code(&denial));
    }
    let stream = tokio::time::timeout_at(connect_by, connect(&addrs))
        .await
        .map_err(|_| Error::ConnectionTimeout)??;
    if !target.tls {
        return speak_http1(stream, request, options, connect_by).await;
    }
    let handshake = policy.settings().tls.connect(&target.host, stream);
    match tokio::time::timeout_at(connect_by, handshake).await {
        Ok(Ok(stream)) => speak_http1(stream, request, options, connect_by).await,
        Ok(Err((reason, error))) => {
            exchange.end(Ending::Failed(&reason));
            Err(error)
        }
        Err(_) => Err(Error::ConnectionTimeout),
    }
}

/// Sends `request` over HTTP/1.1 on `stream` (plain or TLS) and waits for the response
/// head; the handshake counts against the connect deadline.
pub(super) async fn speak_http1<S>(
    stream: S,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    connect_by: Instant,
) -> Result<(http::Response<Incoming>, Connection), Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = tokio::time::timeout_at(
        connect_by,
        http1::handshake::<_, WasiBody>(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(|err| request_error(&err))?;

    // The request line carries only the path: the authority is in the `Host` header,
    // and an absolute URI would be read as a request to a proxy.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;

    let mut conn = Some(conn);
    let mut response = std::pin::pin!(sender.send_request(request));
    // The response only arrives while the connection is driven; poll both until it does.
    let exchanged = poll_fn(|cx| {
        if let Poll::Ready(result) = response.as_mut().poll(cx) {
            return Poll::Ready(result.map_err(|err| request_error(&err)));
        }
        if let Some(driver) = conn.as_mut()
            && let Poll::Ready(result) = Pin::new(driver).poll(cx)
        {
            conn = None;
            if let Err(err) = result {
                return Poll::Ready(Err(request_error(&err)));
            }
            return response
                .as_mut()
                .poll(cx)
                .map_err(|err| request_error(&err));
        }
        Poll::Pending
    });
    let response = match options.and_then(|o| o.first_byte_timeout) {
        Some(within) => tokio::time::timeout(within, exchanged)
            .await
            .map_err(|_| Error::ConnectionReadTimeout)??,
        None => exchanged.await?,
    };
    let connection: Connection = Box::pin(async move {
        match conn {
            Some(driver) => driver.await.map_err(|err| response_error(&err)),
            None => Ok(()),
        }
    });
    Ok((response, connection))
}

/// The smaller of the operator's limit and the guest's, if the guest set one.
fn shortest(operator: Duration, guest: Option<Duration>) -> Duration {
    guest.map_or(operator, |guest| guest.min(operator))
}

/// Every address `host` stands for. An IP host is its own answer; a name is looked up
/// once, here, and the connection only ever uses these answers.
pub(super) async fn resolve(host: &HostName, port: u16) -> Result<Vec<SocketAddr>, Error> {
    let name = match host {
        HostName::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, port)]),
        HostName::Domain(name) => name,
    };
    let not_found = || Error::DnsError {
        rcode: Some("the name could not be resolved".into()),
        info_code: None,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
        .await
        .map_err(|_| not_found())?
        .collect();
    if addrs.is_empty() {
        return Err(not_found());
    }
    Ok(addrs)
}

/// Connects to the first address that answers, in the resolver's order.
pub(super) async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, Error> {
    let mut last = None;
    for &addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                // Requests are small and written at once; do not hold them back.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(err) => last = Some(err),
        }
    }
    Err(match last.map(|err| err.kind()) {
        Some(io::ErrorKind::ConnectionRefused) => Error::ConnectionRefused,
        Some(io::ErrorKind::TimedOut) => Error::ConnectionTimeout,
        Some(io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted) => {
            Error::ConnectionTerminated
        }
        _ => Error::DestinationUnavailable,
    })
}

/// The guest-facing error for a failure while sending a request.
fn request_error(err: &hyper::Error) -> Error {
    if err.is_timeout() {
        Error::ConnectionWriteTimeout
    } else {
        response_error(err)
    }
}

/// The guest-facing error for a failure while receiving a response.
pub(super) fn response_error(err: &hyper::Error) -> Error {
    if err.is_timeout() {
        Error::HttpResponseTimeout
    } else if err.is_incomplete_message() {
        Error::HttpResponseIncomplete
    } else if err.is_closed() || err.is_canceled() {
        Error::ConnectionTerminated
    } else {
        Error::HttpProtocolError
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_may_shorten_the_connect_timeout_but_not_lengthen_it() {
        let operator = Duration::from_secs(10);
        assert_eq!(shortest(operator, None), operator);
        assert_eq!(
            shortest(operator, Some(Duration::from_millis(200))),
            Duration::from_millis(200)
        );
        assert_eq!(shortest(operator, Some(Duration::from_secs(60))), operator);
    }

    #[tokio::test]
    async fn an_ip_host_is_not_looked_up() {
        let host = HostName::parse("127.0.0.1").unwrap();
        assert_eq!(
            resolve(&host, 8080).await.unwrap(),
            ["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]
        );
    }
}
