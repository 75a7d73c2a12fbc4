//! The response cache: a shared HTTP cache (RFC 9111) per route, on pingora-cache.
//!
//! Pingora's `HttpCache` state machine does freshness, `Vary` variants, revalidation, the
//! cache lock and serve-stale; this module decides what may be stored ([`policy`]), under
//! which key ([`key`]), and supplies the storage ([`storage`]: Redis shared by replicas, or a
//! byte-bounded in-process LRU). Phases: the connection gate and `request_filter` (a fresh
//! hit held in process, answered whole), the request and response cache filters, the key and
//! vary callbacks, `cache_miss`, `should_serve_stale`, `upstream_response_filter` (a 304 is
//! kept for the revalidation, unsafe methods invalidate), `response_filter` (`Cache-Status`,
//! `X-Cache`, targeted cache fields removed) and `logging` (a claim its request did not fill is
//! released); the README's phase table maps them to the methods here.
//!
//! Invariants: `Set-Cookie`, `private` and `no-store` responses are never stored, and
//! requests with `Authorization` or `Cookie` never share an entry, unless the route's policy
//! opts in; a store failure never fails a request (it is a miss, counted); the cache keeps
//! the origin's body and compression happens downstream of it, per client; no request waits
//! on a fill or revalidation longer than it takes (waiters are released when it is stored or
//! given up), bounded by `lock_timeout`.

mod config;
mod encoded;
mod key;
mod memory;
mod names;
mod near;
mod policy;
mod redis;
mod storage;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration as StdDuration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::Method;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::{CacheKey, CacheOptionOverrides, CachePhase, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;

use crate::compress::{encoded_header, Coding};
use crate::fields::{Fields, Response};
use crate::metrics::Metrics;
use crate::redis::Redis;
use crate::routing::RouteConfig;
use crate::types::Name;

pub use config::{Config, PolicyConfig};
use key::{host_key, request_host, UrlKey};
pub use key::{request_key, variance};
pub use memory::MemoryStorage;
use names::EntryNames;
pub use policy::cacheable;
pub use policy::Policy;
use policy::TARGETED;
pub use redis::RedisStorage;
use storage::FillTicket;
pub use storage::{CacheStorage, Stored};
use storage::{Decoded, Times};

// ---------------------------------------------------------------------------------------------
// Per-request state

/// What the cache decided for one request (a field of the request context).
#[derive(Default)]
pub struct RequestState {
    /// The route's policy; `None`: the route does not cache, no cache headers are added.
    pub route: Option<(Name, Arc<Policy>)>,
    /// Why the cache was not consulted (`method`, `credentials`).
    pub bypass: Option<&'static str>,
    /// The store is known to be down: the request went upstream without a lookup.
    pub store_down: bool,
    /// This request's part in the Redis fill claims: `logging` releases a claim it made and
    /// did not fill.
    ticket: Option<Arc<FillTicket>>,
    /// The upstream's 304 to a revalidation, merged into the stored header by
    /// `response_cache_filter`.
    not_modified: Option<ResponseHeader>,
    /// What `X-Cache` said (HIT, MISS, ...), for the access log.
    pub x_cache: Option<&'static str>,
    /// The encoded copy this request wants, and the one it is making (`encoded.rs`).
    copy: encoded::Collector,
    /// The key [`Cache::held_hit`] made for a request it left to the full path, so
    /// `cache_key_callback` does not make it again.
    key: Option<CacheKey>,
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

/// A fresh entry answered whole ([`Cache::serve_hit`]).
pub struct FreshHit {
    /// The stored header as a hit sends it; the fields every response gets are the caller's.
    pub header: Response,
    /// The whole body (the copy, when the header says so).
    pub body: Bytes,
}

const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// An entry [`Cache::held_hit`] found, not yet sent or counted.
pub struct HeldHit {
    route: (Name, Arc<Policy>),
    names: Arc<EntryNames>,
    header: Response,
    times: Times,
    stored: Stored,
}

/// Request fields that make a hit more than sending the stored entry whole: pingora-cache's
/// full path handles them (ranges, conditional requests, credentials, a request body).
const NOT_PLAIN: [http::header::HeaderName; 10] = [
    http::header::RANGE,
    http::header::IF_NONE_MATCH,
    http::header::IF_MODIFIED_SINCE,
    http::header::IF_MATCH,
    http::header::IF_UNMODIFIED_SINCE,
    http::header::IF_RANGE,
    http::header::AUTHORIZATION,
    http::header::COOKIE,
    http::header::CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
];

/// The response cache shared by all workers: policies per route, the store, the cache lock.
pub struct Cache {
    store: &'static CacheStorage,
    lock: &'static CacheKeyLockImpl,
    /// The lock's age timeout (the longest `lock_timeout`): a reload keeps the lock if equal.
    lock_age: StdDuration,
    /// route name -> policy, for routes with an enabled policy. Looked up up to three times a
    /// request (the gate's early hit, `request_filter`, the held hit); its keys come from the
    /// config, never from a client: no need for SipHash's resistance to chosen collisions.
    policies: HashMap<Name, Arc<Policy>, foldhash::fast::RandomState>,
    /// (prefix, route name), longest first: the admin purge finds a URL's route like the router.
    prefixes: Vec<(String, Name)>,
    metrics: Arc<Metrics>,
    /// Claim tokens are `{claim_prefix}-{n}`: unique across replicas and requests.
    claim_prefix: String,
    claims: AtomicU64,
    /// The names of the entries fresh hits looked up, per request target.
    names: names::Names,
}

impl Cache {
    /// The cache's route table (which route uses which enabled policy) from `[cache]` and the
    /// routes. `running`: the cache being replaced by a reload, whose store and lock are kept
    /// when they still fit (so a reload keeps every cached entry).
    ///
    /// A store and a lock are leaked (`Box::leak`): pingora's `Storage` and cache-lock APIs take
    /// `&'static` references. One pair per server built, plus one per reload that changes
    /// `[store]`, `memory_bytes` or the longest `lock_timeout` (once in production; once per
    /// test server in the tests). A global `LazyLock` would be simpler but would share one
    /// store between the servers a test process runs, each with its own Redis.
    pub fn new(
        config: &Config,
        routes: &[RouteConfig],
        redis: Option<Arc<Redis>>,
        metrics: Arc<Metrics>,
        running: Option<&Cache>,
    ) -> Arc<Self> {
        let enabled: HashMap<&Name, Arc<Policy>> = config
            .policies
            .iter()
            .filter(|(_, c)| c.enabled)
            .map(|(n, c)| (n, Arc::new(Policy::new(n, c))))
            .collect();
        let mut policies = HashMap::default();
        let mut prefixes = Vec::new();
        for r in routes {
            // A route naming a disabled policy does not cache (the switch exists for that).
            if let Some(p) = r.cache.as_ref().and_then(|n| enabled.get(n)) {
                policies.insert(r.name.clone(), p.clone());
            }
            prefixes.push((r.prefix.to_string(), r.name.clone()));
        }
        prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let kept_store = running
            .map(|c| c.store)
            .filter(|s| s.built_from(redis.as_ref(), config.memory_bytes, config.local_bytes));
        let store: &'static CacheStorage = match (kept_store, redis) {
            (Some(kept), _) => kept,
            (None, Some(r)) => Box::leak(Box::new(CacheStorage::Redis(RedisStorage::new(
                r,
                metrics.clone(),
                config.local_bytes,
            )))),
            (None, None) => Box::leak(Box::new(CacheStorage::Memory(MemoryStorage::new(
                config.memory_bytes,
                metrics.clone(),
            )))),
        };
        let age = policies
            .values()
            .map(|p| p.lock_timeout)
            .max()
            .unwrap_or(StdDuration::from_secs(5));
        let lock: &'static CacheKeyLockImpl = match running.filter(|c| c.lock_age == age) {
            Some(kept) => kept.lock,
            None => Box::leak(Box::new(CacheLock::new(age))),
        };
        Arc::new(Self {
            store,
            lock,
            lock_age: age,
            policies,
            prefixes,
            metrics,
            claim_prefix: uuid::Uuid::new_v4().simple().to_string(),
            claims: AtomicU64::new(0),
            names: names::Names::default(),
        })
    }

    /// `request_cache_filter`: enable the cache for this request, or record why not.
    pub fn request_filter(&self, session: &mut Session, route: &Name, state: &mut RequestState) {
        let Some(policy) = self.policies.get(route) else {
            return;
        };
        state.route = Some((route.clone(), policy.clone()));
        let req = session.req_header();
        if req.method != Method::GET && req.method != Method::HEAD {
            state.bypass = Some("method");
            return;
        }
        let credentials = req.headers.contains_key(http::header::AUTHORIZATION)
            || req.headers.contains_key(http::header::COOKIE);
        if credentials && !policy.share_with_credentials {
            state.bypass = Some("credentials");
            return;
        }
        if self.store.unavailable() {
            state.store_down = true;
            return;
        }
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(policy.lock_timeout);
        session
            .cache
            .enable(self.store, None, None, Some(self.lock), Some(overrides));
    }

    /// `cache_key_callback`: the key, carrying the policy's bounds and (Redis store) this
    /// request's claim ticket to the storage.
    /// `coding`: what compression would encode a full response to this request in; a hit
    /// gets the entry's copy in it when there is one (never for a range request: ranges are
    /// cut from the identity body).
    pub fn key(
        &self,
        session: &Session,
        state: &mut RequestState,
        coding: Option<Coding>,
    ) -> Result<CacheKey> {
        let Some((route, policy)) = state.route.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "cache key without a policy");
        };
        let req = session.req_header();
        let mut key = match state.key.take() {
            Some(key) => key,
            None => request_key(route, req, policy),
        };
        key::with_fill_bounds(&mut key, policy);
        if let (Some(coding), false) = (coding, req.headers.contains_key(http::header::RANGE)) {
            let wanted = Arc::new(encoded::Wanted::new(coding));
            key.extensions.insert(wanted.clone());
            state.copy.wanted = Some(wanted);
        }
        if matches!(self.store, CacheStorage::Redis(_)) {
            let n = self.claims.fetch_add(1, Ordering::Relaxed);
            let ticket = Arc::new(FillTicket::new(
                format!("{}-{n}", self.claim_prefix),
                key.user_tag.clone(),
            ));
            key.extensions.insert(ticket.clone());
            state.ticket = Some(ticket);
        }
        Ok(key)
    }

    /// `cache_miss`: this request fetches the entry (its claim, if it made one, is in its
    /// ticket).
    pub fn cache_miss(&self, session: &mut Session) {
        session.cache.cache_miss();
    }

    /// `logging`: a claim this request made and did not fill (upstream error, uncacheable or
    /// oversized response, a response stored under another variant, or it was answered by
    /// another request's fill or revalidation) is released, so requests waiting on other
    /// replicas move on now rather than at `lock_timeout`.
    pub async fn release_claim(&self, state: &RequestState) {
        let Some(ticket) = state.ticket.as_ref() else {
            return;
        };
        if let Some(entry) = ticket.unfilled_claim() {
            self.store.release(&ticket.tag, &entry, &ticket.token).await;
        }
    }

    /// `upstream_response_filter`: the 304 answering a revalidation is kept whole; pingora
    /// merges only a few of its fields into the stored header, `response_cache_filter` merges
    /// the rest.
    pub fn upstream_response(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        state: &mut RequestState,
    ) {
        if state.route.is_some()
            && resp.status == http::StatusCode::NOT_MODIFIED
            && session.cache.phase() == CachePhase::Stale
        {
            state.not_modified = Some(resp.clone());
        }
    }

    /// `response_cache_filter`: may this response be stored, how long is it fresh, how old is
    /// it. After a 304, `resp` is the stored header the 304 updates.
    pub fn response_cacheable(
        &self,
        resp: &ResponseHeader,
        state: &mut RequestState,
        response_delay: StdDuration,
    ) -> RespCacheable {
        let Some((_, policy)) = state.route.as_ref() else {
            return RespCacheable::Uncacheable(NoCacheReason::Custom("no-policy"));
        };
        let now = SystemTime::now();
        match state.not_modified.take() {
            Some(not_modified) => {
                let merged = merge_not_modified(resp, &not_modified);
                cacheable(policy, &merged, now, response_delay)
            }
            None => cacheable(policy, resp, now, response_delay),
        }
    }

    /// `upstream_response_filter`: a successful unsafe request drops the URL's entries (RFC 9111
    /// section 4.4) before its response goes out, so the client's next GET sees the change.
    pub async fn invalidate_unsafe(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        state: &RequestState,
    ) {
        let Some((route, policy)) = state.route.as_ref() else {
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

    /// `response_filter`: `Cache-Status` (RFC 9211), `X-Cache`, and the lookup metric; the
    /// targeted cache fields (`Rampart-Cache-Control`, `CDN-Cache-Control`) were for this
    /// cache and leave with no response (RFC 9213 section 3 allows removing them).
    pub fn status_headers(
        &self,
        session: &Session,
        resp: &mut impl Fields,
        state: &mut RequestState,
    ) {
        let phase = session.cache.phase();
        let fresh_until = session.cache.maybe_cache_meta().map(|m| m.fresh_until());
        self.write_status(resp, state, |state| outcome(phase, fresh_until, state));
    }

    fn write_status(
        &self,
        resp: &mut impl Fields,
        state: &mut RequestState,
        outcome: impl FnOnce(&RequestState) -> (&'static str, String, &'static str),
    ) {
        let Some((route, _)) = state.route.as_ref() else {
            return;
        };
        for name in &TARGETED {
            resp.remove(name);
        }
        let (x_cache, status, result) = outcome(state);
        self.metrics
            .cache_lookups
            .with_label_values(&[route.as_str(), result])
            .inc();
        resp.set(X_CACHE, HeaderValue::from_static(x_cache));
        // Built from a route name and integers: a valid value.
        if let Ok(status) = HeaderValue::try_from(status) {
            resp.add(CACHE_STATUS, status);
        }
        state.x_cache = Some(x_cache);
    }

    /// Whether `route` has a cache policy (its GETs may be answered from here).
    pub fn caches(&self, route: &Name) -> bool {
        self.policies.contains_key(route)
    }

    /// A fresh hit, found here and sent by [`Cache::serve_hit`]: the connection gate
    /// (`proxy::early`) and `request_filter`'s last step answer a plain GET whose entry this
    /// process holds fresh (the in-process store, or the Redis store's near tier) with the
    /// header a hit through pingora-cache gets from `cache_hit_header` and
    /// [`Cache::status_headers`] (`Age`, `X-Cache: HIT`, `Cache-Status`, a copy's fields).
    /// Pingora's cache state machine (key, lookup, hit handler, range and conditional filters)
    /// was the largest part of a hit's cost in perf; a fresh, whole, unconditional hit needs
    /// none of it. Everything else returns `None` and takes that full path: HEAD, ranges,
    /// conditional requests, credentials, a request body, a store known down, variants
    /// (`Vary`), stale or non-200 entries, and an identity entry this client would get
    /// compressed (`keeps_identity` false: the full path compresses it and keeps the copy for
    /// the next hit).
    ///
    /// The lookup counts nothing: the gate looks first and serves only once the rate limits
    /// admitted the request, as `request_filter` orders them.
    pub fn held_hit(
        &self,
        req: &RequestHeader,
        route: &Name,
        coding: Option<Coding>,
        keeps_identity: impl FnOnce(&Response) -> bool,
        state: &mut RequestState,
    ) -> Option<HeldHit> {
        let policy = self.policies.get(route)?;
        if req.method != Method::GET
            || NOT_PLAIN.iter().any(|name| req.headers.contains_key(name))
            || self.store.unavailable()
        {
            return None;
        }
        let (names, mut cache_key) = match self.names.get(route, req, policy) {
            Some(names) => (names, None),
            None => {
                let key = request_key(route, req, policy);
                let names = Arc::new(EntryNames::of(&key));
                self.names.remember(route, req, policy, names.clone());
                (names, Some(key))
            }
        };
        let Some((header, times, stored)) = self.held_fresh(&names, coding, keeps_identity) else {
            state.key = Some(
                cache_key
                    .take()
                    .unwrap_or_else(|| request_key(route, req, policy)),
            );
            return None;
        };
        Some(HeldHit {
            route: (route.clone(), policy.clone()),
            names,
            header,
            times,
            stored,
        })
    }

    /// A looked-up entry ([`Cache::held_hit`]) sent: counted, with the header a hit through
    /// pingora-cache gets.
    pub fn serve_hit(
        &self,
        held: HeldHit,
        coding: Option<Coding>,
        state: &mut RequestState,
    ) -> FreshHit {
        let HeldHit {
            route,
            names,
            mut header,
            times,
            stored,
        } = held;
        self.store.served_held(&names.tag);
        state.route = Some(route);
        header.set(
            http::header::AGE,
            crate::fields::number(times.age().as_secs()),
        );
        if header.get(&http::header::CONTENT_LENGTH).is_some() {
            // As pingora's range filter marks a whole 200 it could have cut (nginx does too).
            header.set(
                http::header::ACCEPT_RANGES,
                HeaderValue::from_static("bytes"),
            );
        } else {
            // Where the full path would send chunks: the whole body is here, so its length.
            header.set(
                http::header::CONTENT_LENGTH,
                crate::fields::number(stored.body.len() as u64),
            );
        }
        if let (true, Some(coding)) = (stored.encoded, coding) {
            encoded_header(&mut header, coding, stored.body.len());
        }
        self.write_status(&mut header, state, |state| {
            outcome(CachePhase::Hit, Some(times.fresh_until), state)
        });
        FreshHit {
            header,
            body: stored.body,
        }
    }

    /// The entry this process holds for `key` when it can be sent whole as it is: fresh, a 200
    /// without variants, and either the copy in `coding` or an identity body this client gets
    /// as it is. Its header and times are taken out of it.
    fn held_fresh(
        &self,
        names: &EntryNames,
        coding: Option<Coding>,
        keeps_identity: impl FnOnce(&Response) -> bool,
    ) -> Option<(Response, Times, Stored)> {
        let mut stored = self.store.held(&names.tag, &names.entry, coding)?;
        let Decoded { header, times } = *stored.decoded.take()?;
        let sendable = times.fresh_until >= SystemTime::now()
            && header.status == http::StatusCode::OK
            && key::held_vary_names(&header).is_empty()
            && (stored.encoded || keeps_identity(&header));
        sendable.then_some((header, times, stored))
    }

    /// `response_filter`, before compression: a response served from a stored copy gets the
    /// header that describes the copy.
    pub fn serve_copy(&self, session: &Session, resp: &mut impl Fields, state: &RequestState) {
        let from_store = matches!(
            session.cache.phase(),
            CachePhase::Hit
                | CachePhase::Stale
                | CachePhase::StaleUpdating
                | CachePhase::Revalidated
                | CachePhase::RevalidatedNoCache(_)
        );
        if let (true, Some(wanted)) = (from_store, state.copy.wanted.as_ref()) {
            wanted.apply(resp);
        }
    }

    /// `response_filter`, after compression decided: an identity hit encoded in the wanted
    /// coding is collected as the entry's copy.
    pub fn begin_copy(&self, resp: &impl Fields, state: &mut RequestState) {
        if let Some((_, policy)) = state.route.as_ref() {
            let limit = policy.max_body_bytes;
            state.copy.begin(resp, limit);
        }
    }

    /// `response_body_filter`, after compression encoded the chunk.
    pub fn copy_chunk(&self, body: Option<&bytes::Bytes>, end: bool, state: &mut RequestState) {
        state.copy.chunk(body, end);
    }

    /// `logging`: a copy this request made is stored beside its entry.
    pub async fn save_copy(&self, state: &mut RequestState) {
        if let Some((source, coding, body)) = state.copy.take() {
            self.store.put_copy(&source, coding, body).await;
        }
    }

    /// The admin endpoint: how many entries went.
    pub async fn purge(&self, what: Purge) -> std::result::Result<u64, PurgeError> {
        match what {
            Purge::All => self.store.purge_prefix(None).await,
            Purge::Route(route) => {
                if !self.prefixes.iter().any(|(_, r)| r.as_str() == route) {
                    return Err(PurgeError::Bad(format!("no route named \"{route}\"")));
                }
                self.store.purge_prefix(Some(&route)).await
            }
            Purge::Url(url) => {
                let uri: http::Uri = url.parse().map_err(|_| {
                    PurgeError::Bad("url: an absolute URL such as http://host/path?query".into())
                })?;
                let Some(host) = uri.authority().map(|a| host_key(a.as_str().as_bytes())) else {
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

/// Fields of a stored response a 304 does not replace: those describing the stored body's bytes
/// and framing (RFC 9111 section 3.2 lets a cache keep them for the stored response's
/// integrity), and `Vary` (pingora keeps the variant's key as stored).
const KEPT_ON_304: [http::header::HeaderName; 6] = [
    http::header::CONTENT_LENGTH,
    http::header::CONTENT_ENCODING,
    http::header::CONTENT_TYPE,
    http::header::CONTENT_RANGE,
    http::header::TRANSFER_ENCODING,
    http::header::VARY,
];

/// The stored header updated by a 304 (RFC 9111 sections 3.2 and 4.3.4): every field the 304
/// carries replaces the stored field of that name, except [`KEPT_ON_304`]. Pingora's own merge
/// (`revalidate_merge_header`) copies only `Cache-Control`, `Expires`, `ETag`,
/// `CDN-Cache-Control` and `Cache-Tag`; this one also brings `Date`, `Age`, `Last-Modified`,
/// `Rampart-Cache-Control` and the rest. (The 304's hop-by-hop fields were removed already.)
fn merge_not_modified(stored: &ResponseHeader, not_modified: &ResponseHeader) -> ResponseHeader {
    let mut merged = stored.clone();
    for name in not_modified.headers.keys() {
        if KEPT_ON_304.contains(name) {
            continue;
        }
        merged.remove_header(name);
        for value in not_modified.headers.get_all(name) {
            let _ = merged.append_header(name.clone(), value.clone());
        }
    }
    merged
}

/// `should_serve_stale`: during revalidation (the window was checked by pingora) and on
/// upstream errors (connect failures, timeouts, 5xx) within `stale-if-error`.
pub fn should_serve_stale(state: &RequestState, error: Option<&Error>) -> bool {
    if state.route.is_none() {
        return false;
    }
    match error {
        None => true,
        Some(e) => e.esource() == &pingora::ErrorSource::Upstream,
    }
}

/// (`X-Cache`, `Cache-Status` entry, metric result) for a request on a caching route.
fn outcome(
    phase: CachePhase,
    fresh_until: Option<SystemTime>,
    state: &RequestState,
) -> (&'static str, String, &'static str) {
    if let Some(why) = state.bypass {
        return (
            "BYPASS",
            format!("rampart; fwd=bypass; detail={why}"),
            "bypass",
        );
    }
    if state.store_down {
        return (
            "MISS",
            "rampart; fwd=miss; detail=store-unavailable".into(),
            "miss",
        );
    }
    let now = SystemTime::now();
    let remaining = || {
        fresh_until.map_or(0, |f| match f.duration_since(now) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        })
    };
    match phase {
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
            "REVALIDATED",
            "rampart; fwd=stale; fwd-status=304".into(),
            "revalidated",
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
