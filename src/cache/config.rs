//! Cache configuration: `[cache]` (the in-process store's budget) and
//! `[cache.policies.NAME]`, deserialized and checked; `Policy::new` (policy.rs) turns a checked
//! policy into the form requests use.
//!
//! Phases: none (read at start and on reload).
//!
//! Invariant: a policy that validates has a freshness window, stale windows and lock timeout
//! that `Policy` can represent (nothing over `HARD_MAX_TTL`, no zero timeouts).

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use serde::{Deserialize, Serialize};

use crate::types::{Duration, HeaderNameText, Invalid, Name};

/// Longest freshness or stale window Rampart accepts from anyone: `max-age=99999999999`
/// becomes a year, so no time arithmetic can overflow.
pub(super) const HARD_MAX_TTL: StdDuration = StdDuration::from_secs(365 * 24 * 3600);

/// `[cache]`: the in-process store's size and the named policies routes refer to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Budget of the in-process store (used without `store.redis_url`), in bytes of bodies,
    /// headers and keys; least recently used entries go first.
    pub memory_bytes: usize,
    /// With `store.redis_url`: budget of the near tier, fresh entries of the Redis store kept
    /// in process so hot entries cost no round trip (purges reach every replica's within
    /// 100 ms); 0 turns it off.
    pub local_bytes: usize,
    /// `[cache.policies.NAME]`, referred to by `[[routes]] cache = "NAME"`.
    pub policies: BTreeMap<Name, PolicyConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            memory_bytes: 64 * 1024 * 1024,
            local_bytes: 16 * 1024 * 1024,
            policies: BTreeMap::new(),
        }
    }
}

/// `[cache.policies.NAME]`: how one route's responses are cached.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Off switch that keeps the route's reference valid.
    pub enabled: bool,
    /// Freshness when the origin gives none (no `max-age`/`s-maxage`/`Expires`), for
    /// heuristically cacheable statuses that are not errors. Absent: such responses are stored
    /// only with `Last-Modified` (10% of its age, at most a day: RFC 9111 section 4.2.2).
    pub ttl: Option<Duration>,
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
    /// An entry with a validator (`ETag` or `Last-Modified`) stays stored this long past its
    /// freshness, so it is revalidated with a conditional request rather than fetched again. It
    /// is never served stale because of this (`stale_*` decide that).
    pub keep_for_revalidation: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: None,
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
            keep_for_revalidation: Duration::secs(600),
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
        if let Some(ttl) = self.ttl {
            if ttl.0 < StdDuration::from_secs(1) {
                return Err(Invalid::new("ttl", "at least \"1s\""));
            }
            if ttl.0 > HARD_MAX_TTL {
                return Err(Invalid::new("ttl", "at most a year"));
            }
            if self.max_ttl.is_some_and(|max| max.0 < ttl.0) {
                return Err(Invalid::new("max_ttl", "at least as long as ttl"));
            }
        } else if self.override_origin {
            return Err(Invalid::new(
                "override_origin",
                "needs a ttl (the freshness used instead of the origin's)",
            ));
        }
        for (key, d) in [
            ("stale_while_revalidate", self.stale_while_revalidate),
            ("stale_if_error", self.stale_if_error),
            ("keep_for_revalidation", self.keep_for_revalidation),
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String")]
pub struct QueryName(pub(super) String);

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
