//! The shared Redis connection every feature uses (rate limits, cache), and `[store]`.
//!
//! With `store.redis_url` set, rate-limit buckets and cache entries live in Redis, so every
//! replica shares them; without it, each feature keeps its state in process (the embedded
//! default). Not a phase of its own: features call [`Redis::call`] from theirs. Single-node
//! Redis goes through redis-rs's `ConnectionManager` (reconnects by itself), a cluster through
//! its async cluster connection; both are created lazily on first use, inside the runtime that
//! serves requests, so a Redis that is down at start delays nothing.
//!
//! Invariants: no call outlives `store.timeout`; every call is timed and every failure counted
//! (`rampart_store_*{backend="redis"}`); an outage is logged once when it starts and once when
//! it ends, never per request; while Redis is known down, features skip it except one probe
//! per [`PROBE_INTERVAL`] ([`Redis::should_try`], one gate for every feature). A background
//! PING every `store.health_interval` keeps `rampart_store_up` true to Redis's state even when
//! no request touches the store.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use serde::{Deserialize, Serialize, Serializer};
use tokio::sync::OnceCell;

use crate::metrics::Metrics;
use crate::types::{Duration as ConfigDuration, Invalid};

const BACKEND: &str = "redis";

/// While Redis is known down, one call per this interval probes it; the others skip it at
/// once (each feature falls back as configured) instead of each paying a failed call.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// `redis://host:6379/0`, `rediss://...` (TLS), `redis+unix://` or `unix://`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RedisUrl(String);

impl TryFrom<String> for RedisUrl {
    type Error = String;
    fn try_from(url: String) -> Result<Self, String> {
        let ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|s| url.starts_with(s));
        if ok {
            Ok(Self(url))
        } else {
            Err("a URL such as \"redis://redis:6379/0\" (or rediss://, unix://)".into())
        }
    }
}

impl RedisUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL with any password in it replaced by [`MASK`]: the user-info password
    /// (`redis://user:secret@host`) and a `pass`/`password` query parameter (`unix://` URLs).
    pub fn masked(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:{MASK}@{host}"),
                None => format!("{userinfo}@{host}"),
            },
            None => authority.to_string(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) => {
                let params: Vec<String> = query
                    .split('&')
                    .map(|p| match p.split_once('=') {
                        Some((k, _)) if k == "pass" || k == "password" => format!("{k}={MASK}"),
                        _ => p.to_string(),
                    })
                    .collect();
                format!("{path}?{}", params.join("&"))
            }
            None => tail.to_string(),
        };
        format!("{scheme}://{authority}{tail}")
    }
}

/// What a secret prints as (`rampart check --print`).
pub const MASK: &str = "********";

/// Masked: the only place a URL is serialized is printed config, which must not show a
/// password.
impl Serialize for RedisUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}

/// A secret serializes as [`MASK`], never as itself.
fn mask<S: Serializer>(secret: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => s.serialize_some(MASK),
        None => s.serialize_none(),
    }
}

/// `[store]`. A reload that leaves it unchanged keeps the running [`Redis`] (and its
/// connection); any change builds a new one.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `redis://host:6379/0`, `rediss://...` (TLS). Absent: in-process stores.
    /// Env: `RAMPART_REDIS_URL`.
    pub redis_url: Option<RedisUrl>,
    /// Password, kept out of the URL and the file. Env: `RAMPART_REDIS_PASSWORD`.
    /// Serialized masked.
    #[serde(serialize_with = "mask")]
    pub redis_password: Option<String>,
    /// Redis Cluster: the URL is one seed node.
    pub cluster: bool,
    /// Prefix of every key Rampart writes.
    pub key_prefix: String,
    /// Per-call deadline; past it the call counts as a store error.
    pub timeout: ConfigDuration,
    /// How often Redis is PINGed in the background, so an outage is noticed (and exported as
    /// `rampart_store_up 0`) without waiting for traffic.
    pub health_interval: ConfigDuration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_password: None,
            cluster: false,
            key_prefix: "rampart:".into(),
            timeout: ConfigDuration::millis(50),
            health_interval: ConfigDuration::secs(5),
        }
    }
}

impl Config {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if self.health_interval.0 < Duration::from_millis(100) {
            return Err(Invalid::new("health_interval", "at least \"100ms\""));
        }
        if self.timeout.0.is_zero() {
            return Err(Invalid::new("timeout", "a duration above zero"));
        }
        Ok(())
    }
}

/// Why a store call failed; callers decide what that means for the request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
}

/// A cheap-to-clone handle to a live connection (single node or cluster).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

enum Client {
    Single(redis::Client),
    Cluster(ClusterClient),
}

/// The shared Redis store.
pub struct Redis {
    /// What it was built from (a reload with the same `[store]` keeps this store).
    config: Config,
    client: Client,
    conn: OnceCell<Conn>,
    timeout: Duration,
    health_interval: Duration,
    prefix: String,
    metrics: Arc<Metrics>,
    down: AtomicBool,
    /// Milliseconds since `started` of the last probe of a Redis that was down.
    last_probe_ms: AtomicU64,
    started: Instant,
}

impl Redis {
    /// `None` when no `redis_url` is configured (the embedded default: in-process stores).
    /// Fails only on a URL redis-rs cannot use; connecting happens on first use.
    pub fn from_config(
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Arc<Self>>, RedisError> {
        let Some(url) = &config.redis_url else {
            return Ok(None);
        };
        let mut info = url.as_str().into_connection_info()?;
        if let Some(pw) = &config.redis_password {
            info.redis.password = Some(pw.clone());
        }
        let client = if config.cluster {
            Client::Cluster(ClusterClient::builder(vec![info]).build()?)
        } else {
            Client::Single(redis::Client::open(info)?)
        };
        metrics.store_up.with_label_values(&[BACKEND]).set(1);
        Ok(Some(Arc::new(Self {
            config: config.clone(),
            client,
            conn: OnceCell::new(),
            timeout: config.timeout.0,
            health_interval: config.health_interval.0,
            prefix: config.key_prefix.clone(),
            metrics,
            down: AtomicBool::new(false),
            last_probe_ms: AtomicU64::new(0),
            started: Instant::now(),
        })))
    }

    /// `store.key_prefix` + `rest`: every key Rampart writes.
    pub fn key(&self, rest: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + rest.len());
        k.push_str(&self.prefix);
        k.push_str(rest);
        k
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether the last call failed (an outage is in progress).
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Whether a feature should call Redis now: always while it answers; while it is down, only
    /// the one caller per [`PROBE_INTERVAL`] that wins the probe (its success ends the outage
    /// for everyone).
    pub fn should_try(&self) -> bool {
        if !self.is_down() {
            return true;
        }
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_probe_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(PROBE_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(last) >= interval
            && self
                .last_probe_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Run one operation (a command, pipeline or script) under the store deadline, timed and
    /// counted as `op`.
    pub async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, Error>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, async {
            let conn = self.connection().await?;
            f(conn).await
        })
        .await;
        let result = match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::Redis(e)),
            Err(_) => Err(Error::Timeout(self.timeout)),
        };
        self.metrics
            .store_duration
            .with_label_values(&[BACKEND, op])
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => self.mark_up(),
            Err(e) => {
                self.metrics
                    .store_errors
                    .with_label_values(&[BACKEND, op])
                    .inc();
                self.mark_down(op, e);
            }
        }
        result
    }

    async fn connection(&self) -> RedisResult<Conn> {
        self.conn
            .get_or_try_init(|| async {
                match &self.client {
                    Client::Single(c) => {
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(self.timeout.max(Duration::from_millis(250)))
                            .set_response_timeout(self.timeout)
                            .set_number_of_retries(1)
                            .set_max_delay(1000);
                        c.get_connection_manager_with_config(config)
                            .await
                            .map(Conn::Single)
                    }
                    Client::Cluster(c) => c.get_async_connection().await.map(Conn::Cluster),
                }
            })
            .await
            .cloned()
    }

    fn mark_down(&self, op: &str, e: &Error) {
        if !self.down.swap(true, Ordering::Relaxed) {
            log::error!("redis unavailable ({op}: {e}); features fall back as configured until it answers again");
            self.metrics.store_up.with_label_values(&[BACKEND]).set(0);
        }
    }

    fn mark_up(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            log::warn!("redis answers again; shared state resumed");
            self.metrics.store_up.with_label_values(&[BACKEND]).set(1);
        }
    }
}

impl Redis {
    /// Whether this store was built from `config` (a reload keeps it then).
    pub fn built_from(&self, config: &Config) -> bool {
        self.config == *config
    }
}

#[async_trait]
impl BackgroundService for Redis {
    /// PING on a timer until shutdown: outages (and recoveries) are seen, logged and exported
    /// without waiting for traffic.
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.health_interval) => {
                    let _ = self
                        .call("ping", |mut c| async move {
                            redis::cmd("PING").query_async::<String>(&mut c).await
                        })
                        .await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(url: &str) -> String {
        RedisUrl::try_from(url.to_string()).expect("url").masked()
    }

    #[test]
    fn passwords_in_urls_are_masked() {
        assert_eq!(masked("redis://redis:6379/0"), "redis://redis:6379/0");
        assert_eq!(
            masked("redis://:s3cret@redis:6379/0"),
            "redis://:********@redis:6379/0"
        );
        assert_eq!(
            masked("rediss://app:s3:cr@t@redis.example.com:6380"),
            "rediss://app:********@redis.example.com:6380"
        );
        assert_eq!(masked("redis://app@redis/1"), "redis://app@redis/1");
        assert_eq!(
            masked("unix:///run/redis.sock?db=1&pass=s3cret"),
            "unix:///run/redis.sock?db=1&pass=********"
        );
        assert_eq!(
            masked("redis+unix:///run/redis.sock?password=s3cret&user=app"),
            "redis+unix:///run/redis.sock?password=********&user=app"
        );
    }
}
