//! One configuration generation: everything the request path reads that comes from the config
//! file (routes, upstream groups, policies, headers, cache, limits, the TLS certificate), and
//! [`Live`], the holder of the current generation.
//!
//! Phases: `new_ctx` loads the current generation into the request context, and every later
//! phase of that request reads the same one. A reload (`reload.rs`) builds the next generation
//! beside the running one and swaps it in for new requests (`arc_swap`), while requests in
//! flight finish on the generation they started with; it is dropped when the last one ends.
//!
//! What a reload keeps from the generation it replaces, so that a reload is not a restart:
//! upstream groups whose settings are unchanged (their resolved addresses and health), the
//! Redis store and its connection when `[store]` is unchanged, the cache's leaked store and
//! lock (and so its entries), and the in-process rate-limit buckets of unchanged policies.
//!
//! Invariant: a generation is complete before it becomes current (built, new upstream groups
//! discovered, certificate loaded and matched to its key); a build that fails leaves the
//! current generation untouched.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;

use crate::accesslog;
use crate::cache::Cache;
use crate::client::Cidrs;
use crate::compress::Policies;
use crate::config::Config;
use crate::headers::Headers;
use crate::limits::Limits;
use crate::metrics::{Metrics, PublicEndpoint};
use crate::ratelimit::Limiter;
use crate::redis::Redis;
use crate::routing::{Router, Upstream};
use crate::tls;

/// Why a generation could not be built from a (valid) config.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("TLS listener: {0}")]
    Tls(String),
    /// `[store]` cannot be used (the message names the key).
    #[error(transparent)]
    Store(#[from] crate::redis::SetupError),
    #[error(transparent)]
    Unresolved(#[from] crate::routing::Unresolved),
}

/// Everything built from one config file.
pub struct Runtime {
    /// 1 at start, one more per applied reload.
    pub generation: u64,
    /// What it was built from (a reload compares the next file with it).
    pub config: Config,
    pub router: Router,
    pub headers: Headers,
    pub trusted: Cidrs,
    pub access_log: accesslog::Config,
    pub public_metrics: Option<PublicEndpoint>,
    pub ratelimit: Limiter,
    /// The response cache (per-route policies, its store, the cache lock).
    pub cache: Arc<Cache>,
    /// `[compression]` and its named policies.
    pub compression: Policies,
    /// The shared store, when `store.redis_url` is set (its PING runs in the background).
    pub redis: Option<Arc<Redis>>,
    /// The TLS listener's certificate (`server.tls`), read when this generation was built.
    pub certificate: Option<Arc<CertifiedKey>>,
    /// `server.tls.redirect_http`: the TLS port plain requests are sent to with `308`.
    pub https_redirect: Option<u16>,
    /// Body sizes and in-flight slots (the connection-level limits live in `gate`, set at
    /// start: they change on restart only).
    pub limits: Limits,
}

impl Runtime {
    /// Build generation `generation` from `config`, reusing what still fits from `running`
    /// (the generation it will replace; `None` at start).
    pub fn build(
        config: Config,
        generation: u64,
        metrics: &Arc<Metrics>,
        running: Option<&Runtime>,
    ) -> Result<Self, Error> {
        let certificate = match &config.server.tls {
            Some(t) => Some(tls::load(&t.cert, &t.key).map_err(Error::Tls)?),
            None => None,
        };
        let compression = Policies::new(&config.compression);
        let router = Router::new(
            &config.routes,
            &config.upstreams,
            &config.cors,
            &compression,
            running.map_or(&[][..], |r| r.router.upstreams()),
            &metrics.upstream_healthy,
            &metrics.upstream_duration,
        )?;
        let redis = match running
            .and_then(|r| r.redis.as_ref())
            .filter(|r| r.built_from(&config.store))
        {
            Some(kept) => Some(kept.clone()),
            None => Redis::from_config(&config.store, metrics.clone()).map_err(Error::Store)?,
        };
        let ratelimit = Limiter::new(
            &config.ratelimit,
            config.store.cluster,
            redis.clone(),
            metrics.clone(),
            running.map(|r| &r.ratelimit),
        );
        let cache = Cache::new(
            &config.cache,
            &config.routes,
            redis.clone(),
            metrics.clone(),
            running.map(|r| r.cache.as_ref()),
        );
        Ok(Self {
            generation,
            router,
            headers: Headers::new(
                &config.headers,
                config.metrics.process_time_header,
                config.metrics.server_timing,
            ),
            trusted: Cidrs::new(&config.server.trusted_proxies),
            access_log: config.access_log.clone(),
            public_metrics: PublicEndpoint::new(&config.metrics),
            ratelimit,
            cache,
            compression,
            redis,
            certificate,
            limits: Limits::new(&config.limits),
            https_redirect: config
                .server
                .tls
                .as_ref()
                .filter(|t| t.redirect_http)
                .map(|t| t.listen.0.port()),
            config,
        })
    }

    /// The upstream groups built for this generation rather than kept from `running`: they
    /// need one discovery before they serve.
    pub fn new_upstreams(&self, running: Option<&Runtime>) -> Vec<Arc<Upstream>> {
        let old = running.map_or(&[][..], |r| r.router.upstreams());
        self.router
            .upstreams()
            .iter()
            .filter(|u| !old.iter().any(|o| Arc::ptr_eq(o, u)))
            .cloned()
            .collect()
    }
}

/// Reload outcomes since start, for `/healthz` and `rampart reload`.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub applied: u64,
    pub refused: u64,
    /// Why the last refused reload was refused, until one is applied again.
    pub last_error: Option<String>,
}

/// The current generation, shared by the proxy, the admin listener, the TLS resolver and the
/// reloader; plus what lives as long as the process (the metrics registry).
pub struct Live {
    current: ArcSwap<Runtime>,
    pub metrics: Arc<Metrics>,
    status: Mutex<ReloadStatus>,
    /// SIGHUP is handled (a SIGHUP before that would end the process, its default action).
    sighup: AtomicBool,
}

impl Live {
    pub fn new(first: Runtime, metrics: Arc<Metrics>) -> Self {
        Self {
            current: ArcSwap::from_pointee(first),
            metrics,
            status: Mutex::new(ReloadStatus::default()),
            sighup: AtomicBool::new(false),
        }
    }

    /// The reloader handles SIGHUP from now on.
    pub fn handling_sighup(&self) {
        self.sighup.store(true, Ordering::Relaxed);
    }

    /// Whether SIGHUP reloads this process now (`rampart reload` waits for it).
    pub fn sighup_handled(&self) -> bool {
        self.sighup.load(Ordering::Relaxed)
    }

    /// The generation new requests use (one atomic load and reference count).
    pub fn current(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// The current generation for a short look that usually ends without a request (the
    /// gate's early answer): held, it writes no reference count, which [`Self::current`] does
    /// on a cache line every worker thread writes. `arc_swap::Guard::into_inner` makes it an
    /// `Arc` when a request follows.
    pub fn peek(&self) -> arc_swap::Guard<Arc<Runtime>> {
        self.current.load()
    }

    /// The TLS certificate of the current generation (per handshake).
    pub fn certificate(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load().certificate.clone()
    }

    /// Make `next` current: `rampart_config_load_success` 1 and the load time now.
    pub fn replace(&self, next: Runtime) {
        self.current.store(Arc::new(next));
        self.metrics.config_success.set(1);
        self.metrics.config_timestamp.set(unix_now());
        self.metrics
            .config_reloads
            .with_label_values(&["applied"])
            .inc();
        let mut s = self.lock_status();
        s.applied += 1;
        s.last_error = None;
    }

    /// A reload was refused: the running generation stays, `rampart_config_load_success` 0
    /// (what runs is not what the file says) until a reload is applied.
    pub fn refused(&self, why: &str) {
        self.metrics.config_success.set(0);
        self.metrics
            .config_reloads
            .with_label_values(&["refused"])
            .inc();
        let mut s = self.lock_status();
        s.refused += 1;
        s.last_error = Some(why.to_string());
    }

    pub fn status(&self) -> ReloadStatus {
        self.lock_status().clone()
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, ReloadStatus> {
        // Three counters cannot be left inconsistent in a way worth failing over.
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
