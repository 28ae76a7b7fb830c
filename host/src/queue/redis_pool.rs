//! Pooled Redis connections, checked only when they may have gone stale.
//!
//! deadpool-redis sends `UNWATCH` and `PING` before lending a connection, every time: a
//! round trip before each push, acknowledgement and blocking read. At 500 executions/s
//! on one node those checks were about 300 µs of the 1.3 ms from `execute` to handler
//! start. Here a connection is checked only after it sat unused for [`IDLE_CHECK`] (a
//! Redis restart or a socket dropped by the network shows up there), and one on which a
//! command failed for a reason other than a Redis error reply is closed, never lent
//! again.

use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::{
    self, AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, Value,
};

/// A connection unused for longer than this is pinged before it is lent.
const IDLE_CHECK: Duration = Duration::from_secs(1);

pub(super) type Pool = managed::Pool<Connections>;

/// Makes and checks connections for a [`Pool`].
pub(super) struct Connections {
    client: redis::Client,
    config: AsyncConnectionConfig,
}

impl Connections {
    pub(super) fn new(url: &str, config: AsyncConnectionConfig) -> Result<Self, RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            config,
        })
    }
}

/// A connection and whether it may still be in step with the server.
pub(super) struct Tracked {
    conn: MultiplexedConnection,
    broken: bool,
}

impl Tracked {
    /// Notes a failure that leaves the connection's state unknown: a lost socket, a
    /// timeout (a late reply would answer the next command), anything but a reply.
    fn observe<T>(&mut self, result: &Result<T, RedisError>) {
        if let Err(err) = result
            && err.code().is_none()
        {
            self.broken = true;
        }
    }
}

impl managed::Manager for Connections {
    type Type = Tracked;
    type Error = RedisError;

    async fn create(&self) -> Result<Tracked, RedisError> {
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok(Tracked {
            conn,
            broken: false,
        })
    }

    async fn recycle(&self, tracked: &mut Tracked, metrics: &Metrics) -> RecycleResult<RedisError> {
        if tracked.broken {
            return Err(RecycleError::message("a command on it failed"));
        }
        if metrics.last_used() < IDLE_CHECK {
            return Ok(());
        }
        redis::cmd("PING")
            .query_async::<()>(&mut tracked.conn)
            .await
            .map_err(RecycleError::Backend)
    }
}

/// A connection lent by a [`Pool`]; back to the pool when dropped, unless it failed.
pub(super) struct Connection(managed::Object<Connections>);

impl Connection {
    /// Closes the connection instead of returning it to the pool.
    pub(super) fn discard(this: Self) {
        drop(managed::Object::take(this.0));
    }
}

/// The state of `pool`, named `name`, for monitoring.
pub(super) fn state(name: &'static str, pool: &Pool) -> crate::domain::PoolState {
    let status = pool.status();
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    crate::domain::PoolState {
        name,
        max: count(status.max_size),
        open: count(status.size),
        idle: count(status.available),
        waiting: Some(count(status.waiting)),
    }
}

/// Lends a connection from `pool`.
pub(super) async fn lend(pool: &Pool) -> Result<Connection, managed::PoolError<RedisError>> {
    pool.get().await.map(Connection)
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.0.conn.req_packed_command(cmd).await;
            self.0.observe(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self
                .0
                .conn
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.0.observe(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.0.conn.get_db()
    }
}
