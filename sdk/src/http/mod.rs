//! Outbound HTTP over `wasi:http/outgoing-handler`: build a [`Request`], [`send`](Request::send)
//! it, read the [`Response`]. Calls block until the response (head and body) is in.
//!
//! Only the hosts in the module's approved `outbound_hosts` are reachable; anything else
//! fails with [`ErrorKind::Denied`]. Failures convert into [`JobError`] with `?`: a timeout
//! or a connection failure is transient (the run is retried), a denied or malformed
//! request is permanent.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use runcell_sdk::{Context, JobError, NoInput, http};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Rate {
//!     eur: f64,
//! }
//!
//! #[derive(Serialize)]
//! struct Order<'a> {
//!     item: &'a str,
//!     quantity: u32,
//! }
//!
//! fn sync_rates(_ctx: &Context, _input: NoInput) -> Result<f64, JobError> {
//!     let rate: Rate = http::Request::get("https://api.example.com/rates/usd")
//!         .header("accept", "application/json")
//!         .timeout(Duration::from_secs(5))
//!         .send()?
//!         // 4xx and 5xx become errors: 429 and 5xx are transient, the rest permanent.
//!         .error_for_status()?
//!         .json()?;
//!
//!     let created = http::Request::post("https://orders.example.com/v1/orders")
//!         .header("authorization", "Bearer ...")
//!         .json(&Order { item: "paper", quantity: 3 })
//!         .send()?;
//!     runcell_sdk::info!("order placed", status = created.status());
//!     Ok(rate.eur)
//! }
//! ```
//!
//! Requests carry exactly the headers set on them: nothing adds a user agent, follows a
//! redirect or decompresses a body. A `content-length` header is added for a body.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::JobError;

pub(crate) mod url;
pub(crate) mod wasi;

/// Most bytes of a response body [`Request::send`] reads unless told otherwise
/// ([`Request::max_response_bytes`]): the body is held in the module's memory, which has
/// a hard limit, and running out of it ends the run without a useful error.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// An HTTP method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `CONNECT`
    Connect,
    /// `OPTIONS`
    Options,
    /// `TRACE`
    Trace,
    /// `PATCH`
    Patch,
    /// Any other method, spelt as sent.
    Other(String),
}

impl Method {
    /// The method as sent on the wire: `GET`, `POST`, ...
    pub fn as_str(&self) -> &str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Trace => "TRACE",
            Self::Patch => "PATCH",
            Self::Other(method) => method,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// HTTP header fields in order, names compared without regard to case.
///
/// Names are stored in lowercase (as HTTP/2 sends them). Values are text: a received value
/// that is not UTF-8 is kept with its invalid bytes replaced by `U+FFFD`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    fields: Vec<(String, String)>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first value of `name`, if any.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Whether `name` has at least one value.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Adds a value of `name`, keeping the values it already has.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let mut name = name.into();
        name.make_ascii_lowercase();
        self.fields.push((name, value.into()));
    }

    /// Sets `name` to `value`, replacing every value it had.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        self.fields
            .retain(|(field, _)| !field.eq_ignore_ascii_case(&name));
        self.append(name, value);
    }

    /// Every field as `(name, value)`, in order; names in lowercase.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// Number of fields (a name with two values counts twice).
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(fields: I) -> Self {
        let mut headers = Self::new();
        for (name, value) in fields {
            headers.append(name, value);
        }
        headers
    }
}

/// An outbound HTTP request, built step by step and sent with [`send`](Self::send).
#[derive(Debug, Clone)]
#[must_use = "a request does nothing until it is sent"]
pub struct Request {
    method: Method,
    url: String,
    headers: Headers,
    body: Vec<u8>,
    timeout: Option<Duration>,
    max_response_bytes: usize,
    /// Why the JSON body could not be encoded; reported by `send`, so that building stays
    /// a chain of calls.
    body_error: Option<String>,
}

impl Request {
    /// A request with `method` to `url` (absolute, `http` or `https`), no headers and no
    /// body.
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Self {
            method,
            url: url.into(),
            headers: Headers::new(),
            body: Vec::new(),
            timeout: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            body_error: None,
        }
    }

    /// A `GET` request to `url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new(Method::Get, url)
    }

    /// A `HEAD` request to `url`.
    pub fn head(url: impl Into<String>) -> Self {
        Self::new(Method::Head, url)
    }

    /// A `POST` request to `url`.
    pub fn post(url: impl Into<String>) -> Self {
        Self::new(Method::Post, url)
    }

    /// A `PUT` request to `url`.
    pub fn put(url: impl Into<String>) -> Self {
        Self::new(Method::Put, url)
    }

    /// A `PATCH` request to `url`.
    pub fn patch(url: impl Into<String>) -> Self {
        Self::new(Method::Patch, url)
    }

    /// A `DELETE` request to `url`.
    pub fn delete(url: impl Into<String>) -> Self {
        Self::new(Method::Delete, url)
    }

    /// Adds a header, keeping earlier values of the same name.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self.body_error = None;
        self
    }

    /// Sets the body to `value` as JSON and, unless already set, `content-type` to
    /// `application/json`. A value that cannot be encoded makes [`send`](Self::send) fail
    /// with [`ErrorKind::InvalidRequest`].
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => {
                self.body = body;
                self.body_error = None;
            }
            Err(error) => {
                self.body.clear();
                self.body_error = Some(format!("could not encode the JSON body: {error}"));
            }
        }
        if !self.headers.contains("content-type") {
            self.headers.append("content-type", "application/json");
        }
        self
    }

    /// Bounds each wait of the request by `timeout`: connecting, the first byte of the
    /// response, and every pause between bytes of the body. Without it the host's defaults
    /// apply, and the run's own time limit bounds everything. Exceeding it fails with
    /// [`ErrorKind::Timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Fails the request with [`ErrorKind::ResponseTooLarge`] when the response body is
    /// longer than `max` bytes, instead of reading it all into memory. Defaults to
    /// [`DEFAULT_MAX_RESPONSE_BYTES`].
    pub fn max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = max;
        self
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The URL, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The headers set so far.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The body set so far.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    /// Sends the request and waits for the whole response. Any status is a response; use
    /// [`Response::error_for_status`] to treat 4xx and 5xx as errors.
    pub fn send(self) -> Result<Response, HttpError> {
        wasi::send(self)
    }

    /// An error of `kind` about this request.
    fn error(&self, kind: ErrorKind, detail: impl Into<String>) -> HttpError {
        HttpError::new(kind, &self.method, &self.url, detail)
    }
}

/// Sends a `GET` request to `url` with no headers and no timeout of its own.
pub fn get(url: &str) -> Result<Response, HttpError> {
    Request::get(url).send()
}

/// The response to a [`Request`]: its status, headers and whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    method: Method,
    url: String,
    status: u16,
    headers: Headers,
    body: Vec<u8>,
}

impl Response {
    pub(crate) fn new(request: &Request, status: u16, headers: Headers, body: Vec<u8>) -> Self {
        Self {
            method: request.method.clone(),
            url: request.url.clone(),
            status,
            headers,
            body,
        }
    }

    /// The status code (`200`, `404`, ...).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The response headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The first value of header `name`, if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body, taken out of the response.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// The body as UTF-8 text; other bytes are an [`ErrorKind::Decode`] error.
    pub fn text(&self) -> Result<&str, HttpError> {
        std::str::from_utf8(&self.body).map_err(|error| {
            self.error(
                ErrorKind::Decode,
                format!("the response body is not UTF-8 text: {error}"),
            )
        })
    }

    /// The body parsed as JSON of type `T`; anything else is an [`ErrorKind::Decode`]
    /// error naming the offending path.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        crate::json::from_slice(&self.body).map_err(|problem| {
            self.error(
                ErrorKind::Decode,
                format!("the response body is not the expected JSON: {problem}"),
            )
        })
    }

    /// The response itself if its status is below 400, else an [`ErrorKind::Status`] error
    /// that quotes the start of the body. Worth retrying (transient) are 408, 425, 429, 500,
    /// 502, 503 and 504.
    pub fn error_for_status(self) -> Result<Self, HttpError> {
        if self.status < 400 {
            return Ok(self);
        }
        let excerpt = body_excerpt(&self.body);
        let detail = if excerpt.is_empty() {
            format!("status {}", self.status)
        } else {
            format!("status {}: {excerpt}", self.status)
        };
        Err(self.error(ErrorKind::Status(self.status), detail))
    }

    fn error(&self, kind: ErrorKind, detail: impl Into<String>) -> HttpError {
        HttpError::new(kind, &self.method, &self.url, detail)
    }
}

/// At most 200 characters of `body` as text, on one line.
fn body_excerpt(body: &[u8]) -> String {
    const MAX_CHARS: usize = 200;
    let text = String::from_utf8_lossy(body);
    let mut excerpt: String = text
        .trim()
        .chars()
        .take(MAX_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.trim().chars().nth(MAX_CHARS).is_some() {
        excerpt.push('…');
    }
    excerpt
}

/// What went wrong with a request, in the categories a job acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The host is not among the module's approved `outbound_hosts`, or the server's
    /// address policy forbids its address. Permanent: declare the host and have an
    /// administrator approve it.
    Denied,
    /// The request cannot be sent as built: a malformed URL, a header a module may not
    /// set, an invalid method, a body that could not be encoded. Permanent.
    InvalidRequest,
    /// No answer in time: name resolution, connecting, the first byte or a pause in the
    /// body took longer than allowed. Transient.
    Timeout,
    /// The server could not be reached or dropped the connection (name not resolved,
    /// connection refused or reset, response cut short). Transient.
    Connection,
    /// The TLS handshake failed (certificate, protocol or alert). Permanent: it does not
    /// fix itself.
    Tls,
    /// The server answered with something that is not valid HTTP, or that exceeds the
    /// host's limits on headers. Permanent.
    Protocol,
    /// The response body is longer than [`Request::max_response_bytes`]. Permanent.
    ResponseTooLarge,
    /// [`Response::error_for_status`] met a 4xx or 5xx status. Transient for 408, 425,
    /// 429, 500, 502, 503 and 504; permanent for the others.
    Status(u16),
    /// The response body is not what [`Response::text`] or [`Response::json`] expected.
    /// Permanent.
    Decode,
    /// The host failed in a way it did not explain. Transient.
    Internal,
}

impl ErrorKind {
    /// Whether a later attempt may succeed where this one failed.
    pub fn is_retryable(self) -> bool {
        match self {
            Self::Timeout | Self::Connection | Self::Internal => true,
            Self::Status(status) => matches!(status, 408 | 425 | 429 | 500 | 502 | 503 | 504),
            Self::Denied
            | Self::InvalidRequest
            | Self::Tls
            | Self::Protocol
            | Self::ResponseTooLarge
            | Self::Decode => false,
        }
    }
}

/// Why a request failed: its [`ErrorKind`], the request it is about and what happened.
///
/// The URL in the error (and in its message) has no query string, fragment or
/// credentials: they often carry secrets, and error messages end up in logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    kind: ErrorKind,
    method: Method,
    url: String,
    detail: String,
}

impl HttpError {
    pub(crate) fn new(
        kind: ErrorKind,
        method: &Method,
        url: &str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            method: method.clone(),
            url: url::redact(url),
            detail: detail.into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether a later attempt may succeed; decides how the error converts into a
    /// [`JobError`].
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The method of the failed request.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The URL of the failed request, without query string, fragment or credentials.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What happened, without the request line.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.method, self.url, self.detail)
    }
}

impl std::error::Error for HttpError {}

/// Retryable failures (timeouts, connection failures, 429 and most 5xx statuses) are
/// transient; the rest are permanent.
impl From<HttpError> for JobError {
    fn from(error: HttpError) -> Self {
        if error.is_retryable() {
            Self::transient(error)
        } else {
            Self::permanent(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> Response {
        let request = Request::get("https://api.example.com/items?key=secret");
        Response::new(&request, status, Headers::new(), body.as_bytes().to_vec())
    }

    #[test]
    fn header_names_are_case_insensitive_and_stored_in_lowercase() {
        let mut headers: Headers = [("Content-Type", "text/plain"), ("Set-Cookie", "a=1")]
            .into_iter()
            .collect();
        headers.append("set-cookie", "b=2");
        assert_eq!(headers.get("content-type"), Some("text/plain"));
        assert_eq!(headers.get("CONTENT-TYPE"), Some("text/plain"));
        assert_eq!(
            headers.get_all("Set-Cookie").collect::<Vec<_>>(),
            ["a=1", "b=2"]
        );
        assert_eq!(headers.iter().next(), Some(("content-type", "text/plain")));
        assert_eq!(headers.len(), 3);

        headers.insert("SET-COOKIE", "c=3");
        assert_eq!(headers.get_all("set-cookie").collect::<Vec<_>>(), ["c=3"]);
        assert!(!headers.contains("accept"));
        assert!(Headers::new().is_empty());
    }

    #[test]
    fn a_request_is_built_step_by_step() {
        let request = Request::post("http://localhost:8080/hook")
            .header("X-Token", "t")
            .json(&serde_json::json!({"a": 1}))
            .timeout(Duration::from_millis(1_500));
        assert_eq!(request.method(), &Method::Post);
        assert_eq!(request.url(), "http://localhost:8080/hook");
        assert_eq!(request.headers().get("x-token"), Some("t"));
        assert_eq!(
            request.headers().get("content-type"),
            Some("application/json")
        );
        assert_eq!(request.body_bytes(), br#"{"a":1}"#);
        assert_eq!(request.timeout, Some(Duration::from_millis(1_500)));
        assert_eq!(request.max_response_bytes, DEFAULT_MAX_RESPONSE_BYTES);
    }

    #[test]
    fn a_json_body_keeps_an_explicit_content_type() {
        let request = Request::put("http://h/")
            .header("content-type", "application/merge-patch+json")
            .json(&[1, 2]);
        assert_eq!(
            request
                .headers()
                .get_all("content-type")
                .collect::<Vec<_>>(),
            ["application/merge-patch+json"]
        );
    }

    #[test]
    fn an_unencodable_json_body_is_remembered_for_send() {
        let map = std::collections::BTreeMap::from([((1, 2), 3)]);
        let request = Request::post("http://h/").json(&map);
        assert!(request.body_error.as_deref().unwrap().contains("JSON body"));
        let request = request.body("plain");
        assert_eq!(request.body_error, None);
    }

    #[test]
    fn methods_print_as_sent() {
        assert_eq!(Method::Get.to_string(), "GET");
        assert_eq!(Method::Other("PURGE".to_owned()).as_str(), "PURGE");
    }

    #[test]
    fn json_bodies_are_parsed_and_failures_name_the_path() {
        #[derive(Debug, serde::Deserialize)]
        struct Item {
            #[expect(dead_code, reason = "only the parse is under test")]
            id: u32,
        }
        let items: Vec<u32> = response(200, "[1,2]").json().unwrap();
        assert_eq!(items, [1, 2]);

        let error = response(200, r#"[{"id":1},{"id":"x"}]"#)
            .json::<Vec<Item>>()
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Decode);
        assert!(error.detail().contains("[1].id: invalid type"), "{error}");
        assert!(!error.is_retryable());

        let error = response(200, "[1] x").json::<Vec<u32>>().unwrap_err();
        assert!(error.detail().contains("trailing characters"), "{error}");
    }

    #[test]
    fn text_must_be_utf8() {
        assert_eq!(response(200, "hi").text().unwrap(), "hi");
        let request = Request::get("http://h/");
        let bad = Response::new(&request, 200, Headers::new(), vec![0xff, 0xfe]);
        assert_eq!(bad.text().unwrap_err().kind(), ErrorKind::Decode);
    }

    #[test]
    fn error_for_status_passes_success_and_redirects() {
        assert_eq!(response(204, "").error_for_status().unwrap().status(), 204);
        assert_eq!(response(302, "").error_for_status().unwrap().status(), 302);
        assert!(response(200, "").is_success());
        assert!(!response(302, "").is_success());
    }

    #[test]
    fn error_for_status_quotes_the_body_and_hides_the_query() {
        let error = response(503, "  upstream\nbusy ")
            .error_for_status()
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Status(503));
        assert_eq!(
            error.to_string(),
            "GET https://api.example.com/items: status 503: upstream busy"
        );
        let long = "x".repeat(300);
        let error = response(400, &long).error_for_status().unwrap_err();
        assert!(error.detail().ends_with("x…"));
        assert_eq!(error.detail().chars().count(), "status 400: ".len() + 201);
        assert_eq!(
            response(404, "").error_for_status().unwrap_err().detail(),
            "status 404"
        );
    }

    #[test]
    fn retryable_statuses_are_transient_and_others_permanent() {
        for status in [408, 425, 429, 500, 502, 503, 504] {
            let error = response(status, "").error_for_status().unwrap_err();
            assert!(
                matches!(JobError::from(error), JobError::Transient(_)),
                "{status}"
            );
        }
        for status in [400, 401, 403, 404, 409, 422, 501, 505] {
            let error = response(status, "").error_for_status().unwrap_err();
            assert!(
                matches!(JobError::from(error), JobError::Permanent(_)),
                "{status}"
            );
        }
    }

    #[test]
    fn error_kinds_decide_the_job_error() {
        let error = |kind| HttpError::new(kind, &Method::Get, "http://h/x?k=v", "d");
        for kind in [
            ErrorKind::Timeout,
            ErrorKind::Connection,
            ErrorKind::Internal,
        ] {
            assert_eq!(
                JobError::from(error(kind)),
                JobError::transient("GET http://h/x: d")
            );
        }
        for kind in [
            ErrorKind::Denied,
            ErrorKind::InvalidRequest,
            ErrorKind::Tls,
            ErrorKind::Protocol,
            ErrorKind::ResponseTooLarge,
            ErrorKind::Decode,
        ] {
            assert_eq!(
                JobError::from(error(kind)),
                JobError::permanent("GET http://h/x: d")
            );
        }
    }
}
