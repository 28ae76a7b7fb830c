//! What a test of a distributed deployment needs of its own: a PostgreSQL database and a
//! Redis key prefix, created for the test and removed when it ends, passed or failed.
//!
//! Needs PostgreSQL on 127.0.0.1:5432 (trust; `RUNCELL_TEST_POSTGRES_URL` overrides) and
//! Redis on 127.0.0.1:6379 (`RUNCELL_TEST_REDIS_URL`).

use deadpool_redis::redis;

pub(crate) fn postgres_admin_url() -> String {
    std::env::var("RUNCELL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub(crate) fn redis_url() -> String {
    std::env::var("RUNCELL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Runs `future` on a runtime of its own: the tests are synchronous, like the harness.
pub(crate) fn block_on<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(future)
}

/// A database of this test's own, dropped (with its connections) when this is dropped.
pub(crate) struct TestDatabase {
    name: String,
    pub(crate) url: String,
}

impl TestDatabase {
    pub(crate) fn create() -> Self {
        use sqlx::{Connection, Executor};
        let admin_url = postgres_admin_url();
        let name = format!("runcell_test_{}", uuid::Uuid::now_v7().simple());
        block_on(async {
            let mut admin = sqlx::PgConnection::connect(&admin_url)
                .await
                .unwrap_or_else(|err| panic!("this test needs PostgreSQL: {err}"));
            admin
                .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await
                .unwrap_or_else(|err| panic!("cannot create database {name}: {err}"));
            let _ = admin.close().await;
        });
        let (base, _) = admin_url.rsplit_once('/').expect("a database URL");
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl TestDatabase {
    /// The node holding lease `name` (`scheduler`, `endpoints`, `alerts`, ...) now, read
    /// straight from the database; `None` while nobody holds it.
    pub(crate) fn lease_holder(&self, name: &str) -> Option<String> {
        use sqlx::{Connection, Row};
        block_on(async {
            let mut connection = sqlx::PgConnection::connect(&self.url).await.ok()?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_millis() as i64;
            let row = sqlx::query("SELECT holder FROM leases WHERE name = $1 AND expires_at > $2")
                .bind(name)
                .bind(now)
                .fetch_optional(&mut connection)
                .await
                .ok()?;
            let _ = connection.close().await;
            row.map(|row| row.get::<String, _>("holder"))
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        use sqlx::{Connection, Executor};
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = block_on(async {
            let mut admin = sqlx::PgConnection::connect(&postgres_admin_url()).await?;
            admin.execute(sqlx::AssertSqlSafe(statement)).await?;
            admin.close().await
        });
        // Never a panic here: one while unwinding would abort the whole run.
        if let Err(err) = dropped {
            eprintln!("could not drop test database {}: {err}", self.name);
        }
    }
}

/// A Redis key prefix of this test's own; its keys are deleted when this is dropped.
/// Only ever this prefix's keys: other tests share the server.
pub(crate) struct TestPrefix(pub(crate) String);

impl TestPrefix {
    pub(crate) fn new() -> Self {
        Self(format!("runcell-test-{}", uuid::Uuid::now_v7().simple()))
    }

    /// Deletes every key of the prefix (SCAN + DEL); returns how many there were.
    pub(crate) fn delete_keys(&self) -> redis::RedisResult<usize> {
        let client = redis::Client::open(redis_url())?;
        let mut connection = client.get_connection()?;
        let pattern = format!("{}:*", self.0);
        let mut cursor = 0_u64;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query(&mut connection)?;
            if !keys.is_empty() {
                deleted += keys.len();
                redis::cmd("DEL").arg(&keys).exec(&mut connection)?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

impl Drop for TestPrefix {
    fn drop(&mut self) {
        if let Err(err) = self.delete_keys() {
            eprintln!("could not delete the Redis keys of {}: {err}", self.0);
        }
    }
}
