//! HTTP routes a module serves under `/m/{module}/`, next to its jobs: the [`Request`] a
//! handler receives, the [`Response`] it returns, and helpers for JSON and errors.
//!
//! A module opts in with a `routes` entry in [`module!`](crate::module!), naming one
//! handler function and who may call it:
//!
//! ```
//! use runcell_sdk::http::Method;
//! use runcell_sdk::routes::{Request, Response};
//! use runcell_sdk::{Context, JobError, NoInput};
//!
//! /// Serves `GET /m/counter/value` and `PUT /m/counter/value`.
//! fn serve(request: Request) -> Result<Response, Response> {
//!     match request.segments().as_slice() {
//!         ["value"] => match request.method() {
//!             Method::Get => {
//!                 let value: u64 = runcell_sdk::kv::get("value")?.unwrap_or(0);
//!                 Ok(Response::json(200, &serde_json::json!({ "value": value })))
//!             }
//!             Method::Put => {
//!                 let value: u64 = request.json()?;
//!                 runcell_sdk::kv::set("value", &value)?;
//!                 Ok(Response::new(204))
//!             }
//!             _ => Err(Response::method_not_allowed(&[Method::Get, Method::Put])),
//!         },
//!         _ => Err(Response::not_found()),
//!     }
//! }
//!
//! fn reset(_ctx: &Context, _input: NoInput) -> Result<(), JobError> {
//!     runcell_sdk::kv::delete("value")?;
//!     Ok(())
//! }
//!
//! runcell_sdk::module! {
//!     name: "counter",
//!     version: "1.0.0",
//!     description: "A counter with an HTTP face.",
//!     capabilities: { key_value: true },
//!     routes: {
//!         handler: serve,
//!         access: authenticated,
//!     },
//!     jobs: [
//!         reset => { name: "reset", description: "Sets the counter back to zero." },
//!     ],
//! }
//! ```
//!
//! The handler is a plain function from [`Request`] to anything that is
//! [`IntoResponse`]: a [`Response`], or a `Result` of two of them, so that `?` turns a
//! failure into its response ([`KvError`] and a failed [`Request::json`] convert). It
//! runs in a fresh instance per request, with the module's grants and the server's route
//! limits (by default 10 s, about a second of CPU, 64 MiB, a 2 MiB request body and an
//! 8 MiB response body), and can use [`kv`](crate::kv), [`http`](crate::http) and the
//! rest as a job can. [`config`](crate::config) is empty there: settings belong to jobs.
//!
//! Paths arrive relative to the module's prefix: a request to `/m/counter/value?x=1`
//! reaches the handler with [`path`](Request::path) `/value`, [`segments`](Request::segments)
//! `["value"]` and [`query`](Request::query) `x=1`. Match on the method and the segments;
//! [`Response::not_found`] and [`Response::method_not_allowed`] answer the rest in the
//! same JSON error shape as Runcell's API:
//! `{"error": {"code": "not_found", "message": "..."}}`.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__bindings::wasi::http::types::{
    self as wasi_http, IncomingRequest, OutgoingBody, ResponseOutparam,
};
use crate::http::wasi::{self as plumbing, BodyError};
use crate::http::{Headers, Method};
use crate::kv::KvError;

/// Most bytes of a request body read before answering `413 Payload Too Large`: the body
/// is held in the module's memory, which has a hard limit.
pub const MAX_REQUEST_BODY_BYTES: usize = 16 * 1024 * 1024;

/// A request to one of the module's routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    method: Method,
    path: String,
    segments: Vec<String>,
    query: Option<String>,
    headers: Headers,
    body: Vec<u8>,
}

impl Request {
    /// A request with `method` for `path_with_query` (`/items/7?full=1`, relative to the
    /// module's prefix), no headers and no body. Runcell builds the requests a handler
    /// receives; this is for calling a handler from a test.
    pub fn new(method: Method, path_with_query: &str) -> Self {
        let (path, query) = match path_with_query.split_once('?') {
            Some((path, query)) => (path, Some(query.to_owned())),
            None => (path_with_query, None),
        };
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        let segments = path
            .split('/')
            .filter(|segment| !segment.is_empty())
            .map(|segment| percent_decode(segment, false))
            .collect();
        Self {
            method,
            path,
            segments,
            query,
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// The same request with header `name` added.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.append(name, value);
        self
    }

    /// The same request with `body`.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path below the module's prefix, as received (still percent-encoded); always
    /// starts with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path's non-empty segments, percent-decoded: `/items/a%20b/` is
    /// `["items", "a b"]`, and `/` is `[]`. Made for `match`ing as a slice.
    pub fn segments(&self) -> Vec<&str> {
        self.segments.iter().map(String::as_str).collect()
    }

    /// The query string without the `?`, as received.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// Every query parameter as decoded `(name, value)` pairs, in order (`+` is a space;
    /// a parameter without `=` has an empty value).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        let Some(query) = &self.query else {
            return Vec::new();
        };
        query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(name, true), percent_decode(value, true))
            })
            .collect()
    }

    /// The decoded value of the first query parameter called `name`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// The request headers.
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

    /// The body parsed as JSON of type `T`, or a ready `400` response that names the
    /// offending path.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Response> {
        crate::json::from_slice(&self.body).map_err(|problem| {
            Response::error(
                400,
                "invalid_body",
                format_args!("the body is not the expected JSON: {problem}"),
            )
        })
    }
}

/// What a route answers: a status, headers and a body.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a response does nothing until the handler returns it"]
pub struct Response {
    status: u16,
    headers: Headers,
    body: Vec<u8>,
}

impl Response {
    /// A response with `status`, no headers and no body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// `value` as JSON, with `content-type: application/json`. A value that cannot be
    /// encoded gives a `500` error response instead.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::new(status)
                .with_header("content-type", "application/json")
                .with_body(body),
            Err(error) => Self::error(
                500,
                "internal",
                format_args!("the module could not encode its response as JSON: {error}"),
            ),
        }
    }

    /// `text` with `content-type: text/plain; charset=utf-8`.
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        Self::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(text.into())
    }

    /// An error in the shape of Runcell's API: `{"error": {"code": ..., "message": ...}}`.
    /// `code` is a stable, machine-readable word (`not_found`, `invalid_body`, ...).
    pub fn error(status: u16, code: &str, message: impl fmt::Display) -> Self {
        let body = serde_json::json!({
            "error": { "code": code, "message": message.to_string() }
        });
        Self::new(status)
            .with_header("content-type", "application/json")
            .with_body(body.to_string())
    }

    /// `404` for a path the module does not serve.
    pub fn not_found() -> Self {
        Self::error(404, "not_found", "no such route")
    }

    /// `405` for a path served, but not with this method; the `Allow` header lists
    /// `allowed`.
    pub fn method_not_allowed(allowed: &[Method]) -> Self {
        let allowed: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        let allowed = allowed.join(", ");
        Self::error(
            405,
            "method_not_allowed",
            format_args!("this route accepts {allowed}"),
        )
        .with_header("allow", allowed)
    }

    /// The same response with header `name` added (earlier values of it are kept).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.append(name, value);
        self
    }

    /// The same response with `body` (replacing any body it had).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// What a route handler may return.
pub trait IntoResponse {
    /// The response to send.
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl<T: IntoResponse, E: IntoResponse> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(response) => response.into_response(),
            Err(response) => response.into_response(),
        }
    }
}

/// Unavailable storage is `503` (try again later); any other key-value failure is a `500`.
impl From<KvError> for Response {
    fn from(error: KvError) -> Self {
        match error {
            KvError::Unavailable(_) => Self::error(503, "unavailable", error),
            _ => Self::error(500, "internal", error),
        }
    }
}

/// Decodes `%XX` escapes (and, in query strings, `+` as a space); bytes that do not form
/// UTF-8 become `U+FFFD`, and a `%` not followed by two hex digits stays as it is.
fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes[i] {
            b'%' => bytes
                .get(i + 1)
                .and_then(|&high| hex(high))
                .zip(bytes.get(i + 2).and_then(|&low| hex(low))),
            _ => None,
        };
        if let Some((high, low)) = escaped {
            decoded.push(high * 16 + low);
            i += 3;
            continue;
        }
        decoded.push(match bytes[i] {
            b'+' if plus_is_space => b' ',
            byte => byte,
        });
        i += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// The `wasi:http/incoming-handler` export of a module with routes: reads the request,
/// calls `handler`, sends its response.
pub(crate) fn serve<R, F>(request: IncomingRequest, response_out: ResponseOutparam, handler: F)
where
    R: IntoResponse,
    F: FnOnce(Request) -> R,
{
    let response = match read_request(request) {
        Ok(request) => handler(request).into_response(),
        Err(response) => response,
    };
    send_response(response_out, response);
}

fn read_request(incoming: IncomingRequest) -> Result<Request, Response> {
    let method = plumbing::from_wasi_method(incoming.method());
    let path_with_query = incoming.path_with_query().unwrap_or_else(|| "/".to_owned());
    let headers = incoming.headers();
    let received = plumbing::from_entries(headers.entries());
    drop(headers);
    let body = incoming
        .consume()
        .map_err(|()| Response::error(500, "internal", "the request body was already taken"))?;
    let body = plumbing::read_body(body, MAX_REQUEST_BODY_BYTES).map_err(|error| match error {
        BodyError::TooLarge => Response::error(
            413,
            "payload_too_large",
            format_args!("the body is longer than {MAX_REQUEST_BODY_BYTES} bytes"),
        ),
        BodyError::Failed(_) => Response::error(400, "invalid_body", "the body could not be read"),
    })?;
    let mut request = Request::new(method, &path_with_query).with_body(body);
    request.headers = received;
    Ok(request)
}

fn send_response(response_out: ResponseOutparam, response: Response) {
    let (outgoing, body_bytes) = match outgoing_response(&response) {
        Ok(outgoing) => (outgoing, response.body),
        Err(problem) => {
            let fallback = Response::error(500, "internal", problem);
            match outgoing_response(&fallback) {
                Ok(outgoing) => (outgoing, fallback.body),
                // Nothing left to say; the host answers with its own error.
                Err(_) => return,
            }
        }
    };
    let Ok(body) = outgoing.body() else {
        return;
    };
    // The response must be handed over before its body is written: the host streams the
    // body to the client, and a large body written first could block forever.
    ResponseOutparam::set(response_out, Ok(outgoing));
    // A client that went away is no error of the module's; there is no one to tell.
    if plumbing::write_body(&body, &body_bytes).is_ok() {
        drop(OutgoingBody::finish(body, None));
    }
}

fn outgoing_response(response: &Response) -> Result<wasi_http::OutgoingResponse, String> {
    let fields = plumbing::to_fields(&response.headers)
        .map_err(|(_, problem)| format!("the module's response is invalid: {problem}"))?;
    let outgoing = wasi_http::OutgoingResponse::new(fields);
    outgoing.set_status_code(response.status).map_err(|()| {
        format!(
            "the module's response is invalid: {} is not an HTTP status",
            response.status
        )
    })?;
    Ok(outgoing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_json(response: &Response) -> serde_json::Value {
        serde_json::from_slice(response.body()).unwrap()
    }

    #[test]
    fn the_path_splits_into_decoded_segments_and_a_query() {
        let request = Request::new(Method::Get, "/items/a%20b/%E2%9C%93/?full=1&x");
        assert_eq!(request.path(), "/items/a%20b/%E2%9C%93/");
        assert_eq!(request.segments(), ["items", "a b", "✓"]);
        assert_eq!(request.query(), Some("full=1&x"));

        assert!(Request::new(Method::Get, "/").segments().is_empty());
        assert!(Request::new(Method::Get, "").segments().is_empty());
        assert_eq!(Request::new(Method::Get, "").path(), "/");
        assert_eq!(Request::new(Method::Get, "status").path(), "/status");
        assert_eq!(Request::new(Method::Get, "//a//b").segments(), ["a", "b"]);
        assert_eq!(Request::new(Method::Get, "/a").query(), None);
    }

    #[test]
    fn segments_match_as_slices() {
        let route = |path: &str| match Request::new(Method::Get, path).segments().as_slice() {
            ["status"] => "status".to_owned(),
            ["records", id] => format!("record {id}"),
            _ => "none".to_owned(),
        };
        assert_eq!(route("/status"), "status");
        assert_eq!(route("/status/"), "status");
        assert_eq!(route("/records/r%2F1"), "record r/1");
        assert_eq!(route("/records"), "none");
    }

    #[test]
    fn query_parameters_are_decoded() {
        let request = Request::new(Method::Get, "/s?q=a+b%26c&empty&n=1&n=2&bad=%zz%4");
        assert_eq!(
            request.query_pairs(),
            [
                ("q".to_owned(), "a b&c".to_owned()),
                ("empty".to_owned(), String::new()),
                ("n".to_owned(), "1".to_owned()),
                ("n".to_owned(), "2".to_owned()),
                ("bad".to_owned(), "%zz%4".to_owned()),
            ]
        );
        assert_eq!(request.query_param("n").as_deref(), Some("1"));
        assert_eq!(request.query_param("missing"), None);
        assert!(Request::new(Method::Get, "/").query_pairs().is_empty());
    }

    #[test]
    fn a_plus_in_a_path_segment_stays_a_plus() {
        assert_eq!(Request::new(Method::Get, "/a+b").segments(), ["a+b"]);
    }

    #[test]
    fn invalid_utf8_escapes_decode_lossily() {
        assert_eq!(percent_decode("%FFok", false), "\u{fffd}ok");
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(percent_decode("%4", false), "%4");
        assert_eq!(percent_decode("%41", false), "A");
    }

    #[test]
    fn json_bodies_parse_or_answer_400_naming_the_path() {
        #[derive(Debug, serde::Deserialize)]
        struct Batch {
            #[expect(dead_code, reason = "only the parse is under test")]
            ids: Vec<u32>,
        }
        let request = Request::new(Method::Post, "/b").with_body(r#"{"ids":[1,2]}"#);
        assert!(request.json::<Batch>().is_ok());

        let request = Request::new(Method::Post, "/b").with_body(r#"{"ids":[1,"x"]}"#);
        let response = request.json::<Batch>().unwrap_err();
        assert_eq!(response.status(), 400);
        let body = body_json(&response);
        assert_eq!(body["error"]["code"], "invalid_body");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("ids[1]: invalid type"), "{message}");

        let empty = Request::new(Method::Post, "/b")
            .json::<Batch>()
            .unwrap_err();
        assert_eq!(empty.status(), 400);
    }

    #[test]
    fn headers_of_a_request_are_case_insensitive() {
        let request = Request::new(Method::Get, "/").with_header("X-Request-Id", "r1");
        assert_eq!(request.header("x-request-id"), Some("r1"));
        assert_eq!(request.headers().len(), 1);
    }

    #[test]
    fn json_responses_carry_their_content_type() {
        let response = Response::json(201, &serde_json::json!({"id": 7}));
        assert_eq!(response.status(), 201);
        assert_eq!(
            response.headers().get("content-type"),
            Some("application/json")
        );
        assert_eq!(response.body(), br#"{"id":7}"#);

        let map = std::collections::BTreeMap::from([((1, 2), 3)]);
        let failed = Response::json(200, &map);
        assert_eq!(failed.status(), 500);
        assert_eq!(body_json(&failed)["error"]["code"], "internal");
    }

    #[test]
    fn text_responses_are_utf8_plain_text() {
        let response = Response::text(200, "ok");
        assert_eq!(
            response.headers().get("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(response.body(), b"ok");
    }

    #[test]
    fn errors_use_the_api_error_shape() {
        let response = Response::not_found();
        assert_eq!(response.status(), 404);
        assert_eq!(
            body_json(&response),
            serde_json::json!({"error": {"code": "not_found", "message": "no such route"}})
        );

        let response = Response::method_not_allowed(&[Method::Get, Method::Head]);
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers().get("allow"), Some("GET, HEAD"));
        assert_eq!(
            body_json(&response)["error"]["message"],
            "this route accepts GET, HEAD"
        );
    }

    #[test]
    fn results_of_responses_are_responses() {
        let ok: Result<Response, Response> = Ok(Response::new(204));
        assert_eq!(ok.into_response().status(), 204);
        let err: Result<Response, Response> = Err(Response::not_found());
        assert_eq!(err.into_response().status(), 404);
    }

    #[test]
    fn unavailable_storage_is_503_and_other_kv_failures_500() {
        let response = Response::from(KvError::Unavailable("db down".to_owned()));
        assert_eq!(response.status(), 503);
        assert_eq!(
            body_json(&response)["error"]["message"],
            "key-value store unavailable: db down"
        );
        assert_eq!(Response::from(KvError::Denied).status(), 500);
    }

    #[test]
    fn a_handler_can_use_the_question_mark_on_kv_and_json() {
        fn handler(request: Request) -> Result<Response, Response> {
            let n: u32 = request.json()?;
            if n == 0 {
                Err(KvError::Unavailable("down".to_owned()))?;
            }
            Ok(Response::json(200, &(n + 1)))
        }
        let call = |body: &str| {
            handler(Request::new(Method::Post, "/").with_body(body.to_owned())).into_response()
        };
        assert_eq!(call("1").body(), b"2");
        assert_eq!(call("0").status(), 503);
        assert_eq!(call("x").status(), 400);
    }
}
