//! `runcell login` and `runcell logout`: start a session on a server (or keep an API
//! token) and store it for the other server-facing commands; end it again. Passwords are
//! read from a terminal without echo or from stdin, never from the command line.

use std::io::{BufRead, IsTerminal, Write};

use clap::Args;
use serde_json::json;

use super::ExitStatus;
use super::client::{self, Client, Failure, Payload, ServerArgs};
use super::credentials::{self, Credentials};

#[derive(Debug, Args)]
pub(super) struct LoginArgs {
    /// The server's address, e.g. `https://runcell.example.com`.
    #[arg(long, env = "RUNCELL_SERVER")]
    server: String,
    /// Log in as this user (asked for on a terminal when absent).
    #[arg(long, conflicts_with = "token")]
    username: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long, requires = "username", conflicts_with = "token")]
    password_stdin: bool,
    /// Keep this API token instead of logging in with a password.
    #[arg(long)]
    token: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct LogoutArgs {}

pub(super) fn login(args: LoginArgs) -> ExitStatus {
    client::report("login", log_in(args))
}

pub(super) fn logout(_args: LogoutArgs) -> ExitStatus {
    client::report("logout", log_out())
}

fn log_in(args: LoginArgs) -> Result<ExitStatus, Failure> {
    let path = credentials::credentials_path()?;
    let server = client::normalize_server(&args.server);
    let credentials = match args.token {
        Some(token) => {
            // Checked now, so a mistyped token fails here rather than at the next command.
            let mut client = Client::connect(&ServerArgs::given(&server, &token))?;
            let me = client.get("/auth/me")?;
            Credentials {
                server: server.clone(),
                username: me["user"]["username"].as_str().map(str::to_owned),
                access_token: token,
                access_expires_at: None,
                refresh_token: None,
            }
        }
        None => {
            let (username, password) = ask(args.username, args.password_stdin)?;
            let body = json!({"username": username, "password": password});
            let session =
                Client::anonymous(&server).call("POST", "/auth/login", Payload::Json(&body))?;
            client::session_credentials(&server, &session)?
        }
    };
    credentials::save(&path, &credentials)?;
    eprintln!(
        "logged in to {server} as {}",
        credentials.username.as_deref().unwrap_or("?")
    );
    Ok(ExitStatus::Success)
}

/// The username and password: from the flags and stdin, or asked for on the terminal.
fn ask(username: Option<String>, password_stdin: bool) -> Result<(String, String), Failure> {
    let stdin = std::io::stdin();
    if password_stdin {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|err| Failure::environment(format!("cannot read the password: {err}")))?;
        let password = line.trim_end_matches(['\r', '\n']).to_owned();
        if password.is_empty() {
            return Err(Failure::usage(
                "--password-stdin: stdin holds no password".to_owned(),
            ));
        }
        return Ok((username.unwrap_or_default(), password));
    }
    if !stdin.is_terminal() {
        return Err(Failure::usage(
            "stdin is not a terminal to ask on; pass --username U --password-stdin, or --token"
                .to_owned(),
        ));
    }
    let username = match username {
        Some(username) => username,
        None => prompt("username: ")?,
    };
    let password = read_password("password: ")?;
    Ok((username, password))
}

fn prompt(question: &str) -> Result<String, Failure> {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|err| Failure::environment(format!("cannot read the answer: {err}")))?;
    Ok(line.trim().to_owned())
}

/// Reads a line from the terminal with echo off, restoring the terminal afterwards.
fn read_password(question: &str) -> Result<String, Failure> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin)
        .map_err(|err| Failure::environment(format!("cannot read the terminal: {err}")))?;
    let mut silent = saved.clone();
    silent.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&stdin, OptionalActions::Now, &silent)
        .map_err(|err| Failure::environment(format!("cannot turn the echo off: {err}")))?;
    let answer = prompt(question);
    let _ = tcsetattr(&stdin, OptionalActions::Now, &saved);
    eprintln!();
    answer
}

fn log_out() -> Result<ExitStatus, Failure> {
    let path = credentials::credentials_path()?;
    let Some(stored) = credentials::load(&path)? else {
        eprintln!("not logged in");
        return Ok(ExitStatus::Success);
    };
    if stored.refresh_token.is_some() {
        // The session ends on the server too, so a copy of the tokens is worthless; if the
        // server cannot be reached the file goes all the same, and the tokens expire.
        let mut client = Client::connect(&ServerArgs::default())?;
        if let Err(failure) = client.post("/auth/logout", None) {
            eprintln!(
                "runcell logout: the server did not end the session: {}",
                failure.message
            );
        }
    }
    credentials::remove(&path)?;
    eprintln!("logged out of {}", stored.server);
    Ok(ExitStatus::Success)
}
