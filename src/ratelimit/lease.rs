//! Token leases: on policies with `lease = N`, a replica takes up to N tokens from the shared
//! bucket in one script call and admits from them here, so a high-rate policy does not cost a
//! Redis round trip per request.
//!
//! Phase: `request_filter`, inside [`super::Limiter::check`], on the Redis store only. A request
//! whose every charge is on a leased policy with tokens left here is admitted from them
//! ([`Leases::take`]). Otherwise it goes to Redis ([`Leases::asks`]): on each leased bucket it
//! asks for N tokens instead of one (unless another request of this replica is already asking),
//! and first gives back what an expired lease left unused. The script grants the N only while
//! the bucket keeps at least half its capacity after the grant, and takes one token otherwise:
//! near its limit a bucket is decided by Redis request by request, as without leases.
//!
//! Invariant (never over-admits): a leased token left the shared bucket before it admits
//! anything here, so across all replicas no more requests are admitted than the bucket allows.
//! What a lease changes is when a token counts (at the grant) and who may spend it (this
//! replica, for at most [`LIFETIME`]; then what is left goes back with the next call for that
//! bucket). Tokens of a lease whose bucket this replica never asks for again are not given
//! back: at most N per bucket, refilled like any other debt. Only enforcing policies lease
//! (validated), so a report-only verdict is always Redis's. The table is bounded (`table`); a
//! full one leases nothing more, and a store outage or a reload empties it.
//! A request cancelled while its ask is in flight loses that lease (its tokens stay taken: the
//! safe side, like tokens never given back).

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::table::Table;
use super::{Charge, Charged, PerPolicy, Policy};

/// How long a replica may spend a lease; its unused tokens then go back to the bucket.
pub const LIFETIME: Duration = Duration::from_millis(100);

/// What a request asks of one bucket on Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// Tokens to take if the request is admitted: 1, or a lease.
    pub take: u64,
    /// Unused tokens of an expired lease, given back before the request is decided.
    pub refund: u64,
}

impl Ask {
    pub const ONE: Ask = Ask { take: 1, refund: 0 };
}

/// What Redis did with one bucket: the policy's decision (its debt with every token taken),
/// and the tokens taken (0 when not charged; more than one is a lease).
pub type Granted = (Charged, u64);

/// A lease this replica holds on one bucket.
struct Held {
    /// Tokens still to spend.
    left: u64,
    /// The bucket's debt Redis reported after the grant (the whole lease included).
    debt: u64,
    /// Spend until then; afterwards `left` goes back.
    until: Instant,
    /// A request of this replica asked for a lease then and has not been answered.
    asking: Option<Instant>,
}

impl Held {
    /// Nothing to spend and nobody asking: the entry can go.
    fn stale(&self, now: Instant) -> bool {
        (self.left == 0 || now >= self.until) && self.asking.is_none_or(|t| now >= t + LIFETIME)
    }
}

/// (policy, client) -> the lease held; when the table is full, requests ask one token each.
#[derive(Default)]
pub struct Leases {
    held: Mutex<Table<Held>>,
}

impl Leases {
    fn lock(&self) -> MutexGuard<'_, Table<Held>> {
        // Plain counters: a panic elsewhere cannot leave them inconsistent.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The outcome of every charge when each is on a leased policy with a live lease here: one
    /// token taken from each; `None` (ask Redis) otherwise, with nothing taken.
    pub fn take(&self, policies: &[&Policy], charges: &[Charge]) -> Option<PerPolicy<Charged>> {
        if policies.iter().any(|p| p.lease == 0) {
            return None;
        }
        let now = Instant::now();
        let mut held = self.lock();
        let live = |h: &Held| h.left > 0 && now < h.until;
        let all_live = charges
            .iter()
            .all(|c| held.get(c.policy, &c.identity).is_some_and(live));
        if !all_live {
            return None;
        }
        policies
            .iter()
            .zip(charges)
            .map(|(p, c)| {
                let h = held.get_mut(c.policy, &c.identity)?;
                h.left -= 1;
                Some(Charged {
                    admitted: true,
                    charged: true,
                    // The bucket as if the tokens still held here were not taken yet.
                    debt: h.debt.saturating_sub(h.left.saturating_mul(p.cost)),
                })
            })
            .collect()
    }

    /// What to ask of each bucket on Redis: a lease where the request's every policy has one
    /// (else [`Leases::take`] could never spend it) and no other request of this replica is
    /// asking, and the tokens of an expired lease back.
    pub fn asks(&self, policies: &[&Policy], charges: &[Charge]) -> Vec<Ask> {
        if policies.iter().all(|p| p.lease == 0) {
            return vec![Ask::ONE; charges.len()];
        }
        let leasable = policies.iter().all(|p| p.lease > 0);
        let now = Instant::now();
        let mut held = self.lock();
        policies
            .iter()
            .zip(charges)
            .map(|(p, c)| {
                if p.lease == 0 {
                    return Ask::ONE;
                }
                if let Some(h) = held.get_mut(c.policy, &c.identity) {
                    let refund = if now >= h.until {
                        std::mem::take(&mut h.left)
                    } else {
                        0
                    };
                    let asked = h.asking.is_some_and(|t| now < t + LIFETIME);
                    if !leasable || asked || h.left > 0 {
                        return Ask { take: 1, refund };
                    }
                    h.asking = Some(now);
                    return Ask {
                        take: p.lease,
                        refund,
                    };
                }
                let asking = Held {
                    left: 0,
                    debt: 0,
                    until: now,
                    asking: Some(now),
                };
                if !leasable || !held.insert(c.policy, &c.identity, asking, now, |h| h.stale(now)) {
                    return Ask::ONE;
                }
                Ask {
                    take: p.lease,
                    refund: 0,
                }
            })
            .collect()
    }

    /// Record what Redis granted for `asks`. A request takes one token; the rest of a grant is
    /// a lease to spend here.
    pub fn learn(&self, charges: &[Charge], asks: &[Ask], granted: &[Granted]) {
        if asks.iter().all(|a| a.take <= 1) {
            return;
        }
        let now = Instant::now();
        let mut held = self.lock();
        for ((c, ask), &(o, taken)) in charges.iter().zip(asks).zip(granted) {
            if ask.take <= 1 {
                continue;
            }
            let Some(h) = held.get_mut(c.policy, &c.identity) else {
                continue;
            };
            h.asking = None;
            if taken > 1 {
                h.left += taken - 1;
                h.debt = o.debt;
                h.until = now + LIFETIME;
            }
        }
    }

    /// The call for `asks` failed: no lease came, and the tokens given back may not have
    /// reached Redis (they stay taken: the safe side).
    pub fn failed(&self, charges: &[Charge], asks: &[Ask]) {
        if asks.iter().all(|a| a.take <= 1) {
            return;
        }
        let mut held = self.lock();
        for (c, ask) in charges.iter().zip(asks) {
            if ask.take > 1 {
                if let Some(h) = held.get_mut(c.policy, &c.identity) {
                    h.asking = None;
                }
            }
        }
    }

    /// Forget every lease (the store failed, or the policies were reloaded).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{PolicyConfig, Rate};

    fn policy(lease: u64) -> Policy {
        let c = PolicyConfig {
            rate: "1000/s".parse::<Rate>().expect("rate"),
            burst: None,
            key: Default::default(),
            routes: Vec::new(),
            report_only: false,
            lease,
        };
        Policy::new("p", &c)
    }

    fn charge(policy: usize, id: &str) -> Charge {
        Charge {
            policy,
            identity: id.into(),
        }
    }

    /// What `policy(10)` asks when it leases, with nothing to give back.
    const LEASE_10: Ask = Ask {
        take: 10,
        refund: 0,
    };

    fn granted(debt: u64) -> Charged {
        Charged {
            admitted: true,
            charged: true,
            debt,
        }
    }

    /// One ask for a lease at a time; the lease is spent here, then its leftovers go back.
    #[test]
    fn a_lease_is_asked_once_spent_here_and_its_rest_given_back() {
        let p = policy(10);
        let leases = Leases::default();
        let a = [charge(0, "a")];
        assert!(leases.take(&[&p], &a).is_none(), "nothing held yet");
        let first = leases.asks(&[&p], &a);
        assert_eq!(first, [LEASE_10]);
        // A second request while the first is being answered asks one token.
        assert_eq!(leases.asks(&[&p], &a), [Ask::ONE]);
        leases.learn(&a, &first, &[(granted(10 * p.cost), 10)]);
        for left in (0..9).rev() {
            let local = leases.take(&[&p], &a).expect("from the lease");
            assert!(local[0].admitted && local[0].charged);
            assert_eq!(
                local[0].debt,
                (10 - left) * p.cost,
                "as if taken one by one"
            );
        }
        assert!(leases.take(&[&p], &a).is_none(), "spent");
        // Spent: the next request asks a new lease, with nothing to give back.
        let again = leases.asks(&[&p], &a);
        assert_eq!(again, [LEASE_10]);
        leases.learn(&a, &again, &[(granted(20 * p.cost), 10)]);
        assert!(leases.take(&[&p], &a).is_some());
        std::thread::sleep(LIFETIME + Duration::from_millis(20));
        assert!(leases.take(&[&p], &a).is_none(), "expired");
        assert_eq!(
            leases.asks(&[&p], &a),
            [Ask {
                take: 10,
                refund: 8
            }],
            "the 8 tokens left go back with the next ask"
        );
    }

    /// A grant of one token (the bucket was under half full) or a failed call leaves no
    /// lease; a request with an unleased policy always goes to Redis.
    #[test]
    fn no_lease_without_a_grant() {
        let p = policy(10);
        let plain = policy(0);
        let leases = Leases::default();
        let a = [charge(0, "a")];
        let asks = leases.asks(&[&p], &a);
        leases.learn(&a, &asks, &[(granted(p.cost), 1)]);
        assert!(leases.take(&[&p], &a).is_none());
        let asks = leases.asks(&[&p], &a);
        assert_eq!(asks[0].take, 10, "no one is asking any more");
        leases.failed(&a, &asks);
        let asks = leases.asks(&[&p], &a);
        assert_eq!(asks[0].take, 10, "a failed ask is not waited for");
        leases.learn(&a, &asks, &[(granted(10 * p.cost), 10)]);
        let both = [charge(0, "a"), charge(1, "a")];
        assert!(leases.take(&[&p, &plain], &both).is_none());
        assert_eq!(
            leases.asks(&[&p, &plain], &both),
            [Ask { take: 1, refund: 0 }, Ask::ONE],
            "tokens are still held here: one from Redis"
        );
        assert!(leases.take(&[&p], &a).is_some(), "nothing was taken above");
        // A client no lease was asked for yet, on a route where an unleased policy applies
        // too: a lease could never be spent, so none is asked.
        let other = [charge(0, "b"), charge(1, "b")];
        assert_eq!(leases.asks(&[&p, &plain], &other), [Ask::ONE, Ask::ONE]);
        leases.clear();
        assert!(leases.take(&[&p], &a).is_none());
    }
}
