//! `runcell user add`: creates a user directly in a deployment's database, for the first
//! operator of a fresh server or when every admin is locked out. Works while the server
//! runs (SQLite admits another process; its writes wait for the server's).

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};

use super::ExitStatus;
use crate::domain::Role;
use crate::services::auth::jwt::SigningKey;
use crate::services::auth::{AuthService, AuthSettings, NewUser, SYSTEM_ACTOR, random_secret};
use crate::store::{AuthStore, PostgresStore, SqliteStore};

#[derive(Debug, Subcommand)]
pub(super) enum UserCommand {
    /// Create a user.
    Add(AddArgs),
}

#[derive(Debug, Args)]
pub(super) struct AddArgs {
    /// The new user's name.
    username: String,
    /// viewer, operator or admin.
    #[arg(long, value_parser = parse_role, default_value = "viewer")]
    role: Role,
    /// Read the password from the first line of standard input instead of generating
    /// one (keeps it out of the shell history and the process list).
    #[arg(long)]
    password_stdin: bool,
    /// The data directory of the embedded deployment.
    #[arg(long, env = "RUNCELL_DATA_DIR", default_value = "./runcell-data")]
    data_dir: PathBuf,
    /// The PostgreSQL database of a distributed deployment (instead of --data-dir).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text)
        .ok_or_else(|| format!("`{text}` is not a role; use viewer, operator or admin"))
}

/// The deployment's store: PostgreSQL when a URL is given, else the data directory's
/// SQLite file, which must already exist (a typo in --data-dir must not create a new,
/// empty deployment).
async fn open_store(args: &AddArgs) -> Result<Arc<dyn AuthStore>, ExitStatus> {
    if let Some(url) = &args.database_url {
        return PostgresStore::connect(url)
            .await
            .map(|store| Arc::new(store) as Arc<dyn AuthStore>)
            .map_err(|err| {
                eprintln!("error: {err}");
                ExitStatus::Environment
            });
    }
    let database = args.data_dir.join("runcell.db");
    if !database.exists() {
        eprintln!(
            "error: no Runcell database at {}; start `runcell serve --data-dir {}` once first, or pass the right --data-dir",
            database.display(),
            args.data_dir.display()
        );
        return Err(ExitStatus::Environment);
    }
    SqliteStore::open(&database)
        .await
        .map(|store| Arc::new(store) as Arc<dyn AuthStore>)
        .map_err(|err| {
            eprintln!("error: {err}");
            ExitStatus::Environment
        })
}

pub(super) fn run(command: UserCommand) -> ExitStatus {
    match command {
        UserCommand::Add(args) => super::tokio_runtime().block_on(add(args)),
    }
}

async fn add(args: AddArgs) -> ExitStatus {
    let (password, generated) = if args.password_stdin {
        let mut line = String::new();
        if let Err(err) = std::io::stdin().lock().read_line(&mut line) {
            eprintln!("error: cannot read the password from standard input: {err}");
            return ExitStatus::Environment;
        }
        (line.trim_end_matches(['\r', '\n']).to_owned(), false)
    } else {
        (random_secret(18), true)
    };
    let store = match open_store(&args).await {
        Ok(store) => store,
        Err(status) => return status,
    };

    // Creating a user signs nothing; any key will do.
    let key = SigningKey::from_secret(random_secret(32).as_bytes()).expect("32 random bytes");
    let auth = match AuthService::new(
        store,
        key,
        AuthSettings::default(),
        AuthService::system_clock(),
    )
    .await
    {
        Ok(auth) => auth,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitStatus::Environment;
        }
    };
    let created = auth
        .create_user(
            &format!("{SYSTEM_ACTOR} (runcell user add)"),
            NewUser {
                username: args.username,
                password: password.clone(),
                role: args.role,
            },
        )
        .await;
    match created {
        Ok(user) => {
            println!(
                "created user `{}` ({}, id {})",
                user.username, user.role, user.id
            );
            if generated {
                println!("password: {password}");
                println!(
                    "  shown only this once; the user can change it with POST /api/v1/auth/password"
                );
            }
            ExitStatus::Success
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitStatus::Usage
        }
    }
}
