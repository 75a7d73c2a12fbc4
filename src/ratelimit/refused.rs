//! Clients known to be over a limit: answered without charging, without a Redis round trip and
//! (in the connection gate) without Pingora, until their bucket can admit again.
//!
//! Phases: `request_filter`, inside [`super::Limiter::check`], which learns every refusal and,
//! on the Redis store, answers from here before asking Redis; and the connection gate, through
//! `Limiter::known_refusal` (`proxy::early`), on either store. When a charge is refused on an
//! enforcing policy, the bucket's debt `D` says when it can next admit: `D + cost - capacity`
//! microseconds-times-refill from then. That instant is measured here from the moment the
//! charge was *sent*, which is no later than the moment the store read its clock, so the local
//! deadline is never after the real one.
//!
//! Invariant (exactness, across replicas on Redis): until the deadline no replica can be
//! admitted on that bucket (debt only falls with time; other replicas and requests only add
//! to it, except a lease's unspent tokens given back, at most `lease` of them: then the
//! deadline can outlast the bucket's refusal by the time it takes to refill them, see
//! `lease`), and a refused request charges nothing on any enforcing policy, so answering it
//! here changes no bucket. A request is answered here only when *every* policy that applies
//! to it is enforcing and known refusing: a report-only policy is charged even when another
//! refuses, so such a request always goes to the store. The table is bounded (`table`:
//! expired entries swept when it is full, at most once per interval), never grows with
//! traffic beyond that, and starts empty on every reload. A store outage empties it, since a
//! Redis that restarts empty forgets the debts the deadlines were computed from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::table::Table;
use super::{Charge, Charged, PerPolicy, Policy};

/// What Redis said about a refused bucket, in this process's clock.
#[derive(Clone, Copy)]
struct Known {
    /// When the script was sent: Redis's `now` is no earlier.
    base: Instant,
    /// The debt Redis read then (after its own settle).
    debt: u64,
    /// From this instant the bucket may admit again: ask Redis.
    until: Instant,
}

/// (policy, client) -> the last refusal the store gave; when the table is full, new refusals
/// simply go to the store.
pub struct Refused {
    known: Mutex<Table<Known>>,
    /// The latest deadline learnt, in microseconds since `epoch` (0: none): past it, nothing
    /// here can answer, which the gate tests without the lock.
    latest: AtomicU64,
    epoch: Instant,
}

impl Default for Refused {
    fn default() -> Self {
        Self {
            known: Mutex::default(),
            latest: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Refused {
    /// The outcome of every charge when each is on an enforcing policy whose bucket is known
    /// refusing now; `None` (ask Redis) otherwise.
    pub fn answer(&self, policies: &[&Policy], charges: &[Charge]) -> Option<PerPolicy<Charged>> {
        // No policy at all is nothing known: not an answer.
        if charges.is_empty() || policies.iter().any(|p| p.report_only) {
            return None;
        }
        let now = Instant::now();
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.is_empty() {
            return None;
        }
        policies
            .iter()
            .zip(charges)
            .map(|(p, c)| {
                let k = known.get(c.policy, &c.identity)?;
                (now < k.until).then(|| Charged {
                    admitted: false,
                    charged: false,
                    // A lower bound of the debt now (other replicas may have added to it).
                    debt: p.settle(k.debt, micros(now.saturating_duration_since(k.base))),
                })
            })
            .collect()
    }

    /// Whether some refusal may still hold now (a test without the lock, before a request's
    /// charges are built): false once every deadline learnt has passed.
    pub fn may_answer(&self) -> bool {
        micros(self.epoch.elapsed()) < self.latest.load(Ordering::Relaxed)
    }

    /// Record what Redis answered for a script sent at `sent`: every enforcing policy that
    /// refused is known refusing until its bucket can admit; one that admitted is forgotten.
    pub fn learn(&self, sent: Instant, policies: &[&Policy], charges: &[Charge], out: &[Charged]) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        for ((p, c), o) in policies.iter().zip(charges).zip(out) {
            if p.report_only {
                continue;
            }
            if o.admitted {
                known.remove(c.policy, &c.identity);
                continue;
            }
            let wait_us = o
                .debt
                .saturating_add(p.cost)
                .saturating_sub(p.capacity)
                .div_ceil(p.refill.max(1));
            let Some(until) = sent.checked_add(Duration::from_micros(wait_us)) else {
                continue;
            };
            let refusal = Known {
                base: sent,
                debt: o.debt,
                until,
            };
            let now = Instant::now();
            let until_us = micros(until.saturating_duration_since(self.epoch));
            self.latest.fetch_max(until_us, Ordering::Relaxed);
            known.insert(c.policy, &c.identity, refusal, now, |k| k.until <= now);
        }
    }

    /// Forget everything (the store failed: its debts may be gone when it returns).
    pub fn clear(&self) {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.latest.store(0, Ordering::Relaxed);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{PolicyConfig, Rate};

    fn policy(report_only: bool) -> Policy {
        let c = PolicyConfig {
            rate: "10/s".parse::<Rate>().expect("rate"),
            burst: Some(2),
            key: Default::default(),
            routes: Vec::new(),
            report_only,
            lease: 0,
        };
        Policy::new("p", &c)
    }

    fn charge(id: &str) -> Charge {
        Charge {
            policy: 0,
            identity: id.into(),
        }
    }

    /// A refusal is answered locally until the bucket can admit, and only then.
    #[test]
    fn refused_until_the_bucket_can_admit() {
        let p = policy(false);
        let refused = Refused::default();
        // Full bucket: debt = capacity; the next token is one cost (100 ms at 10/s) away.
        let out = [Charged {
            admitted: false,
            charged: false,
            debt: p.capacity,
        }];
        let sent = Instant::now();
        refused.learn(sent, &[&p], &[charge("a")], &out);
        let local = refused
            .answer(&[&p], &[charge("a")])
            .expect("known refusing");
        assert!(!local[0].admitted && !local[0].charged);
        assert!(local[0].debt <= p.capacity);
        assert!(
            refused.answer(&[&p], &[charge("b")]).is_none(),
            "another client"
        );
        assert!(
            refused.answer(&[], &[]).is_none(),
            "no policy: nothing known"
        );
        std::thread::sleep(Duration::from_millis(120));
        assert!(
            refused.answer(&[&p], &[charge("a")]).is_none(),
            "past the deadline: ask Redis"
        );
        // An admission forgets the client; an outage forgets everyone.
        refused.learn(Instant::now(), &[&p], &[charge("a")], &out);
        let admitted = [Charged {
            admitted: true,
            charged: true,
            debt: p.cost,
        }];
        refused.learn(Instant::now(), &[&p], &[charge("a")], &admitted);
        assert!(refused.answer(&[&p], &[charge("a")]).is_none());
        refused.learn(Instant::now(), &[&p], &[charge("a")], &out);
        refused.clear();
        assert!(refused.answer(&[&p], &[charge("a")]).is_none());
    }

    /// Report-only policies are charged even when another refuses: never answered here.
    #[test]
    fn report_only_policies_always_go_to_the_store() {
        let p = policy(true);
        let refused = Refused::default();
        let out = [Charged {
            admitted: false,
            charged: false,
            debt: p.capacity,
        }];
        refused.learn(Instant::now(), &[&p], &[charge("a")], &out);
        assert!(refused.answer(&[&p], &[charge("a")]).is_none());
    }
}
