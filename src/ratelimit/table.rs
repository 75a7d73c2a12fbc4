//! A bounded table of per-bucket entries (policy index, client identity), kept by `refused` and
//! `lease` on the Redis store.
//!
//! One map of identities per policy, indexed by the policy's position in the configuration (a
//! handful: no hashing for that half of the key), so a lookup borrows the identity instead of
//! building a key. At most
//! [`CAPACITY`] entries: when full, the stale ones (as the caller judges them) are swept before
//! an insert, but at most once per [`SWEEP_EVERY`]; otherwise the insert is refused and the
//! caller goes to Redis as if the table did not exist. So a flood of new clients costs one
//! `O(CAPACITY)` pass per interval at worst, never one per request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most this many entries.
pub const CAPACITY: usize = 16_384;

/// At most one sweep of a full table per this long.
pub const SWEEP_EVERY: Duration = Duration::from_millis(100);

pub struct Table<V> {
    /// By policy index; grown to the highest index inserted.
    map: Vec<HashMap<String, V>>,
    len: usize,
    last_sweep: Option<Instant>,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Self {
            map: Vec::new(),
            len: 0,
            last_sweep: None,
        }
    }
}

impl<V> Table<V> {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, policy: usize, identity: &str) -> Option<&V> {
        self.map.get(policy)?.get(identity)
    }

    pub fn get_mut(&mut self, policy: usize, identity: &str) -> Option<&mut V> {
        self.map.get_mut(policy)?.get_mut(identity)
    }

    pub fn remove(&mut self, policy: usize, identity: &str) {
        let Some(clients) = self.map.get_mut(policy) else {
            return;
        };
        if clients.remove(identity).is_some() {
            self.len -= 1;
        }
    }

    /// Insert or replace; when the table is full, drop what `stale` says is stale first (at
    /// most one sweep per [`SWEEP_EVERY`]). `false`: no room, nothing inserted.
    pub fn insert(
        &mut self,
        policy: usize,
        identity: &str,
        value: V,
        now: Instant,
        stale: impl Fn(&V) -> bool,
    ) -> bool {
        if let Some(slot) = self.get_mut(policy, identity) {
            *slot = value;
            return true;
        }
        if self.len >= CAPACITY {
            if self.last_sweep.is_some_and(|t| now < t + SWEEP_EVERY) {
                return false;
            }
            self.last_sweep = Some(now);
            for clients in &mut self.map {
                clients.retain(|_, v| !stale(v));
            }
            self.len = self.map.iter().map(HashMap::len).sum();
            if self.len >= CAPACITY {
                return false;
            }
        }
        if self.map.len() <= policy {
            self.map.resize_with(policy + 1, HashMap::new);
        }
        let Some(clients) = self.map.get_mut(policy) else {
            return false;
        };
        clients.insert(identity.to_string(), value);
        self.len += 1;
        true
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bounded; a full table sweeps the stale entries once per interval, and refuses inserts
    /// in between instead of sweeping again.
    #[test]
    fn full_tables_sweep_at_most_once_per_interval() {
        let mut t: Table<bool> = Table::default();
        let now = Instant::now();
        // `true`: stale. Half the entries are.
        for i in 0..CAPACITY {
            assert!(t.insert(i % 3, &format!("c{i}"), i % 2 == 0, now, |s| *s));
        }
        assert!(t.get(0, "c0").is_some());
        assert!(
            t.insert(0, "c0", false, now, |s| *s),
            "replacing needs no room"
        );
        assert_eq!(t.get(0, "c0"), Some(&false));
        assert!(t.insert(7, "new", false, now, |s| *s), "a sweep made room");
        assert!(t.get(0, "c6").is_none(), "stale entries went");
        assert!(t.get(1, "c1").is_some(), "the others stayed");
        let left = CAPACITY / 2 + 2;
        assert_eq!(t.len, left);
        // Fill up again with fresh entries: no sweep before the interval has passed.
        for i in 0..CAPACITY - left {
            assert!(t.insert(8, &format!("d{i}"), true, now, |s| *s));
        }
        assert!(
            !t.insert(9, "x", false, now, |s| *s),
            "full, swept a moment ago"
        );
        let later = now + SWEEP_EVERY;
        assert!(
            t.insert(9, "x", false, later, |s| *s),
            "the next interval sweeps"
        );
        t.remove(9, "x");
        assert!(t.get(9, "x").is_none());
        t.clear();
        assert!(t.is_empty());
    }
}
