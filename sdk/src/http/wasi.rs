//! The `wasi:http` plumbing behind [`Request::send`] and the routes: moving headers and
//! bodies in and out of WASI resources, waiting for responses, and turning WASI error
//! codes into [`ErrorKind`]s. Resource lifetimes matter here: a child (a stream, a
//! pollable, a headers handle) must be dropped before its parent, or the host traps.

use crate::__bindings::wasi::http::outgoing_handler;
use crate::__bindings::wasi::http::types::{
    self as wasi_http, ErrorCode, HeaderError, IncomingBody, OutgoingBody, RequestOptions,
};
use crate::__bindings::wasi::io::streams::StreamError;

use super::url::{self, Scheme, Target};
use super::{ErrorKind, Headers, HttpError, Method, Request, Response};

/// Bytes asked for per read of a body stream.
const READ_CHUNK_BYTES: u64 = 64 * 1024;
/// Most bytes `blocking-write-and-flush` accepts per call (a WASI rule).
const WRITE_CHUNK_BYTES: usize = 4096;

/// Why a body could not be read or written.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Longer than the limit given.
    TooLarge,
    /// The stream failed; the code says why when the host knows.
    Failed(Option<ErrorCode>),
}

pub(crate) fn send(request: Request) -> Result<Response, HttpError> {
    if let Some(problem) = &request.body_error {
        return Err(request.error(ErrorKind::InvalidRequest, problem.clone()));
    }
    let target = url::parse(&request.url).map_err(|problem| {
        request.error(ErrorKind::InvalidRequest, format!("invalid URL: {problem}"))
    })?;
    let fail = |(kind, detail): (ErrorKind, String)| request.error(kind, detail);

    let fields = to_fields(&request.headers).map_err(fail)?;
    if needs_content_length(&request) {
        fields
            .append("content-length", request.body.len().to_string().as_bytes())
            .map_err(|error| fail(header_problem("content-length", &error)))?;
    }
    let outgoing = wasi_http::OutgoingRequest::new(fields);
    let invalid = |what: &str| {
        request.error(
            ErrorKind::InvalidRequest,
            format!("the host refused the request's {what}"),
        )
    };
    outgoing
        .set_method(&to_wasi_method(&request.method))
        .map_err(|()| invalid("method"))?;
    outgoing
        .set_scheme(Some(&match target.scheme {
            Scheme::Http => wasi_http::Scheme::Http,
            Scheme::Https => wasi_http::Scheme::Https,
        }))
        .map_err(|()| invalid("scheme"))?;
    outgoing
        .set_authority(Some(&target.authority))
        .map_err(|()| invalid("host"))?;
    outgoing
        .set_path_with_query(Some(&target.path_with_query))
        .map_err(|()| invalid("path"))?;
    let body = outgoing
        .body()
        .map_err(|()| request.error(ErrorKind::Internal, "the request body was already taken"))?;
    let options = match request.timeout {
        Some(timeout) => Some(request_options(timeout).map_err(|()| {
            request.error(
                ErrorKind::InvalidRequest,
                format!("the host does not accept a timeout of {timeout:?}"),
            )
        })?),
        None => None,
    };

    // Hand the request over first and write the body after: the host streams the body to
    // the server, so writing a large body before `handle` could block forever.
    let future = outgoing_handler::handle(outgoing, options)
        .map_err(|code| fail(classify(&code, &target)))?;
    // A body that breaks off fails the request, and the response future then says why,
    // better than the stream can. A server may also answer (413, say) before taking the
    // whole body; then its answer is the result. So the body's own failure is not reported.
    match write_body(&body, &request.body) {
        Ok(()) => drop(OutgoingBody::finish(body, None)),
        // Dropping an unfinished body tells the host the request is incomplete; it must
        // happen before waiting, or the host would wait for the rest of the body.
        Err(_) => drop(body),
    }

    let pollable = future.subscribe();
    pollable.block();
    drop(pollable);
    let incoming = match future.get() {
        Some(Ok(Ok(incoming))) => incoming,
        Some(Ok(Err(code))) => return Err(fail(classify(&code, &target))),
        Some(Err(())) | None => {
            return Err(request.error(ErrorKind::Internal, "the host lost the response"));
        }
    };

    let status = incoming.status();
    let headers = incoming.headers();
    let headers_read = from_entries(headers.entries());
    drop(headers);
    let body = incoming
        .consume()
        .map_err(|()| request.error(ErrorKind::Internal, "the response body was already taken"))?;
    let body = read_body(body, request.max_response_bytes).map_err(|error| match error {
        BodyError::TooLarge => request.error(
            ErrorKind::ResponseTooLarge,
            format!(
                "the response body is longer than {} bytes (raise `max_response_bytes` if it is expected)",
                request.max_response_bytes
            ),
        ),
        error => fail(body_problem(error, &target, "reading the response body")),
    })?;
    Ok(Response::new(&request, status, headers_read, body))
}

fn needs_content_length(request: &Request) -> bool {
    let sends_body = !request.body.is_empty()
        || matches!(request.method, Method::Post | Method::Put | Method::Patch);
    sends_body && !request.headers.contains("content-length")
}

fn request_options(timeout: std::time::Duration) -> Result<RequestOptions, ()> {
    let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    let options = RequestOptions::new();
    options.set_connect_timeout(Some(nanos))?;
    options.set_first_byte_timeout(Some(nanos))?;
    options.set_between_bytes_timeout(Some(nanos))?;
    Ok(options)
}

/// Reads `body` to its end, failing once it is longer than `max` bytes.
pub(crate) fn read_body(body: IncomingBody, max: usize) -> Result<Vec<u8>, BodyError> {
    let stream = body.stream().map_err(|()| BodyError::Failed(None))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK_BYTES) {
            Ok(chunk) => {
                if bytes.len() + chunk.len() > max {
                    return Err(BodyError::TooLarge);
                }
                bytes.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(error)) => {
                return Err(BodyError::Failed(wasi_http::http_error_code(&error)));
            }
        }
    }
    drop(stream);
    // Trailers are not offered to modules; dropping the future discards them.
    drop(IncomingBody::finish(body));
    Ok(bytes)
}

/// Writes all of `bytes` to `body`, without finishing it.
pub(crate) fn write_body(body: &OutgoingBody, bytes: &[u8]) -> Result<(), BodyError> {
    let stream = body.write().map_err(|()| BodyError::Failed(None))?;
    for chunk in bytes.chunks(WRITE_CHUNK_BYTES) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(|error| match error {
                StreamError::Closed => BodyError::Failed(None),
                StreamError::LastOperationFailed(error) => {
                    BodyError::Failed(wasi_http::http_error_code(&error))
                }
            })?;
    }
    Ok(())
}

/// `headers` as a new, mutable `fields` resource.
pub(crate) fn to_fields(headers: &Headers) -> Result<wasi_http::Fields, (ErrorKind, String)> {
    let fields = wasi_http::Fields::new();
    for (name, value) in headers.iter() {
        fields
            .append(name, value.as_bytes())
            .map_err(|error| header_problem(name, &error))?;
    }
    Ok(fields)
}

/// Received header fields as [`Headers`]; values that are not UTF-8 are kept lossily.
pub(crate) fn from_entries(entries: Vec<(String, Vec<u8>)>) -> Headers {
    entries
        .into_iter()
        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
        .collect()
}

pub(crate) fn header_problem(name: &str, error: &HeaderError) -> (ErrorKind, String) {
    match error {
        HeaderError::InvalidSyntax => (
            ErrorKind::InvalidRequest,
            format!("header `{name}` has an invalid name or value"),
        ),
        HeaderError::Forbidden => (
            ErrorKind::InvalidRequest,
            format!("header `{name}` may not be set by a module; the host sets it"),
        ),
        HeaderError::Immutable => (
            ErrorKind::Internal,
            format!("header `{name}` could not be set: the header fields are immutable"),
        ),
    }
}

pub(crate) fn to_wasi_method(method: &Method) -> wasi_http::Method {
    match method {
        Method::Get => wasi_http::Method::Get,
        Method::Head => wasi_http::Method::Head,
        Method::Post => wasi_http::Method::Post,
        Method::Put => wasi_http::Method::Put,
        Method::Delete => wasi_http::Method::Delete,
        Method::Connect => wasi_http::Method::Connect,
        Method::Options => wasi_http::Method::Options,
        Method::Trace => wasi_http::Method::Trace,
        Method::Patch => wasi_http::Method::Patch,
        Method::Other(method) => wasi_http::Method::Other(method.clone()),
    }
}

pub(crate) fn from_wasi_method(method: wasi_http::Method) -> Method {
    match method {
        wasi_http::Method::Get => Method::Get,
        wasi_http::Method::Head => Method::Head,
        wasi_http::Method::Post => Method::Post,
        wasi_http::Method::Put => Method::Put,
        wasi_http::Method::Delete => Method::Delete,
        wasi_http::Method::Connect => Method::Connect,
        wasi_http::Method::Options => Method::Options,
        wasi_http::Method::Trace => Method::Trace,
        wasi_http::Method::Patch => Method::Patch,
        wasi_http::Method::Other(method) => Method::Other(method),
    }
}

fn body_problem(error: BodyError, target: &Target, doing: &str) -> (ErrorKind, String) {
    match error {
        BodyError::Failed(Some(code)) => {
            let (kind, detail) = classify(&code, target);
            (kind, format!("{doing}: {detail}"))
        }
        BodyError::Failed(None) => (
            ErrorKind::Connection,
            format!("{doing}: the connection was closed"),
        ),
        BodyError::TooLarge => (ErrorKind::ResponseTooLarge, format!("{doing}: too large")),
    }
}

/// The kind and the explanation of a `wasi:http` error code for a request to `target`.
pub(crate) fn classify(code: &ErrorCode, target: &Target) -> (ErrorKind, String) {
    use ErrorKind::{
        Connection, Denied, Internal, InvalidRequest, Protocol, ResponseTooLarge, Timeout, Tls,
    };

    let host = target.host();
    let (kind, detail) = match code {
        ErrorCode::HttpRequestDenied => (
            Denied,
            format!(
                "denied: `{host}` is not among the module's approved outbound hosts; \
                 add it to the `outbound_hosts` capability and have an administrator \
                 approve the module"
            ),
        ),
        ErrorCode::DestinationIpProhibited => (
            Denied,
            format!(
                "denied: `{host}` has a loopback, private, link-local or cloud-metadata \
                 address, which the server's address policy closes whatever the module's \
                 grants; an operator can open that address (`runcell serve \
                 --outbound-allow`, `runcell run --allow-address`)"
            ),
        ),
        ErrorCode::DnsTimeout => (Timeout, format!("timed out resolving `{host}`")),
        ErrorCode::DnsError(payload) => {
            let rcode = payload
                .rcode
                .as_deref()
                .map(|rcode| format!(" ({rcode})"))
                .unwrap_or_default();
            (Connection, format!("could not resolve `{host}`{rcode}"))
        }
        ErrorCode::DestinationNotFound => (Connection, format!("`{host}` was not found")),
        ErrorCode::DestinationUnavailable => (Connection, format!("`{host}` is unavailable")),
        ErrorCode::DestinationIpUnroutable => (Connection, format!("no route to `{host}`")),
        ErrorCode::ConnectionRefused => (Connection, "connection refused".to_owned()),
        ErrorCode::ConnectionTerminated => {
            (Connection, "the server closed the connection".to_owned())
        }
        ErrorCode::ConnectionLimitReached => (
            Connection,
            "the host's connection limit is reached".to_owned(),
        ),
        ErrorCode::HttpResponseIncomplete => (Connection, "the response was cut short".to_owned()),
        ErrorCode::ConnectionTimeout => (Timeout, "timed out connecting".to_owned()),
        ErrorCode::ConnectionReadTimeout | ErrorCode::HttpResponseTimeout => {
            (Timeout, "timed out waiting for the response".to_owned())
        }
        ErrorCode::ConnectionWriteTimeout => (Timeout, "timed out sending the request".to_owned()),
        ErrorCode::TlsProtocolError => (Tls, "TLS protocol error".to_owned()),
        ErrorCode::TlsCertificateError => {
            (Tls, format!("the TLS certificate of `{host}` was rejected"))
        }
        ErrorCode::TlsAlertReceived(payload) => {
            let alert = payload
                .alert_message
                .clone()
                .or_else(|| payload.alert_id.map(|id| format!("alert {id}")))
                .unwrap_or_else(|| "unspecified".to_owned());
            (Tls, format!("TLS alert from `{host}`: {alert}"))
        }
        ErrorCode::HttpRequestLengthRequired => (
            InvalidRequest,
            "the server requires a content length".to_owned(),
        ),
        ErrorCode::HttpRequestBodySize(_) => {
            (InvalidRequest, "the request body is too large".to_owned())
        }
        ErrorCode::HttpRequestMethodInvalid => (InvalidRequest, "invalid method".to_owned()),
        ErrorCode::HttpRequestUriInvalid => (InvalidRequest, "invalid URL".to_owned()),
        ErrorCode::HttpRequestUriTooLong => (InvalidRequest, "the URL is too long".to_owned()),
        ErrorCode::HttpRequestHeaderSectionSize(_) | ErrorCode::HttpRequestHeaderSize(_) => (
            InvalidRequest,
            "the request headers are too large".to_owned(),
        ),
        ErrorCode::HttpRequestTrailerSectionSize(_) | ErrorCode::HttpRequestTrailerSize(_) => (
            InvalidRequest,
            "the request trailers are too large".to_owned(),
        ),
        ErrorCode::HttpResponseBodySize(_) => (
            ResponseTooLarge,
            "the response body exceeds the host's limit".to_owned(),
        ),
        ErrorCode::HttpResponseHeaderSectionSize(_) | ErrorCode::HttpResponseHeaderSize(_) => {
            (Protocol, "the response headers are too large".to_owned())
        }
        ErrorCode::HttpResponseTrailerSectionSize(_) | ErrorCode::HttpResponseTrailerSize(_) => {
            (Protocol, "the response trailers are too large".to_owned())
        }
        ErrorCode::HttpResponseTransferCoding(coding) => (
            Protocol,
            format!(
                "unsupported transfer coding {}",
                coding.as_deref().unwrap_or("(unnamed)")
            ),
        ),
        ErrorCode::HttpResponseContentCoding(coding) => (
            Protocol,
            format!(
                "unsupported content coding {}",
                coding.as_deref().unwrap_or("(unnamed)")
            ),
        ),
        ErrorCode::HttpUpgradeFailed => (Protocol, "the protocol upgrade failed".to_owned()),
        ErrorCode::HttpProtocolError => (Protocol, "the server broke the HTTP protocol".to_owned()),
        ErrorCode::LoopDetected => (Protocol, "the request loops back on itself".to_owned()),
        ErrorCode::ConfigurationError => (
            Internal,
            "the host's HTTP client is misconfigured".to_owned(),
        ),
        ErrorCode::InternalError(message) => (
            Internal,
            match message {
                Some(message) => format!("the host failed: {message}"),
                None => "the host failed".to_owned(),
            },
        ),
    };
    (kind, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobError;

    fn target() -> Target {
        url::parse("https://api.example.com:8443/x?token=secret").unwrap()
    }

    fn error(code: ErrorCode) -> HttpError {
        let (kind, detail) = classify(&code, &target());
        HttpError::new(
            kind,
            &Method::Get,
            "https://api.example.com:8443/x?token=secret",
            detail,
        )
    }

    #[test]
    fn a_denied_request_is_permanent_and_says_how_to_get_access() {
        let job = JobError::from(error(ErrorCode::HttpRequestDenied));
        assert_eq!(
            job,
            JobError::permanent(
                "GET https://api.example.com:8443/x: denied: `api.example.com` is not among \
                 the module's approved outbound hosts; add it to the `outbound_hosts` \
                 capability and have an administrator approve the module"
            )
        );
        let policy = error(ErrorCode::DestinationIpProhibited);
        assert_eq!(policy.kind(), ErrorKind::Denied);
        assert!(policy.detail().contains("address policy"));
        assert!(policy.detail().contains("--outbound-allow"));
        assert!(!policy.detail().contains("outbound_hosts"));
    }

    #[test]
    fn timeouts_and_connection_failures_are_transient() {
        for (code, kind) in [
            (ErrorCode::DnsTimeout, ErrorKind::Timeout),
            (ErrorCode::ConnectionTimeout, ErrorKind::Timeout),
            (ErrorCode::ConnectionReadTimeout, ErrorKind::Timeout),
            (ErrorCode::ConnectionWriteTimeout, ErrorKind::Timeout),
            (ErrorCode::HttpResponseTimeout, ErrorKind::Timeout),
            (ErrorCode::ConnectionRefused, ErrorKind::Connection),
            (ErrorCode::ConnectionTerminated, ErrorKind::Connection),
            (ErrorCode::DestinationNotFound, ErrorKind::Connection),
            (ErrorCode::DestinationUnavailable, ErrorKind::Connection),
            (ErrorCode::HttpResponseIncomplete, ErrorKind::Connection),
            (
                ErrorCode::DnsError(wasi_http::DnsErrorPayload {
                    rcode: Some("NXDOMAIN".to_owned()),
                    info_code: None,
                }),
                ErrorKind::Connection,
            ),
            (ErrorCode::InternalError(None), ErrorKind::Internal),
        ] {
            let error = error(code);
            assert_eq!(error.kind(), kind, "{error}");
            assert!(
                matches!(JobError::from(error), JobError::Transient(_)),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn bad_requests_tls_and_protocol_failures_are_permanent() {
        for (code, kind) in [
            (ErrorCode::HttpRequestUriInvalid, ErrorKind::InvalidRequest),
            (
                ErrorCode::HttpRequestBodySize(Some(10)),
                ErrorKind::InvalidRequest,
            ),
            (ErrorCode::TlsCertificateError, ErrorKind::Tls),
            (ErrorCode::HttpProtocolError, ErrorKind::Protocol),
            (
                ErrorCode::HttpResponseBodySize(None),
                ErrorKind::ResponseTooLarge,
            ),
        ] {
            let error = error(code);
            assert_eq!(error.kind(), kind, "{error}");
            assert!(matches!(JobError::from(error), JobError::Permanent(_)));
        }
    }

    #[test]
    fn details_name_the_host_and_what_the_host_said() {
        assert_eq!(
            error(ErrorCode::DnsError(wasi_http::DnsErrorPayload {
                rcode: Some("NXDOMAIN".to_owned()),
                info_code: None,
            }))
            .detail(),
            "could not resolve `api.example.com` (NXDOMAIN)"
        );
        assert_eq!(
            error(ErrorCode::InternalError(Some("pool closed".to_owned()))).detail(),
            "the host failed: pool closed"
        );
        assert_eq!(
            error(ErrorCode::TlsAlertReceived(
                wasi_http::TlsAlertReceivedPayload {
                    alert_id: Some(40),
                    alert_message: None,
                }
            ))
            .detail(),
            "TLS alert from `api.example.com`: alert 40"
        );
    }

    #[test]
    fn body_failures_say_what_was_being_done() {
        let (kind, detail) = body_problem(
            BodyError::Failed(Some(ErrorCode::ConnectionReadTimeout)),
            &target(),
            "reading the response body",
        );
        assert_eq!(kind, ErrorKind::Timeout);
        assert_eq!(
            detail,
            "reading the response body: timed out waiting for the response"
        );
        let (kind, _) = body_problem(BodyError::Failed(None), &target(), "x");
        assert_eq!(kind, ErrorKind::Connection);
    }

    #[test]
    fn a_body_gets_a_content_length_unless_one_is_set() {
        assert!(!needs_content_length(&Request::get("http://h/")));
        assert!(needs_content_length(&Request::get("http://h/").body("x")));
        assert!(needs_content_length(&Request::post("http://h/")));
        assert!(!needs_content_length(
            &Request::post("http://h/").header("Content-Length", "0")
        ));
    }

    #[test]
    fn methods_round_trip_through_wasi() {
        for method in [
            Method::Get,
            Method::Head,
            Method::Post,
            Method::Put,
            Method::Delete,
            Method::Connect,
            Method::Options,
            Method::Trace,
            Method::Patch,
            Method::Other("PURGE".to_owned()),
        ] {
            assert_eq!(from_wasi_method(to_wasi_method(&method)), method);
        }
    }

    #[test]
    fn received_headers_keep_invalid_utf8_lossily() {
        let headers = from_entries(vec![
            ("X-A".to_owned(), b"ok".to_vec()),
            ("x-b".to_owned(), vec![b'a', 0xff]),
        ]);
        assert_eq!(headers.get("x-a"), Some("ok"));
        assert_eq!(headers.get("x-b"), Some("a\u{fffd}"));
    }

    #[test]
    fn header_problems_name_the_header() {
        let (kind, detail) = header_problem("host", &HeaderError::Forbidden);
        assert_eq!(kind, ErrorKind::InvalidRequest);
        assert_eq!(
            detail,
            "header `host` may not be set by a module; the host sets it"
        );
    }
}
