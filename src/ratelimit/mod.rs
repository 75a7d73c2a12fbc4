//! Rate limiting: named token-bucket policies, shared by every replica through Redis, with an
//! in-process store as the embedded default and as the fallback when Redis fails.
//!
//! Phase: `request_filter`, after routing and the CORS preflight (preflights are never
//! limited). [`Limiter::check`] charges one token from every policy that applies to the
//! request, in one step: one atomic Lua script on Redis ([`redis`]), or one locked section of
//! the fixed-size in-process table ([`memory`]). The headers (`RateLimit-Policy`, `RateLimit`,
//! legacy `X-RateLimit-*`) are written by [`Decision::write_headers`] from `finish_headers`,
//! i.e. from `response_filter` (which runs after the cache stored a response, so limit
//! headers are never cached) and from `respond` (self-made responses, the 429 included).
//!
//! The bucket: a policy `rate = "C/P"` with `burst = B` (default `C`) holds at most `B`
//! tokens and gains `C` tokens per period `P`. It is stored as a *debt* in integer units where
//! one token costs `P` in microseconds and the refill is `C` units per microsecond, so every
//! step is exact integer arithmetic (no rounding of `P / C`): a request is admitted when
//! `debt + P <= B * P`, and a burst of N simultaneous requests against `B` admits exactly `B`.
//! This is GCRA written as a token bucket: the debt is the GCRA's "theoretical arrival time"
//! minus now, scaled by `C`. Validation keeps `B * P` below 2^52 so Redis's Lua (doubles)
//! stays exact too.
//!
//! A request passes only if every enforcing policy admits it; then each of them is charged,
//! otherwise none is (a rejected request costs nothing). Report-only policies are charged by
//! their own verdict, report in headers and metrics, and never reject.
//!
//! Invariants: a decision never waits longer than `store.timeout` on Redis; when Redis fails
//! the request is decided as `on_store_error` says (local / allow / deny), logged once per
//! outage and counted (`rampart_store_fallback_active{feature="ratelimit"}`, decisions with
//! outcome `fallback`); nothing here panics on request input.

pub mod memory;
pub mod redis;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::HeaderName;
use pingora::http::{RequestHeader, ResponseHeader};
use serde::{Deserialize, Deserializer};

use crate::config::{check_name, Invalid};
use crate::ctx::Ctx;
use crate::metrics::Metrics;
use crate::store::redis::Redis;

/// Largest `burst * period_in_microseconds`: Redis runs Lua on doubles, exact below 2^53.
const MAX_CAPACITY: u64 = 1 << 52;

/// While Redis is down, one request per this interval probes it; the others go straight to
/// the fallback instead of each paying a failed call.
const PROBE_INTERVAL_MS: u64 = 250;

/// `[ratelimit]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// What a request gets when the shared store (Redis) fails.
    pub on_store_error: OnStoreError,
    /// Also send `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    pub legacy_headers: bool,
    /// Buckets per policy in the in-process store (fixed: memory does not grow with clients).
    pub memory_slots: usize,
    /// Named policies; a request must pass every one that applies to its route.
    pub policies: BTreeMap<String, PolicyConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            on_store_error: OnStoreError::Local,
            legacy_headers: true,
            memory_slots: 65536,
            policies: BTreeMap::new(),
        }
    }
}

/// `on_store_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Decide on this replica's in-process buckets until Redis answers again.
    Local,
    /// Let requests through unlimited.
    Allow,
    /// Answer 503.
    Deny,
}

/// `[ratelimit.policies.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `"100/60s"`, `"10/s"`, `"1000/h"`: tokens per period.
    pub rate: Rate,
    /// Bucket size (requests allowed at once); default: the rate's count.
    #[serde(default)]
    pub burst: Option<u64>,
    /// Whose bucket: `"ip"` (default), `"header:X-Api-Key"`, `"route"`.
    #[serde(default)]
    pub key: Key,
    /// Route names it applies to; empty: every route.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Count and report, never reject.
    #[serde(default)]
    pub report_only: bool,
}

/// `count` tokens per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub period: std::time::Duration,
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let expected = || format!("a rate such as \"100/60s\" or \"10/s\", not \"{text}\"");
        let (count, per) = text.split_once('/').ok_or_else(expected)?;
        let count: u64 = count.trim().parse().map_err(|_| expected())?;
        let per = per.trim();
        let period = if per.starts_with(|c: char| c.is_ascii_digit()) {
            humantime::parse_duration(per)
        } else {
            humantime::parse_duration(&format!("1{per}"))
        }
        .map_err(|_| expected())?;
        if count == 0 || count > 1_000_000_000 {
            return Err(format!("a count from 1 to 1000000000, not {count}"));
        }
        if period < std::time::Duration::from_millis(1) || period.as_secs() > 86_400 * 366 {
            return Err("a period from 1ms to a year".into());
        }
        Ok(Self { count, period })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Whose bucket a request is charged to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Key {
    /// The client address (`ctx.client`: the peer, or behind a trusted proxy the right-most
    /// untrusted `X-Forwarded-For` entry).
    #[default]
    Ip,
    /// A request header's value (hashed, never stored in clear); requests without it are
    /// charged by client address instead.
    Header(HeaderName),
    /// One bucket for the whole route, whoever asks.
    Route,
}

impl std::str::FromStr for Key {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "ip" => Ok(Key::Ip),
            "route" => Ok(Key::Route),
            _ => match text.strip_prefix("header:") {
                Some(name) => HeaderName::from_bytes(name.trim().as_bytes())
                    .map(Key::Header)
                    .map_err(|_| format!("\"{name}\" is not a header name")),
                None => Err(format!(
                    "\"ip\", \"route\" or \"header:<Name>\", not \"{text}\""
                )),
            },
        }
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Config {
    pub(crate) fn validate(&self, route_names: &[&str]) -> Result<(), Invalid> {
        if self.memory_slots == 0 || self.memory_slots > 1 << 24 {
            return Err(Invalid::new("memory_slots", "a count from 1 to 16777216"));
        }
        for (name, p) in &self.policies {
            let at = format!("policies.{name}");
            check_name(name).map_err(|m| Invalid::new(at.clone(), m))?;
            if p.burst == Some(0) {
                return Err(Invalid::new(
                    format!("{at}.burst"),
                    "at least 1 (requests allowed at once)",
                ));
            }
            let burst = p.burst.unwrap_or(p.rate.count);
            let capacity = u128::from(burst) * p.rate.period.as_micros();
            if capacity > u128::from(MAX_CAPACITY) {
                return Err(Invalid::new(
                    format!("{at}.burst"),
                    "burst times the period (in microseconds) must stay below 2^52",
                ));
            }
            for (i, route) in p.routes.iter().enumerate() {
                if !route_names.contains(&route.as_str()) {
                    return Err(Invalid::new(
                        format!("{at}.routes[{i}]"),
                        format!(
                            "unknown route \"{route}\"; expected one of: {}",
                            if route_names.is_empty() {
                                "(none defined)".to_string()
                            } else {
                                route_names.join(", ")
                            }
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A policy ready to charge: the bucket in integer units (see the module header).
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    pub key: Key,
    /// Route names; empty: every route.
    pub routes: Vec<String>,
    pub report_only: bool,
    /// Tokens the bucket holds (the `q` of `RateLimit-Policy`).
    pub burst: u64,
    /// Seconds a drained bucket takes to fill (the `w` of `RateLimit-Policy`).
    pub window_secs: u64,
    /// Units one token costs: the period in microseconds.
    pub cost: u64,
    /// Units regained per microsecond: the rate's count.
    pub refill: u64,
    /// `burst * cost`.
    pub capacity: u64,
}

impl Policy {
    pub fn new(name: &str, c: &PolicyConfig) -> Self {
        let cost = u64::try_from(c.rate.period.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let burst = c.burst.unwrap_or(c.rate.count).max(1);
        let refill = c.rate.count.max(1);
        let capacity = burst.saturating_mul(cost);
        Self {
            name: name.to_string(),
            key: c.key.clone(),
            routes: c.routes.clone(),
            report_only: c.report_only,
            burst,
            window_secs: capacity.div_ceil(refill).div_ceil(1_000_000).max(1),
            cost,
            refill,
            capacity,
        }
    }

    fn applies_to(&self, route: &str) -> bool {
        self.routes.is_empty() || self.routes.iter().any(|r| r == route)
    }

    /// Debt after `elapsed_us` of refill.
    pub fn settle(&self, debt: u64, elapsed_us: u64) -> u64 {
        let gain = u128::from(elapsed_us) * u128::from(self.refill);
        u64::try_from(u128::from(debt).saturating_sub(gain)).unwrap_or(0)
    }

    /// Whether one more token fits on top of `debt`.
    pub fn admits(&self, debt: u64) -> bool {
        debt.saturating_add(self.cost) <= self.capacity
    }

    fn verdict(self: &Arc<Self>, outcome: Charged) -> Verdict {
        let debt = outcome.debt;
        let to_secs = |us: u64| us.div_ceil(1_000_000);
        let retry_after_secs = if outcome.admitted {
            0
        } else {
            to_secs(
                debt.saturating_add(self.cost)
                    .saturating_sub(self.capacity)
                    .div_ceil(self.refill),
            )
            .max(1)
        };
        Verdict {
            policy: self.clone(),
            admitted: outcome.admitted,
            remaining: self.capacity.saturating_sub(debt) / self.cost,
            reset_secs: to_secs(debt.div_ceil(self.refill)),
            retry_after_secs,
        }
    }
}

/// One policy's bucket as a store left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charged {
    /// The policy itself had a token for this request.
    pub admitted: bool,
    /// The token was taken (admitted, and no enforcing policy rejected the request).
    pub charged: bool,
    /// The debt after this request.
    pub debt: u64,
}

/// Which of the request's buckets to charge, given each one's settled debt: all enforcing
/// ones or none; report-only ones by their own verdict. The Lua script mirrors this.
pub fn decide(policies: &[&Policy], debts: &[u64]) -> Vec<Charged> {
    let admits: Vec<bool> = policies
        .iter()
        .zip(debts)
        .map(|(p, d)| p.admits(*d))
        .collect();
    let pass = policies
        .iter()
        .zip(&admits)
        .all(|(p, ok)| p.report_only || *ok);
    policies
        .iter()
        .zip(debts)
        .zip(admits)
        .map(|((p, debt), admitted)| {
            let charged = admitted && (pass || p.report_only);
            Charged {
                admitted,
                charged,
                debt: if charged { debt + p.cost } else { *debt },
            }
        })
        .collect()
}

/// One bucket a request is charged to.
pub struct Charge {
    pub policy: usize,
    /// `ip:203.0.113.9`, `hdr:<sha1>`, `route:api`: the bucket's name within its policy.
    pub identity: String,
}

/// One policy's view of a request.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub policy: Arc<Policy>,
    pub admitted: bool,
    /// Tokens left after this request.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// When rejected: seconds until one token is back.
    pub retry_after_secs: u64,
}

/// A self-made answer instead of proxying.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: u16,
    pub detail: String,
    pub retry_after_secs: u64,
}

impl Refusal {
    /// Extra headers for `respond::problem_with`.
    pub fn headers(&self) -> Vec<(HeaderName, String)> {
        vec![(http::header::RETRY_AFTER, self.retry_after_secs.to_string())]
    }
}

/// What the limiter decided for one request.
#[derive(Debug, Clone)]
pub struct Decision {
    /// One per applicable policy (empty when `on_store_error = "allow"` let it through).
    pub verdicts: Vec<Verdict>,
    pub legacy_headers: bool,
    /// `Some`: answer this instead of proxying (429, or 503 for `deny`).
    pub refusal: Option<Refusal>,
}

impl Decision {
    /// One word for the access log: `limited` (429), `denied` (503, store down under `deny`),
    /// `report_only_limited`, or `allowed`.
    pub fn outcome(&self) -> &'static str {
        match &self.refusal {
            Some(r) if r.status == 429 => "limited",
            Some(_) => "denied",
            None if self.verdicts.iter().any(|v| !v.admitted) => "report_only_limited",
            None => "allowed",
        }
    }

    /// `RateLimit-Policy`, `RateLimit` (draft-ietf-httpapi-ratelimit-headers, structured-field
    /// lists, one item per policy) and, if configured, the legacy trio for the tightest policy.
    pub fn write_headers(&self, resp: &mut ResponseHeader) {
        if self.verdicts.is_empty() {
            return;
        }
        let policy: Vec<String> = self
            .verdicts
            .iter()
            .map(|v| {
                format!(
                    "\"{}\";q={};w={}",
                    v.policy.name, v.policy.burst, v.policy.window_secs
                )
            })
            .collect();
        let state: Vec<String> = self
            .verdicts
            .iter()
            .map(|v| format!("\"{}\";r={};t={}", v.policy.name, v.remaining, v.reset_secs))
            .collect();
        // Values are built from validated names and integers: always valid header values.
        let _ = resp.insert_header("ratelimit-policy", policy.join(", "));
        let _ = resp.insert_header("ratelimit", state.join(", "));
        if self.legacy_headers {
            let tightest = self
                .verdicts
                .iter()
                .min_by_key(|v| (v.policy.report_only, v.remaining));
            if let Some(v) = tightest {
                let _ = resp.insert_header("x-ratelimit-limit", v.policy.burst.to_string());
                let _ = resp.insert_header("x-ratelimit-remaining", v.remaining.to_string());
                let _ = resp.insert_header("x-ratelimit-reset", v.reset_secs.to_string());
            }
        }
    }
}

/// The configured policies and their stores.
pub struct Limiter {
    policies: Vec<Arc<Policy>>,
    on_store_error: OnStoreError,
    legacy_headers: bool,
    memory: memory::Store,
    redis: Option<redis::Store>,
    metrics: Arc<Metrics>,
    /// Running on the fallback (logged and gauged once per outage).
    fallback: AtomicBool,
    /// Milliseconds since `started` of the last call to a Redis that was down.
    last_probe_ms: AtomicU64,
    started: Instant,
}

impl Limiter {
    pub fn new(
        config: &Config,
        cluster: bool,
        redis: Option<Arc<Redis>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let policies: Vec<Arc<Policy>> = config
            .policies
            .iter()
            .map(|(name, c)| Arc::new(Policy::new(name, c)))
            .collect();
        if redis.is_some() && !policies.is_empty() {
            metrics
                .store_fallback
                .with_label_values(&["ratelimit"])
                .set(0);
        }
        Self {
            memory: memory::Store::new(policies.len(), config.memory_slots),
            redis: redis.map(|r| redis::Store::new(r, cluster)),
            policies,
            on_store_error: config.on_store_error,
            legacy_headers: config.legacy_headers,
            metrics,
            fallback: AtomicBool::new(false),
            last_probe_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Charge the request to every policy of its route. `None`: no policy applies.
    pub async fn check(&self, req: &RequestHeader, ctx: &Ctx) -> Option<Decision> {
        let route = ctx.route.as_ref()?;
        let charges: Vec<Charge> = self
            .policies
            .iter()
            .enumerate()
            .filter(|(_, p)| p.applies_to(&route.name))
            .map(|(i, p)| Charge {
                policy: i,
                identity: identity(&p.key, req, ctx, &route.name),
            })
            .collect();
        if charges.is_empty() {
            return None;
        }
        let policies: Vec<&Policy> = charges
            .iter()
            .map(|c| self.policies[c.policy].as_ref())
            .collect();

        let mut fallback = false;
        let outcome = match &self.redis {
            None => self.memory.charge(&policies, &charges),
            Some(store) => {
                let shared = if self.should_call_redis() {
                    match store.charge(&policies, &charges).await {
                        Ok(v) => Some(v),
                        Err(e) => {
                            log::debug!("ratelimit: {e}");
                            None
                        }
                    }
                } else {
                    None
                };
                match shared {
                    Some(v) => {
                        self.resumed();
                        v
                    }
                    None => {
                        fallback = true;
                        self.fell_back();
                        match self.on_store_error {
                            OnStoreError::Local => self.memory.charge(&policies, &charges),
                            OnStoreError::Allow | OnStoreError::Deny => {
                                return Some(self.without_store(&charges));
                            }
                        }
                    }
                }
            }
        };

        let verdicts: Vec<Verdict> = charges
            .iter()
            .zip(outcome)
            .map(|(c, o)| self.policies[c.policy].verdict(o))
            .collect();
        let mut refusal: Option<Refusal> = None;
        for v in &verdicts {
            let outcome = match (v.admitted, v.policy.report_only) {
                (true, _) => "allowed",
                (false, true) => "report_only_limited",
                (false, false) => "limited",
            };
            self.count(&v.policy.name, outcome);
            if fallback {
                self.count(&v.policy.name, "fallback");
            }
            if !v.admitted && !v.policy.report_only {
                let r = refusal.get_or_insert_with(|| Refusal {
                    status: 429,
                    detail: format!("rate limit exceeded (policy \"{}\")", v.policy.name),
                    retry_after_secs: 0,
                });
                r.retry_after_secs = r.retry_after_secs.max(v.retry_after_secs);
            }
        }
        Some(Decision {
            verdicts,
            legacy_headers: self.legacy_headers,
            refusal,
        })
    }

    /// `allow` / `deny` while the store is out: no bucket was consulted.
    fn without_store(&self, charges: &[Charge]) -> Decision {
        for c in charges {
            self.count(&self.policies[c.policy].name, "fallback");
        }
        Decision {
            verdicts: Vec::new(),
            legacy_headers: self.legacy_headers,
            refusal: (self.on_store_error == OnStoreError::Deny).then(|| Refusal {
                status: 503,
                detail: "rate limiting is unavailable; try again shortly".into(),
                retry_after_secs: 1,
            }),
        }
    }

    fn count(&self, policy: &str, outcome: &str) {
        self.metrics
            .ratelimit_decisions
            .with_label_values(&[policy, outcome])
            .inc();
    }

    /// Redis is called unless it is known down; then one request per probe interval tries it.
    fn should_call_redis(&self) -> bool {
        let Some(store) = &self.redis else {
            return false;
        };
        if !store.is_down() {
            return true;
        }
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_probe_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= PROBE_INTERVAL_MS
            && self
                .last_probe_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn fell_back(&self) {
        if !self.fallback.swap(true, Ordering::Relaxed) {
            let how = match self.on_store_error {
                OnStoreError::Local => "deciding on this replica's in-process buckets",
                OnStoreError::Allow => "letting requests through unlimited",
                OnStoreError::Deny => "answering 503",
            };
            log::error!(
                "ratelimit: shared store unavailable, {how} (on_store_error) until Redis answers"
            );
            self.metrics
                .store_fallback
                .with_label_values(&["ratelimit"])
                .set(1);
        }
    }

    fn resumed(&self) {
        if self.fallback.swap(false, Ordering::Relaxed) {
            log::warn!("ratelimit: Redis answers again, shared limits resumed");
            self.metrics
                .store_fallback
                .with_label_values(&["ratelimit"])
                .set(0);
        }
    }
}

/// The bucket name of a request within a policy. Never contains `{` or `}` (they delimit the
/// Redis Cluster hash tag).
fn identity(key: &Key, req: &RequestHeader, ctx: &Ctx, route: &str) -> String {
    let by_ip = || match ctx.client.as_ref().and_then(|c| c.ip) {
        Some(ip) => format!("ip:{ip}"),
        None => "ip:unknown".to_string(),
    };
    match key {
        Key::Ip => by_ip(),
        Key::Route => format!("route:{route}"),
        // Hashed: API keys must not sit in Redis in clear, and the length stays fixed.
        Key::Header(name) => match req.headers.get(name) {
            Some(v) => {
                let digest = sha1_smol::Sha1::from(v.as_bytes()).digest().to_string();
                format!("hdr:{}", &digest[..32])
            }
            None => by_ip(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rate: &str, burst: Option<u64>, report_only: bool) -> Policy {
        Policy::new(
            "p",
            &PolicyConfig {
                rate: rate.parse().expect("rate"),
                burst,
                key: Key::Ip,
                routes: Vec::new(),
                report_only,
            },
        )
    }

    #[test]
    fn rates_parse() {
        let r: Rate = "100/60s".parse().expect("rate");
        assert_eq!((r.count, r.period.as_secs()), (100, 60));
        let r: Rate = "10/s".parse().expect("rate");
        assert_eq!((r.count, r.period.as_secs()), (10, 1));
        let r: Rate = "5/m".parse().expect("rate");
        assert_eq!(r.period.as_secs(), 60);
        for bad in ["10", "0/s", "x/s", "10/parsec", "10/0s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_parse() {
        assert_eq!("ip".parse::<Key>(), Ok(Key::Ip));
        assert_eq!("route".parse::<Key>(), Ok(Key::Route));
        assert!(matches!(
            "header:X-Api-Key".parse::<Key>(),
            Ok(Key::Header(h)) if h == "x-api-key"
        ));
        assert!("header:bad name".parse::<Key>().is_err());
        assert!("client".parse::<Key>().is_err());
    }

    #[test]
    fn window_and_quota_match_the_old_stack() {
        let api = policy("10/s", Some(20), false);
        assert_eq!((api.burst, api.window_secs), (20, 2));
        let per_client = policy("100/60s", None, false);
        assert_eq!((per_client.burst, per_client.window_secs), (100, 60));
    }

    /// Exact integer refill: a third of a second per token at 3/s, no drift.
    #[test]
    fn exact_refill() {
        let p = policy("3/s", Some(3), false);
        let mut debt = 0;
        for _ in 0..3 {
            assert!(p.admits(debt));
            debt += p.cost;
        }
        assert!(!p.admits(debt));
        assert!(!p.admits(p.settle(debt, 333_333)));
        assert!(p.admits(p.settle(debt, 333_334)));
        assert_eq!(p.settle(debt, 1_000_000), 0);
    }

    #[test]
    fn all_enforcing_or_none() {
        let a = policy("1/s", Some(1), false);
        let b = policy("5/s", Some(5), false);
        let r = policy("1/s", Some(1), true);
        // `a` is empty: `b` must not be charged; report-only `r` is charged on its own.
        let out = decide(&[&a, &b, &r], &[a.cost, 0, 0]);
        assert!(!out[0].admitted && !out[0].charged);
        assert!(out[1].admitted && !out[1].charged);
        assert_eq!(out[1].debt, 0);
        assert!(out[2].charged);
        // A report-only rejection does not stop the request.
        let out = decide(&[&b, &r], &[0, r.cost]);
        assert!(out[0].charged && !out[1].admitted);
    }

    #[test]
    fn verdict_numbers() {
        let p = Arc::new(policy("10/s", Some(20), false));
        let v = p.verdict(Charged {
            admitted: true,
            charged: true,
            debt: p.cost * 20,
        });
        assert_eq!((v.remaining, v.reset_secs, v.retry_after_secs), (0, 2, 0));
        let v = p.verdict(Charged {
            admitted: false,
            charged: false,
            debt: p.cost * 20,
        });
        assert_eq!((v.remaining, v.retry_after_secs), (0, 1));
    }
}
