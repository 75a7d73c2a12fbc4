//! The cache's in-process storage (no `store.redis_url`): one replica's entries, bounded by
//! bytes, least recently used evicted first, expired after freshness plus the stale window.
//!
//! Written here rather than using pingora's `MemCache` ("not for production": unbounded, no
//! way to enumerate a URL's or a route's entries) with a separate eviction manager: purges by
//! URL and route remove entries the manager would keep counting, so the byte budget and the
//! entries live under one lock here and cannot drift apart.
//!
//! Layout: `BTreeMap<tag, HashMap<entry, Slot>>` where tag is `route:urlhash` (ordered, so a
//! route's entries are one range) and an LRU index `BTreeMap<tick, (tag, entry)>`.
//! A slot also keeps the encoded copies of its body (`encoded.rs`), counted in its weight and
//! dropped with it, or when a revalidation replaces its meta.
//!
//! Invariant: `bytes` is the sum of the weights of the slots present, and never exceeds the
//! budget after an insert returns.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::encoded::Source;
use super::storage::{decode, Decoded, Times};
use super::Stored;
use crate::compress::Coding;
use crate::fields::Response;
use crate::metrics::Metrics;

pub struct MemoryStorage {
    budget: usize,
    inner: Mutex<Inner>,
    /// `None`: the near tier in front of Redis (its bytes were counted when Redis stored them).
    metrics: Option<Arc<Metrics>>,
}

#[derive(Default)]
struct Inner {
    groups: BTreeMap<String, HashMap<String, Slot>>,
    lru: BTreeMap<u64, (String, String)>,
    tick: u64,
    bytes: usize,
}

struct Slot {
    internal: Vec<u8>,
    /// Decoded once, when stored: a hit clones it instead of decoding Pingora's serialized form.
    header: Response,
    /// The serialized header's length, as weighed.
    header_len: usize,
    /// Read from `internal` when stored.
    times: Times,
    body: Bytes,
    /// The body in other codings, made from `body` on hits that wanted them.
    copies: Vec<(Coding, Bytes)>,
    expires: Instant,
    tick: u64,
    weight: usize,
}

impl MemoryStorage {
    pub fn new(budget: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            budget,
            inner: Mutex::new(Inner::default()),
            metrics: Some(metrics),
        }
    }

    /// A store whose writes are not counted in `rampart_cache_stored_bytes_total` (the near
    /// tier: what it keeps was counted when Redis stored it).
    pub(super) fn uncounted(budget: usize) -> Self {
        Self {
            budget,
            inner: Mutex::new(Inner::default()),
            metrics: None,
        }
    }

    /// The byte budget it was built with.
    pub fn budget(&self) -> usize {
        self.budget
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the cache; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry; its body is the copy in `want` when the entry has one.
    pub fn get(&self, tag: &str, entry: &str, want: Option<Coding>) -> Option<Stored> {
        let mut inner = self.lock();
        let now = Instant::now();
        let expired = inner
            .groups
            .get(tag)
            .and_then(|g| g.get(entry))
            .map(|s| s.expires <= now)?;
        if expired {
            inner.remove(tag, entry);
            return None;
        }
        inner.tick += 1;
        let tick = inner.tick;
        let slot = inner.groups.get_mut(tag).and_then(|g| g.get_mut(entry))?;
        let old = std::mem::replace(&mut slot.tick, tick);
        let copy = want.and_then(|c| slot.copies.iter().find(|(have, _)| *have == c));
        let stored = Stored {
            internal: slot.internal.clone(),
            header: Vec::new(),
            decoded: Some(Box::new(Decoded {
                header: slot.header.clone(),
                times: slot.times,
            })),
            body: copy.map_or_else(|| slot.body.clone(), |(_, b)| b.clone()),
            encoded: copy.is_some(),
        };
        // A hit moves the entry's names to the new tick instead of copying them again.
        let names = inner
            .lru
            .remove(&old)
            .unwrap_or_else(|| (tag.to_string(), entry.to_string()));
        inner.lru.insert(tick, names);
        Some(stored)
    }

    pub fn put(&self, tag: &str, entry: &str, stored: Stored, ttl: Duration) -> bool {
        let weight = stored.internal.len()
            + stored.header.len()
            + stored.body.len()
            + tag.len()
            + entry.len()
            + 64;
        if weight > self.budget {
            return false;
        }
        // Decoded once here, unless the caller has already (the near tier decoded it to read
        // its freshness).
        let decoded = match stored.decoded {
            Some(decoded) => Some(*decoded),
            None => decode(&stored.internal, &stored.header),
        };
        let Some(Decoded { header, times }) = decoded else {
            return false;
        };
        let size = stored.body.len();
        let header_len = stored.header.len();
        let mut inner = self.lock();
        inner.remove(tag, entry);
        while inner.bytes + weight > self.budget {
            let Some((_, (t, e))) = inner.lru.pop_first() else {
                break;
            };
            inner.remove(&t, &e);
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.bytes += weight;
        inner.lru.insert(tick, (tag.to_string(), entry.to_string()));
        inner.groups.entry(tag.to_string()).or_default().insert(
            entry.to_string(),
            Slot {
                internal: stored.internal,
                header,
                header_len,
                times,
                body: stored.body,
                copies: Vec::new(),
                expires: Instant::now() + ttl,
                tick,
                weight,
            },
        );
        drop(inner);
        if let Some(metrics) = &self.metrics {
            let route = tag.split(':').next().unwrap_or("");
            metrics
                .cache_stored_bytes
                .with_label_values(&[route])
                .inc_by(size as u64);
        }
        true
    }

    pub fn put_meta(
        &self,
        tag: &str,
        entry: &str,
        internal: Vec<u8>,
        header: Vec<u8>,
        ttl: Duration,
    ) -> bool {
        let Some(Decoded {
            header: decoded,
            times,
        }) = decode(&internal, &header)
        else {
            return false;
        };
        let mut inner = self.lock();
        let Some(slot) = inner.groups.get_mut(tag).and_then(|g| g.get_mut(entry)) else {
            return false;
        };
        // A revalidation may change what the copies' headers would say: they go, and the
        // next hits make them again.
        let copies: usize = slot.copies.drain(..).map(|(_, b)| copy_weight(&b)).sum();
        let old = slot.internal.len() + slot.header_len + copies;
        let new = internal.len() + header.len();
        slot.internal = internal;
        slot.header = decoded;
        slot.times = times;
        slot.header_len = header.len();
        slot.expires = Instant::now() + ttl;
        slot.weight = slot.weight + new - old;
        inner.bytes = inner.bytes + new - old;
        true
    }

    /// Keep `body` as the copy in `coding` of the entry `source` names, when that entry is
    /// still the one it was made from (same internal meta) and has none yet; least recently
    /// used entries make room.
    pub(super) fn put_copy(&self, source: &Source, coding: Coding, body: Bytes) -> bool {
        let weight = copy_weight(&body);
        let mut inner = self.lock();
        let Some(slot) = inner.version_mut(source) else {
            return false;
        };
        if slot.copies.iter().any(|(have, _)| *have == coding) || slot.weight + weight > self.budget
        {
            return false;
        }
        slot.copies.push((coding, body));
        slot.weight += weight;
        let tick = slot.tick;
        inner.bytes += weight;
        while inner.bytes > self.budget {
            // Never the entry that just grew: it was used a moment ago.
            let Some((&oldest, _)) = inner.lru.first_key_value() else {
                break;
            };
            if oldest == tick {
                break;
            }
            if let Some((_, (t, e))) = inner.lru.pop_first() {
                inner.remove(&t, &e);
            }
        }
        true
    }

    pub fn delete(&self, tag: &str, entry: &str) -> bool {
        self.lock().remove(tag, entry)
    }

    /// The entry, only while it is still the version `source` names (same internal meta).
    pub(super) fn delete_version(&self, source: &Source) -> bool {
        let mut inner = self.lock();
        inner.version_mut(source).is_some() && inner.remove(&source.tag, &source.entry)
    }

    /// Every entry of one URL.
    pub fn purge_tag(&self, tag: &str) -> u64 {
        let mut inner = self.lock();
        let entries: Vec<String> = inner
            .groups
            .get(tag)
            .map(|g| g.keys().cloned().collect())
            .unwrap_or_default();
        entries.iter().filter(|e| inner.remove(tag, e)).count() as u64
    }

    /// Every entry whose tag starts with `prefix` (`route:`, or `""` for all).
    pub fn purge_prefix(&self, prefix: &str) -> u64 {
        let mut inner = self.lock();
        let victims: Vec<(String, String)> = inner
            .groups
            .range(prefix.to_string()..)
            .take_while(|(t, _)| t.starts_with(prefix))
            .flat_map(|(t, g)| g.keys().map(move |e| (t.clone(), e.clone())))
            .collect();
        victims.iter().filter(|(t, e)| inner.remove(t, e)).count() as u64
    }
}

/// What a copy counts in the budget: its body and its place in the slot.
fn copy_weight(body: &Bytes) -> usize {
    body.len() + 16
}

impl Inner {
    /// The entry `source` names, only while it is still that version (same internal meta):
    /// a copy made from an older version, or a request to drop one, must not reach a newer.
    fn version_mut(&mut self, source: &Source) -> Option<&mut Slot> {
        self.groups
            .get_mut(&source.tag)
            .and_then(|g| g.get_mut(&source.entry))
            .filter(|slot| slot.internal == source.internal)
    }

    fn remove(&mut self, tag: &str, entry: &str) -> bool {
        let Some(group) = self.groups.get_mut(tag) else {
            return false;
        };
        let Some(slot) = group.remove(entry) else {
            return false;
        };
        if group.is_empty() {
            self.groups.remove(tag);
        }
        self.lru.remove(&slot.tick);
        self.bytes -= slot.weight;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;

    /// A real serialized meta (the store decodes the header when it stores it).
    fn meta() -> (Vec<u8>, Vec<u8>) {
        let now = std::time::SystemTime::now();
        let header = ResponseHeader::build(200, None).expect("header");
        pingora::cache::CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header)
            .serialize()
            .expect("serialize")
    }

    fn stored(n: usize) -> Stored {
        let (internal, header) = meta();
        Stored {
            internal,
            header,
            decoded: None,
            body: Bytes::from(vec![3; n]),
            encoded: false,
        }
    }

    #[test]
    fn bounded_by_bytes_lru_first() {
        let metrics = Arc::new(Metrics::new(&Default::default()).expect("m"));
        let m = MemoryStorage::new(3000, metrics);
        let ttl = Duration::from_secs(60);
        assert!(m.put("r:a", "1", stored(800), ttl));
        assert!(m.put("r:b", "1", stored(800), ttl));
        assert!(m.get("r:a", "1", None).is_some()); // a is now more recent than b
        assert!(m.put("r:c", "1", stored(800), ttl));
        assert!(m.put("r:d", "1", stored(800), ttl));
        assert!(
            m.get("r:b", "1", None).is_none(),
            "least recently used went first"
        );
        assert!(m.get("r:a", "1", None).is_some());
        assert!(m.lock().bytes <= 3000);
        assert!(
            !m.put("r:e", "1", stored(5000), ttl),
            "larger than the budget"
        );
        assert_eq!(m.purge_prefix("r:"), 3);
        assert_eq!(m.lock().bytes, 0);
    }

    #[test]
    fn expires() {
        let metrics = Arc::new(Metrics::new(&Default::default()).expect("m"));
        let m = MemoryStorage::new(3000, metrics);
        assert!(m.put("r:a", "1", stored(10), Duration::ZERO));
        assert!(m.get("r:a", "1", None).is_none());
        assert_eq!(m.lock().bytes, 0);
    }

    /// A copy is served to the coding that wants it, counts in the budget, and goes with its
    /// entry's revalidation; a copy of an entry that was replaced meanwhile is refused.
    #[test]
    fn copies_belong_to_the_entry_they_were_made_from() {
        let metrics = Arc::new(Metrics::new(&Default::default()).expect("m"));
        let m = MemoryStorage::new(3000, metrics);
        let ttl = Duration::from_secs(60);
        let entry = stored(900);
        let source = Source {
            tag: "r:a".into(),
            entry: "1".into(),
            internal: entry.internal.clone(),
        };
        assert!(m.put("r:a", "1", entry, ttl));
        let before = m.lock().bytes;
        assert!(m.put_copy(&source, Coding::Gzip, Bytes::from_static(b"gz")));
        assert!(
            !m.put_copy(&source, Coding::Gzip, Bytes::from_static(b"gz")),
            "one per coding"
        );
        assert_eq!(m.lock().bytes, before + 2 + 16);
        let hit = m.get("r:a", "1", Some(Coding::Gzip)).expect("hit");
        assert!(hit.encoded);
        assert_eq!(&hit.body[..], b"gz");
        let other = m.get("r:a", "1", Some(Coding::Br)).expect("hit");
        assert!(!other.encoded);
        assert_eq!(other.body.len(), 900);

        std::thread::sleep(Duration::from_millis(1100)); // a new `created` second
        let (internal, header) = meta();
        assert_ne!(internal, source.internal);
        assert!(m.put_meta("r:a", "1", internal, header, ttl));
        assert!(!m.get("r:a", "1", Some(Coding::Gzip)).expect("hit").encoded);
        assert_eq!(m.lock().bytes, before, "the copy's bytes went with it");
        assert!(
            !m.put_copy(&source, Coding::Gzip, Bytes::from_static(b"gz")),
            "made from the entry before its revalidation"
        );
    }
}
