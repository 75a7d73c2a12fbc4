//! Encoded copies: a stored entry keeps, beside its identity body, the body as each coding
//! clients asked for (gzip, br, zstd) once one was made, so a cache hit costs no compression.
//!
//! Phases: `cache_key_callback` names the coding this request would be answered in
//! ([`Wanted`], in the key's extensions, for the storage); the storage's lookup serves the copy
//! when it has one, else the identity body and notes it here; `response_filter` and
//! `response_body_filter` collect what compression made of that identity body; `logging`
//! stores it beside the entry ([`super::Cache::save_copy`]). A hit on a copy is served with the
//! entry's own meta (so `Vary` lookups and freshness are the entry's), and `response_filter`
//! rewrites its header exactly as compression rewrites a response ([`Wanted::apply`] through
//! `compress::encoded_header`): a hit on the copy and a freshly compressed hit carry the same
//! fields.
//!
//! Invariants: one upstream fetch still serves every coding (the copy is made from the stored
//! identity body on the first hit that wants it, never fetched); a copy is only ever attached
//! to the entry it was made from (the store checks the entry's internal meta, which changes
//! with every fill and revalidation, before writing it); a fill, a revalidation or a purge of
//! an entry drops its copies with it; a copy counts in the store's byte bound and is no larger
//! than the route's `max_body_bytes`. Range and HEAD requests are never served a copy (ranges are
//! cut from the identity body, as before).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pingora::cache::CacheKey;

use crate::compress::{encoded_header, Coding};
use crate::fields::Fields;

/// The coding this request would be answered in, carried in the cache key's extensions, and
/// what the lookup served it (the storage API passes nothing else per request).
pub(super) struct Wanted {
    pub(super) coding: Coding,
    served: Mutex<Served>,
}

/// What the lookup served a request that wanted a copy.
#[derive(Clone, Default)]
enum Served {
    #[default]
    Nothing,
    /// The copy, this long.
    Copy(usize),
    /// The identity body of this entry: the copy is made from it.
    Identity(Source),
}

/// The entry a copy would be made from, as the lookup found it.
#[derive(Clone)]
pub(super) struct Source {
    pub(super) tag: String,
    pub(super) entry: String,
    pub(super) internal: Vec<u8>,
}

impl Wanted {
    pub(super) fn new(coding: Coding) -> Self {
        Self {
            coding,
            served: Mutex::new(Served::Nothing),
        }
    }

    pub(super) fn of(key: &CacheKey) -> Option<Arc<Wanted>> {
        key.extensions.get::<Arc<Wanted>>().cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Served> {
        // One plain field: a panic elsewhere cannot leave it inconsistent.
        self.served.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lookup served the identity body of this entry.
    pub(super) fn served_identity(&self, source: Source) {
        *self.lock() = Served::Identity(source);
    }

    /// The lookup served the copy, `len` bytes.
    pub(super) fn served_copy(&self, len: usize) {
        *self.lock() = Served::Copy(len);
    }

    fn source(&self) -> Option<Source> {
        match &*self.lock() {
            Served::Identity(source) => Some(source.clone()),
            Served::Nothing | Served::Copy(_) => None,
        }
    }

    /// `response_filter` of a response served from the cache: when its body is the copy, the
    /// stored header rewritten to describe it.
    pub(super) fn apply(&self, resp: &mut impl Fields) {
        if let Served::Copy(len) = *self.lock() {
            if resp.status() == http::StatusCode::OK {
                encoded_header(resp, self.coding, len);
            }
        }
    }
}

/// One request's copy in the making (a field of the cache's request state).
#[derive(Default)]
pub(super) struct Collector {
    pub(super) wanted: Option<Arc<Wanted>>,
    /// The encoded body so far, once the response turned out to be the wanted coding of an
    /// identity hit; `None` otherwise, or once it outgrew `limit`.
    body: Option<Vec<u8>>,
    limit: usize,
    done: bool,
}

impl Collector {
    /// `response_filter`, after compression decided: collect when this is a 200 from an
    /// identity hit, encoded in the wanted coding.
    pub(super) fn begin(&mut self, resp: &impl Fields, limit: usize) {
        let Some(wanted) = self.wanted.as_ref() else {
            return;
        };
        let encoded = resp
            .get(&http::header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes() == wanted.coding.token().as_bytes());
        if resp.status() == http::StatusCode::OK && encoded && wanted.source().is_some() {
            self.body = Some(Vec::new());
            self.limit = limit;
        }
    }

    /// `response_body_filter`, after compression encoded the chunk.
    pub(super) fn chunk(&mut self, chunk: Option<&Bytes>, end: bool) {
        let Some(body) = self.body.as_mut() else {
            return;
        };
        let add = chunk.map_or(&[][..], |b| &b[..]);
        if body.len() + add.len() > self.limit {
            self.body = None;
            return;
        }
        body.extend_from_slice(add);
        self.done = end;
    }

    /// The finished copy: what it was made from, its coding and its body.
    pub(super) fn take(&mut self) -> Option<(Source, Coding, Bytes)> {
        if !self.done {
            return None;
        }
        let body = self.body.take()?;
        let wanted = self.wanted.as_ref()?;
        Some((wanted.source()?, wanted.coding, Bytes::from(body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;

    fn source() -> Source {
        Source {
            tag: "r:x".into(),
            entry: "e".into(),
            internal: vec![1, 2, 3],
        }
    }

    /// A hit on a copy says what its body is: its coding, its exact length, a weak validator,
    /// no byte ranges, and that it varies by Accept-Encoding; other hits are left alone.
    #[test]
    fn a_hit_on_a_copy_describes_the_copy() {
        let stored = || {
            let mut h = ResponseHeader::build(200, None).expect("header");
            h.insert_header("content-length", "5000").expect("h");
            h.insert_header("etag", "\"v1\"").expect("h");
            h.insert_header("accept-ranges", "bytes").expect("h");
            h
        };
        let wanted = Wanted::new(Coding::Gzip);
        let mut identity = stored();
        wanted.apply(&mut identity);
        assert_eq!(
            identity.headers["content-length"], "5000",
            "nothing served yet"
        );
        wanted.served_copy(1234);
        let mut h = stored();
        wanted.apply(&mut h);
        let h = &h.headers;
        assert_eq!(h["content-encoding"], "gzip");
        assert_eq!(h["content-length"], "1234");
        assert_eq!(h["etag"], "W/\"v1\"");
        assert!(h.get("accept-ranges").is_none());
        assert!(h.get("transfer-encoding").is_none());
        assert_eq!(h["vary"], "Accept-Encoding");
        let mut not_modified = ResponseHeader::build(304, None).expect("header");
        wanted.apply(&mut not_modified);
        assert!(not_modified.headers.get("content-encoding").is_none());
    }

    fn collector(wanted: &Arc<Wanted>) -> Collector {
        Collector {
            wanted: Some(wanted.clone()),
            ..Collector::default()
        }
    }

    /// Only a whole 200 in the wanted coding, made from an identity hit, becomes a copy, and
    /// never one past the limit.
    #[test]
    fn only_a_whole_encoded_identity_hit_is_collected() {
        let wanted = Arc::new(Wanted::new(Coding::Gzip));
        let mut gz = ResponseHeader::build(200, None).expect("header");
        gz.insert_header("content-encoding", "gzip").expect("h");
        let chunk = Bytes::from_static(b"0123456789");

        // Not an identity hit (a miss, or the copy was served): nothing collected.
        let mut c = collector(&wanted);
        c.begin(&gz, 100);
        c.chunk(Some(&chunk), true);
        assert!(c.take().is_none());

        wanted.served_identity(source());
        // Another coding than the wanted one: nothing.
        let mut br = gz.clone();
        br.insert_header("content-encoding", "br").expect("h");
        let mut c = collector(&wanted);
        c.begin(&br, 100);
        c.chunk(Some(&chunk), true);
        assert!(c.take().is_none());

        // Unfinished: nothing.
        let mut c = collector(&wanted);
        c.begin(&gz, 100);
        c.chunk(Some(&chunk), false);
        assert!(c.take().is_none());

        // Over the limit: nothing.
        let mut c = collector(&wanted);
        c.begin(&gz, 15);
        c.chunk(Some(&chunk), false);
        c.chunk(Some(&chunk), true);
        assert!(c.take().is_none());

        let mut c = collector(&wanted);
        c.begin(&gz, 100);
        c.chunk(Some(&chunk), false);
        c.chunk(None, true);
        let (source, coding, body) = c.take().expect("copy");
        assert_eq!((source.entry.as_str(), coding), ("e", Coding::Gzip));
        assert_eq!(body, chunk);
    }
}
