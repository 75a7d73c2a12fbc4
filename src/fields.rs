//! The header fields of a response being written, wherever they live: a proxied response
//! taken apart from Pingora's header ([`Bare`]), Pingora's [`ResponseHeader`] itself (with
//! `[server] preserve_header_case`), or a [`Response`] (one Rampart makes itself: `respond`,
//! the connection gate; and a cache entry held in process, whose hits edit it).
//!
//! Phases: every one that writes a response header. The rules that add fields (security
//! headers, CORS, rate-limit headers, compression, the cache's status fields) are written
//! once, against [`Fields`].
//!
//! Why three: each `ResponseHeader::insert_header` parses its name again, copies a custom one
//! and hashes it into a map (two with a case map); on a self-made 429, on a cache hit and on
//! a passthrough those inserts were the largest single cost of Rampart's own in callgrind.
//! A proxied response is edited in `http`'s map, one insert per field ([`Bare`]). A response
//! Rampart makes has a dozen or two fields: a list searched in place is cheaper than any map
//! at that size. The gate writes it to the socket as it is (`Fields::head_to_h1`); a response
//! Pingora sends becomes a `ResponseHeader` once, at the end ([`Response::into_pingora`]). A
//! stored header keeps the spelling it was stored with ([`Response::of_pingora`]).
//!
//! Invariants: [`Fields::set`] replaces every value under the name and [`Fields::add`] keeps
//! them, as `insert_header` and `append_header` do; a [`Response`] is written with the bytes
//! Pingora writes for the same fields set in the same order (unit tests below; after a
//! removal `http`'s map may move a later name forward, and the order of different names
//! carries no meaning, RFC 9110 section 5.3).

use bytes::{BufMut, Bytes};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use pingora::http::ResponseHeader;

/// A response's status and header fields, to read and to change.
pub trait Fields {
    fn status(&self) -> StatusCode;
    /// The first value under `name`.
    fn get(&self, name: &HeaderName) -> Option<&HeaderValue>;
    /// Every value under `name`, in order.
    fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a HeaderValue>;
    /// The names present (a name may repeat).
    fn names(&self) -> impl Iterator<Item = &HeaderName>;
    /// `name: value`, replacing what was under `name`.
    fn set(&mut self, name: HeaderName, value: HeaderValue);
    /// `name: value` unless something is under `name` already (a field the upstream set
    /// itself wins).
    fn set_absent(&mut self, name: HeaderName, value: HeaderValue) {
        if self.get(&name).is_none() {
            self.set(name, value);
        }
    }
    /// `name: value` after what is under `name` already.
    fn add(&mut self, name: HeaderName, value: HeaderValue);
    fn remove(&mut self, name: &HeaderName);
    /// The status line and the fields as HTTP/1.1 bytes with the empty line that ends them,
    /// as Pingora writes them: for the answers the connection gate writes on the socket.
    fn head_to_h1(&self, out: &mut Vec<u8>);
}

/// `HTTP/1.1 <code> <reason>` and its line end.
fn status_line(out: &mut Vec<u8>, status: StatusCode, reason: Option<&str>) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_slice(b" ");
    out.put_slice(reason.unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
}

impl Fields for ResponseHeader {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.headers.get(name)
    }

    fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a HeaderValue> {
        self.headers.get_all(name).iter()
    }

    fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.headers.keys()
    }

    // Pingora's inserts fail only for a name or value that does not parse; both are parsed.
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        let _ = self.insert_header(name, value);
    }

    fn add(&mut self, name: HeaderName, value: HeaderValue) {
        let _ = self.append_header(name, value);
    }

    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }

    fn head_to_h1(&self, out: &mut Vec<u8>) {
        status_line(out, self.status, self.get_reason_phrase());
        self.header_to_h1_wire(out);
        out.put_slice(b"\r\n");
    }
}

/// `n` as a field value. Below [`NUMBERS`] (counts, seconds and short lengths: the
/// rate-limit fields, `Retry-After`, `Age`, a problem body's `Content-Length`) it is a clone
/// of a value made once, which allocates nothing; `HeaderValue::from` allocates and formats
/// each time (about 400 instructions, several per 429).
pub fn number(n: u64) -> HeaderValue {
    // Each value's digits are kept for the life of the process: a static value is cloned
    // without touching a reference count shared by the worker threads.
    static SMALL: std::sync::LazyLock<Vec<HeaderValue>> = std::sync::LazyLock::new(|| {
        (0..NUMBERS)
            .map(|n| HeaderValue::from_static(Box::leak(n.to_string().into_boxed_str())))
            .collect()
    });
    match usize::try_from(n).ok().and_then(|i| SMALL.get(i)) {
        Some(value) => value.clone(),
        None => HeaderValue::from(n),
    }
}

/// How many values [`number`] keeps.
const NUMBERS: u64 = 1024;

/// A proxied response's header taken apart into `http`'s parts, without Pingora's case map,
/// while the phases that edit it run ([`Bare::edit`]).
///
/// Why: Pingora's `ResponseHeader` gives no mutable access to its map, so each
/// `insert_header` parses the name again, copies a custom name twice (its spelling and the
/// name) and inserts into two maps (values and case). In callgrind those inserts were a
/// passthrough's largest cost of Rampart's own. Here a field is one insert of a constant
/// name into one map. The price is the upstream's spelling of names: they are sent as
/// Pingora spells names it has no case for (twelve common ones titled, the rest lower case),
/// as Envoy and HAProxy send HTTP/1 names by default. `[server] preserve_header_case` keeps
/// the spelling (and Pingora's inserts).
pub struct Bare {
    parts: http::response::Parts,
    /// A reason phrase other than the status's own.
    reason: Option<String>,
}

/// Room for the fields a response gets here (security, CORS, rate limits, cache status,
/// compression), reserved once instead of the map growing twice.
const ROOM: usize = 16;

impl Bare {
    /// `edit` on `header` taken apart; put back without a case map (status, reason, fields
    /// and extensions kept).
    pub fn edit<T>(header: &mut ResponseHeader, edit: impl FnOnce(&mut Bare) -> T) -> T {
        let reason = header
            .get_reason_phrase()
            .filter(|r| Some(*r) != header.status.canonical_reason())
            .map(str::to_owned);
        let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
        let mut parts = http::response::Parts::from(std::mem::replace(header, empty));
        parts.headers.reserve(ROOM);
        let mut bare = Bare { parts, reason };
        let out = edit(&mut bare);
        *header = ResponseHeader::from(bare.parts);
        if let Some(reason) = bare.reason {
            let _ = header.set_reason_phrase(Some(&reason));
        }
        out
    }
}

impl Fields for Bare {
    fn status(&self) -> StatusCode {
        self.parts.status
    }

    fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.parts.headers.get(name)
    }

    fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a HeaderValue> {
        self.parts.headers.get_all(name).iter()
    }

    fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.parts.headers.keys()
    }

    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.parts.headers.insert(name, value);
    }

    // One lookup of the name instead of `get`, then `insert`'s own.
    fn set_absent(&mut self, name: HeaderName, value: HeaderValue) {
        if let header::Entry::Vacant(slot) = self.parts.headers.entry(name) {
            slot.insert(value);
        }
    }

    // A few dozen fields: never past http's 32,768.
    fn add(&mut self, name: HeaderName, value: HeaderValue) {
        let _ = self.parts.headers.try_append(name, value);
    }

    fn remove(&mut self, name: &HeaderName) {
        self.parts.headers.remove(name);
    }

    /// What Pingora writes for the header put back (`header_to_h1_wire` without a case map).
    fn head_to_h1(&self, out: &mut Vec<u8>) {
        let reason = self.reason.as_deref();
        status_line(
            out,
            self.status(),
            reason.or(self.status().canonical_reason()),
        );
        for (name, value) in &self.parts.headers {
            out.put_slice(titled(name).as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
        out.put_slice(b"\r\n");
    }
}

/// A response Rampart writes itself, or a stored one a cache hit sends: its status and
/// fields in the order they were set, every value of a name kept beside the first (as
/// Pingora writes them), so it is written in one pass.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    /// A reason phrase other than the status's own (an upstream's, kept by the cache).
    reason: Option<Box<str>>,
    fields: Vec<Field>,
    /// One bit per name in `fields`, at [`bit`] of its key: a name whose bit is clear is not
    /// there, so most calls (setting a name not set yet, asking for one that is absent) skip
    /// the search. A search of the ~17 fields of a 429 was most of `set`'s cost. Bits are
    /// never cleared (a removed name costs a search later, nothing else).
    names: u64,
}

#[derive(Debug, Clone)]
struct Field {
    /// [`key`] of the name: most names differ there, and `HeaderName`'s own comparison
    /// (its representation, then its bytes) was most of a search's cost.
    key: u64,
    name: HeaderName,
    value: HeaderValue,
    /// The name as the upstream spelled it (a stored response); `None`: as Pingora spells
    /// names it has no case for ([`titled`]).
    spelling: Option<Bytes>,
}

impl Field {
    fn is(&self, key: u64, name: &HeaderName) -> bool {
        self.key == key && self.name == *name
    }
}

/// The bit of [`Response::names`] for a name's `key`.
fn bit(key: u64) -> u64 {
    1 << (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58)
}

/// The length and the first and last eight bytes of a name, folded: equal names have equal
/// keys; different names almost never do.
fn key(name: &HeaderName) -> u64 {
    let bytes = name.as_str().as_bytes();
    let n = bytes.len() as u64;
    match (bytes.first_chunk::<8>(), bytes.last_chunk::<8>()) {
        (Some(head), Some(tail)) => {
            u64::from_le_bytes(*head) ^ u64::from_le_bytes(*tail).rotate_left(29) ^ n
        }
        _ => bytes
            .iter()
            .fold(n, |key, &b| key.rotate_left(8) ^ u64::from(b)),
    }
}

impl Response {
    /// No fields yet, room for `fields`.
    pub fn new(status: StatusCode, fields: usize) -> Self {
        Self {
            status,
            reason: None,
            fields: Vec::with_capacity(fields),
            names: 0,
        }
    }

    /// A copy of Pingora's header: its status, reason, fields and their spelling. Made once
    /// per stored entry, so that each hit edits a list instead of Pingora's maps.
    pub fn of_pingora(header: &ResponseHeader) -> Self {
        let reason = header
            .get_reason_phrase()
            .filter(|r| Some(*r) != header.status.canonical_reason())
            .map(Box::from);
        let mut fields = Vec::with_capacity(header.headers.len() + 12);
        let mut names = 0;
        let mut push = |name: &HeaderName, value: &HeaderValue, spelling: Option<Bytes>| {
            let key = key(name);
            names |= bit(key);
            fields.push(Field {
                key,
                name: name.clone(),
                value: value.clone(),
                spelling,
            })
        };
        if header.has_case() {
            // Both iterate in the order fields were added (Pingora's own `map` zips them too).
            for ((name, value), (case, _)) in header.headers.iter().zip(header.case_header_iter()) {
                push(name, value, Some(Bytes::copy_from_slice(case.as_slice())));
            }
        } else {
            for (name, value) in header.headers.iter() {
                push(name, value, None);
            }
        }
        Self {
            status: header.status,
            reason,
            fields,
            names,
        }
    }

    /// The same response as Pingora's header, to send through a Pingora session.
    pub fn into_pingora(self) -> ResponseHeader {
        if self.fields.iter().any(|f| f.spelling.is_some()) {
            return self.into_pingora_spelled();
        }
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = self.status;
        let mut headers = HeaderMap::with_capacity(self.fields.len());
        for field in self.fields {
            // A few dozen fields: never past http's 32,768.
            let _ = headers.try_append(field.name, field.value);
        }
        parts.headers = headers;
        // No case map: Pingora writes names as `head_to_h1` does.
        let mut header = ResponseHeader::from(parts);
        if let Some(reason) = self.reason {
            let _ = header.set_reason_phrase(Some(&reason));
        }
        header
    }

    /// [`Response::into_pingora`] keeping the upstream's spelling, in Pingora's case map.
    fn into_pingora_spelled(self) -> ResponseHeader {
        let Ok(mut header) = ResponseHeader::build(self.status, Some(self.fields.len())) else {
            // Unreachable: the status is a `StatusCode` already.
            return ResponseHeader::from(http::Response::new(()).into_parts().0);
        };
        for field in self.fields {
            let spelling = field
                .spelling
                .unwrap_or_else(|| Bytes::copy_from_slice(titled(&field.name).as_bytes()));
            let _ = header.append_header(spelling, field.value);
        }
        if let Some(reason) = self.reason {
            let _ = header.set_reason_phrase(Some(&reason));
        }
        header
    }
}

/// How Pingora spells a name it has no case for: these standard names titled, the rest as
/// `http` keeps them (lower case). Pingora's own table (`titled_header_name_str`) is
/// crate-private; the unit test below checks this one against its output.
fn titled(name: &HeaderName) -> &str {
    match *name {
        header::ACCEPT_RANGES => "Accept-Ranges",
        header::AGE => "Age",
        header::CACHE_CONTROL => "Cache-Control",
        header::CONNECTION => "Connection",
        header::CONTENT_TYPE => "Content-Type",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::CONTENT_LENGTH => "Content-Length",
        header::DATE => "Date",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::HOST => "Host",
        header::SERVER => "Server",
        header::SET_COOKIE => "Set-Cookie",
        _ => name.as_str(),
    }
}

impl Response {
    /// Whether a name of key `key` may be in the list (its bit is set).
    fn may_hold(&self, key: u64) -> bool {
        self.names & bit(key) != 0
    }

    /// Where the first field named `name` (of key `key`) is.
    fn position(&self, key: u64, name: &HeaderName) -> Option<usize> {
        if !self.may_hold(key) {
            return None;
        }
        self.fields.iter().position(|f| f.is(key, name))
    }

    /// `field` at the end, its name's bit set.
    fn push(&mut self, field: Field) {
        self.names |= bit(field.key);
        self.fields.push(field);
    }
}

impl Fields for Response {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        let key = key(name);
        self.position(key, name).map(|i| &self.fields[i].value)
    }

    fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a HeaderValue> {
        let key = key(name);
        let first = self.position(key, name).unwrap_or(self.fields.len());
        self.fields[first..]
            .iter()
            .filter(move |f| f.is(key, name))
            .map(|f| &f.value)
    }

    fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.fields.iter().map(|f| &f.name)
    }

    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        let key = key(&name);
        match self.position(key, &name) {
            Some(first) => {
                // Spelled anew, as Pingora's case map does on an insert.
                self.fields[first].value = value;
                self.fields[first].spelling = None;
                // The name's other values follow its first.
                let more = self.fields[first + 1..]
                    .iter()
                    .take_while(|f| f.is(key, &name))
                    .count();
                self.fields.drain(first + 1..first + 1 + more);
            }
            None => self.push(Field {
                key,
                name,
                value,
                spelling: None,
            }),
        }
    }

    fn add(&mut self, name: HeaderName, value: HeaderValue) {
        let key = key(&name);
        let field = Field {
            key,
            name,
            value,
            spelling: None,
        };
        let last = if self.may_hold(key) {
            self.fields.iter().rposition(|f| f.is(key, &field.name))
        } else {
            None
        };
        match last {
            Some(last) => self.fields.insert(last + 1, field),
            None => self.push(field),
        }
    }

    fn remove(&mut self, name: &HeaderName) {
        let key = key(name);
        if self.may_hold(key) {
            self.fields.retain(|f| !f.is(key, name));
        }
    }

    /// What Pingora writes for the same header (`header_to_h1_wire` without a case map).
    fn head_to_h1(&self, out: &mut Vec<u8>) {
        let reason = self.reason.as_deref();
        status_line(out, self.status, reason.or(self.status.canonical_reason()));
        for field in &self.fields {
            match &field.spelling {
                Some(spelling) => out.put_slice(spelling),
                None => out.put_slice(titled(&field.name).as_bytes()),
            }
            out.put_slice(b": ");
            out.put_slice(field.value.as_bytes());
            out.put_slice(b"\r\n");
        }
        out.put_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation, and every name Pingora titles, on both kinds.
    fn fill(f: &mut impl Fields) {
        for name in [
            header::ACCEPT_RANGES,
            header::AGE,
            header::CACHE_CONTROL,
            header::CONNECTION,
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            header::CONTENT_LENGTH,
            header::DATE,
            header::TRANSFER_ENCODING,
            header::HOST,
            header::SERVER,
            header::SET_COOKIE,
            header::VARY,
            header::X_FRAME_OPTIONS,
        ] {
            f.set(name, HeaderValue::from_static("v"));
        }
        let name = HeaderName::from_static;
        let value = HeaderValue::from_static;
        f.set(name("x-one"), value("1"));
        f.add(name("x-two"), value("a"));
        f.add(header::VARY, value("w"));
        f.add(name("x-two"), value("b"));
        f.set(name("x-one"), value("2"));
        f.set(name("x-gone"), value("z"));
        f.remove(&name("x-gone"));
        f.set_absent(name("x-one"), value("kept 2"));
        f.set_absent(name("x-three"), value("3"));
        f.add(header::SET_COOKIE, HeaderValue::from_static("c"));
        f.set(header::SET_COOKIE, HeaderValue::from_static("d"));
    }

    #[test]
    fn a_response_reads_and_writes_as_pingora_does() {
        let mut pingora = ResponseHeader::build_no_case(429, None).expect("header");
        let mut ours = Response::new(StatusCode::TOO_MANY_REQUESTS, 4);
        fill(&mut pingora);
        fill(&mut ours);
        let vary = |f: &dyn Fn(&HeaderName) -> Vec<HeaderValue>| f(&header::VARY);
        assert_eq!(
            vary(&|n| pingora.get_all(n).cloned().collect()),
            vary(&|n| ours.get_all(n).cloned().collect())
        );
        let one = HeaderName::from_static("x-one");
        assert_eq!(
            Fields::get(&ours, &one),
            Some(&HeaderValue::from_static("2")),
            "set_absent keeps what is there"
        );
        assert_eq!(
            Fields::get(&ours, &HeaderName::from_static("x-three")),
            Some(&HeaderValue::from_static("3"))
        );
        assert!(Fields::get(&ours, &HeaderName::from_static("x-gone")).is_none());

        let mut expected = Vec::new();
        pingora.head_to_h1(&mut expected);
        assert!(expected.starts_with(b"HTTP/1.1 429 Too Many Requests\r\nAccept-Ranges: v\r\n"));
        let mut written = Vec::new();
        ours.head_to_h1(&mut written);
        assert_eq!(
            String::from_utf8_lossy(&written),
            String::from_utf8_lossy(&expected)
        );
        let mut converted = Vec::new();
        ours.into_pingora().head_to_h1(&mut converted);
        assert_eq!(converted, expected);
    }

    /// More names than `names` has bits, so they share bits: a name whose bit another name
    /// set is still found only if it is there, before and after removals.
    #[test]
    fn names_sharing_a_bit_are_told_apart() {
        let names: Vec<HeaderName> = (0..150)
            .map(|i| HeaderName::try_from(format!("x-field-{i}")).expect("name"))
            .collect();
        let value = |i: usize| HeaderValue::from(i as u64);
        let mut ours = Response::new(StatusCode::OK, 0);
        for (i, name) in names.iter().enumerate().step_by(2) {
            ours.set(name.clone(), value(i));
        }
        for (i, name) in names.iter().enumerate() {
            let expected = (i % 2 == 0).then(|| value(i));
            assert_eq!(Fields::get(&ours, name), expected.as_ref(), "{name}");
        }
        for name in names.iter().step_by(4) {
            ours.remove(name);
        }
        for (i, name) in names.iter().enumerate() {
            ours.add(name.clone(), value(1000 + i));
        }
        for (i, name) in names.iter().enumerate() {
            let mut expected = Vec::new();
            if i % 2 == 0 && i % 4 != 0 {
                expected.push(value(i));
            }
            expected.push(value(1000 + i));
            let got: Vec<HeaderValue> = ours.get_all(name).cloned().collect();
            assert_eq!(got, expected, "{name}");
        }
    }

    /// A stored header keeps its spelling and reason through the list, written as Pingora
    /// writes it, and back into Pingora's header.
    #[test]
    fn a_stored_header_keeps_its_spelling() {
        let mut stored = ResponseHeader::build(200, None).expect("header");
        stored.append_header("ETag", "\"a\"").expect("etag");
        stored.append_header("x-Custom", "1").expect("custom");
        stored.append_header("content-type", "a/b").expect("type");
        stored.set_reason_phrase(Some("Fine")).expect("reason");
        let mut pingora = stored.clone();
        let mut ours = Response::of_pingora(&stored);
        pingora.set(header::AGE, HeaderValue::from_static("3"));
        ours.set(header::AGE, HeaderValue::from_static("3"));
        pingora.set(header::CONTENT_TYPE, HeaderValue::from_static("c/d"));
        ours.set(header::CONTENT_TYPE, HeaderValue::from_static("c/d"));
        let (mut expected, mut written, mut back) = (Vec::new(), Vec::new(), Vec::new());
        pingora.head_to_h1(&mut expected);
        ours.head_to_h1(&mut written);
        ours.into_pingora().head_to_h1(&mut back);
        assert_eq!(
            String::from_utf8_lossy(&written),
            "HTTP/1.1 200 Fine\r\nETag: \"a\"\r\nx-Custom: 1\r\nContent-Type: c/d\r\nAge: 3\r\n\r\n"
        );
        assert_eq!(written, expected);
        assert_eq!(back, expected);
    }

    /// A header edited apart from Pingora's reads and writes as Pingora's own would with no
    /// case map; put back, it keeps its status, reason and fields and drops the spelling.
    #[test]
    fn a_bare_header_edits_as_pingora_does_without_case() {
        let mut pingora = ResponseHeader::build_no_case(429, None).expect("header");
        fill(&mut pingora);
        let mut proxied = ResponseHeader::build(429, Some(2)).expect("header");
        proxied.append_header("X-Upstream", "u").expect("h");
        proxied
            .set_reason_phrase(Some("Slow Down"))
            .expect("reason");
        pingora.set(
            HeaderName::from_static("x-upstream"),
            HeaderValue::from_static("u"),
        );
        pingora
            .set_reason_phrase(Some("Slow Down"))
            .expect("reason");
        let mut written = Vec::new();
        Bare::edit(&mut proxied, |bare| {
            // The upstream's field came first; fill's fields follow it, as on `pingora`.
            let upstream = bare.get(&HeaderName::from_static("x-upstream")).cloned();
            bare.remove(&HeaderName::from_static("x-upstream"));
            fill(bare);
            bare.set(
                HeaderName::from_static("x-upstream"),
                upstream.expect("kept"),
            );
            bare.head_to_h1(&mut written);
        });
        let (mut expected, mut back) = (Vec::new(), Vec::new());
        pingora.head_to_h1(&mut expected);
        proxied.head_to_h1(&mut back);
        assert!(!proxied.has_case());
        assert!(expected.starts_with(b"HTTP/1.1 429 Slow Down\r\nAccept-Ranges: v\r\n"));
        assert_eq!(
            String::from_utf8_lossy(&written),
            String::from_utf8_lossy(&expected)
        );
        assert_eq!(back, expected);
    }

    #[test]
    fn numbers_read_as_http_writes_them() {
        for n in [0, 1, 9, 10, 99, 100, 1023, 1024, 86_400, u64::MAX] {
            assert_eq!(number(n), HeaderValue::from(n), "{n}");
        }
    }
}
