//! The in-process bucket store: the embedded default, and the `local` fallback while Redis is
//! out.
//!
//! A fixed table of `memory_slots` buckets per policy, allocated once; a client's bucket is
//! `hash(identity) % slots` with a hasher keyed randomly per process. Memory therefore never
//! grows with the number of clients, and nothing is ever evicted: an attacker spraying
//! addresses cannot push a legitimate client's bucket out (which would refill it). Two
//! identities that collide share one bucket, which only makes their limit stricter, and the
//! random key stops an attacker from choosing whom to collide with.
//!
//! Why not `pingora-limits`: its `Rate` is a count-min-sketch estimate
//! over fixed windows. It is bounded, but approximate and window-based: it cannot admit
//! exactly `burst` requests nor refill continuously like the Redis buckets, and the fallback
//! must keep the same semantics as the shared store. The table below is the same idea
//! (bounded, hashed, collisions err on the strict side) with exact token buckets.
//!
//! A reload keeps the table of every unchanged policy ([`MemoryBuckets::carried_over`]).
//!
//! Invariant: one request's buckets are locked together (in policy order, so two requests
//! cannot deadlock) and charged all-or-nothing, exactly like the Redis script.

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::{decide, Charge, Charged, PerPolicy, Policy};

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Units owed (see the module header of `ratelimit`).
    debt: u64,
    /// Microseconds since `MemoryBuckets::epoch` when `debt` was last settled.
    stamp: u64,
}

pub struct MemoryBuckets {
    /// One fixed table per policy, indexed like `Limiter::policies` (shared with the next
    /// generation's store when a reload keeps the policy).
    tables: Vec<Arc<[Mutex<Bucket>]>>,
    hasher: RandomState,
    epoch: Instant,
}

fn table(slots: usize) -> Arc<[Mutex<Bucket>]> {
    (0..slots.max(1))
        .map(|_| Mutex::new(Bucket::default()))
        .collect()
}

impl MemoryBuckets {
    pub fn new(policies: usize, slots: usize) -> Self {
        Self {
            tables: (0..policies).map(|_| table(slots)).collect(),
            hasher: RandomState::new(),
            epoch: Instant::now(),
        }
    }

    /// The store for `policies` after a reload: the table of each policy whose bucket is the
    /// same as in `running` (name, key, cost, refill, capacity, and the slot count) is shared,
    /// the others start full. The hasher and epoch are shared too, so a kept bucket's slot
    /// and time stamps mean what they meant.
    pub fn carried_over(
        &self,
        running: &[Arc<Policy>],
        policies: &[Arc<Policy>],
        slots: usize,
    ) -> Self {
        let same = |a: &Policy, b: &Policy| {
            a.name == b.name
                && a.key == b.key
                && a.cost == b.cost
                && a.refill == b.refill
                && a.capacity == b.capacity
        };
        let tables = policies
            .iter()
            .map(|p| {
                running
                    .iter()
                    .position(|old| same(old, p))
                    .and_then(|i| self.tables.get(i))
                    .filter(|t| t.len() == slots.max(1))
                    .cloned()
                    .unwrap_or_else(|| table(slots))
            })
            .collect();
        Self {
            tables,
            hasher: self.hasher.clone(),
            epoch: self.epoch,
        }
    }

    /// Buckets allocated in total (constant for the life of the store).
    #[cfg(test)]
    pub fn buckets(&self) -> usize {
        self.tables.iter().map(|t| t.len()).sum()
    }

    /// Charge one request to `charges` (policies in `Limiter` order); `policies[i]` is the
    /// policy of `charges[i]`.
    pub fn charge(&self, policies: &[&Policy], charges: &[Charge]) -> PerPolicy<Charged> {
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut guards: PerPolicy<MutexGuard<'_, Bucket>> = PerPolicy::new();
        let mut debts: PerPolicy<u64> = PerPolicy::new();
        for (c, p) in charges.iter().zip(policies) {
            let Some(table) = self.tables.get(c.policy) else {
                continue;
            };
            let slot = (self.hasher.hash_one(&c.identity) % table.len() as u64) as usize;
            // A poisoned bucket is still a valid pair of integers.
            let mut g = table[slot].lock().unwrap_or_else(|p| p.into_inner());
            let elapsed = now.saturating_sub(g.stamp);
            g.debt = p.settle(g.debt, elapsed);
            g.stamp = g.stamp.max(now);
            debts.push(g.debt);
            guards.push(g);
        }
        let outcome = decide(policies, &debts);
        for (g, o) in guards.iter_mut().zip(&outcome) {
            g.debt = o.debt;
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Key, PolicyConfig};
    use super::*;

    fn policy(rate: &str, burst: u64) -> Policy {
        Policy::new(
            "p",
            &PolicyConfig {
                rate: rate.parse().expect("rate"),
                burst: Some(burst),
                key: Key::Ip,
                routes: Vec::new(),
                report_only: false,
                lease: 0,
            },
        )
    }

    fn one(store: &MemoryBuckets, p: &Policy, who: &str) -> bool {
        store.charge(
            &[p],
            &[Charge {
                policy: 0,
                identity: who.into(),
            }],
        )[0]
        .charged
    }

    #[test]
    fn exact_under_threads() {
        for limit in [1u64, 5, 20] {
            let store = std::sync::Arc::new(MemoryBuckets::new(1, 1024));
            let p = std::sync::Arc::new(policy("1/h", limit));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let (store, p) = (store.clone(), p.clone());
                    std::thread::spawn(move || (0..10).filter(|_| one(&store, &p, "ip:a")).count())
                })
                .collect();
            let admitted: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
            assert_eq!(admitted as u64, limit);
        }
    }

    /// 200 000 distinct clients: the table does not grow, and a legitimate client's drained
    /// bucket stays drained (spraying cannot evict and so refill it).
    #[test]
    fn bounded_and_not_resettable() {
        let store = MemoryBuckets::new(1, 4096);
        let p = policy("1/h", 2);
        let before = store.buckets();
        assert!(one(&store, &p, "ip:victim"));
        assert!(one(&store, &p, "ip:victim"));
        for i in 0..200_000u32 {
            one(
                &store,
                &p,
                &format!("ip:10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
            );
        }
        assert_eq!(store.buckets(), before);
        assert!(!one(&store, &p, "ip:victim"));
    }

    /// A reload keeps a drained bucket drained when its policy is unchanged, and starts a
    /// changed policy full.
    #[test]
    fn reload_carries_unchanged_buckets_over() {
        use std::slice::from_ref;
        let store = MemoryBuckets::new(1, 64);
        let p = Arc::new(policy("1/h", 1));
        assert!(one(&store, &p, "ip:a"));
        assert!(!one(&store, &p, "ip:a"));
        let same = Arc::new(policy("1/h", 1));
        let kept = store.carried_over(from_ref(&p), from_ref(&same), 64);
        assert!(!one(&kept, &same, "ip:a"), "still drained after the reload");
        let bigger = Arc::new(policy("1/h", 2));
        let fresh = store.carried_over(from_ref(&p), from_ref(&bigger), 64);
        assert!(one(&fresh, &bigger, "ip:a"), "a changed policy starts full");
        let resized = store.carried_over(from_ref(&p), from_ref(&same), 128);
        assert!(one(&resized, &same, "ip:a"), "a resized table starts full");
    }

    #[test]
    fn collisions_only_make_it_stricter() {
        let store = MemoryBuckets::new(1, 1);
        let p = policy("1/h", 3);
        assert!(one(&store, &p, "ip:a"));
        assert!(one(&store, &p, "ip:b"));
        assert!(one(&store, &p, "ip:c"));
        assert!(!one(&store, &p, "ip:a"));
    }
}
