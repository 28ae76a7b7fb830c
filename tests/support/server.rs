//! A real `runcell serve` for end-to-end tests: started on a free port with a fresh data
//! directory, driven over HTTP like any client would, stopped (SIGTERM), killed (SIGKILL)
//! and restarted on the same data directory. Dropping a [`Server`] kills the process and
//! removes its data; a failing test prints what the server wrote.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// How long a server may take from spawn to a `200` from `/readyz`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one ordinary request may take (uploads compile the module).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long SIGTERM may take to stop the server.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Between two polls of a condition.
const POLL: Duration = Duration::from_millis(50);
/// The first-start admin's password in every test server.
pub(crate) const ADMIN_PASSWORD: &str = "test admin password";

/// How to start a server.
#[derive(Debug, Clone)]
pub(crate) struct ServerOptions {
    /// `--workers`; `None` leaves the server's default.
    pub workers: Option<usize>,
    /// `--retry-base-delay`, as humantime (`50ms`).
    pub retry_base_delay: String,
    /// More `RUNCELL_*` variables.
    pub env: Vec<(String, String)>,
    /// Leave `RUNCELL_ADMIN_PASSWORD` unset, so the server generates the first admin's
    /// password and prints it; the harness reads it from the output to log in.
    pub generated_admin_password: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            workers: Some(2),
            retry_base_delay: "50ms".to_owned(),
            env: Vec::new(),
            generated_admin_password: false,
        }
    }
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: u16,
    /// The body as JSON; `Value::Null` when empty, a JSON string when not JSON.
    pub body: Value,
    pub content_type: String,
    pub request_id: Option<String>,
}

impl Reply {
    /// `error.code` of an error body.
    pub(crate) fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    /// `error.message` of an error body.
    pub(crate) fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or_default()
    }

    /// `error.details.field` of an error body.
    pub(crate) fn field(&self) -> &str {
        self.body["error"]["details"]["field"]
            .as_str()
            .unwrap_or_default()
    }
}

/// A running `runcell serve`.
pub(crate) struct Server {
    child: Option<Child>,
    base: String,
    data_dir: TempDir,
    options: ServerOptions,
    agent: ureq::Agent,
    output: Arc<Mutex<String>>,
    /// The admin's access token, sent with every request unless a test says otherwise.
    token: Option<String>,
}

impl Server {
    /// Starts a server with the default options.
    pub(crate) fn start() -> Self {
        Self::start_with(ServerOptions::default())
    }

    pub(crate) fn start_with(options: ServerOptions) -> Self {
        let data_dir = tempfile::tempdir().expect("a temporary data directory");
        let output = Arc::new(Mutex::new(String::new()));
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .into();
        let mut server = Self {
            child: None,
            base: String::new(),
            data_dir,
            options,
            agent,
            output,
            token: None,
        };
        server.spawn();
        server
    }

    /// Spawns the process on the data directory and waits until it is ready.
    fn spawn(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_runcell"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(self.data_dir.path())
            .args(["--retry-base-delay", &self.options.retry_base_delay])
            .env("RUNCELL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(workers) = self.options.workers {
            command.args(["--workers", &workers.to_string()]);
        }
        if self.options.generated_admin_password {
            command.env_remove("RUNCELL_ADMIN_PASSWORD");
        } else {
            command.env("RUNCELL_ADMIN_PASSWORD", ADMIN_PASSWORD);
        }
        for (key, value) in &self.options.env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("runcell serve starts");
        let (address_tx, address_rx) = mpsc::channel();
        drain(child.stdout.take().unwrap(), &self.output, Some(address_tx));
        drain(child.stderr.take().unwrap(), &self.output, None);
        self.child = Some(child);
        let address = address_rx.recv_timeout(START_TIMEOUT).unwrap_or_else(|_| {
            panic!(
                "the server printed no `listening on` line:\n{}",
                self.output()
            )
        });
        self.base = address;
        self.wait_ready();
        let password = match self.generated_admin_password() {
            Some(password) if self.options.generated_admin_password => password,
            _ => ADMIN_PASSWORD.to_owned(),
        };
        self.token = Some(self.login("admin", &password));
    }

    /// The password the server generated for `admin` and printed, if it did.
    pub(crate) fn generated_admin_password(&self) -> Option<String> {
        const MARK: &str = "created user `admin` with the generated password: ";
        let output = self.output();
        let line = output.lines().find(|line| line.contains(MARK))?;
        Some(line.split(MARK).nth(1)?.trim().to_owned())
    }

    /// The absolute URL of `path` on this server, for requests the helpers do not cover.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Logs in as a real client does; returns the access token.
    pub(crate) fn login(&self, username: &str, password: &str) -> String {
        let body = serde_json::json!({"username": username, "password": password}).to_string();
        let reply = self.request_as(
            None,
            "POST",
            "/api/v1/auth/login",
            Some(("application/json", body.as_bytes())),
        );
        assert_eq!(reply.status, 200, "login as {username}: {}", reply.body);
        reply.body["accessToken"].as_str().unwrap().to_owned()
    }

    /// The admin's access token of the current process.
    pub(crate) fn token(&self) -> &str {
        self.token.as_deref().expect("logged in")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.exit_status() {
                panic!(
                    "the server exited ({status}) before it was ready:\n{}",
                    self.output()
                );
            }
            if let Ok(reply) = self.try_request(None, "GET", "/readyz", None)
                && reply.status == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server was not ready within {START_TIMEOUT:?}:\n{}",
                self.output()
            );
            thread::sleep(POLL);
        }
    }

    /// Everything the server wrote on stdout and stderr so far (all its lives).
    pub(crate) fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Whether the process still runs.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exit_status().is_none()
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            // It may have exited already; `stop` and `kill` check what became of it.
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }

    /// SIGTERM, then waits for the process to exit; returns its exit status.
    pub(crate) fn stop(&mut self) -> ExitStatus {
        self.signal("-TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.exit_status() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "the server ignored SIGTERM for {STOP_TIMEOUT:?}:\n{}",
                    self.output()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// SIGKILL: the process dies at once, mid-whatever.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-9", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Starts a new process on the same data directory (and a new port).
    pub(crate) fn restart(&mut self) {
        assert!(
            !self.is_running(),
            "stop or kill the server before restarting it"
        );
        self.output
            .lock()
            .unwrap()
            .push_str("\n---- restart ----\n");
        self.spawn();
    }

    // ---- HTTP ----------------------------------------------------------------------------

    fn try_request(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<Reply, ureq::Error> {
        let url = format!("{}{path}", self.base);
        let authorization = token.map(|token| format!("Bearer {token}"));
        let authorization = authorization.as_deref();
        let response = match (method, body) {
            ("GET", _) => with_auth(self.agent.get(&url), authorization).call(),
            ("DELETE", _) => with_auth(self.agent.delete(&url), authorization).call(),
            ("POST", None) => with_auth(self.agent.post(&url), authorization).send_empty(),
            ("POST", Some((content_type, bytes))) => {
                with_auth(self.agent.post(&url), authorization)
                    .header("content-type", content_type)
                    .send(bytes)
            }
            ("PATCH", Some((content_type, bytes))) => {
                with_auth(self.agent.patch(&url), authorization)
                    .header("content-type", content_type)
                    .send(bytes)
            }
            ("PUT", Some((content_type, bytes))) => with_auth(self.agent.put(&url), authorization)
                .header("content-type", content_type)
                .send(bytes),
            (method, _) => panic!("unsupported method {method}"),
        }?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type").unwrap_or_default();
        let request_id = header("x-request-id");
        let text = response
            .into_body()
            .into_with_config()
            .limit(64 << 20)
            .read_to_string()?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Reply {
            status,
            body,
            content_type,
            request_id,
        })
    }

    /// A request that must reach the server, as the admin.
    pub(crate) fn request(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Reply {
        self.request_as(self.token.as_deref(), method, path, body)
    }

    /// A request that must reach the server, with `token` (or none).
    pub(crate) fn request_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Reply {
        self.try_request(token, method, path, body)
            .unwrap_or_else(|err| panic!("{method} {path} failed: {err}\n{}", self.output()))
    }

    pub(crate) fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None)
    }

    pub(crate) fn delete(&self, path: &str) -> Reply {
        self.request("DELETE", path, None)
    }

    /// POST without a body.
    pub(crate) fn post(&self, path: &str) -> Reply {
        self.request("POST", path, None)
    }

    pub(crate) fn post_json(&self, path: &str, body: &Value) -> Reply {
        let bytes = body.to_string().into_bytes();
        self.request("POST", path, Some(("application/json", &bytes)))
    }

    /// Queues runs of `job_id` with `POST .../execute-bulk` and `body`; returns their ids.
    pub(crate) fn execute_bulk(&self, job_id: &str, body: &Value) -> Vec<String> {
        let reply = self.post_json(&format!("/api/v1/jobs/{job_id}/execute-bulk"), body);
        assert_eq!(reply.status, 202, "execute-bulk: {}", reply.body);
        reply.body["executionIds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_str().unwrap().to_owned())
            .collect()
    }

    pub(crate) fn patch_json(&self, path: &str, body: &Value) -> Reply {
        let bytes = body.to_string().into_bytes();
        self.request("PATCH", path, Some(("application/json", &bytes)))
    }

    pub(crate) fn post_bytes(&self, path: &str, content_type: &str, bytes: &[u8]) -> Reply {
        self.request("POST", path, Some((content_type, bytes)))
    }

    // ---- what tests do often -------------------------------------------------------------

    /// Uploads a built guest (`data-sync`, `hostile`, ...); returns the module record.
    pub(crate) fn upload(&self, wasm: &Path) -> Value {
        let bytes = std::fs::read(wasm).expect("the guest is built");
        let reply = self.post_bytes("/api/v1/modules?approve=true", "application/wasm", &bytes);
        match reply.status {
            201 => reply.body,
            // A large module (a Python or JavaScript one) on a loaded machine: it went on
            // compiling; follow it as a client would.
            202 => self.upload_installed(reply.body["id"].as_str().unwrap(), wasm),
            status => panic!("upload of {}: {status} {}", wasm.display(), reply.body),
        }
    }

    /// Follows upload `id` (answered `202`) until it is installed; its module record.
    fn upload_installed(&self, id: &str, wasm: &Path) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let upload = self.get(&format!("/api/v1/module-uploads/{id}"));
            assert_eq!(upload.status, 200, "{}", upload.body);
            match upload.body["status"].as_str() {
                Some("INSTALLED") => return upload.body["module"].clone(),
                Some("COMPILING") if Instant::now() < deadline => {
                    thread::sleep(POLL);
                }
                _ => panic!("upload of {}: {}", wasm.display(), upload.body),
            }
        }
    }

    /// Creates a job; returns it.
    /// Defines a job and returns it. Without a `schedule`, the job gets none: tests
    /// trigger their runs themselves, and a module's default schedule firing mid-test
    /// would add runs they do not expect (tests of default schedules post their own).
    pub(crate) fn create_job(&self, definition: &Value) -> Value {
        let mut definition = definition.clone();
        if let Some(fields) = definition.as_object_mut() {
            fields.entry("schedule").or_insert(Value::Null);
        }
        let definition = &definition;
        let reply = self.post_json("/api/v1/jobs", definition);
        assert_eq!(reply.status, 201, "create job {definition}: {}", reply.body);
        reply.body
    }

    /// Triggers a job by hand; returns the execution id.
    pub(crate) fn execute(&self, job_id: &str, input: Option<Value>) -> String {
        let path = format!("/api/v1/jobs/{job_id}/execute");
        let reply = match input {
            Some(input) => self.post_json(&path, &serde_json::json!({ "input": input })),
            None => self.post(&path),
        };
        assert_eq!(reply.status, 202, "execute {job_id}: {}", reply.body);
        assert!(
            reply.body["status"] == "QUEUED" || reply.body["status"] == "RUNNING",
            "{}",
            reply.body
        );
        reply.body["executionId"].as_str().unwrap().to_owned()
    }

    pub(crate) fn execution(&self, id: &str) -> Value {
        let reply = self.get(&format!("/api/v1/executions/{id}"));
        assert_eq!(reply.status, 200, "execution {id}: {}", reply.body);
        reply.body
    }

    /// Polls until execution `id` is final; returns it.
    pub(crate) fn wait_final(&self, id: &str, timeout: Duration) -> Value {
        let mut last = Value::Null;
        let found = self.wait_until(timeout, || {
            last = self.execution(id);
            is_final(&last)
        });
        assert!(found, "execution {id} not final after {timeout:?}: {last}");
        last
    }

    /// Polls `condition` until it holds (`true`) or `timeout` passes (`false`).
    pub(crate) fn wait_until(
        &self,
        timeout: Duration,
        mut condition: impl FnMut() -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if condition() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(POLL);
        }
    }

    /// Every execution matching `query` (`jobId=...&status=...`), following cursors.
    pub(crate) fn executions(&self, query: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/executions?limit=500&{query}");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let reply = self.get(&path);
            assert_eq!(reply.status, 200, "{path}: {}", reply.body);
            items.extend(reply.body["items"].as_array().unwrap().iter().cloned());
            match reply.body["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return items,
            }
        }
    }

    /// Every stored log line of an execution, following `nextAfter`.
    pub(crate) fn logs(&self, id: &str) -> Vec<Value> {
        let mut lines = Vec::new();
        let mut after: Option<u64> = None;
        loop {
            let mut path = format!("/api/v1/executions/{id}/logs?limit=10000");
            if let Some(after) = after {
                path.push_str(&format!("&after={after}"));
            }
            let reply = self.get(&path);
            assert_eq!(reply.status, 200, "logs of {id}: {}", reply.body);
            lines.extend(reply.body["items"].as_array().unwrap().iter().cloned());
            match reply.body["nextAfter"].as_u64() {
                Some(next) => after = Some(next),
                None => return lines,
            }
        }
    }

    /// Follows an execution's log to its end: every server-sent event as (name, data).
    pub(crate) fn follow(&self, id: &str, timeout: Duration) -> Vec<(String, Value)> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        let url = format!("{}/api/v1/executions/{id}/logs?follow=true", self.base);
        let response = agent
            .get(&url)
            .header("authorization", format!("Bearer {}", self.token()))
            .call()
            .expect("the follow request is answered");
        assert_eq!(response.status().as_u16(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        let reader = BufReader::new(response.into_body().into_reader());
        parse_sse(reader)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!("---- server output ----\n{}", self.output());
        }
    }
}

/// Whether an execution (as JSON) has reached a final status.
pub(crate) fn is_final(execution: &Value) -> bool {
    matches!(
        execution["status"].as_str(),
        Some("COMPLETED" | "FAILED" | "TIMED_OUT" | "CANCELLED")
    )
}

/// Copies a pipe of the child into `output`; sends the address of the `listening on`
/// line to `address`. Draining keeps a chatty server from blocking on a full pipe.
fn drain(
    pipe: impl Read + Send + 'static,
    output: &Arc<Mutex<String>>,
    address: Option<mpsc::Sender<String>>,
) {
    let output = output.clone();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(address) = &address
                && let Some(rest) = line.split("listening on ").nth(1)
            {
                let _ = address.send(rest.trim().to_owned());
            }
            let mut output = output.lock().unwrap();
            output.push_str(&line);
            output.push('\n');
        }
    });
}

/// Reads server-sent events until the stream closes; comments (keep-alives) are skipped.
fn parse_sse(reader: impl BufRead) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    let mut name = String::from("message");
    let mut data = String::new();
    for line in reader.lines() {
        let line = match line {
            Ok(line) => line,
            Err(err) => panic!(
                "the event stream broke after {} events: {err}",
                events.len()
            ),
        };
        if line.is_empty() {
            if !data.is_empty() {
                let value = serde_json::from_str(&data).unwrap_or(Value::String(data.clone()));
                events.push((std::mem::replace(&mut name, "message".to_owned()), value));
                data.clear();
            }
        } else if let Some(value) = line.strip_prefix("event:") {
            name = value.trim().to_owned();
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    events
}

fn with_auth<B>(
    request: ureq::RequestBuilder<B>,
    authorization: Option<&str>,
) -> ureq::RequestBuilder<B> {
    match authorization {
        Some(value) => request.header("authorization", value),
        None => request,
    }
}
