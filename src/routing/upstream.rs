//! Upstream groups: addresses from DNS, round-robin over usable ones, health checks, and the
//! retry of a request whose pooled connection the upstream had already closed.

use std::collections::{BTreeSet, HashMap};
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
use prometheus::{Histogram, HistogramVec, IntGaugeVec};

use crate::health::{GroupHealth, Probe, Thresholds};
use crate::types::{HostPort, Name};

use super::config::UpstreamConfig;

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
    /// `rampart_upstream_request_duration_seconds{upstream}` of this group, resolved once: looking it
    /// up by label per request hashes the name, takes the family's lock and clones an `Arc`
    /// on a cache line every worker writes.
    pub latency: Histogram,
    /// The idle timeout learned from the group's `Keep-Alive: timeout=`, in milliseconds
    /// (`u64::MAX`: none seen yet).
    learned_idle_ms: AtomicU64,
}

/// Pool partition of connections opened to replace a closed pooled one: a separate reuse hash,
/// so the retry never picks another pooled connection (it could be just as dead).
pub(super) const FRESH_POOL: u64 = 1;

impl Upstream {
    /// The load balancer is returned unstarted: the runtime's background tasks run its
    /// discovery and health checks, after one discovery before it serves (at start and on
    /// reload). `healthy_gauge`: `rampart_upstream_healthy{upstream,addr}`; `latency`:
    /// `rampart_upstream_request_duration_seconds`.
    pub fn new(
        name: &Name,
        config: &UpstreamConfig,
        healthy_gauge: IntGaugeVec,
        latency: &HistogramVec,
    ) -> Self {
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
            latency: latency.with_label_values(&[name.as_str()]),
            learned_idle_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// The next address round-robin, skipping those this request already failed on.
    /// Usable addresses first; when none is, any untried one (so a recovered upstream is
    /// used at once and the client sees the real connect error otherwise).
    pub fn select(&self, tried: &[Backend]) -> Option<Backend> {
        // One address (most groups): it, unless tried, whatever its health, which is what the
        // two passes below come to. Pingora's selection would build an iterator and a set of
        // the addresses it has seen to find it (callgrind: 1.7k instructions per request).
        let addresses = self.balancer.backends().get_backend();
        if let (1, Some(only)) = (addresses.len(), addresses.first()) {
            return (!tried.contains(only)).then(|| only.clone());
        }
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
            .get(crate::headers::KEEP_ALIVE)
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
pub(super) fn keep_alive_timeout(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value)
        .ok()?
        .split(',')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("timeout"))
        .and_then(|(_, v)| v.trim().trim_matches('"').parse().ok())
}

/// How long to keep an idle connection to a server that closes it after `secs`: a second
/// less (half of it below two seconds), so Rampart is the side that closes.
pub(super) fn keep_below(secs: u64) -> u64 {
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
