//! Compression policy: `[compression]` and its named policies, which responses are encoded
//! in which coding, and how the header changes when they are.
//!
//! Pingora's own policy (`ResponseCompression`, left disabled) is replaced because it takes
//! the first encoding the client lists, ignores q-values, compresses anything of 20 bytes or
//! more and has a fixed type list. `Vary: Accept-Encoding` goes on a response exactly when its
//! encoding could differ for another client: a compressible type (or a 304, which stands for
//! its 200) at or above `min_size` or of unknown length, or an upstream-encoded body while
//! `decompress` is on; a body always sent as it is gets none, as with nginx.
//!
//! Invariant: a re-encoded response has no `Content-Length` and no `Accept-Ranges`, and its
//! strong `ETag` becomes weak (RFC 9110 section 8.8.1).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use serde::{Deserialize, Serialize};

use super::accept::Accept;
use super::codec::Coding;
use crate::fields::Fields;
use crate::types::{serialize_display, Invalid, Name};

/// `[compression]` (the default policy) and `[compression.policies.NAME]` (a named policy a
/// route selects with `compression = "NAME"`; its keys default as below, not to `[compression]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    pub types: Vec<MediaPattern>,
    /// Media types never compressed, even when `types` matches (same patterns).
    pub exclude_types: Vec<MediaPattern>,
    /// Decode an upstream's `gzip`/`br`/`zstd` body for a client that does not accept it.
    pub decompress: bool,
    /// Named policies (only in `[compression]` itself).
    pub policies: BTreeMap<Name, Config>,
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
            types: DEFAULT_TYPES
                .iter()
                .filter_map(|t| MediaPattern::parse(t))
                .collect(),
            exclude_types: MediaPattern::parse("text/event-stream")
                .into_iter()
                .collect(),
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
        Ok(())
    }
}

/// A media-type pattern: `type/subtype`, `type/*`, `type/*+suffix`, `*/*`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub struct MediaPattern {
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

impl TryFrom<String> for MediaPattern {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text).ok_or_else(|| {
            format!(
                "a media type like \"text/html\", \"text/*\" or \"application/*+json\", \
                 not \"{text}\""
            )
        })
    }
}

/// The pattern as written (lower-cased): `type/subtype`, `type/*`, `type/*+suffix`, `*/*`.
impl std::fmt::Display for MediaPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind.as_deref().unwrap_or("*"))?;
        match &self.sub {
            SubPattern::Any => f.write_str("/*"),
            SubPattern::Exact(s) => write!(f, "/{s}"),
            SubPattern::Suffix(s) => write!(f, "/*{s}"),
        }
    }
}

serialize_display!(MediaPattern);

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
    pub(super) levels: [u32; 3],
    min_size: u64,
    include: Vec<MediaPattern>,
    exclude: Vec<MediaPattern>,
    decompress: bool,
}

impl Policy {
    /// The coding a client accepting `accept` gets a compressible response in, if any.
    pub(super) fn preferred(&self, accept: &Accept) -> Option<Coding> {
        if !self.enabled {
            return None;
        }
        accept.choose(&self.order)
    }

    pub fn new(c: &Config) -> Self {
        Self {
            enabled: c.enabled,
            order: c.encodings.clone(),
            levels: [c.gzip_level, c.br_level, c.zstd_level],
            min_size: c.min_size,
            include: c.types.clone(),
            exclude: c.exclude_types.clone(),
            decompress: c.decompress,
        }
    }

    /// The response's media type is one this policy compresses.
    fn compressible(&self, resp: &impl Fields) -> bool {
        let Some(essence) = resp
            .get(&header::CONTENT_TYPE)
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
    pub named: BTreeMap<Name, Arc<Policy>>,
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

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Action {
    Keep,
    Compress(Coding),
    Decompress(Coding),
}

/// The decision for one response: whether it varies on `Accept-Encoding`, and the action.
pub(super) fn decide(
    policy: &Policy,
    accept: &Accept,
    head: bool,
    resp: &impl Fields,
) -> (bool, Action) {
    let status = resp.status().as_u16();
    if !policy.enabled || resp.status().is_informational() || status == 204 {
        return (false, Action::Keep);
    }
    let encoded = content_encoding(resp);
    // A body below the threshold goes out as it is to everyone, so it does not vary (nginx
    // omits Vary there too); when it grows, its new response carries Vary. An empty body stays
    // empty: Pingora may not run the body filter for it at all. Checked first because it is
    // the cheapest test and settles Rampart's own small answers (a 429's problem+json) and
    // short proxied bodies, whatever their other fields say.
    let sized = content_length(resp).is_none_or(|n| n > 0 && n >= policy.min_size);
    if (matches!(encoded, Encoded::Identity) && !sized) || no_transform(resp) {
        return (false, Action::Keep);
    }
    // The body is not the full representation, or there is none to encode.
    let untouchable =
        head || status == 304 || status == 206 || resp.get(&header::CONTENT_RANGE).is_some();
    match encoded {
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
            // A 304 rarely names its type; it stands for the 200 that would have varied.
            let negotiable =
                !policy.order.is_empty() && (status == 304 || policy.compressible(resp));
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

fn content_encoding(resp: &impl Fields) -> Encoded {
    let mut values = resp.get_all(&header::CONTENT_ENCODING);
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

fn no_transform(resp: &impl Fields) -> bool {
    resp.get_all(&header::CACHE_CONTROL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
}

pub(super) fn content_length(resp: &impl Fields) -> Option<u64> {
    resp.get(&header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Header changes for a body that will be re-encoded (as nginx's gzip filter does).
pub(super) fn rewrite_header(resp: &mut impl Fields, action: Action, chunked: bool) {
    match action {
        Action::Keep => return,
        Action::Compress(c) => {
            resp.set(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(c.token()),
            );
        }
        Action::Decompress(_) => {
            resp.remove(&header::CONTENT_ENCODING);
        }
    }
    resp.remove(&header::CONTENT_LENGTH);
    // Byte ranges of the encoded body are not ranges of the representation.
    resp.remove(&header::ACCEPT_RANGES);
    if chunked {
        resp.set(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    // RFC 9110 section 8.8.1: another byte sequence cannot share a strong validator.
    let Some(etag) = resp.get(&header::ETAG) else {
        return;
    };
    let bytes = etag.as_bytes();
    if bytes.starts_with(b"\"") {
        if let Ok(weak) = HeaderValue::from_bytes(&[b"W/", bytes].concat()) {
            resp.set(header::ETAG, weak);
        }
    } else if !bytes.starts_with(b"W/") {
        resp.remove(&header::ETAG);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;

    fn accept(v: &str) -> Accept {
        Accept::parse(std::iter::once(v.as_bytes()))
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
        let types = toml::from_str::<Config>("types = [\"text/*\", \"json\"]");
        let e = types.expect_err("not a media type").to_string();
        assert!(e.contains("a media type like"), "{e}");
        assert_eq!(Config::default().types.len(), DEFAULT_TYPES.len());
        let name = |n: &str| Name::try_from(n.to_string()).expect("name");
        let nested = Config {
            policies: [(name("inner"), Config::default())].into(),
            ..Config::default()
        };
        assert_eq!(
            bad(Config {
                policies: [(name("outer"), nested)].into(),
                ..Config::default()
            }),
            "policies.outer.policies"
        );
        Config::default().validate().expect("defaults are valid");
    }
}
