//! The near tier: fresh entries of the Redis store kept in process (`[cache] local_bytes`), so
//! a hot entry is served without a round trip.
//!
//! Phases: the Redis storage's lookup asks here first and offers what Redis returned; purges
//! and invalidations clear it; a task polls Redis's purge epoch. It is a [`MemoryStorage`]
//! (bounded by bytes, least recently used evicted first, encoded copies included).
//!
//! Invariants:
//! - never an entry past its freshness: an entry is kept only while fresh (its expiry here is
//!   its `fresh_until`), so stale serving and revalidation always go to Redis; variants (a
//!   response with `Vary`) stay in Redis, because pingora checks a variant against its primary
//!   slot's provenance and two tiers could pair slots from different moments;
//! - purges and invalidations reach every replica: each one increments
//!   `{store.key_prefix}cache-epoch` in Redis; every replica reads it every
//!   [`EPOCH_POLL`] and empties its tier when it moved, and its own purges empty the URL or
//!   route here at once. An entry read from Redis is kept only if the epoch did not move
//!   between the read and the keeping, so an entry purged meanwhile is never kept. When the
//!   epoch cannot be read (Redis failing), the tier is emptied and keeps nothing until it can;
//! - the poll runs only while the tier is used: after [`IDLE_STOP`] without a lookup it empties
//!   the tier and stops, and the next lookup starts it again (a store replaced by a reload
//!   leaves no task behind).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pingora::cache::CacheMeta;

use super::encoded::Source;
use super::memory::MemoryStorage;
use super::storage::Decoded;
use super::Stored;
use crate::compress::Coding;
use crate::metrics::Metrics;
use crate::redis::Redis;

/// How often each replica reads the purge epoch: a purge on one replica reaches the others'
/// near tiers within this (plus one `store.timeout`).
pub const EPOCH_POLL: Duration = Duration::from_millis(100);

/// The slot of an entry's copy in `coding` when the tier holds the copy alone.
fn copy_entry(entry: &str, coding: Coding) -> String {
    format!("{entry}|{}", coding.token())
}

/// The poll stops after this long without a lookup (the tier is emptied with it).
const IDLE_STOP: Duration = Duration::from_secs(10);

/// The epoch is not known: nothing is kept.
const UNKNOWN: u64 = u64::MAX;

pub(super) struct Near {
    store: MemoryStorage,
    redis: Arc<Redis>,
    metrics: Arc<Metrics>,
    /// The purge epoch last read from Redis, or [`UNKNOWN`].
    epoch: AtomicU64,
    polling: AtomicBool,
    /// Milliseconds since `started` of the last lookup.
    used_ms: AtomicU64,
    started: Instant,
}

impl Near {
    /// `None` when `budget` is 0 (the tier is off).
    pub(super) fn new(
        budget: usize,
        redis: Arc<Redis>,
        metrics: Arc<Metrics>,
    ) -> Option<Arc<Self>> {
        (budget > 0).then(|| {
            Arc::new(Self {
                store: MemoryStorage::uncounted(budget),
                redis,
                metrics,
                epoch: AtomicU64::new(UNKNOWN),
                polling: AtomicBool::new(false),
                used_ms: AtomicU64::new(0),
                started: Instant::now(),
            })
        })
    }

    pub(super) fn budget(&self) -> usize {
        self.store.budget()
    }

    pub(super) fn epoch_key(redis: &Redis) -> String {
        redis.key("cache-epoch")
    }

    /// A fresh entry kept here, with its copy in `want` when there is one, counted as a near
    /// hit.
    pub(super) fn get(
        self: &Arc<Self>,
        tag: &str,
        entry: &str,
        want: Option<Coding>,
    ) -> Option<Stored> {
        let found = self.held(tag, entry, want);
        if found.is_some() {
            self.count_hit(tag);
        }
        found
    }

    /// [`Near::get`] without counting: a request answered early (`Cache::held_hit`) counts
    /// the hit only once it is sure to serve it. Starts the epoch poll when it is not running
    /// (from a request's task: the runtime is there).
    pub(super) fn held(
        self: &Arc<Self>,
        tag: &str,
        entry: &str,
        want: Option<Coding>,
    ) -> Option<Stored> {
        // Reads first: both workers look up here on every hit, and a write per lookup would
        // bounce the cache line between them (the value changes once per millisecond).
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if self.used_ms.load(Ordering::Relaxed) != now {
            self.used_ms.store(now, Ordering::Relaxed);
        }
        if !self.polling.load(Ordering::Acquire) && !self.polling.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().poll());
        }
        self.find(tag, entry, want)
    }

    /// One hit served from the tier (`rampart_cache_near_hits_total{route}`).
    pub(super) fn count_hit(&self, tag: &str) {
        let route = tag.split(':').next().unwrap_or("");
        self.metrics
            .cache_near_hits
            .with_label_values(&[route])
            .inc();
    }

    fn find(&self, tag: &str, entry: &str, want: Option<Coding>) -> Option<Stored> {
        let found = self.store.get(tag, entry, want);
        let Some(coding) = want else {
            return found;
        };
        if found.as_ref().is_some_and(|s| s.encoded) {
            return found;
        }
        // Kept from a Redis hit on the copy alone (see `offer`).
        match self.store.get(tag, &copy_entry(entry, coding), None) {
            Some(mut copy) => {
                copy.encoded = true;
                Some(copy)
            }
            None => found,
        }
    }

    /// The epoch before a Redis read: what [`Near::offer`] checks. Read from Redis now when
    /// not known yet (the tier's first lookups), so a hot entry is kept from its first hit.
    pub(super) async fn snapshot(&self) -> u64 {
        let epoch = self.epoch.load(Ordering::Acquire);
        if epoch != UNKNOWN {
            return epoch;
        }
        let read = self.read_epoch().await;
        // Unless the poll settled it meanwhile.
        let _ = self
            .epoch
            .compare_exchange(UNKNOWN, read, Ordering::AcqRel, Ordering::Acquire);
        self.epoch.load(Ordering::Acquire)
    }

    fn current(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The purge epoch in Redis (0 before the first purge), or [`UNKNOWN`] when it cannot be
    /// read (Redis failing, or known down).
    async fn read_epoch(&self) -> u64 {
        if !self.redis.should_try() {
            return UNKNOWN;
        }
        let key = Self::epoch_key(&self.redis);
        let key = &key;
        self.redis
            .call("cache_epoch", |mut c| async move {
                redis::cmd("GET")
                    .arg(key)
                    .query_async::<Option<u64>>(&mut c)
                    .await
            })
            .await
            .map_or(UNKNOWN, |value| value.unwrap_or(0))
    }

    /// Keep what a Redis lookup returned, while it is fresh, if no purge happened since
    /// `snapshot`.
    pub(super) fn offer(
        &self,
        tag: &str,
        entry: &str,
        want: Option<Coding>,
        stored: &Stored,
        snapshot: u64,
    ) {
        if snapshot == UNKNOWN || self.current() != snapshot {
            return;
        }
        // A hit on the copy is kept as a slot of its own (the entry's meta, the copy's body):
        // once the identity body left the tier (it was emptied, or never held it), clients in
        // that coding would otherwise never bring the entry back.
        let entry = match (stored.encoded, want) {
            (false, _) => entry.to_string(),
            (true, Some(coding)) => copy_entry(entry, coding),
            (true, None) => return,
        };
        let entry = entry.as_str();
        let Ok(meta) = CacheMeta::deserialize(&stored.internal, &stored.header) else {
            return;
        };
        if meta.variance().is_some() {
            // Variants stay in Redis: pingora checks a variant against its primary slot's
            // provenance, and two tiers could pair a primary and a variant from different
            // moments.
            return;
        }
        let Ok(fresh) = meta.fresh_until().duration_since(SystemTime::now()) else {
            return;
        };
        let copy = Stored {
            internal: stored.internal.clone(),
            header: stored.header.clone(),
            decoded: Some(Box::new(Decoded::of(&meta))),
            body: stored.body.clone(),
            encoded: false,
        };
        self.store.put(tag, entry, copy, fresh);
        // A purge that landed while this was stored: forget it.
        if self.current() != snapshot {
            self.store.delete(tag, entry);
        }
    }

    /// A copy stored in Redis is kept here too, beside its identity entry.
    pub(super) fn put_copy(&self, source: &Source, coding: Coding, body: bytes::Bytes) {
        self.store.put_copy(source, coding, body);
    }

    /// Redis refused a copy made from `source`: its entry was revalidated, refilled or went
    /// since this tier kept it (a read from Redis can be kept just after another request or
    /// replica replaced what it read). That version goes from here, so the next lookup reads
    /// the current one and its copies can be made; kept, it would be compressed again on every
    /// hit until it expired (up to its whole freshness).
    pub(super) fn forget_version(&self, source: &Source) {
        self.store.delete_version(source);
    }

    /// This replica purged a URL: its entries go at once (the others' at their next poll).
    pub(super) fn forget_url(&self, tag: &str) {
        self.store.purge_tag(tag);
    }

    /// This replica purged a route (`route:`) or everything (`""`).
    pub(super) fn forget_prefix(&self, prefix: &str) {
        self.store.purge_prefix(prefix);
    }

    /// Read the epoch every [`EPOCH_POLL`]: empty the tier when it moved or cannot be read;
    /// stop when unused for [`IDLE_STOP`].
    async fn poll(self: Arc<Self>) {
        let mut tick = tokio::time::interval(EPOCH_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let idle = now.saturating_sub(self.used_ms.load(Ordering::Relaxed));
            if u128::from(idle) > IDLE_STOP.as_millis() {
                self.epoch.store(UNKNOWN, Ordering::Release);
                self.store.purge_prefix("");
                self.polling.store(false, Ordering::Release);
                return;
            }
            let epoch = self.read_epoch().await;
            if self.epoch.swap(epoch, Ordering::AcqRel) != epoch {
                self.store.purge_prefix("");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;

    fn stored(fresh: Duration) -> Stored {
        let now = SystemTime::now();
        let header = ResponseHeader::build(200, None).expect("header");
        let (internal, header) = CacheMeta::new(now + fresh, now, 0, 0, header)
            .serialize()
            .expect("serialize");
        Stored {
            internal,
            header,
            decoded: None,
            body: bytes::Bytes::from_static(b"body"),
            encoded: false,
        }
    }

    fn near() -> Arc<Near> {
        use crate::metrics::Metrics;
        let metrics = Arc::new(Metrics::new(&Default::default()).expect("m"));
        let config = crate::redis::Config {
            redis_url: Some(
                crate::redis::RedisUrl::try_from("redis://127.0.0.1:1".to_string()).expect("url"),
            ),
            ..Default::default()
        };
        let redis = Redis::from_config(&config, metrics.clone())
            .expect("redis")
            .expect("configured");
        Near::new(1 << 20, redis, metrics).expect("on")
    }

    /// Only fresh entries, only while the epoch is known and unmoved since the read.
    #[test]
    fn keeps_only_fresh_entries_read_in_the_current_epoch() {
        let n = near();
        n.offer("r:a", "1", None, &stored(Duration::from_secs(60)), UNKNOWN);
        assert!(n.store.get("r:a", "1", None).is_none(), "epoch unknown");
        n.epoch.store(7, Ordering::Release);
        n.offer("r:a", "1", None, &stored(Duration::from_secs(60)), 6);
        assert!(
            n.store.get("r:a", "1", None).is_none(),
            "a purge since the read"
        );
        n.offer("r:a", "1", None, &stored(Duration::ZERO), 7);
        assert!(n.store.get("r:a", "1", None).is_none(), "not fresh");
        n.offer("r:a", "1", None, &stored(Duration::from_secs(60)), 7);
        assert!(n.store.get("r:a", "1", None).is_some());
        n.forget_url("r:a");
        assert!(n.store.get("r:a", "1", None).is_none(), "purged here");
    }

    /// A Redis hit on an entry's copy is kept on its own and served as the copy to clients of
    /// that coding, never to others.
    #[test]
    fn a_copy_alone_is_kept_for_its_coding() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let n = near();
            n.epoch.store(3, Ordering::Release);
            let mut copy = stored(Duration::from_secs(60));
            copy.encoded = true;
            n.offer("r:a", "1", Some(Coding::Gzip), &copy, 3);
            let hit = n.get("r:a", "1", Some(Coding::Gzip)).expect("kept");
            assert!(hit.encoded);
            assert!(n.get("r:a", "1", Some(Coding::Br)).is_none());
            assert!(n.get("r:a", "1", None).is_none());
        });
    }

    #[test]
    fn off_at_zero_bytes() {
        let n = near();
        assert!(Near::new(0, n.redis.clone(), n.metrics.clone()).is_none());
    }
}
