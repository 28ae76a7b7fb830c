//! Extractors that turn what a client sends into typed values or an [`ApiError`] naming
//! what is wrong: JSON bodies ([`ApiJson`], [`OptionalJson`]), raw bodies within the
//! route's size limit ([`read_body`]) and query parameters ([`Params`], [`PageRequest`]).

use std::collections::HashMap;
use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::error::Category;
use utoipa::IntoParams;

use super::error::{ApiError, ErrorCode};
use crate::domain::window::Window;
use crate::services::jobs::IDEMPOTENCY_KEY_FIELD;

/// Largest body of any route but module uploads. Job definitions, inputs and event
/// payloads are configuration and messages, not data sets.
pub(crate) const JSON_BODY_LIMIT: usize = 1024 * 1024;

/// Page size when the client gives none.
pub(crate) const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page a client may ask for: bounds one response's size and the query behind it.
pub(crate) const MAX_PAGE_SIZE: u32 = 500;

/// A JSON body, parsed into `T`. Malformed JSON, a missing body, unknown fields and values
/// of the wrong type are a `400` naming the field; a body over [`JSON_BODY_LIMIT`] is a
/// `413`; a body that is not declared as JSON is a `415`.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match OptionalJson::<T>::from_request(request, state).await? {
            OptionalJson(Some(value)) => Ok(Self(value)),
            OptionalJson(None) => Err(ApiError::new(
                ErrorCode::MalformedJson,
                "the request body is empty; send a JSON object with Content-Type: application/json",
            )),
        }
    }
}

/// Like [`ApiJson`], but an empty body is `None` (for requests whose every field is
/// optional, such as `execute`).
#[derive(Debug)]
pub(crate) struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let declared_json = is_json(request.headers());
        let has_content_type = request.headers().contains_key(CONTENT_TYPE);
        let body = read_body(request, state, JSON_BODY_LIMIT).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        if !declared_json {
            let message = if has_content_type {
                "this route takes a JSON body; send it with Content-Type: application/json"
            } else {
                "the body has no Content-Type; send JSON with Content-Type: application/json"
            };
            return Err(ApiError::new(ErrorCode::UnsupportedMediaType, message)
                .with_detail("accepted", vec!["application/json"]));
        }
        parse_json(&body).map(|value| Self(Some(value)))
    }
}

/// The media type of the body (`application/json` of `application/json; charset=utf-8`),
/// lowercased; `None` without a `Content-Type`.
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or_default().trim();
    Some(essence.to_ascii_lowercase())
}

fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|media| media == "application/json" || media.ends_with("+json"))
}

/// Reads the whole body, refusing one above `limit` bytes with a `413` that says so. The
/// route's `DefaultBodyLimit` must be at least `limit`; it is what actually stops reading.
pub(crate) async fn read_body<S: Send + Sync>(
    request: Request,
    state: &S,
    limit: usize,
) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| body_error(&rejection, limit))
}

fn body_error(rejection: &BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(limit)
    } else {
        ApiError::new(
            ErrorCode::MalformedJson,
            format!("could not read the request body: {}", rejection.body_text()),
        )
    }
}

/// The `413` of a body above `limit` bytes.
pub(crate) fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "the request body is larger than this route accepts ({})",
            human_bytes(limit)
        ),
    )
    .with_detail("limitBytes", limit)
}

fn human_bytes(bytes: usize) -> String {
    const MIB: usize = 1024 * 1024;
    if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// Parses a JSON document into `T`, naming the offending field on failure.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(json_error)?;
    deserializer.end().map_err(|err| malformed(&err))?;
    Ok(value)
}

fn malformed(err: &serde_json::Error) -> ApiError {
    ApiError::new(
        ErrorCode::MalformedJson,
        format!("the request body is not valid JSON: {err}"),
    )
}

fn json_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = err.inner();
    if inner.classify() != Category::Data {
        return malformed(inner);
    }
    // serde_json appends the position; the field name says more.
    let position = format!(" at line {} column {}", inner.line(), inner.column());
    let text = inner.to_string();
    let text = text.strip_suffix(&position).unwrap_or(&text);
    let text = hide_type_names(text);
    let path = err.path().to_string();
    // A missing field is reported at the enclosing object; name the field itself.
    let missing = text
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    let field = match (path.as_str(), missing) {
        (".", Some(name)) => name.to_owned(),
        (path, Some(name)) => format!("{path}.{name}"),
        (".", None) => {
            return ApiError::new(
                ErrorCode::InvalidField,
                format!("the request body has the wrong shape: {text}"),
            );
        }
        (path, None) => path.to_owned(),
    };
    ApiError::field(
        ErrorCode::InvalidField,
        field.clone(),
        format!("{field}: {text}"),
    )
}

/// serde says "expected struct JobDraft"; clients know no Rust types.
fn hide_type_names(text: &str) -> String {
    match text.find("expected struct ") {
        Some(at) => format!("{}expected a JSON object", &text[..at]),
        None => text.to_owned(),
    }
}

/// The header a client sends with a manual trigger to make a retry of it harmless.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The longest idempotency key accepted: room for any UUID, ULID or hash a client
/// would use, with a prefix, and no more (keys are stored for a day).
pub(crate) const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The `Idempotency-Key` header, if sent: 1 to [`MAX_IDEMPOTENCY_KEY`] visible ASCII
/// characters other than `"` and `\`, bare (`abc-123`) or as a quoted string
/// (`"abc-123"`, the form of the IETF draft; the quotes are not part of the key).
/// Anything else, or the header twice, is a `400` naming it: a key the server read
/// differently from the client would make a retry a new request.
#[derive(Debug, Default)]
pub(crate) struct IdempotencyKeyHeader(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKeyHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(Self(None));
        };
        let invalid = |why: &str| {
            ApiError::field(
                ErrorCode::InvalidField,
                IDEMPOTENCY_KEY_FIELD,
                format!(
                    "Idempotency-Key: {why}; send one key of 1 to {MAX_IDEMPOTENCY_KEY} visible \
                     ASCII characters other than `\"` and `\\` (a UUID, say), bare or quoted"
                ),
            )
        };
        if values.next().is_some() {
            return Err(invalid("sent more than once"));
        }
        let bytes = value.as_bytes();
        let key = match bytes {
            [b'"', inner @ .., b'"'] => inner,
            _ => bytes,
        };
        if key.is_empty() {
            return Err(invalid("empty"));
        }
        if key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(invalid(&format!("{} bytes long", key.len())));
        }
        if !key
            .iter()
            .all(|&byte| byte.is_ascii_graphic() && byte != b'"' && byte != b'\\')
        {
            return Err(invalid("contains a character not allowed"));
        }
        // Visible ASCII only, so always UTF-8.
        Ok(Self(Some(String::from_utf8_lossy(key).into_owned())))
    }
}

/// The query string, as parameters; typed accessors say which parameter is wrong.
#[derive(Debug, Default)]
pub(crate) struct Params {
    /// The last value of each parameter.
    last: HashMap<String, String>,
    /// Every parameter in order, repeats included, for those a client may repeat.
    all: Vec<(String, String)>,
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(all) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                ApiError::new(
                    ErrorCode::InvalidField,
                    format!("the query string is malformed: {}", rejection.body_text()),
                )
            })?;
        Ok(Self {
            last: all.iter().cloned().collect(),
            all,
        })
    }
}

impl Params {
    /// A text parameter; empty counts as absent. Given more than once, the last counts.
    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.last
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Every value of a parameter a client may repeat (`label=a:1&label=b:2`), in order;
    /// empty ones count as absent.
    pub(crate) fn repeated(&self, name: &str) -> impl Iterator<Item = &str> {
        self.all
            .iter()
            .filter(move |(key, value)| key == name && !value.is_empty())
            .map(|(_, value)| value.as_str())
    }

    /// A number parameter.
    pub(crate) fn number<T: FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.text(name)
            .map(|text| {
                text.parse().map_err(|_| {
                    ApiError::field(
                        ErrorCode::InvalidField,
                        name,
                        format!("{name}: `{text}` is not a non-negative integer"),
                    )
                })
            })
            .transpose()
    }

    /// A boolean parameter: `true`/`false` (or `1`/`0`); absent is `false`.
    pub(crate) fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.text(name) {
            None | Some("false" | "0") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(other) => Err(ApiError::field(
                ErrorCode::InvalidField,
                name,
                format!("{name}: `{other}` is not a boolean; use true or false"),
            )),
        }
    }

    /// `from`, `to` and `step`, as every time series takes them (see [`Window::parse`]).
    pub(crate) fn window(&self) -> Result<Window, ApiError> {
        let request = WindowRequest {
            from: self.text("from").map(str::to_owned),
            to: self.text("to").map(str::to_owned),
            step: self.text("step").map(str::to_owned),
        };
        Window::parse(
            request.from.as_deref(),
            request.to.as_deref(),
            request.step.as_deref(),
            crate::domain::now_millis(),
        )
        .map_err(|err| {
            let message = err.to_string();
            ApiError::field(ErrorCode::InvalidField, err.parameter, message)
        })
    }

    /// `cursor` and `limit`.
    pub(crate) fn page(&self) -> Result<PageRequest, ApiError> {
        let limit = self.limit(DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
        Ok(PageRequest {
            cursor: self.text("cursor").map(str::to_owned),
            limit,
        })
    }

    /// `limit`, `default` when absent, refused outside `1..=max`.
    pub(crate) fn limit(&self, default: u32, max: u32) -> Result<u32, ApiError> {
        let limit = self.number::<u32>("limit")?.unwrap_or(default);
        if !(1..=max).contains(&limit) {
            return Err(ApiError::field(
                ErrorCode::InvalidField,
                "limit",
                format!("limit: must be between 1 and {max}"),
            ));
        }
        Ok(limit)
    }
}

/// The window of a time series, as [`Window::parse`] reads it: every series of the API
/// takes these three alike.
#[derive(Debug, Clone, PartialEq, Eq, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WindowRequest {
    /// Start: milliseconds since the Unix epoch or RFC 3339 (default: a day before `to`).
    #[param(nullable = false)]
    pub from: Option<String>,
    /// End, exclusive: milliseconds since the Unix epoch or RFC 3339 (default: now).
    #[param(nullable = false)]
    pub to: Option<String>,
    /// Whole minutes, hours or days (`1m`, `15m`, `1h`, `1d`); default: the smallest of
    /// 1m, 5m, 15m, 1h, 3h, 6h, 12h, 1d, 7d giving at most 300 points. At most 10,000
    /// points.
    #[param(nullable = false)]
    pub step: Option<String>,
}

/// One page of a listing: start after `cursor` (the `nextCursor` of the previous page),
/// at most `limit` items. The OpenAPI document repeats the bounds as literals; a test holds
/// them to [`DEFAULT_PAGE_SIZE`] and [`MAX_PAGE_SIZE`].
#[derive(Debug, Clone, PartialEq, Eq, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageRequest {
    /// The `nextCursor` of the previous page; absent: the first page.
    #[param(nullable = false)]
    pub cursor: Option<String>,
    /// Items per page, 1 to 500.
    #[param(required = false, minimum = 1, maximum = 500, default = 50)]
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[expect(dead_code, reason = "only deserialized")]
    struct Draft {
        name: String,
        max_attempts: Option<u32>,
        inputs: Option<Vec<Inner>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "only deserialized")]
    struct Inner {
        n: u32,
    }

    fn field_of(body: &str) -> (ErrorCode, Option<String>, String) {
        let err = parse_json::<Draft>(body.as_bytes()).unwrap_err();
        let field = err
            .detail("field")
            .and_then(|f| f.as_str())
            .map(str::to_owned);
        (err.code(), field, err.message().to_owned())
    }

    #[test]
    fn a_wrong_type_names_the_field_without_a_position() {
        let (code, field, message) = field_of(r#"{"name": "a", "maxAttempts": "three"}"#);
        assert_eq!(code, ErrorCode::InvalidField);
        assert_eq!(field.as_deref(), Some("maxAttempts"));
        assert!(
            message.starts_with("maxAttempts: invalid type: string"),
            "{message}"
        );
        assert!(!message.contains("line 1"), "{message}");
    }

    #[test]
    fn unknown_and_missing_fields_are_named_where_they_are() {
        let (_, field, message) = field_of(r#"{"name": "a", "colour": 1}"#);
        assert_eq!(field.as_deref(), Some("colour"));
        assert!(message.contains("unknown field `colour`"), "{message}");
        let (_, field, _) = field_of(r#"{"maxAttempts": 1}"#);
        assert_eq!(field.as_deref(), Some("name"));
        let (_, field, _) = field_of(r#"{"name": "a", "inputs": [{"n": 1}, {"m": 2}]}"#);
        assert_eq!(field.as_deref(), Some("inputs[1].m"));
    }

    #[test]
    fn broken_json_is_malformed_not_a_field_error() {
        for body in [r#"{"name": "#, "{name: 1}", r#"{"name": "a"} trailing"#] {
            let (code, field, _) = field_of(body);
            assert_eq!(code, ErrorCode::MalformedJson, "{body}");
            assert_eq!(field, None);
        }
    }

    #[test]
    fn a_body_of_the_wrong_shape_names_no_rust_type() {
        let (code, field, message) = field_of(r#""just a string""#);
        assert_eq!(code, ErrorCode::InvalidField);
        assert_eq!(field, None);
        assert!(message.contains("expected a JSON object"), "{message}");
        assert!(!message.contains("Draft"), "{message}");
    }
}
