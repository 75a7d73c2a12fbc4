//! The response cache: a shared HTTP cache (RFC 9111) on pingora-cache, per route.
//!
//! Pingora's `HttpCache` state machine does freshness, `Vary` secondary slots, revalidation
//! (conditional requests on expiry), the cache lock (N concurrent misses on one key -> one
//! upstream fetch per replica; the Redis store extends that across replicas) and serve-stale; this module decides *what* may be cached and
//! under which key, and supplies the storage ([`Store`]: Redis shared by replicas, or a
//! byte-bounded in-process LRU when no `store.redis_url` is set).
//!
//! Phases (called from `proxy.rs`):
//! - `request_cache_filter` -> [`Cache::request_filter`]: GET/HEAD on a route with an enabled
//!   policy, without credentials (unless the policy shares them), with a reachable store,
//!   enables the cache; everything else is marked BYPASS (or MISS while the store is down).
//! - `cache_key_callback` -> [`Cache::key`]: route, method class, host, path, the query with its
//!   parameters sorted and ignored ones removed, and the configured `vary` request headers.
//! - `response_cache_filter` -> [`Cache::response_cacheable`]: origin `Cache-Control`
//!   (`no-store`, `private`, `no-cache`, `max-age`, `s-maxage`, stale-*), `Expires`, `Vary: *`,
//!   `Set-Cookie`, body size; the fallback `ttl` only for heuristically cacheable statuses.
//!   Per-request headers (`X-Request-Id`, `X-Process-Time`, rate-limit headers) are removed
//!   from the stored copy only: the miss response still carries what the upstream sent.
//! - `cache_vary_filter` -> [`variance`]: the stored response's `Vary` request headers
//!   (`Accept-Encoding` normalised; a `Content-Encoding` without `Vary` is treated as
//!   `Vary: Accept-Encoding`, so a gzip body never reaches an identity client).
//! - `cache_miss` -> [`Cache::cache_miss`] and `logging` -> [`Cache::finish`]: the request that
//!   fetches an entry for everyone releases its cross-replica fill claim (Redis store) when
//!   nothing got stored, so waiters elsewhere do not wait out `lock_timeout`.
//! - `should_serve_stale` -> [`should_serve_stale`]; `upstream_response_filter` ->
//!   [`Cache::invalidate_unsafe`] (a successful POST/PUT/PATCH/DELETE drops the URL's entries
//!   before its response is sent); `response_filter` -> [`Cache::status_headers`]
//!   (`Cache-Status`, `X-Cache`, `rampart_cache_lookups_total`).
//!
//! Compression: the cache stores what the origin sent and varies on `Accept-Encoding` whenever
//! the origin's body depends on it; compression by Rampart happens downstream of the cache
//! (response filters run on hits and misses alike), so a stored body is never a
//! Rampart-compressed one.
//!
//! Invariants: a response with `Set-Cookie` or `Cache-Control: private`/`no-store` is never
//! stored, and a request with `Authorization` or `Cookie` never reads a shared entry, unless
//! the route's policy opts in; a store failure never fails a request (it becomes a miss, the
//! outage is logged once by `store::redis` and counted); nothing in the key or the metrics
//! labels comes from a raw path except through a hash.
//!
//! `'static`: pingora's `Storage` and cache-lock APIs take `&'static` references. Each
//! [`Cache::new`] leaks exactly one store and one lock (`Box::leak`), so a process leaks one
//! pair per server it builds (once in production; once per test server in the tests). A global
//! `LazyLock` would be simpler but would share one store between the several servers a test
//! process runs, each with its own Redis.

mod memory;
mod redis_store;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration as StdDuration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::Method;
use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::filters::calculate_expires_header_time;
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::storage::{
    HandleHit, HandleMiss, MissFinishType, PurgeOutcome, PurgeTarget, PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{
    CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, HitHandler, MissHandler, NoCacheReason,
    RespCacheable, Storage, VarianceBuilder,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use serde::Deserialize;

use crate::config::{check_name, Duration, Invalid};
use crate::ctx::Ctx;
use crate::metrics::Metrics;
use crate::store::redis::Redis;

pub use memory::Memory;
pub use redis_store::RedisStore;

/// Longest freshness or stale window Rampart accepts from anyone: `max-age=99999999999`
/// becomes a year, so no time arithmetic can overflow.
const HARD_MAX_TTL: StdDuration = StdDuration::from_secs(365 * 24 * 3600);

/// Statuses a cache may store without explicit freshness (RFC 9110 section 15.1): only these
/// get the fallback `ttl`.
const HEURISTIC: [u16; 12] = [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// Statuses stored when the origin gives explicit freshness: the heuristic ones plus
/// temporary redirects. Never 201/202/403 or other 5xx, whatever the origin says.
const EXPLICIT_EXTRA: [u16; 2] = [302, 307];

/// Response headers that describe one request, not the resource: never stored.
const PER_REQUEST_HEADERS: [&str; 10] = [
    "x-request-id",
    "x-process-time",
    "server-timing",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit",
    "ratelimit-policy",
    "retry-after",
    "cache-status",
];

// ---------------------------------------------------------------------------------------------
// Configuration

/// `[cache]`: the in-process store's size and the named policies routes refer to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Budget of the in-process store (used without `store.redis_url`), in bytes of bodies,
    /// headers and keys; least recently used entries go first.
    pub memory_bytes: usize,
    /// `[cache.policies.NAME]`, referred to by `[[routes]] cache = "NAME"`.
    pub policies: BTreeMap<String, PolicyConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            memory_bytes: 64 * 1024 * 1024,
            policies: BTreeMap::new(),
        }
    }
}

/// `[cache.policies.NAME]`: how one route's responses are cached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Off switch that keeps the route's reference valid.
    pub enabled: bool,
    /// Freshness when the origin gives none (no `max-age`/`s-maxage`/`Expires`), for
    /// heuristically cacheable statuses only.
    pub ttl: Duration,
    /// Cap on any freshness, the origin's included.
    pub max_ttl: Option<Duration>,
    /// Ignore the origin's freshness (`max-age`, `s-maxage`, `Expires`, `no-cache`) and use
    /// `ttl`: for routes the operator owns. `no-store`, `private` and `Set-Cookie` still win.
    pub override_origin: bool,
    /// Serve a stale entry this long past its freshness while one request refreshes it in the
    /// background (the origin's `stale-while-revalidate` wins unless `override_origin`).
    pub stale_while_revalidate: Duration,
    /// Serve a stale entry this long past its freshness when the upstream fails or times out
    /// (the origin's `stale-if-error` wins unless `override_origin`).
    pub stale_if_error: Duration,
    /// Larger bodies are passed through, not stored.
    pub max_body_bytes: usize,
    /// Request headers whose values split the cache (in addition to the origin's `Vary`).
    pub vary: Vec<String>,
    /// Query parameters left out of the key (tracking parameters such as `utm_source`).
    pub ignore_query: Vec<String>,
    /// Let requests with `Authorization` or `Cookie` read and fill the shared cache.
    pub share_with_credentials: bool,
    /// Store responses that carry `Set-Cookie` (the cookie itself is never stored).
    pub store_set_cookie: bool,
    /// How long concurrent misses wait for the one request fetching the entry.
    pub lock_timeout: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: Duration::secs(60),
            max_ttl: None,
            override_origin: false,
            stale_while_revalidate: Duration::secs(0),
            stale_if_error: Duration::secs(0),
            max_body_bytes: 1024 * 1024,
            vary: Vec::new(),
            ignore_query: Vec::new(),
            share_with_credentials: false,
            store_set_cookie: false,
            lock_timeout: Duration::secs(5),
        }
    }
}

impl Config {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if self.memory_bytes < 1024 {
            return Err(Invalid::new("memory_bytes", "at least 1024 bytes"));
        }
        for (name, p) in &self.policies {
            let at = format!("policies.{name}");
            check_name(name).map_err(|m| Invalid::new(&at, m))?;
            p.validate().map_err(|e| e.within(&at))?;
        }
        Ok(())
    }
}

impl PolicyConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.ttl.0 < StdDuration::from_secs(1) {
            return Err(Invalid::new("ttl", "at least \"1s\""));
        }
        if self.ttl.0 > HARD_MAX_TTL {
            return Err(Invalid::new("ttl", "at most a year"));
        }
        if let Some(max) = self.max_ttl {
            if max.0 < self.ttl.0 {
                return Err(Invalid::new("max_ttl", "at least as long as ttl"));
            }
        }
        for (key, d) in [
            ("stale_while_revalidate", self.stale_while_revalidate),
            ("stale_if_error", self.stale_if_error),
        ] {
            if d.0 > HARD_MAX_TTL {
                return Err(Invalid::new(key, "at most a year"));
            }
        }
        if self.max_body_bytes == 0 {
            return Err(Invalid::new("max_body_bytes", "above zero"));
        }
        for (i, h) in self.vary.iter().enumerate() {
            HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| Invalid::new(format!("vary[{i}]"), "a header name"))?;
        }
        for (i, q) in self.ignore_query.iter().enumerate() {
            if q.is_empty() || q.contains(['&', '=']) {
                return Err(Invalid::new(
                    format!("ignore_query[{i}]"),
                    "a query parameter name (no '&' or '=')",
                ));
            }
        }
        if self.lock_timeout.0.is_zero() {
            return Err(Invalid::new("lock_timeout", "a duration above zero"));
        }
        Ok(())
    }
}

/// A policy ready for requests.
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    ttl: StdDuration,
    max_ttl: StdDuration,
    override_origin: bool,
    swr: u32,
    sie: u32,
    max_body_bytes: usize,
    vary: Vec<HeaderName>,
    ignore_query: Vec<String>,
    share_with_credentials: bool,
    store_set_cookie: bool,
    lock_timeout: StdDuration,
}

impl Policy {
    fn new(name: &str, c: &PolicyConfig) -> Self {
        Self {
            name: name.to_string(),
            ttl: c.ttl.0,
            max_ttl: c.max_ttl.map_or(HARD_MAX_TTL, |d| d.0.min(HARD_MAX_TTL)),
            override_origin: c.override_origin,
            swr: secs_u32(c.stale_while_revalidate.0),
            sie: secs_u32(c.stale_if_error.0),
            max_body_bytes: c.max_body_bytes,
            vary: c
                .vary
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            ignore_query: c.ignore_query.clone(),
            share_with_credentials: c.share_with_credentials,
            store_set_cookie: c.store_set_cookie,
            lock_timeout: c.lock_timeout.0,
        }
    }
}

fn secs_u32(d: StdDuration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------------
// Per-request state

/// What the cache decided for one request (a field of [`Ctx`]).
#[derive(Default)]
pub struct RequestState {
    /// The route's policy; `None`: the route does not cache, no cache headers are added.
    pub route: Option<(String, Arc<Policy>)>,
    /// Why the cache was not consulted (`method`, `credentials`).
    pub bypass: Option<&'static str>,
    /// The store is known to be down: the request went upstream without a lookup.
    pub store_down: bool,
    /// This request fetches the entry for everyone (tag, entry): its fill claim is released
    /// in `logging` when nothing was stored.
    pub writer: Option<(String, String)>,
    /// What `X-Cache` said (HIT, MISS, ...), for the access log.
    pub x_cache: Option<&'static str>,
}

/// The route policy's limits, carried in the cache key's extensions for the storage: how much
/// body a fill may buffer, how long a lookup may wait for another request's fill.
#[derive(Clone, Copy)]
struct Limits {
    body: usize,
    wait: StdDuration,
}

impl Limits {
    fn of(key: &CacheKey) -> Self {
        key.extensions.get::<Limits>().copied().unwrap_or(Limits {
            body: 1024 * 1024,
            wait: StdDuration::from_secs(5),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The cache

/// Purge scopes of the admin endpoint.
pub enum Purge {
    /// One URL (`http://host/path?query`), every variant of it.
    Url(String),
    /// Every entry of one route.
    Route(String),
    All,
}

/// The response cache shared by all workers: policies per route, the store, the cache lock.
pub struct Cache {
    store: &'static Store,
    lock: &'static CacheKeyLockImpl,
    /// route name -> policy, for routes with an enabled policy.
    policies: HashMap<String, Arc<Policy>>,
    /// (prefix, route name), longest first: the admin purge finds a URL's route like the router.
    prefixes: Vec<(String, String)>,
    metrics: Arc<Metrics>,
}

impl Cache {
    /// Leaks one store and one cache lock (see the module header).
    pub fn new(
        config: &crate::config::Config,
        redis: Option<Arc<Redis>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let policies_by_name: HashMap<&str, Arc<Policy>> = config
            .cache
            .policies
            .iter()
            .filter(|(_, c)| c.enabled)
            .map(|(n, c)| (n.as_str(), Arc::new(Policy::new(n, c))))
            .collect();
        let mut policies = HashMap::new();
        let mut prefixes = Vec::new();
        for r in &config.routes {
            if let Some(p) = r.cache.as_deref().and_then(|n| policies_by_name.get(n)) {
                policies.insert(r.name.clone(), p.clone());
            }
            prefixes.push((r.prefix.clone(), r.name.clone()));
        }
        prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let store = match redis {
            Some(r) => Store::Redis(RedisStore::new(r, metrics.clone())),
            None => Store::Memory(Memory::new(config.cache.memory_bytes, metrics.clone())),
        };
        let age = policies
            .values()
            .map(|p| p.lock_timeout)
            .max()
            .unwrap_or(StdDuration::from_secs(5));
        let lock: &'static CacheLock = Box::leak(Box::new(CacheLock::new(age)));
        Arc::new(Self {
            store: Box::leak(Box::new(store)),
            lock,
            policies,
            prefixes,
            metrics,
        })
    }

    /// `request_cache_filter`: enable the cache for this request, or record why not.
    pub fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) {
        let Some(route) = ctx.route.as_ref() else {
            return;
        };
        let Some(policy) = self.policies.get(&route.name) else {
            return;
        };
        ctx.cache.route = Some((route.name.clone(), policy.clone()));
        let req = session.req_header();
        if req.method != Method::GET && req.method != Method::HEAD {
            ctx.cache.bypass = Some("method");
            return;
        }
        let credentials = req.headers.contains_key(http::header::AUTHORIZATION)
            || req.headers.contains_key(http::header::COOKIE);
        if credentials && !policy.share_with_credentials {
            ctx.cache.bypass = Some("credentials");
            return;
        }
        if self.store.unavailable() {
            ctx.cache.store_down = true;
            return;
        }
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(policy.lock_timeout);
        session
            .cache
            .enable(self.store, None, None, Some(self.lock), Some(overrides));
    }

    /// `cache_key_callback`.
    pub fn key(&self, session: &Session, ctx: &Ctx) -> Result<CacheKey> {
        let Some((route, policy)) = ctx.cache.route.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "cache key without a policy");
        };
        let req = session.req_header();
        let host = request_host(req);
        let url = UrlKey::new(route, &host, req.uri.path(), req.uri.query(), policy);
        let mut primary = Vec::with_capacity(128);
        // Length-prefixed parts: no value can spill into the next one.
        for part in [
            route.as_bytes(),
            b"GET", // HEAD is answered from the GET entry (pingora fetches GET on a HEAD miss)
            host.as_bytes(),
            req.uri.path().as_bytes(),
            url.query.as_bytes(),
        ] {
            frame(&mut primary, part);
        }
        for name in &policy.vary {
            frame(&mut primary, name.as_str().as_bytes());
            let values: Vec<&[u8]> = req
                .headers
                .get_all(name)
                .iter()
                .map(HeaderValue::as_bytes)
                .collect();
            frame(&mut primary, &values.join(&b","[..]));
        }
        let mut key = CacheKey::new(primary, url.tag);
        key.extensions.insert(Limits {
            body: policy.max_body_bytes,
            wait: policy.lock_timeout,
        });
        Ok(key)
    }

    /// `cache_miss`: this request fetches the entry; remember which, to release the fill claim
    /// if nothing gets stored.
    pub fn cache_miss(&self, session: &mut Session, ctx: &mut Ctx) {
        session.cache.cache_miss();
        if let Some(key) = session.cache.maybe_cache_key() {
            ctx.cache.writer = Some((key.user_tag.clone(), key.combined()));
        }
    }

    /// `logging`: a writer whose fetch failed or was not stored releases its fill claim, so
    /// requests waiting on other replicas go upstream now rather than at `lock_timeout`.
    pub async fn finish(&self, session: &Session, error: Option<&Error>, ctx: &Ctx) {
        let Some((tag, entry)) = ctx.cache.writer.as_ref() else {
            return;
        };
        let stored = error.is_none()
            && matches!(
                session.cache.phase(),
                CachePhase::Miss | CachePhase::Expired
            );
        // A response whose Vary differed from the slot looked up is stored in another slot:
        // the claim on the first one is released here, not by the fill.
        let moved = session
            .cache
            .maybe_cache_key()
            .is_some_and(|k| k.combined() != *entry);
        if !stored || moved {
            self.store.release(tag, entry).await;
        }
    }

    /// `response_cache_filter`: may this response be stored, and how long is it fresh.
    pub fn response_cacheable(&self, resp: &ResponseHeader, ctx: &Ctx) -> RespCacheable {
        let Some((_, policy)) = ctx.cache.route.as_ref() else {
            return RespCacheable::Uncacheable(NoCacheReason::Custom("no-policy"));
        };
        cacheable(policy, resp, SystemTime::now())
    }

    /// `upstream_response_filter`: a successful unsafe request drops the URL's entries (RFC 9111
    /// section 4.4) before its response goes out, so the client's next GET sees the change.
    pub async fn invalidate_unsafe(&self, session: &Session, resp: &ResponseHeader, ctx: &Ctx) {
        let Some((route, policy)) = ctx.cache.route.as_ref() else {
            return;
        };
        let req = session.req_header();
        if req.method.is_safe() || resp.status.as_u16() >= 400 {
            return;
        }
        if self.store.unavailable() {
            // Known outage: do not make the request wait for a call that cannot succeed.
            return;
        }
        let host = request_host(req);
        let url = UrlKey::new(route, &host, req.uri.path(), req.uri.query(), policy);
        if let Err(e) = self.store.purge_url(&url.tag).await {
            log::debug!("cache invalidation after {} failed: {e}", req.method);
        }
    }

    /// `response_filter`: `Cache-Status` (RFC 9211), `X-Cache`, and the lookup metric.
    pub fn status_headers(&self, session: &Session, resp: &mut ResponseHeader, ctx: &mut Ctx) {
        let Some((route, _)) = ctx.cache.route.as_ref() else {
            return;
        };
        let (x_cache, status, result) = outcome(session, ctx);
        self.metrics
            .cache_lookups
            .with_label_values(&[route.as_str(), result])
            .inc();
        let _ = resp.insert_header("x-cache", x_cache);
        let _ = resp.append_header("cache-status", status);
        ctx.cache.x_cache = Some(x_cache);
    }

    /// The admin endpoint: how many entries went.
    pub async fn purge(&self, what: Purge) -> std::result::Result<u64, PurgeError> {
        match what {
            Purge::All => self.store.purge_prefix(None).await,
            Purge::Route(route) => {
                if !self.prefixes.iter().any(|(_, r)| *r == route) {
                    return Err(PurgeError::Bad(format!("no route named \"{route}\"")));
                }
                self.store.purge_prefix(Some(&route)).await
            }
            Purge::Url(url) => {
                let uri: http::Uri = url.parse().map_err(|_| {
                    PurgeError::Bad("url: an absolute URL such as http://host/path?query".into())
                })?;
                let Some(host) = uri.authority().map(|a| a.as_str().to_ascii_lowercase()) else {
                    return Err(PurgeError::Bad(
                        "url: an absolute URL with a host, such as http://host/path".into(),
                    ));
                };
                let path = uri.path();
                let Some((_, route)) = self.prefixes.iter().find(|(p, _)| path.starts_with(p))
                else {
                    return Ok(0);
                };
                let Some(policy) = self.policies.get(route) else {
                    return Ok(0);
                };
                let key = UrlKey::new(route, &host, path, uri.query(), policy);
                self.store.purge_url(&key.tag).await
            }
        }
    }
}

/// Why a purge failed.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("{0}")]
    Bad(String),
    #[error("cache store unavailable: {0}")]
    Store(String),
}

/// `should_serve_stale`: during revalidation (the window was checked by pingora) and on
/// upstream errors (connect failures, timeouts, 5xx) within `stale-if-error`.
pub fn should_serve_stale(ctx: &Ctx, error: Option<&Error>) -> bool {
    if ctx.cache.route.is_none() {
        return false;
    }
    match error {
        None => true,
        Some(e) => e.esource() == &pingora::ErrorSource::Upstream,
    }
}

/// `cache_vary_filter`: the variance of a request against a stored (or about to be stored)
/// response: its `Vary` headers, plus `Accept-Encoding` whenever the body is encoded.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let names = vary_names(meta.headers());
    if names.is_empty() {
        return None;
    }
    let mut builder = VarianceBuilder::new();
    for name in &names {
        let value = if name == "accept-encoding" {
            accepted_encodings(req).into_bytes()
        } else {
            let values: Vec<&[u8]> = req
                .headers
                .get_all(name.as_str())
                .iter()
                .map(HeaderValue::as_bytes)
                .collect();
            values.join(&b","[..])
        };
        builder.add_owned_value(name, value);
    }
    builder.finalize()
}

/// Lower-cased `Vary` names, sorted; `accept-encoding` added when the body is encoded.
fn vary_names(headers: &http::HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    let encoded = headers
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        names.push("accept-encoding".into());
    }
    names.sort();
    names.dedup();
    names
}

/// `Accept-Encoding` reduced to the sorted set of codings with q > 0: `gzip, br` and
/// `br;q=1.0,gzip` share one variant.
fn accepted_encodings(req: &RequestHeader) -> String {
    let mut codings: Vec<String> = req
        .headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|item| {
            let mut parts = item.split(';');
            let coding = parts.next()?.trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .or_else(|| p.strip_prefix("Q="))
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (!coding.is_empty() && !refused).then_some(coding)
        })
        .collect();
    codings.sort();
    codings.dedup();
    codings.join(",")
}

/// The decision of `response_cache_filter`, as a pure function of policy, response and time.
fn cacheable(policy: &Policy, resp: &ResponseHeader, now: SystemTime) -> RespCacheable {
    use RespCacheable::Uncacheable;
    let status = resp.status.as_u16();
    let heuristic = HEURISTIC.contains(&status);
    if !heuristic && !EXPLICIT_EXTRA.contains(&status) {
        return Uncacheable(NoCacheReason::Custom("status"));
    }
    let headers = &resp.headers;
    if vary_names(headers).iter().any(|n| n == "*") {
        return Uncacheable(NoCacheReason::Custom("vary-star"));
    }
    if headers.contains_key(http::header::SET_COOKIE) && !policy.store_set_cookie {
        return Uncacheable(NoCacheReason::Custom("set-cookie"));
    }
    let cc = CacheControl::from_resp_headers(resp);
    if cc.as_ref().is_some_and(|c| c.no_store()) {
        return Uncacheable(NoCacheReason::Custom("no-store"));
    }
    if cc.as_ref().is_some_and(|c| c.private()) {
        return Uncacheable(NoCacheReason::Custom("private"));
    }
    let too_large = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|len| len > policy.max_body_bytes as u64);
    if too_large {
        return Uncacheable(NoCacheReason::ResponseTooLarge);
    }

    let origin_ttl = if policy.override_origin {
        None
    } else {
        cc.as_ref().and_then(|c| c.fresh_duration()).or_else(|| {
            calculate_expires_header_time(resp)
                .map(|at| at.duration_since(now).unwrap_or(StdDuration::ZERO))
        })
    };
    let ttl = match origin_ttl {
        Some(t) => t,
        None if heuristic => policy.ttl,
        None => return Uncacheable(NoCacheReason::Custom("status")),
    }
    .min(policy.max_ttl);
    let fresh_until = if ttl.is_zero() {
        // no-cache / max-age=0: stored, but every use revalidates with the origin
        now.checked_sub(StdDuration::from_secs(1)).unwrap_or(now)
    } else {
        now.checked_add(ttl).unwrap_or(now)
    };
    let (mut swr, mut sie) = (policy.swr, policy.sie);
    if !policy.override_origin {
        if let Some(c) = &cc {
            if let Some(d) = c.serve_stale_while_revalidate_duration() {
                swr = secs_u32(d.min(HARD_MAX_TTL));
            }
            if let Some(d) = c.serve_stale_if_error_duration() {
                sie = secs_u32(d.min(HARD_MAX_TTL));
            }
        }
    }

    let mut stored = resp.clone();
    for name in PER_REQUEST_HEADERS {
        stored.remove_header(name);
    }
    stored.remove_header(&http::header::SET_COOKIE);
    if let Some(c) = &cc {
        c.strip_private_headers(&mut stored);
    }
    RespCacheable::Cacheable(CacheMeta::new(fresh_until, now, swr, sie, stored))
}

/// (`X-Cache`, `Cache-Status` entry, metric result) for a request on a caching route.
fn outcome(session: &Session, ctx: &Ctx) -> (&'static str, String, &'static str) {
    if let Some(why) = ctx.cache.bypass {
        return (
            "BYPASS",
            format!("rampart; fwd=bypass; detail={why}"),
            "bypass",
        );
    }
    if ctx.cache.store_down {
        return (
            "MISS",
            "rampart; fwd=miss; detail=store-unavailable".into(),
            "miss",
        );
    }
    let now = SystemTime::now();
    let meta = session.cache.maybe_cache_meta();
    let remaining = || {
        meta.map_or(0, |m| match m.fresh_until().duration_since(now) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        })
    };
    match session.cache.phase() {
        CachePhase::Hit => ("HIT", format!("rampart; hit; ttl={}", remaining()), "hit"),
        CachePhase::StaleUpdating => (
            "STALE",
            format!(
                "rampart; hit; ttl={}; detail=stale-while-revalidate",
                remaining()
            ),
            "stale",
        ),
        CachePhase::Stale => (
            "STALE",
            format!("rampart; hit; ttl={}; detail=stale-if-error", remaining()),
            "stale",
        ),
        CachePhase::Miss => ("MISS", "rampart; fwd=miss; stored".into(), "miss"),
        CachePhase::Expired => ("EXPIRED", "rampart; fwd=stale; stored".into(), "expired"),
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => (
            "EXPIRED",
            "rampart; fwd=stale; fwd-status=304".into(),
            "expired",
        ),
        CachePhase::Disabled(reason) => (
            "MISS",
            format!("rampart; fwd=miss; detail={}", detail(reason)),
            "miss",
        ),
        CachePhase::Bypass | CachePhase::Uninit | CachePhase::CacheKey => {
            ("BYPASS", "rampart; fwd=bypass".into(), "bypass")
        }
    }
}

/// A `Cache-Status` detail token (RFC 9211 section 2.8: a token, so no spaces).
fn detail(reason: NoCacheReason) -> String {
    reason
        .as_str()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// The request's host, lower-cased: `Host`, else the URI's authority (HTTP/2).
fn request_host(req: &RequestHeader) -> String {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn frame(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(part.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(part);
    out.push(b';');
}

/// A URL as the cache groups it: all entries of one URL (variants, configured vary headers)
/// share the tag `ROUTE:HASH`, which is how purges and invalidations find them.
struct UrlKey {
    /// The normalised query: parameters sorted, ignored ones removed.
    query: String,
    /// `route:hex(blake2(host, path, query))`: the storage's group for this URL.
    tag: String,
}

impl UrlKey {
    fn new(route: &str, host: &str, path: &str, query: Option<&str>, policy: &Policy) -> Self {
        let mut params: Vec<&str> = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let name = p.split('=').next().unwrap_or("");
                !policy.ignore_query.iter().any(|i| i == name)
            })
            .collect();
        params.sort_unstable();
        let query = params.join("&");
        let mut framed = Vec::new();
        frame(&mut framed, host.as_bytes());
        frame(&mut framed, path.as_bytes());
        frame(&mut framed, query.as_bytes());
        let hash = pingora::cache::key::hash_key(&framed);
        Self {
            query,
            tag: format!("{route}:{}", hex(&hash)),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Storage

/// Where entries live: Redis (shared by replicas) or in-process (the embedded default).
///
/// Both group entries by URL tag (`route:urlhash`), each entry identified inside its group by
/// pingora's combined key hash (primary + variance), and both store the serialized
/// [`CacheMeta`] (internal part and header) beside the whole body.
pub enum Store {
    Redis(RedisStore),
    Memory(Memory),
}

/// What a store holds for one entry.
pub struct Stored {
    pub internal: Vec<u8>,
    pub header: Vec<u8>,
    pub body: Bytes,
}

impl Store {
    fn unavailable(&self) -> bool {
        match self {
            Store::Redis(r) => r.unavailable(),
            Store::Memory(_) => false,
        }
    }

    async fn find(&self, key: &CacheKey) -> Option<Stored> {
        let (tag, entry) = (&key.user_tag, key.combined());
        match self {
            Store::Redis(r) => r.find(tag, &entry, Limits::of(key).wait).await,
            Store::Memory(m) => m.get(tag, &entry),
        }
    }

    async fn release(&self, tag: &str, entry: &str) {
        match self {
            Store::Redis(r) => r.release(tag, entry).await,
            // In-process fills are coordinated by pingora's cache lock alone.
            Store::Memory(_) => {}
        }
    }

    async fn put(&self, tag: &str, entry: &str, stored: Stored, ttl: StdDuration) -> bool {
        match self {
            Store::Redis(r) => r.put(tag, entry, stored, ttl).await,
            Store::Memory(m) => m.put(tag, entry, stored, ttl),
        }
    }

    async fn put_meta(
        &self,
        tag: &str,
        entry: &str,
        internal: Vec<u8>,
        header: Vec<u8>,
        ttl: StdDuration,
    ) -> bool {
        match self {
            Store::Redis(r) => r.put_meta(tag, entry, internal, header, ttl).await,
            Store::Memory(m) => m.put_meta(tag, entry, internal, header, ttl),
        }
    }

    async fn delete(&self, tag: &str, entry: &str) -> bool {
        match self {
            Store::Redis(r) => r.delete(tag, entry).await,
            Store::Memory(m) => m.delete(tag, entry),
        }
    }

    async fn purge_url(&self, tag: &str) -> std::result::Result<u64, PurgeError> {
        match self {
            Store::Redis(r) => r.purge_url(tag).await,
            Store::Memory(m) => Ok(m.purge_tag(tag)),
        }
    }

    /// Everything (`None`) or one route's entries.
    async fn purge_prefix(&self, route: Option<&str>) -> std::result::Result<u64, PurgeError> {
        match self {
            Store::Redis(r) => r.purge_route(route).await,
            Store::Memory(m) => Ok(match route {
                Some(route) => m.purge_prefix(&format!("{route}:")),
                None => m.purge_prefix(""),
            }),
        }
    }
}

/// How long a store keeps an entry: freshness plus the longer stale window (at least 1 s).
fn retention(meta: &CacheMeta) -> StdDuration {
    let fresh = meta
        .fresh_until()
        .duration_since(SystemTime::now())
        .unwrap_or(StdDuration::ZERO);
    let stale = meta
        .stale_while_revalidate_sec()
        .max(meta.stale_if_error_sec());
    (fresh + StdDuration::from_secs(stale.into()))
        .clamp(StdDuration::from_secs(1), HARD_MAX_TTL * 2)
}

#[async_trait]
impl Storage for Store {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(stored) = self.find(key).await else {
            return Ok(None);
        };
        match CacheMeta::deserialize(&stored.internal, &stored.header) {
            Ok(meta) => {
                let end = stored.body.len();
                let hit: HitHandler = Box::new(Hit {
                    body: stored.body,
                    done: false,
                    start: 0,
                    end,
                });
                Ok(Some((meta, hit)))
            }
            Err(e) => {
                // An entry from an incompatible version: a miss, and the fill replaces it.
                log::debug!("unreadable cache entry ({e}), treated as a miss");
                Ok(None)
            }
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let (internal, header) = meta.serialize()?;
        let limit = Limits::of(key).body;
        Ok(Box::new(Fill {
            store: self,
            tag: key.user_tag.clone(),
            entry: key.combined(),
            internal,
            header,
            ttl: retention(meta),
            body: Vec::new(),
            limit,
            oversize: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = target.key();
        Ok(if self.delete(&key.user_tag, &key.combined()).await {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let (internal, header) = meta.serialize()?;
        Ok(self
            .put_meta(
                &key.user_tag,
                &key.combined(),
                internal,
                header,
                retention(meta),
            )
            .await)
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync + 'static) {
        self
    }
}

/// A whole stored body, served in one piece (ranges by seeking).
struct Hit {
    body: Bytes,
    done: bool,
    start: usize,
    end: usize,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start out of range {start} >= {}", self.body.len()),
            );
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |e| e.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn std::any::Any + Send + Sync) {
        self
    }
}

/// A fill: the body is buffered (up to the policy's limit) and written with its meta in one
/// store call when the response ends, so a reader never sees half an entry. A failed write
/// is not an error for the request: it was answered from the upstream already.
struct Fill {
    store: &'static Store,
    tag: String,
    entry: String,
    internal: Vec<u8>,
    header: Vec<u8>,
    ttl: StdDuration,
    body: Vec<u8>,
    limit: usize,
    oversize: bool,
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.oversize {
            return Ok(());
        }
        if self.body.len() + data.len() > self.limit {
            // Passed through to the client, not stored (pingora's own size limit would fail
            // the response mid-body instead).
            self.oversize = true;
            self.body = Vec::new();
            return Ok(());
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        if self.oversize {
            self.store.release(&self.tag, &self.entry).await;
            return Ok(MissFinishType::Created(0));
        }
        let size = self.body.len();
        let stored = Stored {
            internal: self.internal,
            header: self.header,
            body: Bytes::from(self.body),
        };
        self.store
            .put(&self.tag, &self.entry, stored, self.ttl)
            .await;
        Ok(MissFinishType::Created(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(
            "p",
            &PolicyConfig {
                ttl: Duration::secs(60),
                ignore_query: vec!["utm_source".into()],
                ..Default::default()
            },
        )
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).expect("header");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    fn fresh_secs(c: RespCacheable, now: SystemTime) -> Option<u64> {
        match c {
            RespCacheable::Cacheable(m) => Some(
                m.fresh_until()
                    .duration_since(now)
                    .map_or(0, |d| d.as_secs()),
            ),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn fallback_ttl_only_for_heuristic_statuses() {
        let p = policy();
        let now = SystemTime::now();
        assert_eq!(
            fresh_secs(cacheable(&p, &resp(200, &[]), now), now),
            Some(60)
        );
        assert_eq!(
            fresh_secs(cacheable(&p, &resp(404, &[]), now), now),
            Some(60)
        );
        for s in [201, 202, 403, 500, 502, 503] {
            assert_eq!(
                fresh_secs(cacheable(&p, &resp(s, &[]), now), now),
                None,
                "{s}"
            );
        }
        let explicit = [("cache-control", "max-age=10")];
        assert_eq!(
            fresh_secs(cacheable(&p, &resp(500, &explicit), now), now),
            None
        );
        assert_eq!(
            fresh_secs(cacheable(&p, &resp(302, &explicit), now), now),
            Some(10)
        );
    }

    #[test]
    fn origin_directives() {
        let p = policy();
        let now = SystemTime::now();
        let f = |h: &[(&str, &str)]| fresh_secs(cacheable(&p, &resp(200, h), now), now);
        assert_eq!(f(&[("cache-control", "max-age=5")]), Some(5));
        assert_eq!(f(&[("cache-control", "max-age=5, s-maxage=7")]), Some(7));
        assert_eq!(f(&[("cache-control", "no-store")]), None);
        assert_eq!(f(&[("cache-control", "private")]), None);
        assert_eq!(f(&[("set-cookie", "a=b")]), None);
        assert_eq!(f(&[("vary", "*")]), None);
        assert_eq!(f(&[("cache-control", "no-cache")]), Some(0));
        // huge values are capped, never overflow
        let huge = f(&[("cache-control", "max-age=99999999999999999999")]);
        assert!(
            huge.is_some_and(|s| s <= HARD_MAX_TTL.as_secs()),
            "{huge:?}"
        );
        let expires = httpdate::fmt_http_date(now + StdDuration::from_secs(30));
        let e = f(&[("expires", expires.as_str())]).expect("cacheable");
        assert!((28..=30).contains(&e), "{e}");
    }

    #[test]
    fn stale_windows_and_override() {
        let mut c = PolicyConfig {
            ttl: Duration::secs(60),
            stale_if_error: Duration::secs(300),
            stale_while_revalidate: Duration::secs(10),
            ..Default::default()
        };
        let now = SystemTime::now();
        let meta = |p: &Policy, h: &[(&str, &str)]| match cacheable(p, &resp(200, h), now) {
            RespCacheable::Cacheable(m) => m,
            RespCacheable::Uncacheable(r) => panic!("uncacheable: {r:?}"),
        };
        let p = Policy::new("p", &c);
        let m = meta(&p, &[]);
        assert_eq!(
            (m.stale_while_revalidate_sec(), m.stale_if_error_sec()),
            (10, 300)
        );
        let m = meta(&p, &[("cache-control", "max-age=5, must-revalidate")]);
        assert_eq!(m.stale_if_error_sec(), 0, "must-revalidate: no stale");
        let m = meta(&p, &[("cache-control", "max-age=5, stale-if-error=7")]);
        assert_eq!(m.stale_if_error_sec(), 7);

        c.override_origin = true;
        let p = Policy::new("p", &c);
        let m = meta(&p, &[("cache-control", "max-age=5, must-revalidate")]);
        assert_eq!(fresh_secs(RespCacheable::Cacheable(m), now), Some(60));
        let no_store = cacheable(&p, &resp(200, &[("cache-control", "no-store")]), now);
        assert!(
            matches!(no_store, RespCacheable::Uncacheable(_)),
            "no-store still wins"
        );
    }

    #[test]
    fn per_request_headers_are_not_stored() {
        let p = policy();
        let r = resp(
            200,
            &[
                ("x-request-id", "abc"),
                ("x-process-time", "0.1"),
                ("etag", "x"),
            ],
        );
        let RespCacheable::Cacheable(m) = cacheable(&p, &r, SystemTime::now()) else {
            panic!("cacheable");
        };
        assert!(m.headers().get("x-request-id").is_none());
        assert!(m.headers().get("x-process-time").is_none());
        assert!(m.headers().get("etag").is_some());
    }

    #[test]
    fn query_is_normalised() {
        let p = policy();
        let a = UrlKey::new("r", "h", "/x", Some("b=2&a=1&utm_source=x"), &p);
        let b = UrlKey::new("r", "h", "/x", Some("a=1&b=2"), &p);
        let c = UrlKey::new("r", "h", "/x", Some("a=2&b=2"), &p);
        assert_eq!(a.tag, b.tag);
        assert_eq!(a.query, "a=1&b=2");
        assert_ne!(a.tag, c.tag);
    }

    #[test]
    fn accept_encoding_normalised() {
        let mut a = RequestHeader::build("GET", b"/", None).expect("req");
        a.insert_header("accept-encoding", "gzip, br;q=0, deflate")
            .expect("h");
        assert_eq!(accepted_encodings(&a), "deflate,gzip");
    }
}
