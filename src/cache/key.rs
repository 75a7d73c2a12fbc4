//! Cache keys: the primary key of a request, the URL tag its entries are grouped under, and
//! the variance of a request against a stored response's `Vary`.
//!
//! Phases: `cache_key_callback` and `cache_vary_filter`. Invariants: parts are
//! length-prefixed, so no value can spill into the next; the query's parameters are sorted and
//! ignored ones dropped; nothing of a raw path reaches a Redis key or a label except through a
//! hash; `Accept-Encoding` is read by the same parser compression negotiates with, and an
//! encoded body without `Vary` still varies on it (a gzip body never reaches an identity
//! client).

use http::header::HeaderValue;
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::{CacheKey, CacheMeta, VarianceBuilder};
use pingora::http::RequestHeader;

use super::policy::Policy;
use super::storage::FillBounds;
use crate::compress::acceptable_codings;
use crate::fields::Fields;
use crate::headers::vary_tokens;

/// The key of `req` on `route` under `policy`. The primary key frames route, method (`GET`: a
/// HEAD is answered from the GET entry, which Pingora fetches on a HEAD miss), host, path, the
/// normalised query and the policy's `vary` headers; the user tag groups every entry of the
/// URL for purges. A key handed to Pingora gets its [`FillBounds`] from [`with_fill_bounds`];
/// a fresh hit answered in `request_filter` never needs them.
pub fn request_key(route: &str, req: &RequestHeader, policy: &Policy) -> CacheKey {
    let host = request_host(req);
    let url = UrlKey::new(route, &host, req.uri.path(), req.uri.query(), policy);
    let mut primary = Vec::with_capacity(128);
    // Length-prefixed parts: no value can spill into the next one.
    for part in [
        route.as_bytes(),
        b"GET",
        host.as_bytes(),
        req.uri.path().as_bytes(),
        url.query.as_bytes(),
    ] {
        frame(&mut primary, part);
    }
    for name in &policy.vary {
        frame(&mut primary, name.as_str().as_bytes());
        let values: Vec<&[u8]> = req
            .headers
            .get_all(name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        frame(&mut primary, &values.join(&b","[..]));
    }
    CacheKey::new(primary, url.tag)
}

/// `cache_key_callback`: what the storage may spend filling and keeping the entry of `key`.
pub(super) fn with_fill_bounds(key: &mut CacheKey, policy: &Policy) {
    key.extensions.insert(FillBounds {
        body: policy.max_body_bytes,
        wait: policy.lock_timeout,
        keep: policy.keep_for_revalidation,
    });
}

/// `cache_vary_filter`: the variance of a request against a stored (or about to be stored)
/// response: its `Vary` headers, plus `Accept-Encoding` whenever the body is encoded.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let names = vary_names(meta.headers());
    if names.is_empty() {
        return None;
    }
    let mut builder = VarianceBuilder::new();
    for name in &names {
        let value = if name == "accept-encoding" {
            accepted_encodings(req).into_bytes()
        } else {
            let values: Vec<&[u8]> = req
                .headers
                .get_all(name.as_str())
                .iter()
                .map(HeaderValue::as_bytes)
                .collect();
            values.join(&b","[..])
        };
        builder.add_owned_value(name, value);
    }
    builder.finalize()
}

/// Lower-cased `Vary` names, sorted; `accept-encoding` added when the body is encoded.
pub(super) fn vary_names(headers: &http::HeaderMap) -> Vec<String> {
    names_of(
        headers.get_all(http::header::VARY).iter(),
        headers.get(http::header::CONTENT_ENCODING),
    )
}

/// [`vary_names`] of a held entry's header (a hit answers only one with none).
pub(super) fn held_vary_names(resp: &impl Fields) -> Vec<String> {
    names_of(
        resp.get_all(&http::header::VARY),
        resp.get(&http::header::CONTENT_ENCODING),
    )
}

/// The `Vary` names of a response with these `Vary` values and this `Content-Encoding`.
fn names_of<'a>(
    vary: impl Iterator<Item = &'a HeaderValue>,
    content_encoding: Option<&HeaderValue>,
) -> Vec<String> {
    let mut names: Vec<String> = vary_tokens(vary).map(str::to_ascii_lowercase).collect();
    let encoded = content_encoding.is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        names.push("accept-encoding".into());
    }
    names.sort();
    names.dedup();
    names
}

/// `Accept-Encoding` reduced to the set of codings the client accepts, read by the same
/// parser compression negotiates with.
pub(super) fn accepted_encodings(req: &RequestHeader) -> String {
    acceptable_codings(
        req.headers
            .get_all(http::header::ACCEPT_ENCODING)
            .iter()
            .map(HeaderValue::as_bytes),
    )
}

/// The request's host as keys hold it ([`host_key`]): `Host`, else the URI's authority
/// (HTTP/2).
pub(super) fn request_host(req: &RequestHeader) -> String {
    host_key(raw_host(req))
}

/// The request's host as sent: `Host`, else the URI's authority (HTTP/2), else empty.
pub(super) fn raw_host(req: &RequestHeader) -> &[u8] {
    req.headers
        .get(http::header::HOST)
        .map(HeaderValue::as_bytes)
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
        .unwrap_or(b"")
}

/// A host as cache keys and purges hold it: ASCII lower-cased, and every byte outside visible
/// ASCII, `%` included, written as `%XX`, so two different hosts never share a key (a `Host`
/// of non-UTF-8 bytes used to read as no host at all).
pub(super) fn host_key(host: &[u8]) -> String {
    let mut out = String::with_capacity(host.len());
    for &b in host {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b.to_ascii_lowercase()));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(super) fn frame(out: &mut Vec<u8>, part: &[u8]) {
    // Written in place: a key frames five or more parts on every cached request.
    out.extend_from_slice(itoa::Buffer::new().format(part.len()).as_bytes());
    out.push(b':');
    out.extend_from_slice(part);
    out.push(b';');
}

/// A URL as the cache groups it: all entries of one URL (variants, configured vary headers)
/// share the tag `ROUTE:HASH`, which is how purges and invalidations find them.
pub(super) struct UrlKey {
    /// The normalised query: parameters sorted, ignored ones removed.
    pub(super) query: String,
    /// `route:hex(blake2(host, path, query))`: the storage's group for this URL.
    pub(super) tag: String,
}

impl UrlKey {
    pub(super) fn new(
        route: &str,
        host: &str,
        path: &str,
        query: Option<&str>,
        policy: &Policy,
    ) -> Self {
        let mut params: Vec<&str> = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let name = p.split('=').next().unwrap_or("");
                !policy.ignore_query.iter().any(|i| i == name)
            })
            .collect();
        params.sort_unstable();
        let query = params.join("&");
        let mut framed = Vec::with_capacity(host.len() + path.len() + query.len() + 32);
        frame(&mut framed, host.as_bytes());
        frame(&mut framed, path.as_bytes());
        frame(&mut framed, query.as_bytes());
        let hash = pingora::cache::key::hash_key(&framed);
        let mut tag = String::with_capacity(route.len() + 1 + 2 * hash.len());
        tag.push_str(route);
        tag.push(':');
        push_hex(&mut tag, &hash);
        Self { query, tag }
    }
}

/// The name of a key's entry within its URL's group: the hex of pingora's combined hash, as
/// `CacheHashKey::combined` writes it, without its per-byte `format!` (on every lookup).
pub(super) fn entry_name(key: &impl CacheHashKey) -> String {
    let bin = key.combined_bin();
    let mut name = String::with_capacity(2 * bin.len());
    push_hex(&mut name, &bin);
    name
}

/// Lower-case hex of `bytes` appended to `out` (on every cached request: no `format!` per byte).
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::tests::policy;
    use pingora::cache::key::CacheHashKey;

    #[test]
    fn hex_is_two_lower_case_digits_per_byte() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut out = String::new();
        push_hex(&mut out, &bytes);
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn entry_names_are_pingoras_combined_keys() {
        let p = policy();
        let req = RequestHeader::build("GET", b"/x?a=1", None).expect("req");
        let mut key = request_key("r", &req, &p);
        assert_eq!(entry_name(&key), key.combined());
        key.set_variance_key([7; 16]);
        assert_eq!(entry_name(&key), key.combined());
    }

    #[test]
    fn query_is_normalised() {
        let p = policy();
        let a = UrlKey::new("r", "h", "/x", Some("b=2&a=1&utm_source=x"), &p);
        let b = UrlKey::new("r", "h", "/x", Some("a=1&b=2"), &p);
        let c = UrlKey::new("r", "h", "/x", Some("a=2&b=2"), &p);
        assert_eq!(a.tag, b.tag);
        assert_eq!(a.query, "a=1&b=2");
        assert_ne!(a.tag, c.tag);
    }

    /// Found by the cache_key fuzz target: two hosts that are not UTF-8 both read as "" and
    /// shared a key.
    #[test]
    fn distinct_hosts_never_share_a_key() {
        let p = policy();
        let key = |host: &[u8]| {
            let mut r = RequestHeader::build("GET", b"/x", None).expect("req");
            r.insert_header("host", HeaderValue::from_bytes(host).expect("value"))
                .expect("h");
            request_key("r", &r, &p).primary_bin()
        };
        assert_ne!(key(b"a\xe0b"), key(b""));
        assert_ne!(key(b"a\xe0b"), key(b"a\xe1b"));
        assert_ne!(key(b"a%E0b"), key(b"a\xe0b"));
        assert_eq!(key(b"Example.COM"), key(b"example.com"));
        assert_eq!(host_key(b"Example.com:8080"), "example.com:8080");
    }

    #[test]
    fn accept_encoding_normalised() {
        let mut a = RequestHeader::build("GET", b"/", None).expect("req");
        a.insert_header("accept-encoding", "gzip, br;q=0, deflate")
            .expect("h");
        assert_eq!(accepted_encodings(&a), "deflate,gzip");
    }
}
