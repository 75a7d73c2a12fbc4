//! Routing: which upstream group a request goes to, and which address in it.
//!
//! Phases: `request_filter` ([`Router::route`]), `upstream_peer` ([`Upstream::next_peer`]),
//! `fail_to_connect` / `error_while_proxy` (which failures are tried again, and where),
//! `upstream_request_filter` ([`Route::upstream_path`]), `upstream_response_filter`
//! ([`Upstream::learn_keep_alive`]).
//!
//! Invariants: the longest matching prefix wins (ties are impossible, config rejects duplicate
//! prefixes); a path is forwarded byte for byte unless the route configures a rewrite; an
//! address that refused a connection is not tried again by the same request; a request is sent
//! again only when that cannot apply it twice (an idempotent method, or a request head that
//! never fully left), at most once on a fresh connection after a pooled one turned out closed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, RetryType};
use prometheus::IntGaugeVec;
use serde::{Deserialize, Serialize};

use crate::health::{GroupHealth, Probe, Thresholds};
use crate::types::{ByteSize, Duration, HeaderValueText, HostPort, Invalid, Name, UrlPath};
use crate::{compress, cors};

/// `[upstreams.NAME]`: a group of interchangeable addresses.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// One or more `host:port`; names are resolved at start and every `resolve_interval`.
    pub addrs: Vec<HostPort>,
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Duration,
    #[serde(default = "defaults::io_timeout")]
    pub read_timeout: Duration,
    #[serde(default = "defaults::io_timeout")]
    pub write_timeout: Duration,
    /// How long an idle upstream connection is kept for reuse ("0s" disables keepalive). An
    /// upstream's `Keep-Alive: timeout=N` lowers it to just under N for that group.
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Duration,
    /// How many other addresses to try when connecting fails (idempotent requests only).
    #[serde(default = "defaults::connect_retries")]
    pub connect_retries: usize,
    /// Active health check period; failing addresses are skipped while others are healthy.
    #[serde(default = "defaults::health_check_interval")]
    pub health_check_interval: Duration,
    /// `GET` this path on every address and expect `health_check_status`; absent: the check
    /// only connects (TCP).
    #[serde(default)]
    pub health_check_path: Option<UrlPath>,
    /// The status a passing HTTP health check answers.
    #[serde(default = "defaults::health_check_status")]
    pub health_check_status: u16,
    /// Deadline of one HTTP health check's response (the connect has `connect_timeout`).
    #[serde(default = "defaults::health_check_timeout")]
    pub health_check_timeout: Duration,
    /// Consecutive failed checks that take an address out.
    #[serde(default = "defaults::health_check_fails")]
    pub health_check_fails: usize,
    /// Consecutive passed checks that put it back.
    #[serde(default = "defaults::health_check_passes")]
    pub health_check_passes: usize,
    /// Consecutive failed requests (connect failure, timeout, 5xx) that take an address out
    /// for `fail_timeout` (nginx's `max_fails`); 0: never.
    #[serde(default = "defaults::max_fails")]
    pub max_fails: u32,
    /// How long an address taken out by failed requests gets none before it is tried again
    /// (nginx's `fail_timeout`).
    #[serde(default = "defaults::fail_timeout")]
    pub fail_timeout: Duration,
    /// Re-resolve DNS names this often (containers get new addresses when they restart).
    #[serde(default = "defaults::resolve_interval")]
    pub resolve_interval: Duration,
    /// `Host` to send instead of the client's (default: the client's `Host` is preserved).
    #[serde(default)]
    pub host: Option<HeaderValueText>,
    /// Requests in flight to this group at once (default: `[limits]
    /// max_inflight_per_upstream`); more get 503 with `Retry-After`.
    #[serde(default)]
    pub max_inflight: Option<usize>,
}

/// `[[routes]]`: a path prefix sent to an upstream group.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Used in metrics labels, logs and cache keys; unique.
    pub name: Name,
    /// Matches when the request path starts with it; the longest matching prefix wins.
    pub prefix: UrlPath,
    /// Name of an `[upstreams.NAME]` group.
    pub upstream: Name,
    /// Remove the prefix before forwarding (`/api/v1/x` with prefix `/api` -> `/v1/x`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the prefix with this before forwarding (`/old/x` -> `/new/x`).
    #[serde(default)]
    pub rewrite: Option<UrlPath>,
    /// Send the upstream the target exactly as the client wrote it instead of its canonical
    /// form (routing and limits still use the canonical path). Not with a rewrite.
    #[serde(default)]
    pub forward_original_path: bool,
    /// Name of a `[cors.NAME]` policy applied to this route.
    #[serde(default)]
    pub cors: Option<Name>,
    /// Name of a `[cache.policies.NAME]` policy: responses of this route are cached.
    #[serde(default)]
    pub cache: Option<Name>,
    /// Name of a `[compression.policies.NAME]` policy (default: `[compression]` itself).
    #[serde(default)]
    pub compression: Option<Name>,
    /// Largest request body on this route, `0` for unlimited (default: `[limits]
    /// max_body_size`; nginx's `client_max_body_size` in a `location`).
    #[serde(default)]
    pub max_body_size: Option<ByteSize>,
}

mod defaults {
    use crate::types::Duration;
    pub fn connect_timeout() -> Duration {
        Duration::secs(2)
    }
    pub fn io_timeout() -> Duration {
        Duration::secs(60)
    }
    /// Below the 5 s keep-alive of uvicorn, Node.js and Apache, so Rampart drops an idle
    /// connection before the server does (the server closing first races with a new request).
    pub fn idle_timeout() -> Duration {
        Duration::secs(4)
    }
    pub fn connect_retries() -> usize {
        2
    }
    pub fn health_check_interval() -> Duration {
        Duration::secs(5)
    }
    pub fn health_check_status() -> u16 {
        200
    }
    pub fn health_check_timeout() -> Duration {
        Duration::secs(2)
    }
    pub fn health_check_fails() -> usize {
        2
    }
    pub fn health_check_passes() -> usize {
        1
    }
    pub fn max_fails() -> u32 {
        3
    }
    pub fn fail_timeout() -> Duration {
        Duration::secs(10)
    }
    pub fn resolve_interval() -> Duration {
        Duration::secs(30)
    }
}

impl UpstreamConfig {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if self.addrs.is_empty() {
            return Err(Invalid::new("addrs", "at least one \"host:port\" address"));
        }
        if self.connect_timeout.0.is_zero() {
            return Err(Invalid::new("connect_timeout", "a duration above zero"));
        }
        if self.read_timeout.0.is_zero() {
            return Err(Invalid::new("read_timeout", "a duration above zero"));
        }
        if self.write_timeout.0.is_zero() {
            return Err(Invalid::new("write_timeout", "a duration above zero"));
        }
        if self.connect_retries > 16 {
            return Err(Invalid::new("connect_retries", "at most 16"));
        }
        if self.health_check_interval.0 < std::time::Duration::from_millis(100) {
            return Err(Invalid::new("health_check_interval", "at least \"100ms\""));
        }
        if !(100..=599).contains(&self.health_check_status) {
            return Err(Invalid::new(
                "health_check_status",
                "an HTTP status from 100 to 599",
            ));
        }
        if self.health_check_timeout.0.is_zero() {
            return Err(Invalid::new(
                "health_check_timeout",
                "a duration above zero",
            ));
        }
        for (key, n) in [
            ("health_check_fails", self.health_check_fails),
            ("health_check_passes", self.health_check_passes),
        ] {
            if !(1..=100).contains(&n) {
                return Err(Invalid::new(key, "a count from 1 to 100"));
            }
        }
        if self.max_fails > 1000 {
            return Err(Invalid::new("max_fails", "at most 1000 (0 turns it off)"));
        }
        if self.max_fails > 0 && self.fail_timeout.0 < std::time::Duration::from_millis(100) {
            return Err(Invalid::new("fail_timeout", "at least \"100ms\""));
        }
        if self.resolve_interval.0 < std::time::Duration::from_secs(1) {
            return Err(Invalid::new("resolve_interval", "at least \"1s\""));
        }
        if self.max_inflight == Some(0) {
            return Err(Invalid::new("max_inflight", "at least 1"));
        }
        Ok(())
    }
}

impl RouteConfig {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if self.rewrite.is_some() && self.strip_prefix {
            return Err(Invalid::new(
                "rewrite",
                "either strip_prefix or rewrite, not both",
            ));
        }
        if self.forward_original_path && (self.rewrite.is_some() || self.strip_prefix) {
            return Err(Invalid::new(
                "forward_original_path",
                "the original target cannot also be rewritten (rewrite, strip_prefix)",
            ));
        }
        Ok(())
    }
}

/// A group of addresses: round-robin over usable ones (see [`crate::health`]), DNS re-resolved in
/// the background.
///
/// A reload that leaves a group's name and settings as they were keeps the group itself
/// (its resolved addresses and their health); any other group is built anew.
pub struct Upstream {
    pub name: Name,
    pub config: UpstreamConfig,
    pub balancer: Arc<LoadBalancer<RoundRobin>>,
    /// Active checks and passive ejection, combined.
    pub health: Arc<GroupHealth>,
    /// `Host` sent when the group names one, or when the client sent none (HTTP/1.0): the
    /// configured `host`, else the first address.
    host_header: HeaderValue,
    /// The idle timeout learned from the group's `Keep-Alive: timeout=`, in milliseconds
    /// (`u64::MAX`: none seen yet).
    learned_idle_ms: AtomicU64,
}

/// Pool partition of connections opened to replace a closed pooled one: a separate reuse hash,
/// so the retry never picks another pooled connection (it could be just as dead).
const FRESH_POOL: u64 = 1;

impl Upstream {
    /// The load balancer is returned unstarted: the runtime's background tasks run its
    /// discovery and health checks, after one discovery before it serves (at start and on
    /// reload). `healthy_gauge`: `rampart_upstream_healthy{upstream,addr}`.
    pub fn new(name: &Name, config: &UpstreamConfig, healthy_gauge: IntGaugeVec) -> Self {
        let health = Arc::new(GroupHealth::new(
            name,
            Thresholds {
                probe_fails: config.health_check_fails,
                probe_passes: config.health_check_passes,
                max_fails: config.max_fails,
                fail_timeout: config.fail_timeout.0,
            },
            healthy_gauge,
        ));
        let discovery = Box::new(Dns {
            addrs: config.addrs.clone(),
            health: health.clone(),
        });
        let host_header = match &config.host {
            Some(h) => h.0.clone(),
            // A validated `host:port` is visible ASCII, so this always converts.
            None => config
                .addrs
                .first()
                .and_then(|a| HeaderValue::from_str(a).ok())
                .unwrap_or(HeaderValue::from_static("")),
        };
        let mut balancer = LoadBalancer::<RoundRobin>::from_backends(Backends::new(discovery));
        balancer.set_health_check(Box::new(Probe {
            check: check(config, &host_header),
            health: health.clone(),
        }));
        balancer.health_check_frequency = Some(config.health_check_interval.0);
        balancer.update_frequency = Some(config.resolve_interval.0);
        balancer.parallel_health_check = true;
        Self {
            name: name.clone(),
            config: config.clone(),
            balancer: Arc::new(balancer),
            health,
            host_header,
            learned_idle_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// The next address round-robin, skipping those this request already failed on.
    /// Usable addresses first; when none is, any untried one (so a recovered upstream is
    /// used at once and the client sees the real connect error otherwise).
    pub fn select(&self, tried: &[Backend]) -> Option<Backend> {
        let untried = |b: &Backend| !tried.contains(b);
        let n = self.config.addrs.len().max(1) * 4;
        self.balancer
            .select_with(b"", n, |b, _| untried(b) && self.health.usable(b))
            .or_else(|| self.balancer.select_with(b"", n, |b, _| untried(b)))
    }

    /// The peer for this request's next attempt: a fresh connection to the address whose
    /// pooled connection was closed, else the next usable address round-robin. `None`: no
    /// address left.
    pub fn next_peer(&self, state: &mut RequestState) -> Option<HttpPeer> {
        let (backend, fresh) = match state.reconnect.take() {
            Some(b) => (b, true),
            None => (self.select(&state.unreachable)?, false),
        };
        let mut peer = self.peer(&backend);
        if fresh {
            peer.group_key = FRESH_POOL;
        }
        state.fresh = fresh;
        state.tried.push(backend);
        Some(peer)
    }

    /// The last attempt could not connect: its address is not tried again by this request.
    /// Whether another address may be tried: an idempotent request, within `connect_retries`.
    pub fn connect_failed(&self, state: &mut RequestState, idempotent: bool) -> bool {
        if let Some(b) = state.tried.last() {
            if !state.unreachable.contains(b) {
                state.unreachable.push(b.clone());
            }
        }
        state.unreachable.len() <= self.config.connect_retries
            && idempotent
            && self.select(&state.unreachable).is_some()
    }

    /// After a failed attempt: whether to send the request again on a fresh connection to the
    /// same address, because the pooled connection it used was already closed. Once per
    /// request; see [`reconnect_allowed`] for which requests.
    pub fn reconnect_after(
        &self,
        state: &mut RequestState,
        e: &Error,
        reused: bool,
        idempotent: bool,
    ) -> bool {
        if state.reconnected || !reconnect_allowed(e, reused, idempotent) {
            return false;
        }
        let Some(last) = state.tried.last() else {
            return false;
        };
        state.reconnect = Some(last.clone());
        state.reconnected = true;
        true
    }

    /// A peer for `backend` with this group's timeouts and keepalive.
    pub fn peer(&self, backend: &Backend) -> HttpPeer {
        let mut peer = HttpPeer::new(backend.addr.clone(), false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.config.connect_timeout.0);
        o.read_timeout = Some(self.config.read_timeout.0);
        o.write_timeout = Some(self.config.write_timeout.0);
        o.idle_timeout = Some(self.idle_timeout());
        peer
    }

    /// The configured idle timeout, lowered to what the upstream announced it keeps.
    pub fn idle_timeout(&self) -> std::time::Duration {
        let configured = self.config.idle_timeout.0;
        match self.learned_idle_ms.load(Ordering::Relaxed) {
            u64::MAX => configured,
            ms => configured.min(std::time::Duration::from_millis(ms)),
        }
    }

    /// `upstream_response_filter`: remember the group's `Keep-Alive: timeout=N` (read before the
    /// header is removed as hop-by-hop). Pingora reads it only to decide keep-alive on/off and
    /// pools the connection for the peer's `idle_timeout` whatever N says, so a server that
    /// closes after N seconds would race Rampart's reuse; connections are kept just under N
    /// from the next request on.
    pub fn learn_keep_alive(&self, resp: &ResponseHeader) {
        let Some(secs) = resp
            .headers
            .get("keep-alive")
            .and_then(|v| keep_alive_timeout(v.as_bytes()))
        else {
            return;
        };
        let ms = keep_below(secs);
        if self.learned_idle_ms.swap(ms, Ordering::Relaxed) != ms {
            log::debug!(
                "upstream {}: Keep-Alive timeout={secs}, idle connections kept {ms} ms",
                self.name
            );
        }
    }

    /// The `Host` to send upstream: the group's own when it names one, the client's when it
    /// sent one (`None`: leave it), else the group's first address.
    pub fn host_for(&self, client_sent_host: bool) -> Option<&HeaderValue> {
        (self.config.host.is_some() || !client_sent_host).then_some(&self.host_header)
    }
}

/// The active check pingora runs on each address: `GET health_check_path` (with the group's
/// `Host`) expecting `health_check_status`, or a TCP connect when no path is configured.
fn check(config: &UpstreamConfig, host: &HeaderValue) -> Box<dyn HealthCheck + Send + Sync> {
    let Some(path) = &config.health_check_path else {
        let mut tcp = TcpHealthCheck::new();
        tcp.peer_template.options.connection_timeout = Some(config.connect_timeout.0);
        return tcp;
    };
    let mut http = HttpHealthCheck::new(host.to_str().unwrap_or(""), false);
    // A validated path starts with "/"; one that is not a valid URI keeps pingora's "/".
    if let Ok(uri) = path.parse::<http::Uri>() {
        http.req.set_uri(uri);
    }
    http.peer_template.options.connection_timeout = Some(config.connect_timeout.0);
    http.peer_template.options.read_timeout = Some(config.health_check_timeout.0);
    let expected = config.health_check_status;
    let path = path.to_string();
    http.validator = Some(Box::new(move |resp: &ResponseHeader| {
        if resp.status.as_u16() == expected {
            Ok(())
        } else {
            pingora::Error::e_explain(
                pingora::ErrorType::CustomCode("unexpected status", resp.status.as_u16()),
                format!(
                    "GET {path} answered {} (expected {expected})",
                    resp.status.as_u16()
                ),
            )
        }
    }));
    Box::new(http)
}

/// Service discovery by DNS: written here because pingora's `Static` discovery resolves once,
/// at start, which breaks when a container restarts with a new address (nginx has the same
/// flaw without `resolve`). A name that does not resolve is logged and skipped; the other
/// addresses stay in service. The group's health learns the addresses found.
struct Dns {
    addrs: Vec<HostPort>,
    health: Arc<GroupHealth>,
}

#[async_trait]
impl ServiceDiscovery for Dns {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut backends = BTreeSet::new();
        for addr in &self.addrs {
            match tokio::net::lookup_host(addr.as_str()).await {
                Ok(resolved) => {
                    for sock in resolved {
                        backends.insert(Backend::new(&sock.to_string())?);
                    }
                }
                Err(e) => log::warn!("upstream address {addr} does not resolve: {e}"),
            }
        }
        self.health.set_addresses(&backends);
        Ok((backends, HashMap::new()))
    }
}

/// `timeout=N` of a `Keep-Alive` field value (`timeout=5, max=1000`); `None` when absent or
/// not a number.
fn keep_alive_timeout(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value)
        .ok()?
        .split(',')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("timeout"))
        .and_then(|(_, v)| v.trim().trim_matches('"').parse().ok())
}

/// How long to keep an idle connection to a server that closes it after `secs`: a second
/// less (half of it below two seconds), so Rampart is the side that closes.
fn keep_below(secs: u64) -> u64 {
    let ms = secs.saturating_mul(1000);
    ms - (ms / 2).min(1000)
}

/// Whether a failed attempt on a connection may be sent again on a fresh one: the connection
/// came from the pool (`reused`) and was found closed, and sending again cannot apply the
/// request twice. (The caller also checks that no response went to the client yet.) Two
/// failures qualify:
///
/// - the upstream closed or reset the connection (EOF or a reset while reading the response
///   head, which Pingora marks `RetryType::ReusedOnly`, or a broken pipe while sending):
///   idempotent methods only (RFC 9110 section 9.2.2), since the upstream may have read the
///   request;
/// - writing the request head failed: the upstream never had a whole request, so any method.
///
/// A fresh connection that fails the same way is a real upstream failure: never retried here.
pub fn reconnect_allowed(e: &Error, reused: bool, idempotent: bool) -> bool {
    // The client's side failing (it went away mid-body) is no reason to ask the upstream again.
    if !reused || e.esource() != &ErrorSource::Upstream {
        return false;
    }
    // Pingora names the head write in the error's context (it has no error type of its own);
    // a body write failure (the head went out) says otherwise.
    let head_unsent = e.etype() == &ErrorType::WriteError
        && e.context.as_ref().map(|c| c.as_str()).is_some_and(|c| {
            c.starts_with("while writing request headers") || c == "flushing request header"
        });
    let closed = e.retry == RetryType::ReusedOnly
        || matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        );
    head_unsent || (idempotent && closed)
}

/// Where one request went upstream (a field of the request context).
#[derive(Default)]
pub struct RequestState {
    /// Every attempt's address, in order (the access log names the last).
    pub tried: Vec<Backend>,
    /// Addresses that refused or timed out a connect: not tried again by this request.
    pub unreachable: Vec<Backend>,
    /// The next attempt goes to this address on a fresh connection (its pooled one was closed).
    pub reconnect: Option<Backend>,
    /// The one fresh-connection retry was used.
    pub reconnected: bool,
    /// The current attempt is on a fresh connection: it asks the upstream to close it after the
    /// response, so it never lingers in the pool.
    pub fresh: bool,
    /// When the request was sent upstream.
    pub sent_at: Option<std::time::Instant>,
    /// How long the upstream took to send its response header.
    pub response_time: Option<std::time::Duration>,
    /// The client's target as received, when the canonical path differs from it.
    pub original_target: Option<String>,
}

/// A configured route, resolved: upstream and CORS policy are shared handles.
pub struct Route {
    pub name: Name,
    pub prefix: String,
    pub upstream: Arc<Upstream>,
    pub strip_prefix: bool,
    pub rewrite: Option<String>,
    /// Forward the client's target as received, not the canonical one.
    pub forward_original_path: bool,
    pub cors: Option<Arc<cors::Policy>>,
    /// `None`: the default `[compression]` policy.
    pub compression: Option<Arc<compress::Policy>>,
    /// `None`: `[limits] max_body_size`.
    pub max_body_size: Option<ByteSize>,
}

impl Route {
    /// The path (and query) to send upstream: byte for byte unless a rewrite is configured.
    pub fn upstream_path(&self, path_and_query: &str) -> Option<String> {
        let replacement = match (&self.rewrite, self.strip_prefix) {
            (Some(r), _) => r.as_str(),
            (None, true) => "",
            (None, false) => return None,
        };
        let rest = path_and_query.get(self.prefix.len()..).unwrap_or("");
        let mut out = String::with_capacity(replacement.len() + rest.len() + 1);
        out.push_str(replacement);
        if !out.ends_with('/') && !rest.starts_with('/') && !rest.starts_with('?') {
            out.push('/');
        }
        if out.ends_with('/') && rest.starts_with('/') {
            out.pop();
        }
        out.push_str(rest);
        if out.is_empty() || out.starts_with('?') {
            out.insert(0, '/');
        }
        Some(out)
    }
}

/// Longest-prefix matching over the configured routes.
pub struct Router {
    /// Sorted by prefix length, longest first: the first match is the longest.
    routes: Vec<Arc<Route>>,
    upstreams: Vec<Arc<Upstream>>,
}

/// A route names a group or policy that was not built: the config was not validated.
#[derive(Debug, thiserror::Error)]
#[error("route {route}: no {what} named \"{name}\" (config not validated?)")]
pub struct Unresolved {
    route: Name,
    what: &'static str,
    name: Name,
}

impl Router {
    /// The routes of a validated config, with their upstream groups, CORS and compression
    /// policies resolved to shared handles. `config::validate` has checked every name a route
    /// refers to, so [`Unresolved`] only reports a config that skipped it. `healthy_gauge`:
    /// `rampart_upstream_healthy{upstream,addr}`, which the groups keep current.
    ///
    /// `running`: the groups of the configuration being replaced (empty at start); a group
    /// with the same name and settings is reused rather than rebuilt.
    pub fn new(
        routes: &[RouteConfig],
        upstreams: &BTreeMap<Name, UpstreamConfig>,
        cors: &BTreeMap<Name, cors::Config>,
        compression: &compress::Policies,
        running: &[Arc<Upstream>],
        healthy_gauge: &IntGaugeVec,
    ) -> Result<Self, Unresolved> {
        let groups: BTreeMap<&Name, Arc<Upstream>> = upstreams
            .iter()
            .map(|(name, c)| {
                let kept = running
                    .iter()
                    .find(|u| u.name == *name && u.config == *c)
                    .cloned();
                (
                    name,
                    kept.unwrap_or_else(|| Arc::new(Upstream::new(name, c, healthy_gauge.clone()))),
                )
            })
            .collect();
        let cors: BTreeMap<&Name, Arc<cors::Policy>> = cors
            .iter()
            .map(|(name, c)| (name, Arc::new(cors::Policy::new(c))))
            .collect();
        let mut built = Vec::with_capacity(routes.len());
        for r in routes {
            let unresolved = |what, name: &Name| Unresolved {
                route: r.name.clone(),
                what,
                name: name.clone(),
            };
            let upstream = groups
                .get(&r.upstream)
                .ok_or_else(|| unresolved("upstream", &r.upstream))?;
            let cors = match &r.cors {
                Some(n) => Some(cors.get(n).ok_or_else(|| unresolved("CORS policy", n))?),
                None => None,
            };
            let compression = match &r.compression {
                Some(n) => Some(
                    compression
                        .named
                        .get(n)
                        .ok_or_else(|| unresolved("compression policy", n))?,
                ),
                None => None,
            };
            built.push(Arc::new(Route {
                name: r.name.clone(),
                prefix: r.prefix.to_string(),
                upstream: upstream.clone(),
                strip_prefix: r.strip_prefix,
                forward_original_path: r.forward_original_path,
                rewrite: r.rewrite.as_ref().map(|p| p.to_string()),
                cors: cors.cloned(),
                compression: compression.cloned(),
                max_body_size: r.max_body_size,
            }));
        }
        built.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(Self {
            routes: built,
            upstreams: groups.into_values().collect(),
        })
    }

    /// Every upstream group (their load balancers run as background services).
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    pub fn route(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| path.starts_with(&r.prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, strip: bool, rewrite: Option<&str>) -> Route {
        let cfg = UpstreamConfig {
            addrs: vec![HostPort::from_static("127.0.0.1:1")],
            connect_timeout: Duration::secs(1),
            read_timeout: Duration::secs(1),
            write_timeout: Duration::secs(1),
            idle_timeout: Duration::secs(1),
            connect_retries: 0,
            health_check_interval: Duration::secs(1),
            health_check_path: None,
            health_check_status: 200,
            health_check_timeout: Duration::secs(1),
            health_check_fails: 1,
            health_check_passes: 1,
            max_fails: 0,
            fail_timeout: Duration::secs(1),
            resolve_interval: Duration::secs(1),
            host: None,
            max_inflight: None,
        };
        let gauge = IntGaugeVec::new(prometheus::Opts::new("g", "g"), &["upstream", "addr"])
            .expect("gauge");
        Route {
            name: Name::from_static("r"),
            prefix: prefix.into(),
            upstream: Arc::new(Upstream::new(&Name::from_static("u"), &cfg, gauge)),
            strip_prefix: strip,
            rewrite: rewrite.map(String::from),
            forward_original_path: false,
            cors: None,
            compression: None,
            max_body_size: None,
        }
    }

    #[test]
    fn rewrites() {
        assert_eq!(
            route("/api/", false, None).upstream_path("/api/x?q=1"),
            None
        );
        let strip = route("/api", true, None);
        assert_eq!(
            strip.upstream_path("/api/v1/x?q").as_deref(),
            Some("/v1/x?q")
        );
        assert_eq!(strip.upstream_path("/api").as_deref(), Some("/"));
        assert_eq!(strip.upstream_path("/api?a=b").as_deref(), Some("/?a=b"));
        let rw = route("/old/", false, Some("/new/"));
        assert_eq!(rw.upstream_path("/old/a/b").as_deref(), Some("/new/a/b"));
        let rw2 = route("/old", false, Some("/new"));
        assert_eq!(rw2.upstream_path("/old/a").as_deref(), Some("/new/a"));
    }

    #[test]
    fn keep_alive_timeouts() {
        assert_eq!(keep_alive_timeout(b"timeout=5, max=1000"), Some(5));
        assert_eq!(keep_alive_timeout(b"max=10,Timeout = 2"), Some(2));
        assert_eq!(keep_alive_timeout(b"max=10"), None);
        assert_eq!(keep_alive_timeout(b"timeout=soon"), None);
        assert_eq!(keep_below(5), 4000);
        assert_eq!(keep_below(1), 500);
        assert_eq!(keep_below(0), 0);
        assert_eq!(keep_below(u64::MAX), u64::MAX - 1000);
    }

    #[test]
    fn idle_timeout_follows_the_upstreams_keep_alive() {
        let r = route("/", false, None);
        let u = &r.upstream;
        assert_eq!(u.idle_timeout(), std::time::Duration::from_secs(1));
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        resp.insert_header("keep-alive", "timeout=60").expect("h");
        u.learn_keep_alive(&resp);
        assert_eq!(
            u.idle_timeout(),
            std::time::Duration::from_secs(1),
            "never above the config"
        );
        resp.insert_header("keep-alive", "timeout=1").expect("h");
        u.learn_keep_alive(&resp);
        assert_eq!(u.idle_timeout(), std::time::Duration::from_millis(500));
    }

    #[test]
    fn only_closed_pooled_connections_are_retried_and_only_safely() {
        let up = |etype, context: &'static str| {
            let mut e = Error::explain(etype, context);
            e.esource = ErrorSource::Upstream;
            e
        };
        let closed = || {
            let mut e = up(
                ErrorType::ConnectionClosed,
                "while reading response headers, bytes already read: 0",
            );
            e.retry = RetryType::ReusedOnly;
            e
        };
        let head = || up(ErrorType::WriteError, "while writing request headers");
        let body = || up(ErrorType::WriteError, "writing body");
        assert!(reconnect_allowed(&closed(), true, true));
        assert!(
            !reconnect_allowed(&closed(), true, false),
            "POST may have been read"
        );
        assert!(
            !reconnect_allowed(&closed(), false, true),
            "a fresh connection failed"
        );
        assert!(
            reconnect_allowed(&head(), true, false),
            "the head never left"
        );
        assert!(
            !reconnect_allowed(&body(), true, false),
            "the head went out"
        );
        assert!(
            reconnect_allowed(&body(), true, true),
            "a PUT may be sent again"
        );
        let mut client_gone = body();
        client_gone.esource = ErrorSource::Downstream;
        assert!(
            !reconnect_allowed(&client_gone, true, true),
            "the client's failure"
        );
        let timeout = up(ErrorType::ReadTimedout, "while reading response headers");
        assert!(
            !reconnect_allowed(&timeout, true, true),
            "a slow upstream is not a closed one"
        );
    }

    #[test]
    fn a_closed_pooled_connection_is_retried_once_on_the_same_address() {
        let r = route("/", false, None);
        let u = &r.upstream;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(u.balancer.update())
            .expect("discovery");
        let mut state = RequestState::default();
        let first = u.next_peer(&mut state).expect("an address");
        assert_eq!(first.group_key, 0);
        assert!(!state.fresh);
        let mut e = Error::explain(ErrorType::ConnectionClosed, "closed");
        e.esource = ErrorSource::Upstream;
        e.retry = RetryType::ReusedOnly;
        assert!(u.reconnect_after(&mut state, &e, true, true));
        let again = u.next_peer(&mut state).expect("the same address");
        assert_eq!(again._address.to_string(), first._address.to_string());
        assert_eq!(again.group_key, FRESH_POOL, "not from the pool");
        assert!(state.fresh);
        assert!(!u.reconnect_after(&mut state, &e, true, true), "once");
    }
}
