//! A real `redis-server` on a free loopback port, queried with the `redis` crate; optionally
//! with a password (`requirepass`) and a second, TLS port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::*;

/// How a [`Redis`] is configured beyond the defaults.
#[derive(Clone, Default)]
pub struct RedisOptions {
    /// `requirepass`: clients must AUTH with it.
    pub password: Option<String>,
    /// Also listen with TLS (`tls-port`), with these files.
    pub tls: Option<TlsServer>,
}

/// The TLS side of a [`Redis`]: its certificate and key, the CA it trusts for client
/// certificates, and whether it requires one (`tls-auth-clients`).
#[derive(Clone)]
pub struct TlsServer {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub auth_clients: bool,
}

impl TlsServer {
    pub fn from(certs: &TestCerts, auth_clients: bool) -> Self {
        Self {
            cert: certs.server_cert.clone(),
            key: certs.server_key.clone(),
            ca: certs.ca.clone(),
            auth_clients,
        }
    }
}

/// A private `redis-server` on a free port; killed on drop (or by [`Redis::kill`]).
pub struct Redis {
    pub port: u16,
    /// The TLS port, when [`RedisOptions::tls`] is set (the plain port stays open for the
    /// test's own inspection).
    pub tls_port: Option<u16>,
    options: RedisOptions,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Start on a given port (to restart a killed one where Rampart expects it).
    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, None, RedisOptions::default())
    }

    /// Start on a free port (and a free TLS port) with `options`.
    pub fn start_options(options: RedisOptions) -> Self {
        let tls_port = options.tls.as_ref().map(|_| free_port());
        Self::start_with(free_port(), tls_port, options)
    }

    /// Start again where a killed one was, with the same options.
    pub fn restart(&self) -> Self {
        Self::start_with(self.port, self.tls_port, self.options.clone())
    }

    fn start_with(port: u16, tls_port: Option<u16>, options: RedisOptions) -> Self {
        let mut args: Vec<String> = Vec::new();
        if let Some(pw) = &options.password {
            args.extend(["--requirepass".into(), pw.clone()]);
        }
        if let (Some(tls), Some(tls_port)) = (&options.tls, tls_port) {
            let path = |p: &PathBuf| p.display().to_string();
            args.extend([
                "--tls-port".into(),
                tls_port.to_string(),
                "--tls-cert-file".into(),
                path(&tls.cert),
                "--tls-key-file".into(),
                path(&tls.key),
                "--tls-ca-cert-file".into(),
                path(&tls.ca),
                "--tls-auth-clients".into(),
                if tls.auth_clients { "yes" } else { "no" }.into(),
            ]);
        }
        let child = spawn_redis_server(port, &args);
        let redis = Self {
            port,
            tls_port,
            options,
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

    /// The plain URL, without the password (Rampart gets that from `store.redis_password`).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `rediss://` on the TLS port.
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("started with TLS options");
        format!("rediss://127.0.0.1:{port}")
    }

    /// A new connection (the `redis` crate's synchronous client, on the plain port, with the
    /// password if any); connecting, reads and writes give up after 2 s.
    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let timeout = Duration::from_secs(2);
        let url = match &self.options.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}", self.port),
            None => self.url(),
        };
        let con = redis::Client::open(url)?.get_connection_with_timeout(timeout)?;
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

    /// Freeze the server (SIGSTOP): connections stay open, nothing is answered, as a Redis
    /// starved of CPU; [`Redis::resume`] thaws it.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, signal: Signal) {
        let pid = self.child.as_ref().expect("a running redis-server").id();
        let pid = Pid::from_raw(i32::try_from(pid).expect("pid"));
        kill(pid, signal).unwrap_or_else(|e| panic!("{signal} to redis-server {pid}: {e}"));
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

/// A `redis-server` on loopback `port` that keeps nothing on disk, with `extra` arguments.
pub(super) fn spawn_redis_server(port: u16, extra: &[String]) -> Child {
    let port = port.to_string();
    Command::new("redis-server")
        .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}): the tests need it on PATH (apt-get install redis-server)")
        })
}
