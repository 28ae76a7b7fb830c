//! What the Redis tests share: the server to use, a key prefix of their own that is
//! cleaned up even when a test fails, and a TCP proxy that can play a Redis outage.

use std::net::SocketAddr;
use std::time::Duration;

use deadpool_redis::redis;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::domain::new_id;

/// The Redis server of the tests; `RUNCELL_TEST_REDIS_URL` overrides the local one.
pub(crate) fn redis_url() -> String {
    std::env::var("RUNCELL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix used by one test only; its keys are deleted on drop.
pub(crate) struct TestPrefix {
    pub url: String,
    pub prefix: String,
}

impl TestPrefix {
    pub(crate) fn new() -> Self {
        Self {
            url: redis_url(),
            prefix: format!("runcell-test:{}", new_id()),
        }
    }

    /// A synchronous connection, for checks that must not depend on the code under test.
    pub(crate) fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .and_then(|client| client.get_connection())
            .expect("the test Redis server is reachable")
    }

    /// The keys under this prefix.
    pub(crate) fn keys(&self) -> Vec<String> {
        let mut conn = self.connection();
        let mut cursor = 0_u64;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.prefix))
                .arg("COUNT")
                .arg(1_000)
                .query(&mut conn)
                .expect("SCAN works");
            keys.extend(batch);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }

    pub(crate) fn exists(&self, key: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(key)
            .query::<bool>(&mut self.connection())
            .expect("EXISTS works")
    }

    /// Deletes keys under this prefix, as a Redis restart without persistence would.
    pub(crate) fn delete(&self, keys: &[&str]) {
        let keys: Vec<String> = keys
            .iter()
            .map(|key| format!("{}:{key}", self.prefix))
            .collect();
        redis::cmd("DEL")
            .arg(&keys)
            .query::<()>(&mut self.connection())
            .expect("DEL works");
    }
}

impl Drop for TestPrefix {
    fn drop(&mut self) {
        let keys = self.keys();
        if !keys.is_empty() {
            let _ = redis::cmd("DEL")
                .arg(&keys)
                .query::<()>(&mut self.connection());
        }
    }
}

/// Forwards a local port to the test Redis server until stopped; started again on the
/// same port, it plays a Redis that went down and came back.
pub(crate) struct Proxy {
    pub addr: SocketAddr,
    target: SocketAddr,
    tasks: Option<JoinSet<()>>,
}

impl Proxy {
    pub(crate) async fn start() -> Self {
        let url = redis_url();
        let target = url
            .trim_start_matches("redis://")
            .split(['/', '@'])
            .find(|part| part.contains(':') && part.parse::<SocketAddr>().is_ok())
            .and_then(|part| part.parse().ok())
            .unwrap_or_else(|| panic!("the test Redis URL {url} names no ip:port"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let mut proxy = Self {
            addr,
            target,
            tasks: None,
        };
        proxy.serve(listener);
        proxy
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        self.tasks = Some(tasks);
    }

    /// Closes the port and every connection through it.
    pub(crate) async fn stop(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }

    pub(crate) async fn restart(&mut self) {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        let mut attempts = 0;
        loop {
            match socket.bind(self.addr) {
                Ok(()) => break,
                Err(_) if attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(err) => panic!("cannot bind {} again: {err}", self.addr),
            }
        }
        self.serve(socket.listen(64).expect("listen"));
    }
}
