//! The pingora `Storage` glue: lookups, fills and purges over the two backends.
//!
//! Phases: called by pingora's cache state machine (lookup on every cacheable request, a miss
//! handler while a response is stored, purge and meta updates on revalidation). Both backends
//! group entries by URL tag (`route:urlhash`) and keep pingora's serialized meta and header
//! beside the whole body.
//!
//! Invariants: a body is written once, at the end of the fill, so a reader never sees half an
//! entry, and a revalidation updates an entry that is still whole or nothing; a body over the
//! policy's `max_body_bytes` is passed through, never stored; an entry with a validator outlives
//! its freshness by the policy's `keep_for_revalidation`, so it can be revalidated.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration as StdDuration, SystemTime};

use super::key::entry_name;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta};
use pingora::http::ResponseHeader;
use pingora::prelude::*;

use super::config::HARD_MAX_TTL;
use super::encoded::{Source, Wanted};
use super::memory::MemoryStorage;
use super::redis::RedisStorage;
use super::PurgeError;
use crate::compress::Coding;
use crate::fields::Response;

/// The route policy's limits, carried in the cache key's extensions for the storage: how much
/// body a fill may buffer, how long a lookup may wait for another request's fill, how long an
/// entry with a validator is kept past its freshness.
#[derive(Clone, Copy)]
pub(super) struct FillBounds {
    pub(super) body: usize,
    pub(super) wait: StdDuration,
    pub(super) keep: StdDuration,
}

impl FillBounds {
    pub(super) fn of(key: &CacheKey) -> Self {
        key.extensions
            .get::<FillBounds>()
            .copied()
            .unwrap_or(FillBounds {
                body: 1024 * 1024,
                wait: StdDuration::from_secs(5),
                keep: StdDuration::ZERO,
            })
    }
}

/// One request's part in the fill claims replicas share through Redis: its claim token, the
/// entry it claimed, the entry it stored. Carried in the cache key's extensions (the storage
/// API passes nothing else per request) and read back in `logging`, which releases a claim
/// its request did not fill, so other requests never wait on it.
pub(super) struct FillTicket {
    pub(super) token: String,
    /// The URL tag of the request's entries (every variant shares it).
    pub(super) tag: String,
    state: Mutex<TicketState>,
}

#[derive(Default)]
struct TicketState {
    claimed: Option<String>,
    filled: Option<String>,
}

impl FillTicket {
    pub(super) fn new(token: String, tag: String) -> Self {
        Self {
            token,
            tag,
            state: Mutex::new(TicketState::default()),
        }
    }

    pub(super) fn of(key: &CacheKey) -> Option<Arc<FillTicket>> {
        key.extensions.get::<Arc<FillTicket>>().cloned()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TicketState> {
        // Two plain fields: a panic elsewhere cannot leave them inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn claimed(&self, entry: &str) {
        self.state().claimed = Some(entry.to_string());
    }

    fn filled(&self, entry: &str) {
        self.state().filled = Some(entry.to_string());
    }

    /// The entry this request claimed and did not store, if any.
    pub(super) fn unfilled_claim(&self) -> Option<String> {
        let state = self.state();
        state
            .claimed
            .clone()
            .filter(|c| state.filled.as_ref() != Some(c))
    }
}

/// Where entries live: Redis (shared by replicas) or in-process (the embedded default).
///
/// Both group entries by URL tag (`route:urlhash`), each entry identified inside its group by
/// pingora's combined key hash (primary + variance), and both store the serialized
/// [`CacheMeta`] (internal part and header) beside the whole body.
pub enum CacheStorage {
    Redis(RedisStorage),
    Memory(MemoryStorage),
}

/// What a store holds for one entry.
pub struct Stored {
    pub internal: Vec<u8>,
    /// Pingora's serialized header (empty when `decoded` is given instead).
    pub header: Vec<u8>,
    /// The header and times already decoded: what the in-process store answers a lookup
    /// with, and what the near tier hands it, having read them already.
    pub decoded: Option<Box<Decoded>>,
    pub body: Bytes,
    /// A lookup's answer only: `body` is the entry's copy in the coding the request wanted
    /// (see `encoded.rs`), not its identity body.
    pub encoded: bool,
}

/// What a serialized meta says that a hit needs, read once: the header as a list a hit edits
/// cheaply (`fields::Response`).
pub struct Decoded {
    pub header: Response,
    pub times: Times,
}

/// When a stored entry stops being fresh and the moment its age counts from: read once when
/// the in-process store keeps the entry, so a hit answered early decodes nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Times {
    pub fresh_until: SystemTime,
    pub epoch: SystemTime,
}

impl Times {
    pub(super) fn of(meta: &CacheMeta) -> Self {
        Self {
            fresh_until: meta.fresh_until(),
            epoch: meta.epoch(),
        }
    }

    /// `Age` (RFC 9111 section 4.2.3), as pingora's `CacheMeta::age`.
    pub fn age(&self) -> StdDuration {
        SystemTime::now()
            .duration_since(self.epoch)
            .unwrap_or_default()
    }
}

impl CacheStorage {
    /// Whether a reload can keep this store: the same Redis store, or an in-process one of
    /// the same budget.
    pub(super) fn built_from(
        &self,
        redis: Option<&Arc<crate::redis::Redis>>,
        memory_bytes: usize,
        local_bytes: usize,
    ) -> bool {
        match (self, redis) {
            (CacheStorage::Redis(r), Some(redis)) => {
                Arc::ptr_eq(r.redis(), redis) && r.local_bytes() == local_bytes
            }
            (CacheStorage::Memory(m), None) => m.budget() == memory_bytes,
            _ => false,
        }
    }

    pub(super) fn unavailable(&self) -> bool {
        match self {
            CacheStorage::Redis(r) => r.unavailable(),
            CacheStorage::Memory(_) => false,
        }
    }

    /// The entry, with its copy in `want` as body when it has one.
    pub(super) async fn find(
        &self,
        key: &CacheKey,
        entry: &str,
        want: Option<Coding>,
    ) -> Option<Stored> {
        let tag = &key.user_tag;
        match self {
            CacheStorage::Redis(r) => {
                let ticket = FillTicket::of(key);
                r.find(
                    tag,
                    entry,
                    FillBounds::of(key).wait,
                    ticket.as_deref(),
                    want,
                )
                .await
            }
            CacheStorage::Memory(m) => m.get(tag, entry, want),
        }
    }

    /// The entry when this process holds it, without a round trip: the in-process store's
    /// entry, or a fresh one of the Redis store's near tier. A near-tier entry is counted as a
    /// near hit by [`CacheStorage::served_held`], once it is served.
    pub(super) fn held(&self, tag: &str, entry: &str, want: Option<Coding>) -> Option<Stored> {
        match self {
            CacheStorage::Redis(r) => r.near_held(tag, entry, want),
            CacheStorage::Memory(m) => m.get(tag, entry, want),
        }
    }

    /// A [`CacheStorage::held`] entry was served.
    pub(super) fn served_held(&self, tag: &str) {
        if let CacheStorage::Redis(r) = self {
            r.count_near_hit(tag);
        }
    }

    /// Keep `body`, the entry's body encoded in `coding`, beside the entry `source` names, if
    /// that entry is still the one it was made from.
    pub(super) async fn put_copy(&self, source: &Source, coding: Coding, body: Bytes) -> bool {
        match self {
            CacheStorage::Redis(r) => r.put_copy(source, coding, body).await,
            CacheStorage::Memory(m) => m.put_copy(source, coding, body),
        }
    }

    /// Give up the claim `token` holds on an entry (no-op when another request holds it).
    pub(super) async fn release(&self, tag: &str, entry: &str, token: &str) {
        match self {
            CacheStorage::Redis(r) => r.release(tag, entry, token).await,
            // In-process fills are coordinated by pingora's cache lock alone.
            CacheStorage::Memory(_) => {}
        }
    }

    pub(super) async fn put(
        &self,
        tag: &str,
        entry: &str,
        stored: Stored,
        ttl: StdDuration,
    ) -> bool {
        match self {
            CacheStorage::Redis(r) => r.put(tag, entry, stored, ttl).await,
            CacheStorage::Memory(m) => m.put(tag, entry, stored, ttl),
        }
    }

    async fn put_meta(
        &self,
        tag: &str,
        entry: &str,
        internal: Vec<u8>,
        header: Vec<u8>,
        ttl: StdDuration,
    ) -> bool {
        match self {
            CacheStorage::Redis(r) => r.put_meta(tag, entry, internal, header, ttl).await,
            CacheStorage::Memory(m) => m.put_meta(tag, entry, internal, header, ttl),
        }
    }

    pub(super) async fn delete(&self, tag: &str, entry: &str) -> bool {
        match self {
            CacheStorage::Redis(r) => r.delete(tag, entry).await,
            CacheStorage::Memory(m) => m.delete(tag, entry),
        }
    }

    pub(super) async fn purge_url(&self, tag: &str) -> std::result::Result<u64, PurgeError> {
        match self {
            CacheStorage::Redis(r) => r.purge_url(tag).await,
            CacheStorage::Memory(m) => Ok(m.purge_tag(tag)),
        }
    }

    /// Everything (`None`) or one route's entries.
    pub(super) async fn purge_prefix(
        &self,
        route: Option<&str>,
    ) -> std::result::Result<u64, PurgeError> {
        match self {
            CacheStorage::Redis(r) => r.purge_route(route).await,
            CacheStorage::Memory(m) => Ok(match route {
                Some(route) => m.purge_prefix(&format!("{route}:")),
                None => m.purge_prefix(""),
            }),
        }
    }
}

/// A meta from stored internal bytes and an already decoded header: the internal part read as
/// Pingora wrote it, the header put in place without the zstd decode and parse a serialized one
/// costs on every hit (12% of a memory-store hit's CPU in the profile, BENCHMARKS.md).
fn meta_with_header(internal: &[u8], header: ResponseHeader) -> Result<CacheMeta> {
    static EMPTY: LazyLock<Option<Vec<u8>>> = LazyLock::new(|| {
        let now = SystemTime::now();
        let header = ResponseHeader::build(200, None).ok()?;
        let meta = CacheMeta::new(now, now, 0, 0, header);
        meta.serialize().ok().map(|(_, header)| header)
    });
    let Some(empty) = EMPTY.as_deref() else {
        return Error::e_explain(ErrorType::InternalError, "no serialized empty header");
    };
    let mut meta = CacheMeta::deserialize(internal, empty)?;
    *meta.response_header_mut() = header;
    Ok(meta)
}

/// The decoded header and times of a serialized meta (the in-process store decodes once, at
/// store time).
pub(super) fn decode(internal: &[u8], header: &[u8]) -> Option<Decoded> {
    CacheMeta::deserialize(internal, header)
        .ok()
        .map(|meta| Decoded::of(&meta))
}

impl Decoded {
    pub(super) fn of(meta: &CacheMeta) -> Self {
        Self {
            header: Response::of_pingora(meta.response_header()),
            times: Times::of(meta),
        }
    }
}

/// How long a store keeps an entry: freshness plus the longest of its stale windows and, when
/// it has a validator, `keep` (at least 1 s).
fn retention(meta: &CacheMeta, keep: StdDuration) -> StdDuration {
    let fresh = meta
        .fresh_until()
        .duration_since(SystemTime::now())
        .unwrap_or(StdDuration::ZERO);
    let stale = StdDuration::from_secs(
        meta.stale_while_revalidate_sec()
            .max(meta.stale_if_error_sec())
            .into(),
    );
    let headers = meta.headers();
    let validator = headers.contains_key(http::header::ETAG)
        || headers.contains_key(http::header::LAST_MODIFIED);
    let keep = if validator { keep } else { StdDuration::ZERO };
    (fresh + stale.max(keep)).clamp(StdDuration::from_secs(1), HARD_MAX_TTL * 2)
}

#[async_trait]
impl Storage for CacheStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let wanted = Wanted::of(key);
        // The entry's name, made once: the store's lookup and a copy's source both need it.
        let entry = entry_name(key);
        let want = wanted.as_ref().map(|w| w.coding);
        let Some(stored) = self.find(key, &entry, want).await else {
            return Ok(None);
        };
        let meta = match stored.decoded {
            Some(decoded) => meta_with_header(&stored.internal, decoded.header.into_pingora()),
            None => CacheMeta::deserialize(&stored.internal, &stored.header),
        };
        match meta {
            Ok(meta) => {
                let end = stored.body.len();
                if let Some(wanted) = wanted {
                    if stored.encoded {
                        wanted.served_copy(end);
                    } else {
                        wanted.served_identity(Source {
                            tag: key.user_tag.clone(),
                            entry,
                            internal: stored.internal,
                        });
                    }
                }
                let hit: HitHandler = Box::new(Hit {
                    body: stored.body,
                    done: false,
                    start: 0,
                    end,
                });
                Ok(Some((meta, hit)))
            }
            Err(e) => {
                // An entry from an incompatible version: a miss, and the fill replaces it.
                log::debug!("unreadable cache entry ({e}), treated as a miss");
                Ok(None)
            }
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let (internal, header) = meta.serialize()?;
        let bounds = FillBounds::of(key);
        Ok(Box::new(Fill {
            store: self,
            tag: key.user_tag.clone(),
            entry: entry_name(key),
            internal,
            header,
            ttl: retention(meta, bounds.keep),
            body: Vec::new(),
            limit: bounds.body,
            oversize: false,
            ticket: FillTicket::of(key),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let key = target.key();
        Ok(if self.delete(&key.user_tag, &entry_name(key)).await {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    /// A revalidation (304) or a stale-while-revalidate refresh: the entry's meta and header
    /// replaced, its body kept. Waiters on other replicas are released here as on a fill.
    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let (internal, header) = meta.serialize()?;
        let keep = FillBounds::of(key).keep;
        Ok(self
            .put_meta(
                &key.user_tag,
                &entry_name(key),
                internal,
                header,
                retention(meta, keep),
            )
            .await)
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync + 'static) {
        self
    }
}

/// A whole stored body, served in one piece (ranges by seeking).
struct Hit {
    body: Bytes,
    done: bool,
    start: usize,
    end: usize,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start out of range {start} >= {}", self.body.len()),
            );
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |e| e.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn std::any::Any + Send + Sync) {
        self
    }
}

/// A fill: the body is buffered (up to the policy's limit) and written with its meta in one
/// store call when the response ends, so a reader never sees half an entry. A failed write
/// is not an error for the request: it was answered from the upstream already.
struct Fill {
    store: &'static CacheStorage,
    tag: String,
    entry: String,
    internal: Vec<u8>,
    header: Vec<u8>,
    ttl: StdDuration,
    body: Vec<u8>,
    limit: usize,
    oversize: bool,
    ticket: Option<Arc<FillTicket>>,
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.oversize {
            return Ok(());
        }
        if self.body.len() + data.len() > self.limit {
            // Passed through to the client, not stored (pingora's own size limit would fail
            // the response mid-body instead).
            self.oversize = true;
            self.body = Vec::new();
            return Ok(());
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        // Oversize: nothing stored, and `logging` releases this request's claim.
        if self.oversize {
            return Ok(MissFinishType::Created(0));
        }
        let size = self.body.len();
        let stored = Stored {
            internal: self.internal,
            header: self.header,
            decoded: None,
            body: Bytes::from(self.body),
            encoded: false,
        };
        if self
            .store
            .put(&self.tag, &self.entry, stored, self.ttl)
            .await
        {
            if let Some(t) = &self.ticket {
                t.filled(&self.entry);
            }
        }
        Ok(MissFinishType::Created(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(fresh_secs: u64, swr: u32, sie: u32) -> CacheMeta {
        meta_with(fresh_secs, swr, sie, &[])
    }

    fn meta_with(fresh_secs: u64, swr: u32, sie: u32, headers: &[(&str, &str)]) -> CacheMeta {
        let now = SystemTime::now();
        let mut header = ResponseHeader::build(200, None).expect("header");
        for (k, v) in headers {
            header.insert_header(k.to_string(), *v).expect("header");
        }
        CacheMeta::new(
            now + StdDuration::from_secs(fresh_secs),
            now,
            swr,
            sie,
            header,
        )
    }

    #[test]
    fn entries_are_kept_for_freshness_plus_the_longer_stale_window() {
        let keep = StdDuration::from_secs(600);
        let secs = |m: &CacheMeta| retention(m, keep).as_secs_f64().round() as u64;
        assert_eq!(secs(&meta(60, 0, 0)), 60);
        assert_eq!(secs(&meta(60, 30, 300)), 360);
        assert_eq!(secs(&meta(60, 300, 30)), 360);
        // Already stale without a window: kept one second, never zero (Redis would refuse).
        assert_eq!(retention(&meta(0, 0, 0), keep), StdDuration::from_secs(1));
        // With a validator: kept for revalidation, or the stale window if longer.
        assert_eq!(secs(&meta_with(60, 0, 0, &[("etag", "\"a\"")])), 660);
        assert_eq!(secs(&meta_with(0, 0, 0, &[("last-modified", "x")])), 600);
        assert_eq!(secs(&meta_with(60, 0, 900, &[("etag", "\"a\"")])), 960);
    }

    #[test]
    fn fill_bounds_default_when_the_key_has_none() {
        let key = CacheKey::new(b"p".to_vec(), "tag".to_string());
        let b = FillBounds::of(&key);
        assert_eq!((b.body, b.wait), (1024 * 1024, StdDuration::from_secs(5)));
        assert!(FillTicket::of(&key).is_none());
    }

    #[test]
    fn a_ticket_names_the_claim_its_request_did_not_fill() {
        let t = FillTicket::new("t".into(), "r:x".into());
        assert_eq!(t.unfilled_claim(), None);
        t.claimed("a");
        assert_eq!(t.unfilled_claim().as_deref(), Some("a"));
        t.filled("b");
        assert_eq!(
            t.unfilled_claim().as_deref(),
            Some("a"),
            "stored elsewhere (Vary)"
        );
        t.filled("a");
        assert_eq!(t.unfilled_claim(), None);
    }
}
