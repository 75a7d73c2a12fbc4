//! The shared Redis connection every feature uses (rate limits, cache). `[store]` is in
//! [`config`], Redis Cluster topology in [`cluster`].
//!
//! With `store.redis_url` set, rate-limit buckets and cache entries live in Redis, so every
//! replica shares them; without it, each feature keeps its state in process (the embedded
//! default). Not a phase of its own: features call [`Redis::call`] from theirs. Single-node
//! Redis goes through redis-rs's `ConnectionManager`, a cluster through its async cluster
//! connection (follows slot moves and failovers). Either is made on first use, in a task of its
//! own: a Redis down at start delays nothing, and a slow handshake still completes for the
//! next call when the call that started it gave up at `store.timeout`. `rediss://` is TLS
//! (rustls, as Pingora), trusting `store.tls_ca_file` or the system roots.
//!
//! Invariants: no call outlives `store.timeout`; every call is timed and every failure counted
//! (`rampart_store_*{backend="redis"}`); an outage is logged once when it starts and once when
//! it ends, never per request; an outage starts at a failed connection or error, at a failed
//! health check of a cluster, or at [`TIMEOUTS_FOR_OUTAGE`] timeouts in a row (one slow answer
//! under load is that call's fallback, not an outage for every request; redis-rs's own response
//! timeout is the same deadline, so it counts as a timeout too); while Redis is known down,
//! features skip it except one probe per [`PROBE_INTERVAL`] ([`Redis::should_try`], one gate
//! for every feature). A background check every `store.health_interval` keeps
//! `rampart_store_up` true even without traffic.
//!
//! A cluster is up only while every primary answers: a dead primary is one outage for every
//! feature until its replica is promoted, not a flicker between healthy nodes and the dead
//! one. During it, a probe first checks every primary ([`Redis::nodes`], [`Conn::on`]), and only
//! that check ends the outage, never a keyed call that reached a healthy node. Each probe makes
//! a new cluster connection, seeded with every node seen, and the one that passes the check
//! becomes the shared connection ([`Redis::probe_connection`] says why).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, Value,
};
use tokio::sync::watch;

use crate::metrics::Metrics;

pub mod cluster;
mod config;

pub use cluster::{Node, OnNode};
pub use config::{Config, RedisUrl, SetupError, MASK};

const BACKEND: &str = "redis";

/// While Redis is known down, one call per this interval probes it; the others skip it at
/// once (each feature falls back as configured) instead of each paying a failed call.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// Calls timing out one after another, with no answer between them, that make an outage. A
/// Redis starved of CPU for a moment (a loaded host: the bench saw 151 single timeouts in a
/// run at the 50 ms default) answers the next call: that call alone falls back. A Redis that
/// hangs fails every call, so concurrent requests reach this count within one `timeout`.
pub const TIMEOUTS_FOR_OUTAGE: u32 = 3;

/// Why a store call failed; callers decide what that means for the request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
}

impl Error {
    /// The same failure again, for each of the requests one call served.
    pub fn duplicate(&self) -> Self {
        match self {
            Error::Timeout(d) => Error::Timeout(*d),
            Error::Redis(e) => Error::Redis(RedisError::from((
                e.kind(),
                "redis call failed",
                e.to_string(),
            ))),
        }
    }
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

/// How to make a connection (cheap to clone into the task that makes one).
#[derive(Clone)]
enum Client {
    Single(Arc<(redis::Client, ConnectionManagerConfig)>),
    Cluster(Arc<cluster::Seeds>),
}

impl Client {
    async fn connect(self) -> RedisResult<Conn> {
        match self {
            Client::Single(single) => {
                let (client, config) = single.as_ref();
                client
                    .get_connection_manager_with_config(config.clone())
                    .await
                    .map(Conn::Single)
            }
            Client::Cluster(seeds) => seeds.connect().await.map(Conn::Cluster),
        }
    }
}

/// The connection, as the calls see it.
#[derive(Clone)]
enum Slot {
    /// None yet (or dropped to be made anew).
    Empty,
    /// A task is making one.
    Connecting,
    Ready(Conn),
    /// The last attempt failed with this (kind, detail): the next call tries again.
    Failed(ErrorKind, String),
}

/// What a call's outcome says about the store as a whole (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A feature's call on a cluster that is up: it reached one primary, so its answer says
    /// nothing about the others and ends no outage.
    Keyed,
    /// A feature's call on one node, or a cluster probe (every primary checked first): its
    /// answer ends an outage.
    Probe,
    /// The background health check of a cluster: it PINGs every primary, so it ends an
    /// outage when it passes and starts one when it fails in any way, a timeout included.
    /// Keyed calls answered by the healthy primaries end every run of timeouts, so only the
    /// check sees a primary that stopped answering. (On one node the check is a `Probe`: its
    /// single slow answer is no outage either.)
    Check,
}

/// The shared Redis store.
pub struct Redis {
    /// What it was built from (a reload with the same `[store]` keeps this store).
    config: Config,
    client: Client,
    slot: Arc<watch::Sender<Slot>>,
    timeout: Duration,
    health_interval: Duration,
    prefix: String,
    metrics: Arc<Metrics>,
    down: AtomicBool,
    /// Timeouts since the last call Redis answered (see [`TIMEOUTS_FOR_OUTAGE`]).
    timeouts_in_a_row: AtomicU32,
    /// Milliseconds since `started` of the last probe of a Redis that was down.
    last_probe_ms: AtomicU64,
    /// Milliseconds since `started` when the last outage ended.
    up_since_ms: AtomicU64,
    started: Instant,
}

impl Redis {
    /// `None` when no `redis_url` is configured (the embedded default: in-process stores).
    /// Fails only on a URL redis-rs cannot use or TLS files that cannot be read; connecting
    /// happens on first use.
    pub fn from_config(
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Arc<Self>>, SetupError> {
        let Some(url) = &config.redis_url else {
            return Ok(None);
        };
        let mut info = url
            .as_str()
            .into_connection_info()
            .map_err(SetupError::Url)?;
        if let Some(pw) = &config.redis_password {
            info.redis.password = Some(pw.clone());
        }
        let certs = config::tls_certificates(config)?;
        let timeout = config.timeout.0;
        let client = if config.cluster {
            // The password and TLS mode of the seed apply to every node.
            let seeds = cluster::Seeds::new(info, certs, connect_timeout(timeout), timeout)
                .map_err(SetupError::from_client)?;
            Client::Cluster(Arc::new(seeds))
        } else {
            let client = match certs {
                Some(certs) => redis::Client::build_with_tls(info, certs),
                None => redis::Client::open(info),
            };
            Client::Single(Arc::new((
                client.map_err(SetupError::from_client)?,
                // No retries inside one attempt (redis-rs would wait a second or more between
                // them): the probes retry, and a refused password or certificate reaches the
                // call, and the log, at once instead of as a timeout.
                ConnectionManagerConfig::new()
                    .set_connection_timeout(connect_timeout(timeout))
                    .set_response_timeout(timeout)
                    .set_number_of_retries(0),
            )))
        };
        metrics.store_up.with_label_values(&[BACKEND]).set(1);
        Ok(Some(Arc::new(Self {
            config: config.clone(),
            client,
            slot: Arc::new(watch::Sender::new(Slot::Empty)),
            timeout,
            health_interval: config.health_interval.0,
            prefix: config.key_prefix.clone(),
            metrics,
            down: AtomicBool::new(false),
            timeouts_in_a_row: AtomicU32::new(0),
            last_probe_ms: AtomicU64::new(0),
            up_since_ms: AtomicU64::new(0),
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

    /// `store.timeout`: the longest any call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the last call failed (an outage is in progress).
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    fn is_cluster(&self) -> bool {
        matches!(self.client, Client::Cluster(_))
    }

    /// Whether a feature should call Redis now: always while it answers; while it is down, only
    /// the one caller per [`PROBE_INTERVAL`] that wins the probe (its success ends the outage
    /// for everyone).
    pub fn should_try(&self) -> bool {
        if !self.is_down() {
            return true;
        }
        let now = self.now_ms();
        let last = self.last_probe_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(PROBE_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(last) >= interval
            && self
                .last_probe_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Run one operation (a command, pipeline or script) under the store deadline, timed and
    /// counted as `op`. On a cluster during an outage, every primary is checked first (see the
    /// module header).
    pub async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, Error>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let cluster = self.is_cluster();
        let probe = cluster && self.is_down();
        let role = if cluster && !probe {
            Role::Keyed
        } else {
            Role::Probe
        };
        self.timed(op, role, async {
            let conn = if probe {
                self.checked_connection().await?
            } else {
                self.connection().await?
            };
            f(conn).await
        })
        .await
    }

    /// The nodes that together hold every key: the server, or each cluster primary (from
    /// `CLUSTER SLOTS`, so a promoted replica is included once the cluster knows it).
    pub async fn nodes(&self) -> Result<Vec<Node>, Error> {
        if !self.is_cluster() {
            return Ok(vec![Node(None)]);
        }
        self.call("cluster_slots", |conn| async move {
            Ok(topology(conn).await?.primaries)
        })
        .await
    }

    /// Whether every node answers PING now (see [`Redis::check`]); ends an outage when it does.
    pub async fn health(&self) -> Result<(), Error> {
        let role = if self.is_cluster() {
            Role::Check
        } else {
            Role::Probe
        };
        self.timed("ping", role, async {
            self.checked_connection().await.map(drop)
        })
        .await
    }

    /// A connection on which every node answered ([`Redis::check`]): the shared one, or during
    /// a cluster outage a new one ([`Redis::probe_connection`]), which then becomes shared.
    async fn checked_connection(&self) -> RedisResult<Conn> {
        let conn = self.probe_connection().await?;
        self.check(conn.clone()).await?;
        self.keep(conn.clone());
        Ok(conn)
    }

    /// The connection a check runs on: the shared one, or, during a cluster outage, a new one.
    /// redis-rs routes keyed calls by the slot map its connection read when it was made, and
    /// refreshes it only after a call failed on it; the check's PINGs go to nodes by address,
    /// so they pass on a connection whose map still sends a failed primary's slots to the dead
    /// node. Ended on such a connection, the outage would start again at the next keyed calls
    /// (they retry the dead node until `store.timeout`). A new connection reads the slots now:
    /// the outage ends only on one that routes every slot to a primary that answered.
    async fn probe_connection(&self) -> RedisResult<Conn> {
        match &self.client {
            Client::Cluster(seeds) if self.is_down() => seeds.connect().await.map(Conn::Cluster),
            _ => self.connection().await,
        }
    }

    /// After a check passed on `conn`: it becomes the shared connection if it is a new one.
    fn keep(&self, conn: Conn) {
        if self.is_cluster() && self.is_down() {
            self.slot.send_replace(Slot::Ready(conn));
        }
    }

    /// PING every node that holds keys. On a cluster that is each primary `CLUSTER SLOTS`
    /// names, one by one, by address: redis-rs's own fan-out PING skips nodes it holds no
    /// connection to, so it would call a cluster with a dead primary healthy. So the check
    /// fails from the moment a primary stops answering until its replica is promoted. The
    /// nodes it saw seed the next cluster connection.
    async fn check(&self, conn: Conn) -> RedisResult<()> {
        let topology = topology(conn.clone()).await?;
        for node in &topology.primaries {
            redis::cmd("PING")
                .query_async::<String>(&mut conn.clone().on(node))
                .await?;
        }
        if let Client::Cluster(seeds) = &self.client {
            seeds.learn(topology.all);
        }
        Ok(())
    }

    /// `fut` under the store deadline, timed and counted as `op`; what its outcome says about
    /// the outage depends on its `role`.
    async fn timed<T>(
        &self,
        op: &'static str,
        role: Role,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        let began_ms = self.now_ms();
        let result = tokio::time::timeout(self.timeout, fut).await;
        let result = match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.store_error(e)),
            Err(_) => Err(Error::Timeout(self.timeout)),
        };
        self.metrics
            .store_duration
            .with_label_values(&[BACKEND, op])
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => {
                self.reset_timeouts();
                if role != Role::Keyed {
                    self.mark_up();
                }
            }
            Err(e) => {
                log::debug!("redis {op} failed: {e}");
                self.metrics
                    .store_errors
                    .with_label_values(&[BACKEND, op])
                    .inc();
                if self.starts_outage(e, role, began_ms) {
                    self.mark_down(op, e);
                }
            }
        }
        result
    }

    /// The run of timeouts is over (Redis answered, or the failure is an outage of its own): a
    /// read first, so answers do not write the shared counter each time.
    fn reset_timeouts(&self) {
        if self.timeouts_in_a_row.load(Ordering::Relaxed) != 0 {
            self.timeouts_in_a_row.store(0, Ordering::Relaxed);
        }
    }

    /// A failure redis-rs reports: its own response timeout is the store deadline seen from
    /// inside (Rampart sets it to `store.timeout`, and whichever timer a tick fires first
    /// wins), so it is a [`Error::Timeout`] like Rampart's own, not an error of Redis.
    fn store_error(&self, e: RedisError) -> Error {
        if e.is_timeout() {
            Error::Timeout(self.timeout)
        } else {
            Error::Redis(e)
        }
    }

    /// Whether this failure of a call that began at `began_ms` makes (or continues) an
    /// outage: any error, any failed health check of a cluster ([`Role::Check`]), or the
    /// [`TIMEOUTS_FOR_OUTAGE`]th timeout in a row; a single slow answer falls back for its
    /// own call only. A call that began before the last outage ended failed in that outage
    /// (it was in flight when a probe found Redis back): it neither starts a new one nor
    /// counts toward the next run of timeouts (calls stuck on a dead cluster primary time
    /// out just after its replica is promoted).
    fn starts_outage(&self, e: &Error, role: Role, began_ms: u64) -> bool {
        if began_ms < self.up_since_ms.load(Ordering::Relaxed) {
            return false;
        }
        match e {
            Error::Timeout(_) if role != Role::Check && !self.is_down() => {
                self.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1 >= TIMEOUTS_FOR_OUTAGE
            }
            Error::Timeout(_) | Error::Redis(_) => {
                self.reset_timeouts();
                true
            }
        }
    }

    /// The connection: the live one, or the outcome of making one (started here if no task is
    /// making one already). The caller's deadline bounds the wait, not the task.
    async fn connection(&self) -> RedisResult<Conn> {
        let start = self.slot.send_if_modified(|slot| match slot {
            Slot::Empty | Slot::Failed(..) => {
                *slot = Slot::Connecting;
                true
            }
            Slot::Connecting | Slot::Ready(_) => false,
        });
        if start {
            let (client, slot) = (self.client.clone(), self.slot.clone());
            tokio::spawn(async move {
                let made = match client.connect().await {
                    Ok(conn) => Slot::Ready(conn),
                    Err(e) => Slot::Failed(e.kind(), e.to_string()),
                };
                slot.send_replace(made);
            });
        }
        let mut rx = self.slot.subscribe();
        let slot = rx
            .wait_for(|s| matches!(s, Slot::Ready(_) | Slot::Failed(..)))
            .await
            .map_err(|_| RedisError::from((ErrorKind::ClientError, "redis store dropped")))?
            .clone();
        match slot {
            Slot::Ready(conn) => Ok(conn),
            Slot::Failed(kind, detail) => Err(RedisError::from((kind, "connecting", detail))),
            Slot::Empty | Slot::Connecting => Err(RedisError::from((
                ErrorKind::ClientError,
                "no redis connection",
            ))),
        }
    }

    /// Milliseconds since this store was created.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn mark_down(&self, op: &str, e: &Error) {
        if !self.down.swap(true, Ordering::Relaxed) {
            let hint = match e {
                Error::Redis(e) if is_auth_error(e) => {
                    " (authentication: check store.redis_password / RAMPART_REDIS_PASSWORD)"
                }
                _ => "",
            };
            log::error!("redis unavailable ({op}: {e}){hint}; features fall back as configured until it answers again");
            self.metrics.store_up.with_label_values(&[BACKEND]).set(0);
        }
    }

    fn mark_up(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            self.up_since_ms.store(self.now_ms(), Ordering::Relaxed);
            log::warn!("redis answers again; shared state resumed");
            self.metrics.store_up.with_label_values(&[BACKEND]).set(1);
        }
    }
}

/// The cluster's topology asked on `conn` (a single node: itself).
async fn topology(mut conn: Conn) -> RedisResult<cluster::Topology> {
    if matches!(conn, Conn::Single(_)) {
        return Ok(cluster::Topology {
            primaries: vec![Node(None)],
            all: Vec::new(),
        });
    }
    let reply: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await?;
    cluster::topology(&reply)
}

/// Connecting may take longer than one command (TCP and TLS handshakes, AUTH), but stays
/// bounded; every call is cut at `store.timeout` anyway.
fn connect_timeout(timeout: Duration) -> Duration {
    timeout.max(Duration::from_millis(250))
}

/// A refused password (`WRONGPASS`) or a missing one: `NOAUTH`, or, for a command of more
/// than 10 arguments (a limiter script), the protocol error Redis answers before AUTH
/// (`Protocol error: unauthenticated multibulk length`).
fn is_auth_error(e: &RedisError) -> bool {
    e.kind() == ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
        || e.detail().is_some_and(|d| d.contains("unauthenticated"))
}

impl Redis {
    /// Whether this store was built from `config` (a reload keeps it then).
    pub fn built_from(&self, config: &Config) -> bool {
        self.config == *config
    }
}

#[async_trait]
impl BackgroundService for Redis {
    /// Check on a timer until shutdown: outages (and recoveries) are seen, logged and exported
    /// without waiting for traffic.
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.health_interval) => {
                    let _ = self.health().await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store on a port nothing listens on: its outage bookkeeping, no calls.
    fn unreachable_redis() -> Arc<Redis> {
        let metrics = Arc::new(Metrics::new(&Default::default()).expect("metrics"));
        let config = Config {
            redis_url: Some(RedisUrl::try_from("redis://127.0.0.1:1".to_string()).expect("url")),
            ..Default::default()
        };
        Redis::from_config(&config, metrics)
            .expect("redis")
            .expect("configured")
    }

    /// Only the third timeout in a row, or any error, makes an outage; an answer or an error
    /// ends the run of timeouts.
    #[test]
    fn an_outage_takes_three_timeouts_in_a_row_or_one_error() {
        let redis = unreachable_redis();
        let timeout = || Error::Timeout(Duration::from_millis(50));
        let now = 0;
        assert!(!redis.starts_outage(&timeout(), Role::Probe, now));
        assert!(!redis.starts_outage(&timeout(), Role::Probe, now));
        redis.reset_timeouts(); // an answer
        assert!(!redis.starts_outage(&timeout(), Role::Probe, now));
        assert!(!redis.starts_outage(&timeout(), Role::Probe, now));
        assert!(
            redis.starts_outage(&timeout(), Role::Probe, now),
            "the third in a row"
        );
        let refused = Error::Redis(RedisError::from((ErrorKind::IoError, "refused")));
        assert!(redis.starts_outage(&refused, Role::Probe, now));
        assert!(
            !redis.starts_outage(&timeout(), Role::Probe, now),
            "the error ended the run"
        );
    }

    /// Calls in flight when an outage ended fail in that outage: they start no new one and
    /// count toward no run of timeouts after it.
    #[test]
    fn calls_from_before_a_recovery_start_no_outage() {
        let redis = unreachable_redis();
        let timeout = || Error::Timeout(Duration::from_millis(50));
        let refused = Error::Redis(RedisError::from((ErrorKind::IoError, "refused")));
        redis.up_since_ms.store(1_000, Ordering::Relaxed); // recovered at 1 s
        for _ in 0..5 {
            assert!(!redis.starts_outage(&timeout(), Role::Probe, 900));
        }
        assert!(!redis.starts_outage(&refused, Role::Probe, 999));
        assert!(!redis.starts_outage(&timeout(), Role::Probe, 1_000));
        assert!(!redis.starts_outage(&timeout(), Role::Probe, 1_100));
        assert!(
            redis.starts_outage(&timeout(), Role::Probe, 1_200),
            "the third timeout begun since the recovery"
        );
    }

    /// redis-rs's own response timeout is the store deadline: a timeout, not an error.
    #[test]
    fn a_redis_rs_timeout_counts_as_a_timeout() {
        let redis = unreachable_redis();
        let timed_out = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(matches!(redis.store_error(timed_out), Error::Timeout(_)));
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(redis.store_error(refused), Error::Redis(_)));
    }

    /// A cluster's health check asks every primary: its first timeout is an outage.
    #[test]
    fn a_health_check_that_times_out_starts_an_outage() {
        let redis = unreachable_redis();
        let timeout = Error::Timeout(Duration::from_millis(50));
        assert!(!redis.starts_outage(&timeout, Role::Keyed, 0));
        assert!(redis.starts_outage(&timeout, Role::Check, 0));
    }
}
