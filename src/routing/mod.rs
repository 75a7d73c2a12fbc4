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

mod config;
mod upstream;

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus::{HistogramVec, IntGaugeVec};

use crate::types::{ByteSize, Name};
use crate::{compress, cors};

pub use config::{RouteConfig, UpstreamConfig};
pub use upstream::{reconnect_allowed, RequestState, Upstream};

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
    /// `rampart_upstream_healthy{upstream,addr}`, which the groups keep current; `latency`:
    /// `rampart_upstream_request_duration_seconds{upstream}`, each group's series resolved once.
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
        latency: &HistogramVec,
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
                    kept.unwrap_or_else(|| {
                        Arc::new(Upstream::new(name, c, healthy_gauge.clone(), latency))
                    }),
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
    use super::upstream::{keep_alive_timeout, keep_below, FRESH_POOL};
    use super::*;
    use crate::types::{Duration, HostPort};
    use pingora::http::ResponseHeader;
    use pingora::{Error, ErrorSource, ErrorType, RetryType};

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
        let latency =
            HistogramVec::new(prometheus::HistogramOpts::new("h", "h"), &["upstream"]).expect("h");
        Route {
            name: Name::from_static("r"),
            prefix: prefix.into(),
            upstream: Arc::new(Upstream::new(
                &Name::from_static("u"),
                &cfg,
                gauge,
                &latency,
            )),
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
