//! Response compression: gzip, brotli and zstd chosen per client, with nginx-grade policy.
//!
//! Phases: `request_filter` ([`State::request`] parses `Accept-Encoding` and takes the default
//! policy, [`State::use_route`] switches to the route's), `response_filter` ([`State::response`]
//! decides and rewrites the header; proxied responses and cache hits alike),
//! `response_body_filter` ([`State::body`] encodes chunk by chunk), and `respond`
//! ([`State::whole`] for the responses Rampart writes itself).
//!
//! Pingora ships the encoders (`Algorithm::compressor`: flate2 on zlib-ng, brotli, zstd behind
//! its `Encode` trait) and they are used as they are, except two written here because Pingora
//! lacks them: a zstd decompressor (Pingora only decompresses gzip and br) and a brotli
//! compressor that ends the stream (Pingora's only flushes, leaving a stream without its last
//! meta-block that strict decoders reject). Pingora's policy (`ResponseCompression` module,
//! left disabled) is replaced because it takes the first encoding the client lists, ignores
//! q-values, compresses anything of 20 bytes or more and has a fixed type list. The
//! `Accept-Encoding` parser ([`Accept`]) is hand-written for the same reason (Pingora's drops
//! q-values).
//!
//! `Vary: Accept-Encoding` goes on a response exactly when its encoding could differ for
//! another client: a compressible type (or a 304, which stands for its 200) at or above
//! `min_size` or of unknown length, HEAD and 206 included; or an upstream-encoded body while
//! `decompress` is on. A body that is always sent as it is (too small, excluded type,
//! no-transform, 204) gets none, as with nginx.
//!
//! Streaming: each chunk is encoded as it arrives, but the encoders emit output as their
//! window fills rather than flushing every chunk, which is why event streams are excluded.
//!
//! Compression happens downstream of the response cache, per client: the cache stores identity
//! bodies and every hit passes `response_filter`, so one stored body serves gzip, br, zstd and
//! identity clients (the trap of Pingora issue #283 is not possible).
//!
//! Invariants: a body is never encoded twice (an upstream `Content-Encoding` is left alone or,
//! when the client cannot read it, decoded); 1xx/204/304/206, HEAD, `Content-Range` and
//! `Cache-Control: no-transform` responses leave with their body untouched; every response
//! whose encoding could depend on `Accept-Encoding` carries `Vary: Accept-Encoding`, encoded or
//! not; a re-encoded response has no `Content-Length` and no `Accept-Ranges`, and its strong
//! `ETag` becomes weak; bodies are encoded as they stream (memory bounded by the encoder's
//! window, never by the body).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::compression::{Algorithm, Encode};
use serde::Deserialize;

use crate::config::{check_name, Invalid};
use crate::headers::add_vary;
use crate::metrics::Metrics;

/// A content coding Rampart can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Coding {
    #[serde(rename = "gzip")]
    Gzip,
    #[serde(rename = "br")]
    Br,
    #[serde(rename = "zstd")]
    Zstd,
}

impl Coding {
    pub fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Br => "br",
            Coding::Zstd => "zstd",
        }
    }

    /// `x-gzip` is gzip (RFC 9110 section 8.4.1.3).
    fn parse(token: &str) -> Option<Self> {
        let t = token.trim();
        if t.eq_ignore_ascii_case("gzip") || t.eq_ignore_ascii_case("x-gzip") {
            Some(Coding::Gzip)
        } else if t.eq_ignore_ascii_case("br") {
            Some(Coding::Br)
        } else if t.eq_ignore_ascii_case("zstd") {
            Some(Coding::Zstd)
        } else {
            None
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn compressor(self, level: u32) -> Option<Box<dyn Encode + Send + Sync>> {
        match self {
            Coding::Br => Some(Box::new(BrotliCompressor::new(level))),
            Coding::Gzip => Algorithm::Gzip.compressor(level),
            Coding::Zstd => Algorithm::Zstd.compressor(level),
        }
    }

    fn decompressor(self) -> Option<Box<dyn Encode + Send + Sync>> {
        match self {
            Coding::Gzip => Algorithm::Gzip.decompressor(true),
            Coding::Br => Algorithm::Brotli.decompressor(true),
            Coding::Zstd => ZstdDecompressor::new().map(|d| Box::new(d) as _),
        }
    }
}

/// `[compression]` (the default policy) and `[compression.policies.NAME]` (a named policy a
/// route selects with `compression = "NAME"`; its keys default as below, not to `[compression]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Off: no compression, no decompression, no `Vary` from this module.
    pub enabled: bool,
    /// Codings offered, in the server's order of preference (breaks ties between equal
    /// client q-values). zstd first: on the 40 KB JSON it beats gzip 6's ratio at a fifth of
    /// its CPU (figures in the notes, `examples/compress_ratio.rs`).
    pub encodings: Vec<Coding>,
    /// 1-9; 6 is nginx's `gzip_comp_level` in the reference config.
    pub gzip_level: u32,
    /// 1-11. 5 is the lowest that beats gzip 6 on both JSON and JS (4 loses on JS); 11 is
    /// for static files built offline, far too slow per request.
    pub br_level: u32,
    /// 1-19.
    pub zstd_level: u32,
    /// Bodies whose `Content-Length` is below this go out as they are; bodies of unknown
    /// length (chunked) are compressed.
    pub min_size: u64,
    /// Media types to compress: `type/subtype`, `type/*` or `type/*+suffix`.
    pub types: Vec<String>,
    /// Media types never compressed, even when `types` matches (same patterns).
    pub exclude_types: Vec<String>,
    /// Decode an upstream's `gzip`/`br`/`zstd` body for a client that does not accept it.
    pub decompress: bool,
    /// Named policies (only in `[compression]` itself).
    pub policies: BTreeMap<String, Config>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            encodings: vec![Coding::Zstd, Coding::Br, Coding::Gzip],
            gzip_level: 6,
            br_level: 5,
            zstd_level: 3,
            min_size: 1000,
            types: DEFAULT_TYPES.iter().map(|t| t.to_string()).collect(),
            exclude_types: vec!["text/event-stream".into()],
            decompress: true,
            policies: BTreeMap::new(),
        }
    }
}

/// nginx's `gzip_types` of the reference config (text/html is implicit there) plus the other
/// text-like types browsers and APIs send: JSON and XML and their `+json`/`+xml` variants
/// (`application/problem+json`), SVG, wasm, uncompressed fonts and icons. Streaming types
/// (`text/event-stream`, NDJSON) are left out: the encoders emit output only as their window
/// fills, which would hold back events.
pub const DEFAULT_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "application/*+json",
    "application/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "application/xml",
    "application/*+xml",
    "application/yaml",
    "application/toml",
    "application/wasm",
    "application/vnd.ms-fontobject",
    "application/x-font-ttf",
    "font/ttf",
    "font/otf",
    "image/svg+xml",
    "image/x-icon",
    "image/vnd.microsoft.icon",
    "image/bmp",
];

impl Config {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        self.validate_policy()?;
        for (name, policy) in &self.policies {
            let at = format!("policies.{name}");
            check_name(name).map_err(|m| Invalid::new(at.clone(), m))?;
            if !policy.policies.is_empty() {
                return Err(Invalid::new(
                    format!("{at}.policies"),
                    "named policies cannot hold policies of their own",
                ));
            }
            policy.validate_policy().map_err(|e| e.within(&at))?;
        }
        Ok(())
    }

    fn validate_policy(&self) -> Result<(), Invalid> {
        for (i, c) in self.encodings.iter().enumerate() {
            if self.encodings[..i].contains(c) {
                return Err(Invalid::new(
                    format!("encodings[{i}]"),
                    format!("\"{}\" is listed twice", c.token()),
                ));
            }
        }
        if !(1..=9).contains(&self.gzip_level) {
            return Err(Invalid::new("gzip_level", "a level from 1 to 9"));
        }
        if !(1..=11).contains(&self.br_level) {
            return Err(Invalid::new("br_level", "a level from 1 to 11"));
        }
        if !(1..=19).contains(&self.zstd_level) {
            return Err(Invalid::new("zstd_level", "a level from 1 to 19"));
        }
        for (key, list) in [
            ("types", &self.types),
            ("exclude_types", &self.exclude_types),
        ] {
            for (i, t) in list.iter().enumerate() {
                MediaPattern::parse(t).ok_or_else(|| {
                    Invalid::new(
                        format!("{key}[{i}]"),
                        format!(
                            "a media type like \"text/html\", \"text/*\" or \
                             \"application/*+json\", not \"{t}\""
                        ),
                    )
                })?;
            }
        }
        Ok(())
    }
}

/// A media-type pattern: `type/subtype`, `type/*`, `type/*+suffix`, `*/*`.
#[derive(Debug, Clone, PartialEq)]
struct MediaPattern {
    /// `None`: any type.
    kind: Option<String>,
    sub: SubPattern,
}

#[derive(Debug, Clone, PartialEq)]
enum SubPattern {
    Any,
    Exact(String),
    /// `*+json`: any subtype ending in `+json`.
    Suffix(String),
}

impl MediaPattern {
    fn parse(text: &str) -> Option<Self> {
        let text = text.trim().to_ascii_lowercase();
        let (kind, sub) = text.split_once('/')?;
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        let kind = match kind {
            "*" => None,
            k if token(k) => Some(k.to_string()),
            _ => return None,
        };
        let sub = match sub {
            "*" => SubPattern::Any,
            s if s.starts_with("*+") && token(&s[2..]) => SubPattern::Suffix(s[1..].to_string()),
            s if token(s) => SubPattern::Exact(s.to_string()),
            _ => return None,
        };
        if kind.is_none() && sub != SubPattern::Any {
            return None;
        }
        Some(Self { kind, sub })
    }

    /// `essence`: lower-case `type/subtype` without parameters.
    fn matches(&self, essence: &str) -> bool {
        let Some((kind, sub)) = essence.split_once('/') else {
            return false;
        };
        if self.kind.as_deref().is_some_and(|k| k != kind) {
            return false;
        }
        match &self.sub {
            SubPattern::Any => true,
            SubPattern::Exact(s) => s == sub,
            SubPattern::Suffix(s) => sub.len() > s.len() && sub.ends_with(s.as_str()),
        }
    }
}

/// A policy, parsed once at start.
#[derive(Debug)]
pub struct Policy {
    enabled: bool,
    order: Vec<Coding>,
    /// Indexed by [`Coding::index`].
    levels: [u32; 3],
    min_size: u64,
    include: Vec<MediaPattern>,
    exclude: Vec<MediaPattern>,
    decompress: bool,
}

impl Policy {
    pub fn new(c: &Config) -> Self {
        let patterns =
            |list: &[String]| list.iter().filter_map(|t| MediaPattern::parse(t)).collect();
        Self {
            enabled: c.enabled,
            order: c.encodings.clone(),
            levels: [c.gzip_level, c.br_level, c.zstd_level],
            min_size: c.min_size,
            include: patterns(&c.types),
            exclude: patterns(&c.exclude_types),
            decompress: c.decompress,
        }
    }

    /// The response's media type is one this policy compresses.
    fn compressible(&self, resp: &ResponseHeader) -> bool {
        let Some(essence) = resp
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
        else {
            return false;
        };
        self.include.iter().any(|p| p.matches(&essence))
            && !self.exclude.iter().any(|p| p.matches(&essence))
    }
}

/// The default policy and the named ones, shared by all requests.
pub struct Policies {
    pub default: Arc<Policy>,
    pub named: BTreeMap<String, Arc<Policy>>,
}

impl Policies {
    pub fn new(c: &Config) -> Self {
        Self {
            default: Arc::new(Policy::new(c)),
            named: c
                .policies
                .iter()
                .map(|(name, p)| (name.clone(), Arc::new(Policy::new(p))))
                .collect(),
        }
    }
}

impl Default for Policies {
    fn default() -> Self {
        Self::new(&Config::default())
    }
}

/// A parsed `Accept-Encoding`: q-values in thousandths, `None` where the client said nothing.
///
/// Written by hand: Pingora's parser (sfv) keeps only the order of tokens and drops q-values,
/// and no crate in the tree parses RFC 9110 weights.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accept {
    present: bool,
    codings: [Option<u16>; 3],
    identity: Option<u16>,
    star: Option<u16>,
}

impl Accept {
    /// Parse every `Accept-Encoding` field line. Elements with a malformed weight are ignored;
    /// when a coding is listed twice the first listing counts.
    pub fn parse<'a>(values: impl Iterator<Item = &'a [u8]>) -> Self {
        let mut accept = Accept::default();
        for value in values {
            accept.present = true;
            let Ok(text) = std::str::from_utf8(value) else {
                continue;
            };
            for element in text.split(',') {
                let mut parts = element.split(';');
                let token = parts.next().unwrap_or("").trim();
                if token.is_empty() {
                    continue;
                }
                let mut q = Some(1000);
                for param in parts {
                    if let Some((k, v)) = param.split_once('=') {
                        if k.trim().eq_ignore_ascii_case("q") {
                            q = parse_q(v.trim());
                        }
                    }
                }
                let Some(q) = q else { continue };
                let slot = if token == "*" {
                    &mut accept.star
                } else if token.eq_ignore_ascii_case("identity") {
                    &mut accept.identity
                } else if let Some(c) = Coding::parse(token) {
                    &mut accept.codings[c.index()]
                } else {
                    continue;
                };
                slot.get_or_insert(q);
            }
        }
        accept
    }

    /// The client's weight for `c`: its own listing, else `*`, else refused.
    fn q(&self, c: Coding) -> u16 {
        self.codings[c.index()].or(self.star).unwrap_or(0)
    }

    /// The client can read a body in `c`. Without `Accept-Encoding` it cannot (see
    /// [`Accept::choose`]), so an upstream's gzip is decoded for it.
    fn accepts(&self, c: Coding) -> bool {
        self.present && self.q(c) > 0
    }

    /// The coding to send: the highest client weight among `order`, ties to the earlier in
    /// `order`; `None` (identity) when nothing is acceptable, when there is no
    /// `Accept-Encoding` at all (RFC 9110 would allow any coding, but real clients without the
    /// header, curl for one, cannot decode), or when the client weighs `identity` above all.
    pub fn choose(&self, order: &[Coding]) -> Option<Coding> {
        if !self.present {
            return None;
        }
        let mut best: Option<(Coding, u16)> = None;
        for &c in order {
            let q = self.q(c);
            if q > 0 && best.is_none_or(|(_, bq)| q > bq) {
                best = Some((c, q));
            }
        }
        let (c, q) = best?;
        match self.identity {
            Some(iq) if iq > q => None,
            _ => Some(c),
        }
    }
}

/// RFC 9110 qvalue: `0`, `0.xyz`, `1`, `1.000`; leniently any decimal in [0, 1].
fn parse_q(v: &str) -> Option<u16> {
    if v.is_empty() || v.len() > 5 || !v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let q: f32 = v.parse().ok()?;
    (0.0..=1.0)
        .contains(&q)
        .then(|| (q * 1000.0).round() as u16)
}

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    Keep,
    Compress(Coding),
    Decompress(Coding),
}

/// The decision for one response: whether it varies on `Accept-Encoding`, and the action.
fn decide(policy: &Policy, accept: &Accept, head: bool, resp: &ResponseHeader) -> (bool, Action) {
    let status = resp.status.as_u16();
    if !policy.enabled || resp.status.is_informational() || status == 204 || no_transform(resp) {
        return (false, Action::Keep);
    }
    // The body is not the full representation, or there is none to encode.
    let untouchable =
        head || status == 304 || status == 206 || resp.headers.contains_key(header::CONTENT_RANGE);
    match content_encoding(resp) {
        Encoded::Unknown => (false, Action::Keep),
        Encoded::By(c) => {
            if !policy.decompress {
                (false, Action::Keep)
            } else if untouchable || accept.accepts(c) {
                (true, Action::Keep)
            } else {
                (true, Action::Decompress(c))
            }
        }
        Encoded::Identity => {
            // A 304 rarely names its type; it stands for the 200 that would have varied. A
            // body below the threshold goes out as it is to everyone, so it does not vary
            // (nginx omits Vary there too); when it grows, its new response carries Vary.
            // An empty body stays empty: Pingora may not run the body filter for it at all.
            let negotiable = !policy.order.is_empty()
                && (status == 304 || policy.compressible(resp))
                && content_length(resp).is_none_or(|n| n > 0 && n >= policy.min_size);
            if !negotiable {
                return (false, Action::Keep);
            }
            if untouchable {
                return (true, Action::Keep);
            }
            match accept.choose(&policy.order) {
                Some(c) => (true, Action::Compress(c)),
                None => (true, Action::Keep),
            }
        }
    }
}

enum Encoded {
    Identity,
    By(Coding),
    /// Several codings or one Rampart cannot decode: left exactly as it is.
    Unknown,
}

fn content_encoding(resp: &ResponseHeader) -> Encoded {
    let mut values = resp.headers.get_all(header::CONTENT_ENCODING).iter();
    let Some(first) = values.next() else {
        return Encoded::Identity;
    };
    if values.next().is_some() {
        return Encoded::Unknown;
    }
    match first.to_str().map(str::trim) {
        Ok(t) if t.is_empty() || t.eq_ignore_ascii_case("identity") => Encoded::Identity,
        Ok(t) => Coding::parse(t).map_or(Encoded::Unknown, Encoded::By),
        Err(_) => Encoded::Unknown,
    }
}

fn no_transform(resp: &ResponseHeader) -> bool {
    resp.headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
}

fn content_length(resp: &ResponseHeader) -> Option<u64> {
    resp.headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Header changes for a body that will be re-encoded (as nginx's gzip filter does).
fn rewrite_header(resp: &mut ResponseHeader, action: Action, chunked: bool) {
    match action {
        Action::Keep => return,
        Action::Compress(c) => {
            let _ = resp.insert_header(header::CONTENT_ENCODING, c.token());
        }
        Action::Decompress(_) => {
            resp.remove_header(&header::CONTENT_ENCODING);
        }
    }
    resp.remove_header(&header::CONTENT_LENGTH);
    // Byte ranges of the encoded body are not ranges of the representation.
    resp.remove_header(&header::ACCEPT_RANGES);
    if chunked {
        let _ = resp.insert_header(header::TRANSFER_ENCODING, "chunked");
    }
    // RFC 9110 section 8.8.1: another byte sequence cannot share a strong validator.
    if let Some(etag) = resp.headers.get(header::ETAG) {
        let bytes = etag.as_bytes();
        if bytes.starts_with(b"\"") {
            if let Ok(weak) = HeaderValue::from_bytes(&[b"W/", bytes].concat()) {
                let _ = resp.insert_header(header::ETAG, weak);
            }
        } else if !bytes.starts_with(b"W/") {
            resp.remove_header(&header::ETAG);
        }
    }
}

/// Per-request compression state (a field of `Ctx`).
#[derive(Default)]
pub struct State {
    policy: Option<Arc<Policy>>,
    accept: Accept,
    head: bool,
    /// HTTP/1.1 client: a body of unknown length needs chunked framing (HTTP/1.0 gets a
    /// close-delimited body; HTTP/2 drops the header and frames itself).
    http11: bool,
    active: Option<Active>,
}

struct Active {
    encoder: Box<dyn Encode + Send + Sync>,
    /// Metrics label; `None` for decompression (the families count compression).
    label: Option<&'static str>,
}

impl State {
    /// `request_filter`, before routing: remember what the client accepts; the default
    /// policy applies until a route says otherwise (Rampart's own 400/404 use it).
    pub fn request(&mut self, policies: &Policies, req: &RequestHeader) {
        self.policy = Some(policies.default.clone());
        self.accept = Accept::parse(
            req.headers
                .get_all(header::ACCEPT_ENCODING)
                .iter()
                .map(|v| v.as_bytes()),
        );
        self.head = req.method == http::Method::HEAD;
        self.http11 = req.version == http::Version::HTTP_11;
    }

    /// The route's own policy, when it names one.
    pub fn use_route(&mut self, policy: Option<&Arc<Policy>>) {
        if let Some(p) = policy {
            self.policy = Some(p.clone());
        }
    }

    /// `response_filter`: decide, add `Vary`, rewrite the header, prepare the encoder.
    pub fn response(&mut self, resp: &mut ResponseHeader) {
        self.active = None;
        let Some(policy) = self.policy.clone() else {
            return;
        };
        let (vary, action) = decide(&policy, &self.accept, self.head, resp);
        if vary {
            add_vary(resp, "Accept-Encoding");
        }
        let active = match action {
            Action::Keep => None,
            Action::Compress(c) => c
                .compressor(policy.levels[c.index()])
                .map(|encoder| Active {
                    encoder,
                    label: Some(c.token()),
                }),
            Action::Decompress(c) => c.decompressor().map(|encoder| Active {
                encoder,
                label: None,
            }),
        };
        if active.is_some() {
            rewrite_header(resp, action, self.http11);
        }
        self.active = active;
    }

    /// `response_body_filter`: encode this chunk. An error (an upstream body that does not
    /// decode) ends the response: its header already promised an encoding the rest cannot
    /// keep.
    pub fn body(
        &mut self,
        body: &mut Option<Bytes>,
        end: bool,
        metrics: &Metrics,
    ) -> pingora::Result<()> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let input = body.as_deref().unwrap_or(&[]);
        let out = active.encoder.encode(input, end)?;
        if let Some(label) = active.label {
            metrics
                .compress_in
                .with_label_values(&[label])
                .inc_by(input.len() as u64);
            metrics
                .compress_out
                .with_label_values(&[label])
                .inc_by(out.len() as u64);
        }
        *body = Some(out);
        if end {
            self.active = None;
        }
        Ok(())
    }

    /// A whole body Rampart wrote itself: same decision as a proxied response, encoded in one
    /// go and framed with its exact `Content-Length`.
    pub fn whole(&self, resp: &mut ResponseHeader, body: Bytes) -> Bytes {
        let Some(policy) = self.policy.as_ref() else {
            return body;
        };
        let _ = resp.insert_header(header::CONTENT_LENGTH, body.len());
        let (vary, action) = decide(policy, &self.accept, self.head, resp);
        if vary {
            add_vary(resp, "Accept-Encoding");
        }
        let Action::Compress(c) = action else {
            return body;
        };
        match encode_once(c, policy.levels[c.index()], &body) {
            Some(out) => {
                rewrite_header(resp, action, false);
                let _ = resp.insert_header(header::CONTENT_LENGTH, out.len());
                out
            }
            None => body,
        }
    }
}

/// `body` encoded in one go with the encoder a response would use (self-made responses, and
/// `examples/compress_ratio.rs` which measures ratio and CPU per coding and level).
pub fn encode_once(c: Coding, level: u32, body: &[u8]) -> Option<Bytes> {
    c.compressor(level)?.encode(body, true).ok()
}

/// Brotli compressor that finishes the stream. Written here because Pingora's ends with a
/// flush, which leaves out brotli's final (ISLAST) meta-block; the `brotli` crate is the one
/// Pingora uses. The writer is taken at the end so `into_inner` can close the stream.
struct BrotliCompressor {
    writer: Option<brotli::CompressorWriter<Vec<u8>>>,
    total_in: usize,
    total_out: usize,
    duration: Duration,
}

impl BrotliCompressor {
    fn new(level: u32) -> Self {
        // 4 KiB internal buffer, 2^22 window (brotli's default; Pingora uses 2^19).
        Self {
            writer: Some(brotli::CompressorWriter::new(Vec::new(), 4096, level, 22)),
            total_in: 0,
            total_out: 0,
            duration: Duration::ZERO,
        }
    }
}

impl Encode for BrotliCompressor {
    fn encode(&mut self, input: &[u8], end: bool) -> pingora::Result<Bytes> {
        let start = Instant::now();
        let Some(writer) = self.writer.as_mut() else {
            return Ok(Bytes::new());
        };
        self.total_in += input.len();
        writer
            .write_all(input)
            .map_err(|e| compression_error("brotli", e))?;
        let out = if end {
            self.writer
                .take()
                .map(|w| w.into_inner())
                .unwrap_or_default()
        } else {
            std::mem::take(writer.get_mut())
        };
        self.total_out += out.len();
        self.duration += start.elapsed();
        Ok(out.into())
    }

    fn stat(&self) -> (&'static str, usize, usize, Duration) {
        ("br", self.total_in, self.total_out, self.duration)
    }
}

/// zstd decoder. Written here because Pingora implements decompression for gzip and br only;
/// the `zstd` crate is the one Pingora compresses with. The Mutex (never contended: one
/// request's encoder) only makes the decoder context `Sync`, as Pingora does for its encoder.
struct ZstdDecompressor {
    decoder: std::sync::Mutex<zstd::stream::write::Decoder<'static, Vec<u8>>>,
    total_in: usize,
    total_out: usize,
    duration: Duration,
}

impl ZstdDecompressor {
    fn new() -> Option<Self> {
        Some(Self {
            decoder: std::sync::Mutex::new(zstd::stream::write::Decoder::new(Vec::new()).ok()?),
            total_in: 0,
            total_out: 0,
            duration: Duration::ZERO,
        })
    }
}

impl Encode for ZstdDecompressor {
    fn encode(&mut self, input: &[u8], end: bool) -> pingora::Result<Bytes> {
        let start = Instant::now();
        self.total_in += input.len();
        let decoder = self
            .decoder
            .get_mut()
            .map_err(|_| compression_error("zstd", std::io::Error::other("poisoned")))?;
        decoder
            .write_all(input)
            .map_err(|e| compression_error("zstd", e))?;
        if end {
            decoder.flush().map_err(|e| compression_error("zstd", e))?;
        }
        let out = std::mem::take(decoder.get_mut());
        self.total_out += out.len();
        self.duration += start.elapsed();
        Ok(out.into())
    }

    fn stat(&self) -> (&'static str, usize, usize, Duration) {
        ("de-zstd", self.total_in, self.total_out, self.duration)
    }
}

fn compression_error(what: &str, e: std::io::Error) -> Box<pingora::Error> {
    pingora::Error::because(
        pingora::protocols::http::compression::COMPRESSION_ERROR,
        format!("{what} stream"),
        e,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn accept(v: &str) -> Accept {
        Accept::parse(std::iter::once(v.as_bytes()))
    }

    const ORDER: &[Coding] = &[Coding::Br, Coding::Zstd, Coding::Gzip];

    #[test]
    fn negotiation_follows_client_weights_then_server_order() {
        use Coding::*;
        assert_eq!(accept("gzip, deflate, br, zstd").choose(ORDER), Some(Br));
        assert_eq!(accept("gzip;q=1, br;q=0.5").choose(ORDER), Some(Gzip));
        assert_eq!(accept("gzip;q=0, br;q=0").choose(ORDER), None);
        assert_eq!(accept("gzip;q=0, *").choose(&[Gzip, Zstd]), Some(Zstd));
        assert_eq!(accept("br;q=0, *;q=0.2").choose(ORDER), Some(Zstd));
        assert_eq!(accept("*").choose(ORDER), Some(Br));
        assert_eq!(accept("*;q=0").choose(ORDER), None);
        assert_eq!(accept("identity").choose(ORDER), None);
        assert_eq!(accept("").choose(ORDER), None);
        assert_eq!(accept("gzip;q=0.5, identity").choose(ORDER), None);
        assert_eq!(accept("gzip, identity;q=0.5").choose(ORDER), Some(Gzip));
        assert_eq!(accept("GZIP ; Q = 0.8 , x-gzip").choose(ORDER), Some(Gzip));
        assert_eq!(accept("deflate, compress").choose(ORDER), None);
        // a malformed weight drops its element, not the header
        assert_eq!(accept("br;q=2, gzip;q=0.001").choose(ORDER), Some(Gzip));
        assert_eq!(accept("br;q=abc, gzip").choose(ORDER), Some(Gzip));
        // several field lines are one list
        let two = Accept::parse([&b"gzip;q=0.1"[..], &b"zstd"[..]].into_iter());
        assert_eq!(two.choose(ORDER), Some(Zstd));
        // no header at all: identity
        assert_eq!(Accept::parse(std::iter::empty()).choose(ORDER), None);
        // only the server's codings count
        assert_eq!(accept("br, gzip").choose(&[Gzip]), Some(Gzip));
    }

    #[test]
    fn media_patterns() {
        let p = |t: &str| MediaPattern::parse(t).expect(t);
        assert!(p("text/*").matches("text/html"));
        assert!(!p("text/*").matches("application/json"));
        assert!(p("application/*+json").matches("application/problem+json"));
        assert!(!p("application/*+json").matches("application/json"));
        assert!(p("image/svg+xml").matches("image/svg+xml"));
        assert!(p("*/*").matches("video/mp4"));
        assert!(MediaPattern::parse("text").is_none());
        assert!(MediaPattern::parse("*/json").is_none());
        assert!(MediaPattern::parse("text/ html").is_none());
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).expect("header");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    #[test]
    fn decisions() {
        use Action::*;
        let policy = Policy::new(&Config::default());
        let br = accept("br, gzip");
        let json = [
            ("content-type", "application/json"),
            ("content-length", "5000"),
        ];
        let d = |a: &Accept, head: bool, r: &ResponseHeader| decide(&policy, a, head, r);
        assert_eq!(
            d(&br, false, &resp(200, &json)),
            (true, Compress(Coding::Br))
        );
        assert_eq!(
            d(&accept("identity"), false, &resp(200, &json)),
            (true, Keep)
        );
        assert_eq!(d(&br, true, &resp(200, &json)), (true, Keep));
        assert_eq!(d(&br, false, &resp(304, &[])), (true, Keep));
        assert_eq!(d(&br, false, &resp(204, &[])), (false, Keep));
        assert_eq!(d(&br, false, &resp(206, &json)), (true, Keep));
        let ranged = [
            ("content-type", "text/plain"),
            ("content-range", "bytes 0-9/5000"),
        ];
        assert_eq!(d(&br, false, &resp(200, &ranged)), (true, Keep));
        let small = [
            ("content-type", "application/json"),
            ("content-length", "999"),
        ];
        assert_eq!(d(&br, false, &resp(200, &small)), (false, Keep));
        let chunked = [("content-type", "text/html; charset=utf-8")];
        assert_eq!(
            d(&br, false, &resp(200, &chunked)),
            (true, Compress(Coding::Br))
        );
        let png = [("content-type", "image/png")];
        assert_eq!(d(&br, false, &resp(200, &png)), (false, Keep));
        let sse = [("content-type", "text/event-stream")];
        assert_eq!(d(&br, false, &resp(200, &sse)), (false, Keep));
        let no_transform = [
            ("content-type", "text/plain"),
            ("cache-control", "public, no-transform"),
        ];
        assert_eq!(d(&br, false, &resp(200, &no_transform)), (false, Keep));
        let gz = [("content-type", "text/plain"), ("content-encoding", "gzip")];
        assert_eq!(d(&br, false, &resp(200, &gz)), (true, Keep));
        assert_eq!(
            d(&accept("br"), false, &resp(200, &gz)),
            (true, Decompress(Coding::Gzip))
        );
        let twice = [("content-encoding", "gzip, br")];
        assert_eq!(d(&accept("br"), false, &resp(200, &twice)), (false, Keep));
        let from_zero = Policy::new(&Config {
            min_size: 0,
            ..Config::default()
        });
        let empty = [
            ("content-type", "application/json"),
            ("content-length", "0"),
        ];
        assert_eq!(
            decide(&from_zero, &br, false, &resp(200, &empty)),
            (false, Keep)
        );
        let off = Policy::new(&Config {
            enabled: false,
            ..Config::default()
        });
        assert_eq!(decide(&off, &br, false, &resp(200, &json)), (false, Keep));
    }

    #[test]
    fn rewritten_header() {
        let mut r = resp(
            200,
            &[
                ("content-length", "5000"),
                ("etag", "\"abc\""),
                ("accept-ranges", "bytes"),
            ],
        );
        rewrite_header(&mut r, Action::Compress(Coding::Gzip), true);
        assert_eq!(
            r.headers.get("content-encoding").map(|v| v.as_bytes()),
            Some(&b"gzip"[..])
        );
        assert_eq!(
            r.headers.get("etag").map(|v| v.as_bytes()),
            Some(&b"W/\"abc\""[..])
        );
        assert!(r.headers.get("content-length").is_none());
        assert!(r.headers.get("accept-ranges").is_none());
        assert_eq!(
            r.headers.get("transfer-encoding").map(|v| v.as_bytes()),
            Some(&b"chunked"[..])
        );
    }

    fn sample() -> Vec<u8> {
        (0..20_000)
            .map(|i| format!("{{\"day\":{i},\"value\":{}}},", i * 37 % 1000))
            .collect::<String>()
            .into_bytes()
    }

    /// Every encoder in streaming use decodes, with the crates clients use, to the input.
    #[test]
    fn streamed_round_trips() {
        let input = sample();
        for c in [Coding::Gzip, Coding::Br, Coding::Zstd] {
            let mut enc = c.compressor(5).expect("compressor");
            let mut out = Vec::new();
            for chunk in input.chunks(7_000) {
                out.extend_from_slice(&enc.encode(chunk, false).expect("encode"));
            }
            out.extend_from_slice(&enc.encode(&[], true).expect("finish"));
            let mut plain = Vec::new();
            match c {
                Coding::Gzip => {
                    flate2::read::GzDecoder::new(&out[..])
                        .read_to_end(&mut plain)
                        .expect("gunzip");
                }
                Coding::Br => {
                    brotli::Decompressor::new(&out[..], 4096)
                        .read_to_end(&mut plain)
                        .expect("brotli stream complete");
                }
                Coding::Zstd => plain = zstd::stream::decode_all(&out[..]).expect("unzstd"),
            }
            assert_eq!(plain, input, "{c:?}");
            assert!(out.len() * 5 < input.len(), "{c:?} compresses this JSON 5x");
            // and the decompressors undo them, chunk by chunk
            let mut dec = c.decompressor().expect("decompressor");
            let mut back = Vec::new();
            for chunk in out.chunks(1000) {
                back.extend_from_slice(&dec.encode(chunk, false).expect("decode"));
            }
            back.extend_from_slice(&dec.encode(&[], true).expect("decode end"));
            assert_eq!(back, input, "{c:?} decompressor");
        }
    }

    /// Why [`BrotliCompressor`] exists: Pingora's brotli output decodes, but the stream never
    /// ends, so strict decoders report an error. When Pingora fixes it this fails: use theirs.
    #[test]
    fn pingora_brotli_stream_is_unterminated() {
        let input = sample();
        let mut enc = Algorithm::Brotli.compressor(4).expect("compressor");
        let mut out = enc.encode(&input, false).expect("encode").to_vec();
        out.extend_from_slice(&enc.encode(&[], true).expect("finish"));
        let mut plain = Vec::new();
        let result = brotli::Decompressor::new(&out[..], 4096).read_to_end(&mut plain);
        assert!(result.is_err(), "Pingora's brotli stream now ends properly");
        assert_eq!(plain, input);
    }

    #[test]
    fn config_checks() {
        let bad = |c: Config| c.validate().expect_err("invalid").key;
        assert_eq!(
            bad(Config {
                gzip_level: 10,
                ..Config::default()
            }),
            "gzip_level"
        );
        assert_eq!(
            bad(Config {
                encodings: vec![Coding::Gzip, Coding::Gzip],
                ..Config::default()
            }),
            "encodings[1]"
        );
        assert_eq!(
            bad(Config {
                types: vec!["text/*".into(), "json".into()],
                ..Config::default()
            }),
            "types[1]"
        );
        let nested = Config {
            policies: [("inner".to_string(), Config::default())].into(),
            ..Config::default()
        };
        assert_eq!(
            bad(Config {
                policies: [("outer".to_string(), nested)].into(),
                ..Config::default()
            }),
            "policies.outer.policies"
        );
        Config::default().validate().expect("defaults are valid");
    }
}
