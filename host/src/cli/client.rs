//! The HTTP client of the server-facing commands: finds the server and the token (flags,
//! environment, then the stored login), refreshes an expired session by itself, and turns
//! every answer that is not a success into one line: the server's `error.message` and
//! the HTTP status. A client of the public API only.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde_json::{Value, json};

use super::ExitStatus;
use super::credentials::{self, Credentials};

/// How long connecting may take: a wrong address should fail fast, not hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// An access token this close to its expiry is refreshed before use, so it does not
/// expire on the way to the server.
const EXPIRY_MARGIN_MS: i64 = 5_000;
/// The largest JSON answer read: a page of 500 executions with their inputs and results.
const MAX_ANSWER_BYTES: u64 = 64 * 1024 * 1024;

/// Why a command stopped: one line for the user and the exit status for scripts.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) message: String,
    pub(super) status: ExitStatus,
}

impl Failure {
    /// Something outside the server failed: a file, the network, the config directory.
    pub(super) fn environment(message: String) -> Self {
        Self {
            message,
            status: ExitStatus::Environment,
        }
    }

    /// The command line asks for something that cannot be done as given.
    pub(super) fn usage(message: String) -> Self {
        Self {
            message,
            status: ExitStatus::Usage,
        }
    }

    /// The server refused a request.
    fn refused(message: String) -> Self {
        Self {
            message,
            status: ExitStatus::Refused,
        }
    }
}

/// Prints `failure` as `runcell <command>: <message>` and returns its exit status.
pub(super) fn report(command: &str, outcome: Result<ExitStatus, Failure>) -> ExitStatus {
    match outcome {
        Ok(status) => status,
        Err(failure) => {
            eprintln!("runcell {command}: {}", failure.message);
            failure.status
        }
    }
}

/// Which server, and who calls it: given on the command line or in the environment,
/// else the stored login's.
#[derive(Debug, Clone, Default, Args)]
pub(super) struct ServerArgs {
    /// The server's address (default: the one logged in to).
    #[arg(long, env = "RUNCELL_SERVER")]
    server: Option<String>,
    /// An access or API token to use instead of the stored login.
    #[arg(long, env = "RUNCELL_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl ServerArgs {
    /// Whether neither a server nor a token was given (on the command line or in the
    /// environment).
    pub(super) fn is_unset(&self) -> bool {
        self.server.is_none() && self.token.is_none()
    }

    /// `server` and `token`, as if given on the command line.
    pub(super) fn given(server: &str, token: &str) -> Self {
        Self {
            server: Some(server.to_owned()),
            token: Some(token.to_owned()),
        }
    }
}

/// Whose token a request carries.
enum Auth {
    /// Given on the command line or in the environment: used as it is.
    Given(String),
    /// The stored login, refreshed and written back when it expires.
    Stored {
        path: PathBuf,
        credentials: Credentials,
    },
}

/// A request body.
pub(super) enum Payload<'a> {
    None,
    Json(&'a Value),
    /// A module upload, with progress on stderr when `progress`.
    Wasm {
        bytes: &'a [u8],
        progress: bool,
    },
}

pub(super) struct Client {
    base: String,
    agent: ureq::Agent,
    auth: Option<Auth>,
}

/// `server` without trailing slashes; a bare `host:port` is taken as `http://`.
pub(super) fn normalize_server(server: &str) -> String {
    let trimmed = server.trim().trim_end_matches('/');
    if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    }
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Client {
    /// A client without a token, for logging in.
    pub(super) fn anonymous(server: &str) -> Self {
        Self {
            base: normalize_server(server),
            agent: agent(),
            auth: None,
        }
    }

    /// A client of the server `args` name, with their token or the stored login.
    pub(super) fn connect(args: &ServerArgs) -> Result<Self, Failure> {
        let path = credentials::credentials_path()?;
        let stored = credentials::load(&path)?;
        let server = args.server.as_deref().map(normalize_server);
        let (base, auth) = match (&args.token, stored) {
            (Some(token), stored) => {
                let base = server.or_else(|| stored.map(|c| c.server)).ok_or_else(|| {
                    Failure::usage("--token needs --server (or RUNCELL_SERVER)".to_owned())
                })?;
                (base, Auth::Given(token.clone()))
            }
            (None, Some(credentials)) => {
                if let Some(server) = server.filter(|s| *s != credentials.server) {
                    return Err(Failure::usage(format!(
                        "not logged in to {server} (the login stored is for {}); run `runcell login --server {server}` or pass --token",
                        credentials.server
                    )));
                }
                (
                    credentials.server.clone(),
                    Auth::Stored { path, credentials },
                )
            }
            (None, None) => {
                return Err(Failure::usage(
                    "not logged in; run `runcell login --server URL` or pass --server and --token"
                        .to_owned(),
                ));
            }
        };
        Ok(Self {
            base,
            agent: agent(),
            auth: Some(auth),
        })
    }

    pub(super) fn base(&self) -> &str {
        &self.base
    }

    pub(super) fn get(&mut self, path: &str) -> Result<Value, Failure> {
        self.call("GET", path, Payload::None)
    }

    pub(super) fn post(&mut self, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        self.call("POST", path, body.map_or(Payload::None, Payload::Json))
    }

    /// Sends a request and reads its JSON answer (`null` for an empty one).
    pub(super) fn call(
        &mut self,
        method: &str,
        path: &str,
        payload: Payload,
    ) -> Result<Value, Failure> {
        let mut response = self.send(method, path, &payload)?;
        answer(&mut response)
    }

    /// Uploads a module file and answers the installed module, as `POST /modules` answers
    /// it: asked to answer at once (`Prefer: respond-async`), the server compiles in the
    /// background, and the upload is followed until it is installed or refused, the time
    /// it takes shown when `progress`.
    pub(super) fn upload_module(&mut self, bytes: &[u8], progress: bool) -> Result<Value, Failure> {
        let payload = Payload::Wasm { bytes, progress };
        let mut response = self.send_with(
            "POST",
            "/modules",
            &payload,
            Some(("prefer", "respond-async".to_owned())),
        )?;
        let accepted = response.status().as_u16() == 202;
        let answered = answer(&mut response)?;
        if !accepted {
            return Ok(answered);
        }
        let id = answered["id"].as_str().unwrap_or_default().to_owned();
        let mut waiting = Compiling::new(progress);
        loop {
            let upload = self.get(&format!("/module-uploads/{id}"))?;
            match upload["status"].as_str() {
                Some("INSTALLED") => {
                    waiting.finish();
                    return Ok(upload["module"].clone());
                }
                Some("FAILED") => {
                    waiting.finish();
                    let status = upload["httpStatus"].as_u64().unwrap_or(500) as u16;
                    return Err(Failure::refused(error_line(
                        status,
                        &upload["error"].to_string(),
                    )));
                }
                _ => {
                    waiting.draw();
                    std::thread::sleep(UPLOAD_POLL_EVERY);
                }
            }
        }
    }

    /// Opens an event stream (`text/event-stream`) at `path`, resuming after event id
    /// `last_event_id`.
    pub(super) fn open_stream(
        &mut self,
        path: &str,
        last_event_id: Option<u32>,
    ) -> Result<impl Read + use<>, Failure> {
        let mut response = self.send_with(
            "GET",
            path,
            &Payload::None,
            last_event_id.map(|id| ("last-event-id", id.to_string())),
        )?;
        if !response.status().is_success() {
            return Err(answer(&mut response).expect_err("not a success"));
        }
        Ok(response.into_body().into_reader())
    }

    fn send(
        &mut self,
        method: &str,
        path: &str,
        payload: &Payload,
    ) -> Result<http::Response<ureq::Body>, Failure> {
        self.send_with(method, path, payload, None)
    }

    /// Sends the request; a stored session that has expired (or that the server says is
    /// no longer valid) is refreshed once and the request sent again.
    fn send_with(
        &mut self,
        method: &str,
        path: &str,
        payload: &Payload,
        header: Option<(&str, String)>,
    ) -> Result<http::Response<ureq::Body>, Failure> {
        if let Some(Auth::Stored { credentials, .. }) = &self.auth
            && credentials.access_expired(now_ms(), EXPIRY_MARGIN_MS)
            && credentials.refresh_token.is_some()
        {
            self.refresh()?;
        }
        let response = self.send_once(method, path, payload, header.clone())?;
        let refreshable = matches!(
            &self.auth,
            Some(Auth::Stored { credentials, .. }) if credentials.refresh_token.is_some()
        );
        if response.status().as_u16() == 401 && refreshable {
            self.refresh()?;
            return self.send_once(method, path, payload, header);
        }
        Ok(response)
    }

    fn send_once(
        &self,
        method: &str,
        path: &str,
        payload: &Payload,
        header: Option<(&str, String)>,
    ) -> Result<http::Response<ureq::Body>, Failure> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = http::Request::builder().method(method).uri(&url);
        if let Some(token) = self.token() {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        let unreachable =
            |err: ureq::Error| Failure::environment(format!("cannot reach {}: {err}", self.base));
        let bad_url = |err: http::Error| Failure::usage(format!("`{url}` is not a URL: {err}"));
        match payload {
            Payload::None => {
                let request = request.body(()).map_err(bad_url)?;
                self.agent.run(request).map_err(unreachable)
            }
            Payload::Json(body) => {
                let request = request
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .map_err(bad_url)?;
                self.agent.run(request).map_err(unreachable)
            }
            Payload::Wasm { bytes, progress } => {
                let mut reader = Progress::new(bytes, *progress);
                let request = request
                    .header("content-type", "application/wasm")
                    .header("content-length", bytes.len().to_string())
                    .body(ureq::SendBody::from_reader(&mut reader))
                    .map_err(bad_url)?;
                let sent = self.agent.run(request).map_err(unreachable);
                reader.finish();
                sent
            }
        }
    }

    fn token(&self) -> Option<&str> {
        match self.auth.as_ref()? {
            Auth::Given(token) => Some(token),
            Auth::Stored { credentials, .. } => Some(&credentials.access_token),
        }
    }

    /// Trades the stored refresh token for a new pair and stores it at once: the old
    /// refresh token no longer works, and presenting it again would end the session.
    fn refresh(&mut self) -> Result<(), Failure> {
        let Some(Auth::Stored { path, credentials }) = &mut self.auth else {
            return Ok(());
        };
        let Some(refresh_token) = credentials.refresh_token.clone() else {
            return Ok(());
        };
        let anonymous = Client::anonymous(&credentials.server);
        let body = json!({"refreshToken": refresh_token});
        let mut response =
            anonymous.send_once("POST", "/auth/refresh", &Payload::Json(&body), None)?;
        let session = answer(&mut response).map_err(|failure| {
            Failure::refused(format!(
                "the stored login to {} has ended ({}); run `runcell login --server {}`",
                credentials.server, failure.message, credentials.server
            ))
        })?;
        *credentials = session_credentials(&credentials.server, &session)?;
        credentials::save(path, credentials)
    }
}

/// The credentials a login or refresh answer (`SessionResponse`) gives.
pub(super) fn session_credentials(server: &str, session: &Value) -> Result<Credentials, Failure> {
    let text = |field: &str| {
        session[field]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Failure::environment(format!("the server's session has no `{field}`")))
    };
    let expires_in = session["expiresIn"].as_i64().unwrap_or(0);
    Ok(Credentials {
        server: server.to_owned(),
        username: session["user"]["username"].as_str().map(str::to_owned),
        access_token: text("accessToken")?,
        access_expires_at: Some(now_ms() + expires_in * 1000),
        refresh_token: Some(text("refreshToken")?),
    })
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .build()
        .new_agent()
}

/// The JSON of a success, or the server's `error.message` and status as a failure.
fn answer(response: &mut http::Response<ureq::Body>) -> Result<Value, Failure> {
    let status = response.status();
    let text = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_string()
        .map_err(|err| Failure::environment(format!("reading the server's answer: {err}")))?;
    if status.is_success() {
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        return serde_json::from_str(&text).map_err(|err| {
            Failure::environment(format!("the server's answer is not JSON: {err}"))
        });
    }
    Err(Failure::refused(error_line(status.as_u16(), &text)))
}

/// `<error.message> (HTTP <status>)`; for a body that is not the API's error shape (a
/// proxy's page, another server), the status's reason instead of the page.
pub(super) fn error_line(status: u16, body: &str) -> String {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|body| body["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            let reason = http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("error");
            format!("{reason}; is this a Runcell server?")
        });
    format!("{message} (HTTP {status})")
}

/// How often an upload being compiled is asked after.
const UPLOAD_POLL_EVERY: Duration = Duration::from_millis(250);

/// The wait while the server compiles an upload, drawn on a terminal as the seconds
/// passed; said once otherwise.
struct Compiling {
    started: std::time::Instant,
    /// The seconds last drawn; `None` when not drawing.
    drawn: Option<u64>,
}

impl Compiling {
    fn new(progress: bool) -> Self {
        let terminal = progress && std::io::stderr().is_terminal();
        if progress && !terminal {
            eprintln!("compiling on the server");
        }
        Self {
            started: std::time::Instant::now(),
            drawn: terminal.then_some(u64::MAX),
        }
    }

    fn draw(&mut self) {
        let Some(drawn) = self.drawn else { return };
        let seconds = self.started.elapsed().as_secs();
        if seconds != drawn {
            self.drawn = Some(seconds);
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\rcompiling on the server ({seconds} s)");
            let _ = stderr.flush();
        }
    }

    fn finish(&mut self) {
        if self.drawn.take().is_some_and(|drawn| drawn != u64::MAX) {
            eprintln!();
        }
    }
}

/// Reads an upload from memory, drawing its progress on a terminal.
struct Progress<'a> {
    bytes: &'a [u8],
    sent: usize,
    /// The percentage last drawn; `None` when not drawing.
    drawn: Option<usize>,
}

impl<'a> Progress<'a> {
    fn new(bytes: &'a [u8], progress: bool) -> Self {
        let terminal = progress && std::io::stderr().is_terminal();
        if progress && !terminal {
            eprintln!("uploading {}", size(bytes.len()));
        }
        Self {
            bytes,
            sent: 0,
            drawn: terminal.then_some(usize::MAX),
        }
    }

    fn draw(&mut self) {
        let Some(drawn) = self.drawn else { return };
        let percent = (self.sent * 100)
            .checked_div(self.bytes.len())
            .unwrap_or(100);
        if percent != drawn {
            self.drawn = Some(percent);
            let mut stderr = std::io::stderr().lock();
            let _ = write!(
                stderr,
                "\ruploading {} of {} ({percent}%)",
                size(self.sent),
                size(self.bytes.len())
            );
            let _ = stderr.flush();
        }
    }

    /// Ends the progress line.
    fn finish(&mut self) {
        if self.drawn.take().is_some() {
            eprintln!();
        }
    }
}

impl Read for Progress<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = &self.bytes[self.sent..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.sent += n;
        self.draw();
        Ok(n)
    }
}

pub(super) fn size(bytes: usize) -> String {
    bytesize::ByteSize(bytes as u64).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_its_message_and_status_never_the_json() {
        let body = r#"{"error": {"code": "not_found", "message": "no job `nightly`"}}"#;
        assert_eq!(error_line(404, body), "no job `nightly` (HTTP 404)");
        let page = "<html><body>Bad Gateway</body></html>";
        assert_eq!(
            error_line(502, page),
            "Bad Gateway; is this a Runcell server? (HTTP 502)"
        );
    }

    #[test]
    fn a_bare_address_is_http_and_loses_its_trailing_slash() {
        assert_eq!(normalize_server("127.0.0.1:4000/"), "http://127.0.0.1:4000");
        assert_eq!(
            normalize_server("https://runcell.example.com//"),
            "https://runcell.example.com"
        );
    }

    #[test]
    fn an_upload_reads_back_its_bytes_whole() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut reader = Progress::new(&bytes, false);
        let mut copy = Vec::new();
        reader.read_to_end(&mut copy).unwrap();
        assert_eq!(copy, bytes);
    }
}
