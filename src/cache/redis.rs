//! The cache's Redis storage: entries shared by every replica, expired by Redis itself.
//!
//! Layout: one Redis hash per URL, `{store.key_prefix}cache:{ROUTE:URLHASH}`, with three
//! fields per entry (`ENTRY:m` pingora's internal meta, `ENTRY:h` the response header,
//! `ENTRY:b` the body), where ENTRY is pingora's combined key hash (primary key + variance).
//! So a lookup is one script call (below), a fill one atomic `HSET` + `PEXPIRE`, purging a URL
//! (every variant and vary-header combination of it) one `UNLINK`, and purging a route or
//! everything a `SCAN MATCH` under the prefix (never `KEYS`) with `UNLINK`, node by node.
//!
//! Encoded copies (`encoded.rs`) live in a second hash, `{store.key_prefix}cache-copy:{ROUTE:URLHASH}`
//! (same slot), field `ENTRY:CODING:SHA1(meta and header)`: a copy is bound to the exact entry
//! it was made from, so a fill or revalidation of the entry makes its copies unreachable at
//! once without touching them, and the hash expires with the entry's retention; purges unlink
//! the copy hashes with the entries. The lookup
//! script returns the copy instead of the identity body when the request wants one and it is
//! there.
//!
//! Replicas coordinate fills: a lookup runs one Lua script that reads the entry and, when it
//! is absent, claims `{prefix}cache-fill:{ROUTE:URLHASH}:ENTRY` for this request (the value is
//! the request's token, `PX lock_timeout`). The claimer fetches from the upstream; every other
//! request, on any replica, polls the entry until it appears, the claim disappears, or
//! `lock_timeout` passes, and only then goes upstream itself. So N replicas cold on one key
//! cause one upstream fetch. The braces are Redis Cluster hash tags: an entry and its claim
//! share a slot, as the scripts need.
//!
//! A claim never outlives the reason for it: storing the entry (a fill, or a revalidation's
//! meta update) deletes it whoever holds it, and `logging` deletes a request's own claim when
//! that request stored nothing (upstream error, uncacheable response, or it was served by
//! another request's fill after waiting on pingora's in-process lock). A request finding its
//! own claim is the claimer, never a waiter on itself. A revalidation only updates an entry
//! that is still whole; one that expired meanwhile is a miss, never half an entry.
//!
//! Expiry: the hash's TTL is set by each fill (and revalidation) to that entry's freshness plus
//! its longer stale window, or `keep_for_revalidation` when it has a validator and that is
//! longer (storage.rs, `retention`). Variants of one URL share the TTL of the latest fill; a variant that outlives its
//! own window is still judged by its stored freshness (never served fresh by mistake), one that
//! goes early is only a miss. Field-level TTLs (`HPEXPIRE`) would need Redis 7.4.
//!
//! Failures: every call goes through [`Redis::call`] (store timeout, metrics, the outage
//! logged once). A failed lookup is a miss, a failed write is dropped. While Redis is down,
//! requests skip the cache entirely (no timeout paid per request) except the probe that
//! [`Redis::should_try`] lets through, which is how caching resumes when Redis returns.
//!
//! Cluster: all fields of one URL live in one key, so one slot. A node scans only its own keys,
//! so a route/all purge walks every primary ([`Redis::nodes`]) with its own `SCAN` cursor and
//! unlinks what it found on that same node (a node's keys are in slots it serves); a primary
//! that cannot be reached fails the purge (an error, never a silent partial success), and
//! running it again after the failover finishes the job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::{Script, Value};

use super::encoded::Source;
use super::near::Near;
use super::storage::FillTicket;
use super::{PurgeError, Stored};
use crate::compress::Coding;
use crate::metrics::Metrics;
use crate::redis::{Node, Redis};

/// Keys per `SCAN` step of a route purge.
const SCAN_COUNT: usize = 500;
/// A route purge stops after this many `SCAN` steps (a bound, not an expected figure).
const MAX_SCAN_STEPS: usize = 100_000;
/// How often a request waiting for another request's fill looks for the entry.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Read the entry; when absent, claim its fill for token ARGV[5] (or renew this request's own
/// claim). Returns the three fields (a hit), 1 (claimed: this request fetches) or 0 (another
/// request is fetching).
/// With ARGV[6] a coding, the entry's copy in it (KEYS[3]) replaces the body, marked by a
/// fourth element.
const LOOKUP_OR_CLAIM: &str = r#"
local v = redis.call('HMGET', KEYS[1], ARGV[1], ARGV[2])
if v[1] and v[2] then
  if ARGV[6] ~= '' then
    local c = redis.call('HGET', KEYS[3], ARGV[6] .. ':' .. redis.sha1hex(v[1] .. v[2]))
    if c then return {v[1], v[2], c, 1} end
  end
  local b = redis.call('HGET', KEYS[1], ARGV[3])
  if b then return {v[1], v[2], b} end
end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[5] then return 0 end
redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[4])
return 1
"#;

/// A revalidation: replace meta and header of an entry that is still whole (its body field
/// exists), refresh its expiry and drop the claim. Returns 1, or 0 when the entry is gone.
const UPDATE_META: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4], ARGV[2], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('DEL', KEYS[2])
return 1
"#;

/// Keep copy ARGV[4] of the entry whose meta field ARGV[1] still holds ARGV[2] (header field
/// ARGV[5]), under coding ARGV[3], for as long as the entry is kept. Returns 1, or 0 when the entry changed or went.
const PUT_COPY: &str = r#"
local v = redis.call('HMGET', KEYS[1], ARGV[1], ARGV[5])
if not v[1] or not v[2] or v[1] ~= ARGV[2] then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[3] .. ':' .. redis.sha1hex(v[1] .. v[2]), ARGV[4])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"#;

/// Delete a claim if token ARGV[1] holds it.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// What a lookup found.
enum Found {
    Entry(Stored),
    /// Absent, and this request claimed it: it fills it.
    Claimed,
    /// The store failed: upstream, with no claim.
    Fetch,
    /// Absent, and another request is filling it.
    Busy,
}

pub struct RedisStorage {
    redis: Arc<Redis>,
    /// Fresh entries kept in process (`[cache] local_bytes`; `None` when 0).
    near: Option<Arc<Near>>,
    metrics: Arc<Metrics>,
    lookup_or_claim: Script,
    update_meta: Script,
    put_copy: Script,
    release: Script,
}

impl RedisStorage {
    pub fn new(redis: Arc<Redis>, metrics: Arc<Metrics>, local_bytes: usize) -> Self {
        Self {
            near: Near::new(local_bytes, redis.clone(), metrics.clone()),
            redis,
            metrics,
            lookup_or_claim: Script::new(LOOKUP_OR_CLAIM),
            update_meta: Script::new(UPDATE_META),
            put_copy: Script::new(PUT_COPY),
            release: Script::new(RELEASE),
        }
    }

    /// The Redis store it uses.
    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    /// The near tier's budget (0: off).
    pub fn local_bytes(&self) -> usize {
        self.near.as_ref().map_or(0, |n| n.budget())
    }

    fn key(&self, tag: &str) -> String {
        self.redis.key(&format!("cache:{{{tag}}}"))
    }

    fn copy_key(&self, tag: &str) -> String {
        self.redis.key(&format!("cache-copy:{{{tag}}}"))
    }

    fn fill_key(&self, tag: &str, entry: &str) -> String {
        self.redis.key(&format!("cache-fill:{{{tag}}}:{entry}"))
    }

    /// True while Redis is known down, except for the one caller that probes it
    /// ([`Redis::should_try`]).
    pub fn unavailable(&self) -> bool {
        !self.redis.should_try()
    }

    /// A fresh entry of the near tier, if it holds one (not counted: see `Near::held`).
    pub(super) fn near_held(&self, tag: &str, entry: &str, want: Option<Coding>) -> Option<Stored> {
        self.near.as_ref()?.held(tag, entry, want)
    }

    /// One hit the near tier served (a request answered early).
    pub(super) fn count_near_hit(&self, tag: &str) {
        if let Some(near) = self.near.as_ref() {
            near.count_hit(tag);
        }
    }

    /// A request's lookup: a fresh entry in the near tier, else Redis's answer (offered to
    /// the near tier).
    pub(super) async fn find(
        &self,
        tag: &str,
        entry: &str,
        wait: Duration,
        ticket: Option<&FillTicket>,
        want: Option<Coding>,
    ) -> Option<Stored> {
        let Some(near) = self.near.as_ref() else {
            return self.find_in_redis(tag, entry, wait, ticket, want).await;
        };
        if let Some(stored) = near.get(tag, entry, want) {
            return Some(stored);
        }
        let snapshot = near.snapshot().await;
        let found = self.find_in_redis(tag, entry, wait, ticket, want).await;
        if let Some(stored) = found.as_ref() {
            near.offer(tag, entry, want, stored, snapshot);
        }
        found
    }

    /// The entry in Redis; or, while another request (on any replica) fills it, the entry
    /// once it appears (waiting at most `wait`); or nothing: go upstream. Without a ticket (no
    /// claim token) the request never claims and never waits.
    async fn find_in_redis(
        &self,
        tag: &str,
        entry: &str,
        wait: Duration,
        ticket: Option<&FillTicket>,
        want: Option<Coding>,
    ) -> Option<Stored> {
        let Some(ticket) = ticket else {
            return self.read(tag, entry).await;
        };
        match self
            .lookup_or_claim(tag, entry, wait, &ticket.token, want)
            .await
        {
            Found::Entry(stored) => return Some(stored),
            Found::Claimed => {
                ticket.claimed(entry);
                return None;
            }
            Found::Fetch => return None,
            Found::Busy => {}
        }
        let deadline = Instant::now() + wait;
        let key = self.key(tag);
        let fill = self.fill_key(tag, entry);
        let fields = fields(entry);
        while Instant::now() < deadline {
            tokio::time::sleep(POLL_EVERY).await;
            let (key, fill, fields) = (&key, &fill, &fields);
            let (got, filling): (Vec<Option<Vec<u8>>>, bool) = self
                .redis
                .call("cache_wait", |mut c| async move {
                    redis::pipe()
                        .cmd("HMGET")
                        .arg(key)
                        .arg(&fields[..])
                        .cmd("EXISTS")
                        .arg(fill)
                        .query_async(&mut c)
                        .await
                })
                .await
                .ok()?;
            // A whole entry: filled, or revalidated, by whoever held the claim.
            if let Some(stored) = stored(got) {
                return Some(stored);
            }
            if !filling {
                // The filler gave up (upstream error, uncacheable response): go upstream.
                return None;
            }
        }
        None
    }

    /// The entry alone, no claim.
    async fn read(&self, tag: &str, entry: &str) -> Option<Stored> {
        let key = self.key(tag);
        let fields = fields(entry);
        let got: Vec<Option<Vec<u8>>> = self
            .redis
            .call("cache_get", |mut c| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg(&fields[..])
                    .query_async(&mut c)
                    .await
            })
            .await
            .ok()?;
        stored(got)
    }

    async fn lookup_or_claim(
        &self,
        tag: &str,
        entry: &str,
        wait: Duration,
        token: &str,
        want: Option<Coding>,
    ) -> Found {
        let key = self.key(tag);
        let fill = self.fill_key(tag, entry);
        let copies = self.copy_key(tag);
        let fields = fields(entry);
        let copy = want.map_or(String::new(), |c| copy_field(entry, c));
        let script = &self.lookup_or_claim;
        let found: Result<Value, _> = self
            .redis
            .call("cache_get", |mut c| async move {
                script
                    .key(&key)
                    .key(&fill)
                    .key(&copies)
                    .arg(&fields[..])
                    .arg(wait.as_millis().max(1) as u64)
                    .arg(token)
                    .arg(&copy)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        match found {
            Ok(Value::Array(values)) => {
                let encoded = values.len() == 4;
                let got = values
                    .into_iter()
                    .map(|v| match v {
                        Value::BulkString(b) => Some(b),
                        _ => None,
                    })
                    .collect();
                stored(got).map_or(Found::Fetch, |mut s| {
                    s.encoded = encoded;
                    Found::Entry(s)
                })
            }
            Ok(Value::Int(0)) => Found::Busy,
            Ok(Value::Int(1)) => Found::Claimed,
            _ => Found::Fetch,
        }
    }

    /// Keep `body` as the copy in `coding` of the entry `source` names, if that entry is still
    /// the one it was made from (PUT_COPY), here and in the near tier; when it is not, the
    /// near tier forgets the version the copy was made from.
    pub(super) async fn put_copy(&self, source: &Source, coding: Coding, body: Bytes) -> bool {
        let key = self.key(&source.tag);
        let copies = self.copy_key(&source.tag);
        let [m, h, _] = fields(&source.entry);
        let field = copy_field(&source.entry, coding);
        let script = &self.put_copy;
        let copy = body.clone();
        let stored = self
            .redis
            .call("cache_put_copy", |mut c| async move {
                script
                    .key(&key)
                    .key(&copies)
                    .arg(&m)
                    .arg(&source.internal[..])
                    .arg(&field)
                    .arg(&copy[..])
                    .arg(&h)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        let stored = stored.ok();
        match (stored, &self.near) {
            (Some(1), Some(near)) => near.put_copy(source, coding, body),
            (Some(_), Some(near)) => near.forget_version(source),
            _ => {}
        }
        stored == Some(1)
    }

    /// Give up the claim `token` holds (its request stored nothing), so waiters move on at
    /// once; a claim another request holds is left alone.
    pub async fn release(&self, tag: &str, entry: &str, token: &str) {
        let fill = self.fill_key(tag, entry);
        let script = &self.release;
        let _ = self
            .redis
            .call("cache_release", |mut c| async move {
                script
                    .key(&fill)
                    .arg(token)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
    }

    /// Store an entry and drop its fill claim, in one transaction.
    pub async fn put(&self, tag: &str, entry: &str, stored: Stored, ttl: Duration) -> bool {
        let key = self.key(tag);
        let fill = self.fill_key(tag, entry);
        let size = stored.body.len();
        let ok = self
            .redis
            .call("cache_put", |mut c| async move {
                redis::pipe()
                    .atomic()
                    .cmd("HSET")
                    .arg(&key)
                    .arg(format!("{entry}:m"))
                    .arg(&stored.internal[..])
                    .arg(format!("{entry}:h"))
                    .arg(&stored.header[..])
                    .arg(format!("{entry}:b"))
                    .arg(&stored.body[..])
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(ttl.as_millis() as u64)
                    .ignore()
                    .cmd("DEL")
                    .arg(&fill)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
            .is_ok();
        if ok {
            let route = tag.split(':').next().unwrap_or("");
            self.metrics
                .cache_stored_bytes
                .with_label_values(&[route])
                .inc_by(size as u64);
        }
        ok
    }

    /// A revalidation's new meta and header for an entry that is still whole, its expiry
    /// renewed and its claim dropped (waiters on any replica see the entry at their next poll).
    /// `false` when the entry expired meanwhile: nothing is written, the next request fills it.
    pub async fn put_meta(
        &self,
        tag: &str,
        entry: &str,
        internal: Vec<u8>,
        header: Vec<u8>,
        ttl: Duration,
    ) -> bool {
        let key = self.key(tag);
        let fill = self.fill_key(tag, entry);
        let [m, h, b] = fields(entry);
        let script = &self.update_meta;
        self.redis
            .call("cache_put_meta", |mut c| async move {
                script
                    .key(&key)
                    .key(&fill)
                    .arg(&m)
                    .arg(&h)
                    .arg(&b)
                    .arg(&internal[..])
                    .arg(&header[..])
                    .arg(ttl.as_millis().max(1) as u64)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .is_ok_and(|updated| updated == 1)
    }

    pub async fn delete(&self, tag: &str, entry: &str) -> bool {
        let key = self.key(tag);
        let fields = fields(entry);
        let deleted = self
            .redis
            .call("cache_delete", |mut c| async move {
                redis::cmd("HDEL")
                    .arg(&key)
                    .arg(&fields[..])
                    .query_async::<u64>(&mut c)
                    .await
            })
            .await
            .is_ok_and(|n| n > 0);
        if deleted {
            self.purged(|near| near.forget_url(tag)).await;
        }
        deleted
    }

    /// After a purge or invalidation: this replica's near tier forgets at once, the others
    /// when they read the moved epoch ([`super::near::EPOCH_POLL`]).
    async fn purged(&self, forget: impl FnOnce(&Near)) {
        let Some(near) = self.near.as_ref() else {
            return;
        };
        forget(near);
        let key = Near::epoch_key(&self.redis);
        let key = &key;
        let bumped = self
            .redis
            .call("cache_epoch", |mut c| async move {
                redis::cmd("INCR").arg(key).query_async::<u64>(&mut c).await
            })
            .await;
        if let Err(e) = bumped {
            // The others keep what they hold until it is no longer fresh (or their poll
            // fails and empties their tier): say so.
            log::warn!("cache purge could not reach the other replicas' near tiers: {e}");
        }
    }

    /// Every entry of one URL: one `HLEN` + `UNLINK`, atomically.
    pub async fn purge_url(&self, tag: &str) -> Result<u64, PurgeError> {
        let key = self.key(tag);
        let copies = self.copy_key(tag);
        let (fields, _): (u64, u64) = self
            .redis
            .call("cache_purge", |mut c| async move {
                redis::pipe()
                    .atomic()
                    .cmd("HLEN")
                    .arg(&key)
                    .cmd("UNLINK")
                    .arg(&key)
                    .arg(&copies)
                    .query_async(&mut c)
                    .await
            })
            .await
            .map_err(|e| PurgeError::Store(e.to_string()))?;
        self.purged(|near| near.forget_url(tag)).await;
        Ok(fields / 3)
    }

    /// Every entry of one route (`Some`) or of the whole cache (`None`): `SCAN` + `UNLINK` on
    /// every node that holds keys (each cluster primary in turn).
    pub async fn purge_route(&self, route: Option<&str>) -> Result<u64, PurgeError> {
        // Entries are `PREFIXcache:{ROUTE:HASH}`, their copies `PREFIXcache-copy:{ROUTE:HASH}`
        // (unlinked, not counted); fill claims (`PREFIXcache-fill:...`) are short-lived and
        // left alone.
        let pattern = |kind: &str| {
            format!(
                "{}{}",
                glob_escape(&self.redis.key(kind)),
                match route {
                    Some(r) => format!("{{{}:*", glob_escape(r)),
                    None => "*".into(),
                }
            )
        };
        let (entries, copies) = (pattern("cache:"), pattern("cache-copy:"));
        let nodes = self
            .redis
            .nodes()
            .await
            .map_err(|e| PurgeError::Store(e.to_string()))?;
        let mut purged = 0;
        for node in nodes {
            purged += self.purge_node(&node, &entries).await?;
            self.purge_node(&node, &copies).await?;
        }
        let prefix = route.map_or(String::new(), |r| format!("{r}:"));
        self.purged(|near| near.forget_prefix(&prefix)).await;
        Ok(purged)
    }

    /// The keys matching `pattern` on one node: `SCAN` there, `HLEN` + `UNLINK` there.
    async fn purge_node(&self, node: &Node, pattern: &str) -> Result<u64, PurgeError> {
        let mut cursor: u64 = 0;
        let mut purged = 0;
        for _ in 0..MAX_SCAN_STEPS {
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .redis
                .call("cache_scan", |c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(SCAN_COUNT)
                        .query_async(&mut c.on(node))
                        .await
                })
                .await
                .map_err(|e| PurgeError::Store(e.to_string()))?;
            if !keys.is_empty() {
                let counts: Vec<u64> = self
                    .redis
                    .call("cache_purge", |c| async move {
                        let mut p = redis::pipe();
                        for k in &keys {
                            p.cmd("HLEN").arg(&k[..]);
                        }
                        for k in &keys {
                            p.cmd("UNLINK").arg(&k[..]).ignore();
                        }
                        p.query_async(&mut c.on(node)).await
                    })
                    .await
                    .map_err(|e| PurgeError::Store(e.to_string()))?;
                purged += counts.iter().sum::<u64>() / 3;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(purged)
    }
}

/// The hash fields of one entry: meta, header, body.
fn fields(entry: &str) -> [String; 3] {
    [
        format!("{entry}:m"),
        format!("{entry}:h"),
        format!("{entry}:b"),
    ]
}

/// The start of the field of an entry's copy in `coding` (the script appends the SHA-1 of the
/// entry's meta).
fn copy_field(entry: &str, coding: Coding) -> String {
    format!("{entry}:{}", coding.token())
}

/// The three fields of an entry, when all are there.
fn stored(got: Vec<Option<Vec<u8>>>) -> Option<Stored> {
    let mut it = got.into_iter();
    let (Some(Some(internal)), Some(Some(header)), Some(Some(body))) =
        (it.next(), it.next(), it.next())
    else {
        return None;
    };
    Some(Stored {
        internal,
        header,
        decoded: None,
        body: Bytes::from(body),
        encoded: false,
    })
}

/// Escape Redis glob metacharacters so a prefix matches only itself.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_fields_and_their_reading() {
        assert_eq!(fields("abc"), ["abc:m", "abc:h", "abc:b"]);
        let got = vec![
            Some(b"m".to_vec()),
            Some(b"h".to_vec()),
            Some(b"body".to_vec()),
        ];
        let s = stored(got).expect("whole entry");
        assert_eq!(
            (s.internal.as_slice(), s.header.as_slice()),
            (&b"m"[..], &b"h"[..])
        );
        assert_eq!(s.body, Bytes::from_static(b"body"));
        // Half an entry (a field expired or not yet written) is no entry.
        assert!(stored(vec![Some(b"m".to_vec()), None, Some(b"b".to_vec())]).is_none());
        assert!(stored(Vec::new()).is_none());
    }

    #[test]
    fn purge_patterns_match_only_their_prefix() {
        assert_eq!(glob_escape("api"), "api");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
