//! Rate limiting: named token-bucket policies, shared by every replica through Redis, with an
//! in-process store as the embedded default and as the fallback when Redis fails.
//!
//! Phase: `request_filter`, after routing and the CORS preflight (preflights are never
//! limited). [`Limiter::check`] charges one token from every policy that applies, in one
//! step: one atomic Lua script on Redis ([`redis`]), or one locked section of the fixed-size
//! in-process table ([`memory`]); the arithmetic is in `bucket`, the headers in `headers`.
//! A client just refused is known refusing until its bucket can admit again (`refused`: why
//! that keeps admissions exact): on Redis it is answered without a round trip, and on either
//! store the connection gate answers it before Pingora parses the request
//! ([`Limiter::known_refusal`], `proxy::early`); a
//! policy with `lease = N` has its tokens taken N at a time and spent here (`lease`: why that
//! never admits more than the bucket allows).
//! A request passes only if every enforcing policy admits it; then each is charged, otherwise
//! none is. Report-only policies are charged by their own verdict and never reject.
//!
//! Invariants: a decision never waits longer than `store.timeout` on Redis; when Redis fails
//! the request is decided as `on_store_error` says (local / allow / deny), logged once per
//! outage and counted (`rampart_store_fallback_active{feature="ratelimit"}`, decisions with
//! outcome `fallback`); nothing here panics on request input.

mod bucket;
mod config;
mod headers;
mod lease;
pub mod memory;
pub mod redis;
mod refused;
mod table;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pingora::http::RequestHeader;

use crate::client::Client;
use crate::metrics::Metrics;
use crate::redis::Redis;

pub use bucket::{decide, Charge, Charged, PerPolicy, Policy, Verdict};
pub use config::{Config, Key, OnStoreError, PolicyConfig, Rate};
pub use headers::{Decision, Refusal};

/// What [`Limiter::check_here`] could decide.
pub enum Here {
    /// The decision (`None`: no policy applies), the request charged.
    Decided(Option<Decision>),
    /// Only Redis can decide; nothing was charged.
    AskStore,
}

/// The configured policies and their stores.
pub struct Limiter {
    policies: Vec<Arc<Policy>>,
    on_store_error: OnStoreError,
    legacy_headers: bool,
    memory: memory::MemoryBuckets,
    redis: Option<redis::RedisBuckets>,
    /// Clients refused, known refusing until their bucket can admit.
    refused: refused::Refused,
    /// Tokens of leased policies taken from Redis and not spent yet (Redis store only).
    leases: lease::Leases,
    metrics: Arc<Metrics>,
    /// Each policy's decision counters, by its index in `policies`.
    counted: Vec<Counted>,
    /// Running on the fallback (logged and gauged once per outage).
    fallback: AtomicBool,
}

impl Limiter {
    /// `running`: the limiter a reload replaces. Its in-process buckets are carried over for
    /// every policy whose bucket is unchanged (same name, rate, burst and key, same
    /// `memory_slots`), so a reload neither refills a drained client nor forgets a debt; the
    /// Redis buckets live in Redis and are kept anyway.
    pub fn new(
        config: &Config,
        cluster: bool,
        redis: Option<Arc<Redis>>,
        metrics: Arc<Metrics>,
        running: Option<&Limiter>,
    ) -> Self {
        let policies: Vec<Arc<Policy>> = config
            .policies
            .iter()
            .map(|(name, c)| Arc::new(Policy::new(name, c)))
            .collect();
        let in_fallback = running.is_some_and(|r| r.fallback.load(Ordering::Relaxed));
        if redis.is_some() && !policies.is_empty() && !in_fallback {
            metrics
                .store_fallback
                .with_label_values(&["ratelimit"])
                .set(0);
        }
        let memory = match running {
            None => memory::MemoryBuckets::new(policies.len(), config.memory_slots),
            Some(r) => r
                .memory
                .carried_over(&r.policies, &policies, config.memory_slots),
        };
        let counted = policies.iter().map(|p| Counted::new(&metrics, p)).collect();
        Self {
            memory,
            counted,
            redis: redis.map(|r| redis::RedisBuckets::new(r, cluster)),
            refused: Default::default(),
            leases: Default::default(),
            policies,
            on_store_error: config.on_store_error,
            legacy_headers: config.legacy_headers,
            metrics,
            fallback: AtomicBool::new(in_fallback),
        }
    }

    /// The charges of the request on `route` from `client`, one per policy of the route: what
    /// [`Self::known_refusal`] and [`Self::check_here`] decide on. They follow from the
    /// request, the route and the client alone, so the gate keeps them with a refusal it may
    /// send again (`proxy::repeat`); they are this limiter's (its policies' indices).
    pub fn charges(
        &self,
        req: &RequestHeader,
        route: &str,
        client: Option<&Client>,
    ) -> PerPolicy<Charge> {
        self.policies
            .iter()
            .enumerate()
            .filter(|(_, p)| p.applies_to(route))
            .map(|(i, p)| Charge {
                policy: i,
                identity: identity(&p.key, req, client, route),
            })
            .collect()
    }

    fn policies_of(&self, charges: &[Charge]) -> PerPolicy<&Policy> {
        charges
            .iter()
            .map(|c| self.policies[c.policy].as_ref())
            .collect()
    }

    /// Whether any client is known refusing now (`refused`): when not, [`Self::known_refusal`]
    /// cannot answer, and a caller need not prepare its arguments.
    pub fn refuses_any(&self) -> bool {
        self.refused.may_answer()
    }

    /// The refusal of a request whose every policy is known refusing its client now, decided
    /// and counted exactly as [`Self::check`] would decide it, without charging, without the
    /// store and without waiting; `None` when that is not known (then `check` decides).
    /// The connection gate asks this before Pingora parses a request (`proxy::early`).
    /// `charges`: [`Self::charges`] of the request.
    pub fn known_refusal(&self, charges: &[Charge]) -> Option<Decision> {
        if self.fallback.load(Ordering::Relaxed) {
            return None;
        }
        let policies = self.policies_of(charges);
        let outcome = self.refused.answer(&policies, charges)?;
        Some(self.decision(charges, outcome, false))
    }

    /// Charge the request on `route` from `client` to every policy of the route. `None`: no
    /// policy applies.
    pub async fn check(
        &self,
        req: &RequestHeader,
        route: &str,
        client: Option<&Client>,
    ) -> Option<Decision> {
        let charges = self.charges(req, route, client);
        if charges.is_empty() {
            return None;
        }
        let policies = self.policies_of(&charges);
        if let Some(outcome) = self.outcome_here(&policies, &charges) {
            return Some(self.decision(&charges, outcome, false));
        }
        // Only the Redis store leaves a request undecided here.
        let store = self.redis.as_ref()?;
        let mut fallback = false;
        let shared = if store.should_try() {
            let sent = std::time::Instant::now();
            let asks = self.leases.asks(&policies, &charges);
            match store.charge(&policies, &charges, &asks).await {
                Ok(granted) => {
                    self.leases.learn(&charges, &asks, &granted);
                    self.count_leases(&policies, &asks, &granted);
                    let v = as_one_token(&policies, granted);
                    self.refused.learn(sent, &policies, &charges, &v);
                    Some(v)
                }
                Err(e) => {
                    self.leases.failed(&charges, &asks);
                    log::debug!("ratelimit: {e}");
                    None
                }
            }
        } else {
            None
        };
        let outcome = match shared {
            Some(v) => {
                self.resumed();
                v
            }
            None => {
                fallback = true;
                if store.is_down() {
                    self.fell_back();
                } else {
                    // One slow answer, Redis still up: this request alone is decided as
                    // configured; no outage is declared or logged, and the local refusals
                    // stay (Redis has not forgotten its debts).
                    log::debug!(
                        "ratelimit: one call past store.timeout; decided as on_store_error says"
                    );
                }
                match self.on_store_error {
                    OnStoreError::Local => self.memory.charge(&policies, &charges),
                    OnStoreError::Allow | OnStoreError::Deny => {
                        return Some(self.without_store(&charges));
                    }
                }
            }
        };
        Some(self.decision(&charges, outcome, fallback))
    }

    /// [`Self::check`] when it decides without the store and without waiting: always on the
    /// memory store; on Redis for a known refusal or a request leased tokens admit.
    /// [`Here::Decided`]: charged and counted exactly as `check` would; [`Here::AskStore`]:
    /// nothing charged, only `check` can decide. The connection gate answers a fresh cache hit
    /// with it (`proxy::early`). `charges`: [`Self::charges`] of the request.
    pub fn check_here(&self, charges: &[Charge]) -> Here {
        if charges.is_empty() {
            return Here::Decided(None);
        }
        let policies = self.policies_of(charges);
        match self.outcome_here(&policies, charges) {
            Some(outcome) => Here::Decided(Some(self.decision(charges, outcome, false))),
            None => Here::AskStore,
        }
    }

    /// The outcome of every charge when it is decided in this process: by the memory store's
    /// buckets, or on Redis (unless fallen back) by a refusal known here or by leased tokens
    /// (`refused`, `lease`: why both are exact). `None`: ask Redis.
    fn outcome_here(&self, policies: &[&Policy], charges: &[Charge]) -> Option<PerPolicy<Charged>> {
        match &self.redis {
            // Refusals are learnt on this store too, so the gate can answer them
            // (`known_refusal`); the buckets are exact, and a refusal charged nothing.
            None => {
                let sent = std::time::Instant::now();
                let out = self.memory.charge(policies, charges);
                self.refused.learn(sent, policies, charges, &out);
                Some(out)
            }
            Some(_) if self.fallback.load(Ordering::Relaxed) => None,
            Some(_) => self
                .refused
                .answer(policies, charges)
                .or_else(|| self.leases.take(policies, charges)),
        }
    }

    /// Every policy's verdict on its outcome, counted; the refusal, if an enforcing one
    /// refused.
    fn decision(
        &self,
        charges: &[Charge],
        outcome: PerPolicy<Charged>,
        fallback: bool,
    ) -> Decision {
        let verdicts: PerPolicy<Verdict> = charges
            .iter()
            .zip(outcome)
            .map(|(c, o)| self.policies[c.policy].verdict(o))
            .collect();
        let mut refusal: Option<Refusal> = None;
        for (c, v) in charges.iter().zip(&verdicts) {
            let counted = &self.counted[c.policy];
            if v.admitted {
                counted.allowed.inc();
            } else {
                counted.refused.inc();
            }
            if fallback {
                self.count_fallback(&v.policy.name);
            }
            if !v.admitted && !v.policy.report_only {
                let r = refusal.get_or_insert_with(|| Refusal {
                    status: 429,
                    detail: v.policy.refusal_detail.clone(),
                    retry_after_secs: 0,
                });
                r.retry_after_secs = r.retry_after_secs.max(v.retry_after_secs);
            }
        }
        Decision {
            verdicts,
            legacy_headers: self.legacy_headers,
            refusal,
        }
    }

    /// Tokens leased beyond each request's own, and tokens given back, by policy.
    fn count_leases(&self, policies: &[&Policy], asks: &[lease::Ask], granted: &[lease::Granted]) {
        for ((p, ask), (_, taken)) in policies.iter().zip(asks).zip(granted) {
            for (event, tokens) in [
                ("leased", taken.saturating_sub(1)),
                ("returned", ask.refund),
            ] {
                if tokens > 0 {
                    self.metrics
                        .ratelimit_lease_tokens
                        .with_label_values(&[&p.name, event])
                        .inc_by(tokens);
                }
            }
        }
    }

    /// `allow` / `deny` while the store is out: no bucket was consulted.
    fn without_store(&self, charges: &[Charge]) -> Decision {
        for c in charges {
            self.count_fallback(&self.policies[c.policy].name);
        }
        Decision {
            verdicts: PerPolicy::new(),
            legacy_headers: self.legacy_headers,
            refusal: (self.on_store_error == OnStoreError::Deny).then(|| Refusal {
                status: 503,
                detail: "rate limiting is unavailable; try again shortly".into(),
                retry_after_secs: 1,
            }),
        }
    }

    /// Looked up when it happens: a series only appears once the limiter has fallen back.
    fn count_fallback(&self, policy: &str) {
        self.metrics
            .ratelimit_decisions
            .with_label_values(&[policy, "fallback"])
            .inc();
    }

    fn fell_back(&self) {
        // A Redis that comes back empty has forgotten the debts the deadlines came from (and
        // the leases: the tokens held here are given up).
        self.refused.clear();
        self.leases.clear();
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

/// One policy's `rampart_ratelimit_decisions_total` series for its two verdicts, resolved
/// once: looking a series up by its labels hashed them on every decision.
struct Counted {
    allowed: prometheus::IntCounter,
    /// `limited`, or `report_only_limited` for a report-only policy.
    refused: prometheus::IntCounter,
}

impl Counted {
    fn new(metrics: &Metrics, policy: &Policy) -> Self {
        let series = |outcome: &str| {
            metrics
                .ratelimit_decisions
                .with_label_values(&[policy.name.as_str(), outcome])
        };
        let refused = if policy.report_only {
            "report_only_limited"
        } else {
            "limited"
        };
        Self {
            allowed: series("allowed"),
            refused: series(refused),
        }
    }
}

/// Redis's outcomes as this request's own: a lease's debt is reported as if only this
/// request's token were taken (the rest are spent here later, `lease::Leases::take`).
fn as_one_token(policies: &[&Policy], granted: Vec<lease::Granted>) -> PerPolicy<Charged> {
    policies
        .iter()
        .zip(granted)
        .map(|(p, (charged, taken))| {
            let held = taken.saturating_sub(1).saturating_mul(p.cost);
            Charged {
                debt: charged.debt.saturating_sub(held),
                ..charged
            }
        })
        .collect()
}

/// The bucket name of a request within a policy. Never contains `{` or `}` (they delimit the
/// Redis Cluster hash tag).
fn identity(key: &Key, req: &RequestHeader, client: Option<&Client>, route: &str) -> String {
    let by_ip = || match client.and_then(|c| c.ip) {
        Some(ip) => {
            let mut key = String::with_capacity(18);
            key.push_str("ip:");
            crate::client::push_ip(&mut key, ip);
            key
        }
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
