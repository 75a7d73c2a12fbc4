//! Cache policy: a `[cache.policies.NAME]` ready for requests, and the decision of
//! `response_cache_filter`: may this response be stored, how long is it fresh, how old is it
//! already, and what of its header is kept (RFC 9111 sections 3 and 4.2).
//!
//! Invariants: freshness is read from `Rampart-Cache-Control`, else `CDN-Cache-Control`
//! (RFC 9213), else `Cache-Control` and `Expires` (counted from the origin's `Date`), else the
//! policy's fallback `ttl` (never for error statuses), else the `Last-Modified` heuristic;
//! `Set-Cookie`, `private` and `no-store` are never stored unless the policy opts in; headers
//! that describe one request or one connection are stripped from the stored copy; no freshness
//! exceeds a year and no age 2^31 seconds, so no time arithmetic can overflow.

use std::time::{Duration as StdDuration, SystemTime};

use http::header::{HeaderName, HeaderValue};
use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::{CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;

use super::config::{PolicyConfig, HARD_MAX_TTL};
use super::key::vary_names;
use crate::headers::remove_hop_by_hop;

/// The largest age Rampart represents (RFC 9111 section 1.2.2: a larger `Age` counts as 2^31).
const MAX_AGE: StdDuration = StdDuration::from_secs(1 << 31);

/// Longest heuristic freshness (RFC 9111 section 4.2.2 leaves the bound to the cache; RFC 7234
/// asked for a warning past a day).
const HEURISTIC_MAX: StdDuration = StdDuration::from_secs(24 * 3600);

/// Statuses a cache may store without explicit freshness (RFC 9110 section 15.1), 206 aside:
/// Rampart stores whole bodies only (it asks the origin for the whole resource).
const HEURISTIC: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Targeted cache fields (RFC 9213), in precedence order: the first with a valid, non-empty
/// value replaces `Cache-Control` and `Expires` for Rampart's cache.
pub(super) const TARGETED: [HeaderName; 2] = [
    HeaderName::from_static("rampart-cache-control"),
    HeaderName::from_static("cdn-cache-control"),
];

/// Response headers that describe one request, not the resource: never stored. (`Age` is
/// recomputed on every hit from the stored response's age.)
const PER_REQUEST_HEADERS: [&str; 11] = [
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
    "age",
];

/// A policy ready for requests.
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    pub(super) ttl: Option<StdDuration>,
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
    pub(super) keep_for_revalidation: StdDuration,
}

impl Policy {
    pub fn new(name: &str, c: &PolicyConfig) -> Self {
        Self {
            name: name.to_string(),
            ttl: c.ttl.map(|d| d.0),
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
            keep_for_revalidation: c.keep_for_revalidation.0,
        }
    }
}

fn secs_u32(d: StdDuration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// The decision of `response_cache_filter`, as a pure function of policy, response, the time
/// it arrived and how long after the request it did (`response_delay`, RFC 9111 section 4.2.3).
///
/// Written here rather than with `pingora::cache::filters::resp_cacheable`, which counts
/// `Expires` from Rampart's clock instead of the response's `Date`, ignores `Age`, treats a
/// repeated `Expires` as absent rather than stale, knows no targeted fields and gives any
/// status its defaults; its parts are used where they are right (`CacheControl` parsing,
/// `s-maxage` before `max-age`, the stale-window rules, stripping `private="..."` fields).
pub fn cacheable(
    policy: &Policy,
    resp: &ResponseHeader,
    now: SystemTime,
    response_delay: StdDuration,
) -> RespCacheable {
    use RespCacheable::Uncacheable;
    let status = resp.status.as_u16();
    // Any final, whole response may be stored (RFC 9111 section 3); 206 and 304 are not whole.
    if !(200..600).contains(&status) || status == 206 || status == 304 {
        return Uncacheable(NoCacheReason::Custom("status"));
    }
    let headers = &resp.headers;
    if vary_names(headers).iter().any(|n| n == "*") {
        return Uncacheable(NoCacheReason::Custom("vary-star"));
    }
    if headers.contains_key(http::header::SET_COOKIE) && !policy.store_set_cookie {
        return Uncacheable(NoCacheReason::Custom("set-cookie"));
    }
    let directives = Directives::of(resp);
    if directives.cc.as_ref().is_some_and(|c| c.no_store()) {
        return Uncacheable(NoCacheReason::Custom("no-store"));
    }
    if directives.cc.as_ref().is_some_and(|c| c.private()) {
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

    let date = single_date(headers, http::header::DATE);
    let lifetime = match (policy.override_origin, policy.ttl) {
        (true, Some(ttl)) => ttl,
        _ => match directives.explicit_lifetime(resp, date.unwrap_or(now)) {
            Some(explicit) => explicit,
            None if !HEURISTIC.contains(&status) => {
                return Uncacheable(NoCacheReason::Custom("status"))
            }
            None => match policy.ttl {
                // The operator's default is for successful answers: an error is stored only
                // when the origin says so (or by its Last-Modified below).
                Some(ttl) if status < 400 => ttl,
                _ => match heuristic_lifetime(headers, date.unwrap_or(now)) {
                    Some(h) => h,
                    None => return Uncacheable(NoCacheReason::Custom("no-freshness")),
                },
            },
        },
    }
    .min(policy.max_ttl);

    // The stored response's age when it arrived; the hit's `Age` and its freshness count from
    // there (pingora measures age from the meta's epoch).
    let age = initial_age(headers, response_delay);
    let epoch = now
        .checked_sub(age)
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .max(SystemTime::UNIX_EPOCH);
    let fresh_until = if lifetime > age {
        epoch.checked_add(lifetime).unwrap_or(now)
    } else {
        // Already stale (max-age=0, no-cache, an Age past the lifetime): every use revalidates.
        now.checked_sub(StdDuration::from_secs(1)).unwrap_or(now)
    };

    let (mut swr, mut sie) = (policy.swr, policy.sie);
    if !policy.override_origin {
        if let Some(c) = &directives.cc {
            // must-revalidate, proxy-revalidate and s-maxage close the windows (pingora)
            if let Some(d) = c.serve_stale_while_revalidate_duration() {
                swr = secs_u32(d.min(HARD_MAX_TTL));
            }
            if let Some(d) = c.serve_stale_if_error_duration() {
                sie = secs_u32(d.min(HARD_MAX_TTL));
            }
            if c.no_cache() {
                // "MUST NOT be used ... without successful validation": no stale either
                // (RFC 9111 section 4.2.4); pingora's windows do not look at no-cache.
                (swr, sie) = (0, 0);
            }
        }
    }

    let mut stored = resp.clone();
    storable_header(&mut stored);
    if let Some(c) = &directives.cc {
        c.strip_private_headers(&mut stored);
    }
    let mut meta = CacheMeta::new(fresh_until, now, swr, sie, stored);
    meta.set_epoch_override(epoch);
    RespCacheable::Cacheable(meta)
}

/// What of a response header is stored: neither the fields that describe one request or one
/// connection nor the cookie.
fn storable_header(resp: &mut ResponseHeader) {
    for name in PER_REQUEST_HEADERS {
        resp.remove_header(name);
    }
    resp.remove_header(&http::header::SET_COOKIE);
    remove_hop_by_hop(resp);
}

/// The cache directives that apply to Rampart: the first targeted field with a valid,
/// non-empty value (RFC 9213 section 2.2), else `Cache-Control`.
struct Directives {
    cc: Option<CacheControl>,
    /// `cc` came from a targeted field: `Expires` is ignored too.
    targeted: bool,
}

impl Directives {
    fn of(resp: &ResponseHeader) -> Self {
        for name in &TARGETED {
            if valid_targeted_field(&resp.headers, name.as_str()) {
                return Self {
                    cc: CacheControl::from_resp_headers_named(name.as_str(), resp),
                    targeted: true,
                };
            }
        }
        Self {
            cc: CacheControl::from_resp_headers(resp),
            targeted: false,
        }
    }

    /// The origin's freshness lifetime (RFC 9111 section 4.2.1): `no-cache` is zero, then
    /// `s-maxage`, `max-age`, then `Expires` counted from `date` (the response's `Date`, so
    /// the origin's clock is compared with the origin's clock). `None`: the origin gave none.
    fn explicit_lifetime(&self, resp: &ResponseHeader, date: SystemTime) -> Option<StdDuration> {
        if let Some(c) = &self.cc {
            if c.no_cache() {
                return Some(StdDuration::ZERO);
            }
            // An invalid value (`max-age=soon`) is stale (section 4.2.1 encourages it);
            // pingora's `fresh_duration` would fall through to `Expires` instead.
            for value in [c.s_maxage(), c.max_age()] {
                match value {
                    Ok(Some(secs)) => return Some(StdDuration::from_secs(secs.into())),
                    Ok(None) => {}
                    Err(_) => return Some(StdDuration::ZERO),
                }
            }
        }
        if self.targeted {
            return None;
        }
        let mut lines = resp.headers.get_all(http::header::EXPIRES).iter();
        let first = lines.next()?;
        // Section 5.3: an invalid date ("0" included), or more than one, is in the past.
        let expires = match (lines.next(), parse_date(first)) {
            (None, Some(at)) => at,
            _ => return Some(StdDuration::ZERO),
        };
        Some(expires.duration_since(date).unwrap_or(StdDuration::ZERO))
    }
}

/// A targeted field is used only when present, non-empty and a valid structured-field
/// Dictionary (RFC 9213 section 2.1); otherwise it is ignored.
fn valid_targeted_field(headers: &http::HeaderMap, name: &str) -> bool {
    let lines: Vec<&[u8]> = headers
        .get_all(name)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if lines.is_empty() {
        return false;
    }
    let joined = lines.join(&b", "[..]);
    sfv::Parser::parse_dictionary(&joined).is_ok_and(|d| !d.is_empty())
}

/// One valid HTTP-date in a field that must appear once; `None` otherwise.
fn single_date(headers: &http::HeaderMap, name: HeaderName) -> Option<SystemTime> {
    let mut lines = headers.get_all(name).iter();
    let first = lines.next()?;
    lines.next().is_none().then(|| parse_date(first)).flatten()
}

fn parse_date(value: &HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?.trim()).ok()
}

/// RFC 9111 section 4.2.2: without explicit freshness, a fraction (10%) of the time since
/// `Last-Modified`, at most a day; `None` without a usable `Last-Modified` or under a second.
fn heuristic_lifetime(headers: &http::HeaderMap, date: SystemTime) -> Option<StdDuration> {
    let modified = single_date(headers, http::header::LAST_MODIFIED)?;
    let lifetime = (date.duration_since(modified).ok()? / 10).min(HEURISTIC_MAX);
    (lifetime >= StdDuration::from_secs(1)).then_some(lifetime)
}

/// The response's age when it arrived (RFC 9111 section 4.2.3): the upstream's `Age` plus the
/// time the request and response took (`response_delay`), at most 2^31 seconds.
///
/// `apparent_age` (our clock minus the origin's `Date`) is left out: it mixes two clocks, and
/// an origin whose clock is behind would have every response arrive stale, while freshness is
/// counted on the origin's clock (`Expires - Date`) anyway.
fn initial_age(headers: &http::HeaderMap, response_delay: StdDuration) -> StdDuration {
    let age_value = headers
        .get(http::header::AGE)
        .and_then(|v| age_seconds(v.as_bytes()))
        .map_or(StdDuration::ZERO, StdDuration::from_secs);
    age_value.saturating_add(response_delay).min(MAX_AGE)
}

/// An `Age` value (RFC 9111 section 5.1): the first member of a list, a non-negative integer;
/// a larger one than representable is 2^31; anything else is ignored (`None`).
fn age_seconds(value: &[u8]) -> Option<u64> {
    let first = value.split(|b| *b == b',').next()?.trim_ascii();
    if first.is_empty() || !first.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        std::str::from_utf8(first)
            .ok()?
            .parse::<u64>()
            .map_or(MAX_AGE.as_secs(), |s| s.min(MAX_AGE.as_secs())),
    )
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::config::QueryName;
    use super::*;
    use crate::types::Duration;

    /// A policy for unit tests: 60 s fallback, `utm_source` left out of keys.
    pub(in crate::cache) fn policy() -> Policy {
        Policy::new(
            "p",
            &PolicyConfig {
                ttl: Some(Duration::secs(60)),
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

    /// A response that took no time to arrive.
    fn cacheable0(p: &Policy, r: &ResponseHeader, now: SystemTime) -> RespCacheable {
        cacheable(p, r, now, StdDuration::ZERO)
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

    /// The fallback `ttl` goes to heuristically cacheable statuses that are not errors; any
    /// final status is stored with explicit freshness (RFC 9111 section 3); 206 and 304 never.
    #[test]
    fn fallback_ttl_for_successes_explicit_freshness_for_any_status() {
        let p = policy();
        let now = SystemTime::now();
        for s in [200, 203, 204, 300, 301, 308] {
            assert_eq!(
                fresh_secs(cacheable0(&p, &resp(s, &[]), now), now),
                Some(60),
                "{s}"
            );
        }
        for s in [201, 202, 206, 302, 403, 404, 410, 500, 501, 502, 503] {
            assert_eq!(
                fresh_secs(cacheable0(&p, &resp(s, &[]), now), now),
                None,
                "{s}: no fallback"
            );
        }
        let explicit = [("cache-control", "max-age=10")];
        for s in [201, 302, 307, 403, 404, 500, 503] {
            assert_eq!(
                fresh_secs(cacheable0(&p, &resp(s, &explicit), now), now),
                Some(10),
                "{s} with max-age"
            );
        }
        for s in [206, 304, 101] {
            assert_eq!(
                fresh_secs(cacheable0(&p, &resp(s, &explicit), now), now),
                None,
                "{s} is never stored"
            );
        }
    }

    /// Without `ttl`, only the origin decides: explicit freshness, else 10% of the time since
    /// `Last-Modified` (at most a day), else not stored.
    #[test]
    fn without_a_ttl_the_origin_alone_decides() {
        let p = Policy::new("p", &PolicyConfig::default());
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let f = |s: u16, h: &[(&str, &str)]| fresh_secs(cacheable0(&p, &resp(s, h), now), now);
        assert_eq!(f(200, &[]), None, "no freshness information");
        assert_eq!(f(200, &[("cache-control", "max-age=30")]), Some(30));
        let ten_days_ago = httpdate::fmt_http_date(now - StdDuration::from_secs(10 * 24 * 3600));
        let hour_ago = httpdate::fmt_http_date(now - StdDuration::from_secs(3600));
        let lm = |v: &str| f(200, &[("date", date.as_str()), ("last-modified", v)]);
        let h = lm(&hour_ago).expect("heuristic");
        assert!((359..=360).contains(&h), "10% of an hour: {h}");
        assert_eq!(lm(&ten_days_ago), Some(24 * 3600), "capped at a day");
        assert_eq!(lm(&date), None, "modified just now: nothing to go on");
        let not_found = f(
            404,
            &[
                ("date", date.as_str()),
                ("last-modified", hour_ago.as_str()),
            ],
        );
        assert!(
            not_found.is_some_and(|s| (359..=360).contains(&s)),
            "heuristic statuses include 404: {not_found:?}"
        );
        assert_eq!(
            f(
                403,
                &[
                    ("date", date.as_str()),
                    ("last-modified", hour_ago.as_str())
                ]
            ),
            None,
            "403 is not heuristically cacheable"
        );
        assert_eq!(
            f(200, &[("last-modified", "yesterday")]),
            None,
            "invalid Last-Modified"
        );
    }

    #[test]
    fn origin_directives() {
        let p = policy();
        let now = SystemTime::now();
        let f = |h: &[(&str, &str)]| fresh_secs(cacheable0(&p, &resp(200, h), now), now);
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
        // Invalid values are stale, not absent (RFC 9111 sections 4.2.1, 5.3).
        assert_eq!(f(&[("cache-control", "max-age=soon")]), Some(0));
        assert_eq!(f(&[("expires", "0")]), Some(0));
        assert_eq!(f(&[("expires", "")]), Some(0));
        assert_eq!(
            f(&[("expires", expires.as_str()), ("expires", expires.as_str())]),
            Some(0),
            "repeated Expires"
        );
        // max-age and s-maxage win over Expires.
        assert_eq!(
            f(&[
                ("expires", expires.as_str()),
                ("cache-control", "max-age=5")
            ]),
            Some(5)
        );
    }

    /// `Expires` counts from the response's `Date`: an origin whose clock is an hour behind
    /// still gets the minute it asked for.
    #[test]
    fn expires_counts_from_the_origins_date() {
        let p = policy();
        let now = SystemTime::now();
        let skewed = now - StdDuration::from_secs(3600);
        let date = httpdate::fmt_http_date(skewed);
        let expires = httpdate::fmt_http_date(skewed + StdDuration::from_secs(60));
        let r = resp(
            200,
            &[("date", date.as_str()), ("expires", expires.as_str())],
        );
        let fresh = fresh_secs(cacheable0(&p, &r, now), now).expect("cacheable");
        assert!((59..=60).contains(&fresh), "{fresh}");
        let ahead = now + StdDuration::from_secs(3600);
        let r = resp(
            200,
            &[
                ("date", httpdate::fmt_http_date(ahead).as_str()),
                (
                    "expires",
                    httpdate::fmt_http_date(ahead - StdDuration::from_secs(1)).as_str(),
                ),
            ],
        );
        assert_eq!(
            fresh_secs(cacheable0(&p, &r, now), now),
            Some(0),
            "Expires before Date"
        );
    }

    /// The upstream's `Age` and the response delay count toward the stored response's age
    /// (RFC 9111 section 4.2.3); hits report the full age.
    #[test]
    fn age_counts_toward_freshness() {
        let p = policy();
        let now = SystemTime::now();
        let meta = |h: &[(&str, &str)], delay: u64| match cacheable(
            &p,
            &resp(200, h),
            now,
            StdDuration::from_secs(delay),
        ) {
            RespCacheable::Cacheable(m) => m,
            RespCacheable::Uncacheable(r) => panic!("uncacheable: {r:?}"),
        };
        let m = meta(&[("cache-control", "max-age=100"), ("age", "30")], 2);
        assert_eq!(
            m.fresh_until()
                .duration_since(now)
                .map(|d| d.as_secs())
                .ok(),
            Some(68)
        );
        assert_eq!(
            m.age().as_secs(),
            32,
            "Age on a hit: upstream age + delay + resident"
        );
        assert!(
            m.headers().get("age").is_none(),
            "Age is recomputed, never stored"
        );
        let old = meta(&[("cache-control", "max-age=100"), ("age", "100")], 0);
        assert!(!old.is_fresh(now), "older than its lifetime: stale");
        for bad in ["-1", "x", "", "1.5"] {
            let m = meta(&[("cache-control", "max-age=100"), ("age", bad)], 0);
            assert_eq!(m.age().as_secs(), 0, "invalid Age {bad:?} is ignored");
        }
        assert_eq!(
            meta(&[("age", "7, 9")], 0).age().as_secs(),
            7,
            "first member"
        );
        let huge = meta(
            &[
                ("cache-control", "max-age=100"),
                ("age", "99999999999999999999999"),
            ],
            0,
        );
        assert!(!huge.is_fresh(now));
        assert!(huge.age() <= MAX_AGE + StdDuration::from_secs(1), "capped");
        assert!(huge.serialize().is_ok(), "a capped age still serializes");
        assert_eq!(age_seconds(b"99999999999999999999999"), Some(1 << 31));
    }

    /// `Rampart-Cache-Control`, then `CDN-Cache-Control`, replace `Cache-Control` and `Expires`
    /// when valid and non-empty (RFC 9213); otherwise they are ignored.
    #[test]
    fn targeted_fields_take_precedence() {
        let p = policy();
        let now = SystemTime::now();
        let f = |h: &[(&str, &str)]| fresh_secs(cacheable0(&p, &resp(200, h), now), now);
        let past = httpdate::fmt_http_date(now - StdDuration::from_secs(60));
        assert_eq!(
            f(&[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=300")
            ]),
            Some(300),
            "edge caching despite no-store for browsers"
        );
        assert_eq!(
            f(&[
                ("cache-control", "max-age=0"),
                ("expires", past.as_str()),
                ("cdn-cache-control", "max-age=300")
            ]),
            Some(300),
            "Expires ignored under a targeted field"
        );
        assert_eq!(
            f(&[
                ("cdn-cache-control", "max-age=300"),
                ("rampart-cache-control", "max-age=20")
            ]),
            Some(20),
            "Rampart's own field first"
        );
        assert_eq!(
            f(&[
                ("cache-control", "max-age=5"),
                ("cdn-cache-control", "no-store")
            ]),
            None
        );
        assert_eq!(
            f(&[
                ("cache-control", "max-age=5"),
                ("cdn-cache-control", "private")
            ]),
            None
        );
        assert_eq!(
            f(&[
                ("cache-control", "max-age=5"),
                ("cdn-cache-control", "max-age=\"\"\"")
            ]),
            Some(5),
            "invalid: ignored"
        );
        assert_eq!(
            f(&[("cache-control", "max-age=5"), ("cdn-cache-control", "")]),
            Some(5),
            "empty: ignored"
        );
        assert_eq!(
            f(&[
                ("cache-control", "max-age=5"),
                ("cdn-cache-control", "none")
            ]),
            Some(60),
            "a targeted field without freshness: the fallback, not Cache-Control"
        );
    }

    /// no-cache: stored, always stale, no stale serving whatever the policy's windows.
    #[test]
    fn no_cache_and_must_revalidate_force_revalidation() {
        let c = PolicyConfig {
            ttl: Some(Duration::secs(60)),
            stale_while_revalidate: Duration::secs(10),
            stale_if_error: Duration::secs(10),
            ..Default::default()
        };
        let p = Policy::new("p", &c);
        let now = SystemTime::now();
        for cc in [
            "no-cache",
            "max-age=5, must-revalidate",
            "max-age=5, proxy-revalidate",
            "s-maxage=5",
        ] {
            let RespCacheable::Cacheable(m) = cacheable0(
                &p,
                &resp(200, &[("cache-control", cc), ("etag", "\"a\"")]),
                now,
            ) else {
                panic!("{cc}: storable");
            };
            assert_eq!(
                (m.stale_while_revalidate_sec(), m.stale_if_error_sec()),
                (0, 0),
                "{cc}"
            );
            if cc == "no-cache" {
                assert!(!m.is_fresh(now));
            }
        }
    }

    #[test]
    fn stale_windows_and_override() {
        let mut c = PolicyConfig {
            ttl: Some(Duration::secs(60)),
            stale_if_error: Duration::secs(300),
            stale_while_revalidate: Duration::secs(10),
            ..Default::default()
        };
        let now = SystemTime::now();
        let meta = |p: &Policy, h: &[(&str, &str)]| match cacheable0(p, &resp(200, h), now) {
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
        let no_store = cacheable0(&p, &resp(200, &[("cache-control", "no-store")]), now);
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
                ("connection", "x-foo"),
                ("x-foo", "1"),
                ("keep-alive", "timeout=5"),
            ],
        );
        let RespCacheable::Cacheable(m) = cacheable0(&p, &r, SystemTime::now()) else {
            panic!("cacheable");
        };
        assert!(m.headers().get("x-request-id").is_none());
        assert!(m.headers().get("x-process-time").is_none());
        assert!(m.headers().get("etag").is_some());
        for hop in ["connection", "x-foo", "keep-alive"] {
            assert!(m.headers().get(hop).is_none(), "{hop} is hop-by-hop");
        }
    }
}
