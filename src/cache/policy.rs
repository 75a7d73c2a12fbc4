//! Cache policy: `[cache]` and `[cache.policies.NAME]`, and the decision of
//! `response_cache_filter`: may this response be stored, how long is it fresh, and what of
//! its header is kept.
//!
//! Invariants: the fallback `ttl` goes only to statuses a cache may store without explicit
//! freshness (RFC 9110 section 15.1); `Set-Cookie`, `private` and `no-store` are never stored
//! unless the policy opts in; headers that describe one request (request id, timing,
//! rate-limit state) are stripped from the stored copy; no freshness exceeds a year, so no
//! time arithmetic can overflow.

use std::collections::BTreeMap;
use std::time::{Duration as StdDuration, SystemTime};

use http::header::HeaderName;
use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::filters::calculate_expires_header_time;
use pingora::cache::{CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;
use serde::Deserialize;

use super::key::vary_names;
use crate::types::{Duration, HeaderNameText, Invalid, Name};

/// Longest freshness or stale window Rampart accepts from anyone: `max-age=99999999999`
/// becomes a year, so no time arithmetic can overflow.
pub(super) const HARD_MAX_TTL: StdDuration = StdDuration::from_secs(365 * 24 * 3600);

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
    pub policies: BTreeMap<Name, PolicyConfig>,
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
    pub vary: Vec<HeaderNameText>,
    /// Query parameters left out of the key (tracking parameters such as `utm_source`).
    pub ignore_query: Vec<QueryName>,
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
        if self.lock_timeout.0.is_zero() {
            return Err(Invalid::new("lock_timeout", "a duration above zero"));
        }
        Ok(())
    }
}

/// A query parameter name left out of cache keys: no `&` or `=`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct QueryName(String);

impl TryFrom<String> for QueryName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        if name.is_empty() || name.contains(['&', '=']) {
            Err("a query parameter name (no '&' or '=')".into())
        } else {
            Ok(Self(name))
        }
    }
}

/// A policy ready for requests.
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    pub(super) ttl: StdDuration,
    pub(super) max_ttl: StdDuration,
    pub(super) override_origin: bool,
    pub(super) swr: u32,
    pub(super) sie: u32,
    pub(super) max_body_bytes: usize,
    pub(super) vary: Vec<HeaderName>,
    pub(super) ignore_query: Vec<String>,
    pub(super) share_with_credentials: bool,
    pub(super) store_set_cookie: bool,
    pub(super) lock_timeout: StdDuration,
}

impl Policy {
    pub fn new(name: &str, c: &PolicyConfig) -> Self {
        Self {
            name: name.to_string(),
            ttl: c.ttl.0,
            max_ttl: c.max_ttl.map_or(HARD_MAX_TTL, |d| d.0.min(HARD_MAX_TTL)),
            override_origin: c.override_origin,
            swr: secs_u32(c.stale_while_revalidate.0),
            sie: secs_u32(c.stale_if_error.0),
            max_body_bytes: c.max_body_bytes,
            vary: c.vary.iter().map(|h| h.name.clone()).collect(),
            ignore_query: c.ignore_query.iter().map(|q| q.0.clone()).collect(),
            share_with_credentials: c.share_with_credentials,
            store_set_cookie: c.store_set_cookie,
            lock_timeout: c.lock_timeout.0,
        }
    }
}

fn secs_u32(d: StdDuration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// The decision of `response_cache_filter`, as a pure function of policy, response and time.
pub fn cacheable(policy: &Policy, resp: &ResponseHeader, now: SystemTime) -> RespCacheable {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A policy for unit tests: 60 s fallback, `utm_source` left out of keys.
    pub(in crate::cache) fn policy() -> Policy {
        Policy::new(
            "p",
            &PolicyConfig {
                ttl: Duration::secs(60),
                ignore_query: vec![QueryName("utm_source".into())],
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
}
