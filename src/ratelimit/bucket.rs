//! The token bucket as pure integer arithmetic: what a policy admits, how its debt settles,
//! and what a request's verdict says.
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
//! Invariant: no floating point and no clock here; the stores pass in the elapsed time.

use std::sync::Arc;

use super::config::{Key, PolicyConfig};
use crate::types::Name;

/// A policy ready to charge: the bucket in integer units (see the module header).
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    pub key: Key,
    /// Route names; empty: every route.
    pub routes: Vec<Name>,
    pub report_only: bool,
    /// Tokens a replica takes at once on Redis (0: one per request); see `lease`.
    pub lease: u64,
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
    /// This policy's item of `RateLimit-Policy` (`"name";q=burst;w=window`), made once: it is
    /// the same on every response, and the whole header when the route has one policy.
    pub header_item: http::HeaderValue,
    /// `burst` as the value of `X-RateLimit-Limit`, made once for the same reason.
    pub burst_value: http::HeaderValue,
    /// The problem detail of a refusal by this policy, made once.
    pub refusal_detail: String,
}

impl Policy {
    pub fn new(name: &str, c: &PolicyConfig) -> Self {
        let cost = u64::try_from(c.rate.period.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let burst = c.burst.unwrap_or(c.rate.count).max(1);
        let refill = c.rate.count.max(1);
        let capacity = burst.saturating_mul(cost);
        let window_secs = capacity.div_ceil(refill).div_ceil(1_000_000).max(1);
        Self {
            // A policy name is a config key of visible ASCII: always a valid value.
            header_item: http::HeaderValue::try_from(format!(
                "\"{name}\";q={burst};w={window_secs}"
            ))
            .unwrap_or(http::HeaderValue::from_static("")),
            burst_value: crate::fields::number(burst),
            refusal_detail: format!("rate limit exceeded (policy \"{name}\")"),
            name: name.to_string(),
            key: c.key.clone(),
            routes: c.routes.clone(),
            report_only: c.report_only,
            lease: c.lease,
            burst,
            window_secs,
            cost,
            refill,
            capacity,
        }
    }

    pub(super) fn applies_to(&self, route: &str) -> bool {
        self.routes.is_empty() || self.routes.iter().any(|r| r.as_str() == route)
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

    pub(super) fn verdict(self: &Arc<Self>, outcome: Charged) -> Verdict {
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

/// One item per policy that applies to a request. A route has one or two policies, so these
/// stay on the stack: as `Vec`s they were eight heap allocations per limited request (the
/// charges, their policies, the buckets' guards and debts, the verdicts).
pub type PerPolicy<T> = smallvec::SmallVec<[T; 2]>;

/// Which of the request's buckets to charge, given each one's settled debt: all enforcing
/// ones or none; report-only ones by their own verdict. The Lua script mirrors this.
pub fn decide(policies: &[&Policy], debts: &[u64]) -> PerPolicy<Charged> {
    let admits: PerPolicy<bool> = policies
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
                lease: 0,
            },
        )
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
