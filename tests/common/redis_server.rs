//! A real `redis-server` on a free loopback port, queried with the `redis` crate.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// A private `redis-server` on a free port; killed on drop (or by [`Redis::kill`]).
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Start on a given port (to restart a killed one where Rampart expects it).
    pub fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): the tests need it on PATH (apt-get install redis-server)")
            });
        let redis = Self {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + READY;
        while !redis
            .try_cmd(&["PING"])
            .is_ok_and(|reply: String| reply == "PONG")
        {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A new connection (the `redis` crate's synchronous client); connecting, reads and writes
    /// give up after 2 s.
    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let timeout = Duration::from_secs(2);
        let con = redis::Client::open(self.url())?.get_connection_with_timeout(timeout)?;
        con.set_read_timeout(Some(timeout))?;
        con.set_write_timeout(Some(timeout))?;
        Ok(con)
    }

    /// Run one command on a new connection, its reply converted to `T` (`i64` for `EXISTS`
    /// and `TTL`, `String` for `PING`, `Option<Vec<u8>>` for `GET`, `(u64, Vec<String>)` for
    /// `SCAN`...).
    pub fn try_cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let (name, rest) = args.split_first().expect("a command");
        let mut cmd = redis::cmd(name);
        for arg in rest {
            cmd.arg(*arg);
        }
        cmd.query(&mut self.connection()?)
    }

    /// [`Redis::try_cmd`], panicking on a connection, server or conversion error.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis {args:?} on port {}: {e}", self.port))
    }

    /// `INFO <section>` as text (empty when Redis cannot be reached).
    pub fn info(&self, section: &str) -> String {
        self.try_cmd(&["INFO", section]).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
