//! The throwaway server `runcell dev` starts when it is given none: `runcell serve` as a
//! child process on a temporary data directory and a free loopback port, with a generated
//! admin password it logs in with; stopped, and its directory removed, when dev ends.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::client::{self, Client, Failure, Payload, ServerArgs};

/// How long the child may take to listen: it creates its database and keys first.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the child may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// A session older than this is replaced before use, well inside the child's token lifetime.
const SESSION_REUSE: Duration = Duration::from_secs(30 * 60);
/// The access-token lifetime the child is started with: a dev loop runs for hours.
const ACCESS_TOKEN_TTL: &str = "2h";
/// The user the child creates on its first start.
const ADMIN: &str = "admin";

pub(super) struct DevServer {
    child: Child,
    /// Holds the data directory and the server's log; removed at the end.
    root: PathBuf,
    url: String,
    password: String,
    session: Option<(String, Instant)>,
}

impl DevServer {
    /// Starts `runcell serve` and waits until it listens.
    pub(super) fn start() -> Result<Self, Failure> {
        let root = std::env::temp_dir().join(format!("runcell-dev-{}", uuid::Uuid::now_v7()));
        let data = root.join("data");
        std::fs::create_dir_all(&data).map_err(|err| {
            Failure::environment(format!("cannot create {}: {err}", data.display()))
        })?;
        let log_path = root.join("server.log");
        let log = std::fs::File::create(&log_path).map_err(|err| {
            Failure::environment(format!("cannot create {}: {err}", log_path.display()))
        })?;
        let exe = std::env::current_exe()
            .map_err(|err| Failure::environment(format!("cannot find runcell itself: {err}")))?;
        let password = random_password()?;
        let mut command = Command::new(exe);
        // The user's own deployment settings must not leak into the throwaway server.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if (name.starts_with("RUNCELL_") && name != "RUNCELL_LOG") || name == "DATABASE_URL" {
                command.env_remove(&*name);
            }
        }
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--shutdown-grace", "1s"])
            .args(["--access-token-ttl", ACCESS_TOKEN_TTL])
            .arg("--data-dir")
            .arg(&data)
            .env("RUNCELL_ADMIN_PASSWORD", &password)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        // Its own process group: a Ctrl-C on the terminal reaches only dev, which stops the
        // server itself, in order.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => {
                let _ = std::fs::remove_dir_all(&root);
                return Err(Failure::environment(format!(
                    "cannot start runcell serve: {err}"
                )));
            }
        };
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut server = Self {
            child,
            root,
            url: String::new(),
            password,
            session: None,
        };
        match wait_for_address(stdout, &mut server.child) {
            Ok(url) => server.url = url,
            Err(why) => {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                server.stop();
                return Err(Failure::environment(format!(
                    "the dev server did not start: {why}{}",
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!("; its log ends:\n{}", tail.join("\n"))
                    }
                )));
            }
        }
        Ok(server)
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    pub(super) fn data_dir(&self) -> &Path {
        &self.root
    }

    /// Server arguments for the admin's session, logging in again when it is old.
    pub(super) fn server_args(&mut self) -> Result<ServerArgs, Failure> {
        let fresh = self
            .session
            .as_ref()
            .filter(|(_, since)| since.elapsed() < SESSION_REUSE);
        let token = match fresh {
            Some((token, _)) => token.clone(),
            None => {
                let body = json!({"username": ADMIN, "password": self.password});
                let session = Client::anonymous(&self.url).call(
                    "POST",
                    "/auth/login",
                    Payload::Json(&body),
                )?;
                let token = client::session_credentials(&self.url, &session)?.access_token;
                self.session = Some((token.clone(), Instant::now()));
                token
            }
        };
        Ok(ServerArgs::given(&self.url, &token))
    }

    /// Stops the child (SIGTERM, then SIGKILL after a while) and removes its directory.
    pub(super) fn stop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Reads the child's stdout until it says where it listens; keeps draining it afterwards
/// so the child never blocks on a full pipe.
fn wait_for_address(
    stdout: impl std::io::Read + Send + 'static,
    child: &mut Child,
) -> Result<String, String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sender = Some(sender);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("listening on ")
                && let Some(sender) = sender.take()
            {
                let _ = sender.send(url.trim().to_owned());
            }
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match receiver.recv_timeout(Duration::from_millis(100)) {
            Ok(url) => return Ok(url),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("it closed its output before listening".to_owned());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("it exited ({status})"));
        }
        if Instant::now() >= deadline {
            return Err(format!("it did not listen within {START_TIMEOUT:?}"));
        }
    }
}

/// A password nobody types: 24 random bytes, hex.
fn random_password() -> Result<String, Failure> {
    let mut bytes = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| Failure::environment("no randomness for a password".to_owned()))?;
    Ok(hex::encode(bytes))
}
