//! Routing: which upstream group a request goes to, and which address in it.
//!
//! Phases: `request_filter` ([`Router::route`]), `upstream_peer` ([`Upstream::peer`]),
//! `upstream_request_filter` ([`Route::upstream_path`]).
//!
//! Invariants: the longest matching prefix wins (ties are impossible, config rejects duplicate
//! prefixes); a path is forwarded byte for byte unless the route configures a rewrite; an
//! address that refused a connection is not tried again by the same request.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderValue;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use serde::Deserialize;

use crate::types::{ByteSize, Duration, HeaderValueText, HostPort, Invalid, Name, UrlPath};
use crate::{compress, cors};

/// `[upstreams.NAME]`: a group of interchangeable addresses.
#[derive(Debug, Clone, Deserialize)]
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
    /// How long an idle upstream connection is kept for reuse ("0s" disables keepalive).
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Duration,
    /// How many other addresses to try when connecting fails (idempotent requests only).
    #[serde(default = "defaults::connect_retries")]
    pub connect_retries: usize,
    /// TCP health check period; failing addresses are skipped while others are healthy.
    #[serde(default = "defaults::health_check_interval")]
    pub health_check_interval: Duration,
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
#[derive(Debug, Clone, Deserialize)]
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
    pub fn idle_timeout() -> Duration {
        Duration::secs(60)
    }
    pub fn connect_retries() -> usize {
        2
    }
    pub fn health_check_interval() -> Duration {
        Duration::secs(5)
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
        Ok(())
    }
}

/// A group of addresses: round-robin over healthy ones, DNS re-resolved in the background.
pub struct Upstream {
    pub name: Name,
    pub config: UpstreamConfig,
    pub balancer: Arc<LoadBalancer<RoundRobin>>,
    /// `Host` sent when the group names one, or when the client sent none (HTTP/1.0): the
    /// configured `host`, else the first address.
    host_header: HeaderValue,
}

impl Upstream {
    /// The load balancer is returned unstarted: `app` runs it as a background service
    /// (discovery and health checks) and awaits one discovery before listening.
    pub fn new(name: &Name, config: &UpstreamConfig) -> Self {
        let discovery = Box::new(Dns {
            addrs: config.addrs.clone(),
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
        let mut hc = TcpHealthCheck::new();
        hc.peer_template.options.connection_timeout = Some(config.connect_timeout.0);
        hc.consecutive_failure = 2;
        balancer.set_health_check(hc);
        balancer.health_check_frequency = Some(config.health_check_interval.0);
        balancer.update_frequency = Some(config.resolve_interval.0);
        balancer.parallel_health_check = true;
        Self {
            name: name.clone(),
            config: config.clone(),
            balancer: Arc::new(balancer),
            host_header,
        }
    }

    /// The next address round-robin, skipping those this request already failed on.
    /// Healthy addresses first; when none is healthy, any untried one (so a recovered
    /// upstream is used at once and the client sees the real connect error otherwise).
    pub fn select(&self, tried: &[Backend]) -> Option<Backend> {
        let untried = |b: &Backend| !tried.contains(b);
        let n = self.config.addrs.len().max(1) * 4;
        self.balancer
            .select_with(b"", n, |b, healthy| healthy && untried(b))
            .or_else(|| self.balancer.select_with(b"", n, |b, _| untried(b)))
    }

    /// A peer for `backend` with this group's timeouts and keepalive.
    pub fn peer(&self, backend: &Backend) -> HttpPeer {
        let mut peer = HttpPeer::new(backend.addr.clone(), false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.config.connect_timeout.0);
        o.read_timeout = Some(self.config.read_timeout.0);
        o.write_timeout = Some(self.config.write_timeout.0);
        o.idle_timeout = Some(self.config.idle_timeout.0);
        peer
    }

    /// The `Host` to send upstream: the group's own when it names one, the client's when it
    /// sent one (`None`: leave it), else the group's first address.
    pub fn host_for(&self, client_sent_host: bool) -> Option<&HeaderValue> {
        (self.config.host.is_some() || !client_sent_host).then_some(&self.host_header)
    }
}

/// Service discovery by DNS: written here because pingora's `Static` discovery resolves once,
/// at start, which breaks when a container restarts with a new address (nginx has the same
/// flaw without `resolve`). A name that does not resolve is logged and skipped; the other
/// addresses stay in service.
struct Dns {
    addrs: Vec<HostPort>,
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
        Ok((backends, HashMap::new()))
    }
}

/// Where one request went upstream (a field of the request context).
#[derive(Default)]
pub struct RequestState {
    /// Addresses this request already tried to connect to (retries go elsewhere).
    pub tried: Vec<Backend>,
    /// When the request was sent upstream.
    pub sent_at: Option<std::time::Instant>,
    /// How long the upstream took to send its response header.
    pub response_time: Option<std::time::Duration>,
}

/// A configured route, resolved: upstream and CORS policy are shared handles.
pub struct Route {
    pub name: Name,
    pub prefix: String,
    pub upstream: Arc<Upstream>,
    pub strip_prefix: bool,
    pub rewrite: Option<String>,
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
    /// refers to, so [`Unresolved`] only reports a config that skipped it.
    pub fn new(
        routes: &[RouteConfig],
        upstreams: &BTreeMap<Name, UpstreamConfig>,
        cors: &BTreeMap<Name, cors::Config>,
        compression: &compress::Policies,
    ) -> Result<Self, Unresolved> {
        let groups: BTreeMap<&Name, Arc<Upstream>> = upstreams
            .iter()
            .map(|(name, c)| (name, Arc::new(Upstream::new(name, c))))
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
            resolve_interval: Duration::secs(1),
            host: None,
            max_inflight: None,
        };
        Route {
            name: Name::from_static("r"),
            prefix: prefix.into(),
            upstream: Arc::new(Upstream::new(&Name::from_static("u"), &cfg)),
            strip_prefix: strip,
            rewrite: rewrite.map(String::from),
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
}
