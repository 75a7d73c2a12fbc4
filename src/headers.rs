//! Headers: what the upstream is told about the client, and what every client response carries.
//!
//! Phases: `upstream_request_filter` ([`Headers::forward`], written by
//! [`edit_upstream_request`]); `upstream_response_filter` ([`remove_hop_by_hop`]);
//! `response_filter` and `respond` ([`Headers::downstream`]), so proxied, cached and
//! self-made responses are treated alike.
//!
//! Invariants: every response leaves with the security headers and the request id; a header
//! value the upstream chose (e.g. a stricter `X-Frame-Options: DENY`) is kept, not overwritten;
//! no hop-by-hop field crosses Rampart in either direction or reaches the cache.

use std::collections::BTreeMap;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::fields::Fields;
use crate::types::{HeaderNameText, HeaderValueText};

pub const REQUEST_ID: &str = "x-request-id";
const X_REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID);
const X_PROCESS_TIME: HeaderName = HeaderName::from_static("x-process-time");
const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// `Keep-Alive` (RFC 7230 appendix A.1.2): hop-by-hop, and read for the upstream's idle timeout.
pub const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// A change to one field of the upstream request: its new value, or `None` to remove it.
pub struct Edit(pub HeaderName, pub Option<HeaderValue>);

/// The most fields `upstream_request_filter` writes: [`Headers::forward`]'s five and
/// `Connection`. They are passed as one array: a chain of iterator adapters moved each edit
/// through several layers (callgrind: about 770 instructions per request).
const UPSTREAM_EDITS_MAX: usize = 6;

/// `edits` written into the upstream request. `preserve_case`: through Pingora's inserts,
/// which keep the client's spelling of names in its case map. Otherwise into `http`'s map
/// taken apart from the request, one insert each (why: `fields::Bare`); names then go out
/// as Pingora spells names it has no case for. A target the URI does not reproduce
/// (absolute form, not UTF-8) takes Pingora's inserts too, since the parts cannot keep it.
pub fn edit_upstream_request(
    req: &mut RequestHeader,
    edits: [Option<Edit>; UPSTREAM_EDITS_MAX],
    preserve_case: bool,
) {
    if preserve_case || !target_from_uri(req) {
        for Edit(name, value) in edits.into_iter().flatten() {
            match value {
                // Fails only for a name that does not parse; these are constants.
                Some(value) => drop(req.insert_header(name, value)),
                None => drop(req.remove_header(&name)),
            }
        }
        return;
    }
    let end_stream = req.send_end_stream();
    let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(req, empty));
    // The map was cloned from the client's request at its exact size: room for the fields
    // added up front is one growth instead of several (callgrind: three per request).
    parts.headers.reserve(UPSTREAM_EDITS_MAX);
    for Edit(name, value) in edits.into_iter().flatten() {
        match value {
            Some(value) => drop(parts.headers.insert(name, value)),
            None => drop(parts.headers.remove(&name)),
        }
    }
    *req = RequestHeader::from(parts);
    if let Some(end_stream) = end_stream {
        req.set_send_end_stream(end_stream);
    }
}

/// The request's target is its URI's path and query (origin form, UTF-8): a request rebuilt
/// from its parts sends the same target.
fn target_from_uri(req: &RequestHeader) -> bool {
    req.raw_path_is_utf8()
        && req
            .uri
            .path_and_query()
            .is_some_and(|pq| pq.as_str().as_bytes() == req.raw_path())
}

/// `[headers]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Added to every response unless the upstream set the header itself. Writing this table
    /// replaces the defaults (the old nginx.conf's three headers).
    pub security: BTreeMap<HeaderNameText, HeaderValueText>,
    /// `Strict-Transport-Security`, sent on responses over the TLS listener only ("" = off).
    pub hsts: HeaderValueText,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            security: [
                ("X-Frame-Options", "SAMEORIGIN"),
                ("X-Content-Type-Options", "nosniff"),
                ("X-XSS-Protection", "1; mode=block"),
            ]
            .into_iter()
            .map(|(k, v)| {
                (
                    HeaderNameText::from_static(k),
                    HeaderValueText::from_static(v),
                )
            })
            .collect(),
            hsts: HeaderValueText::from_static("max-age=31536000; includeSubDomains"),
        }
    }
}

/// The header policy, parsed once at start.
pub struct Headers {
    security: Vec<(HeaderName, HeaderValue)>,
    hsts: Option<HeaderValue>,
    process_time: bool,
    server_timing: bool,
}

impl Headers {
    /// `process_time` and `server_timing` come from `[metrics]`: whether `X-Process-Time` and
    /// `Server-Timing` go out.
    pub fn new(c: &Config, process_time: bool, server_timing: bool) -> Self {
        Self {
            security: c
                .security
                .iter()
                .map(|(k, v)| (k.name.clone(), v.0.clone()))
                .collect(),
            hsts: (!c.hsts.is_empty()).then(|| c.hsts.0.clone()),
            process_time,
            server_timing,
        }
    }

    /// Forwarding headers for the upstream request (nginx's `proxy_set_header` block), as
    /// edits of the request's `headers` ([`edit_upstream_request`] writes them).
    /// `Host` is left as the client sent it unless the upstream group names one.
    pub fn forward(
        &self,
        headers: &HeaderMap,
        client: &Client,
        request_id: &str,
        host: Option<&HeaderValue>,
    ) -> [Option<Edit>; 5] {
        let host = host.map(|h| Edit(header::HOST, Some(h.clone())));
        let peer = client
            .peer
            .and_then(|peer| HeaderValue::try_from(crate::client::ip_text(peer)).ok());
        let xff = client.peer.map(|_| {
            let prev = headers.get(X_FORWARDED_FOR).map(HeaderValue::to_str);
            let xff = match (prev, peer.as_ref().map(HeaderValue::to_str)) {
                (Some(Ok(prev)), Some(Ok(peer))) if !prev.trim().is_empty() => {
                    HeaderValue::try_from(format!("{prev}, {peer}")).ok()
                }
                _ => peer.clone(),
            };
            Edit(X_FORWARDED_FOR, xff)
        });
        // Usually the client is the peer: its text is written once, for both fields.
        let real_ip = match client.ip {
            Some(ip) if client.peer == Some(ip) => peer,
            Some(ip) => HeaderValue::try_from(crate::client::ip_text(ip)).ok(),
            None => None,
        };
        let real_ip = Edit(X_REAL_IP, real_ip);
        let proto = Edit(
            X_FORWARDED_PROTO,
            Some(HeaderValue::from_static(client.scheme)),
        );
        let id = Edit(X_REQUEST_ID, HeaderValue::from_str(request_id).ok());
        [host, xff, Some(real_ip), Some(proto), Some(id)]
    }

    /// Security headers, the request id and timing, on any response Rampart sends.
    pub fn downstream(&self, resp: &mut impl Fields, request: &Downstream<'_>) {
        for (name, value) in &self.security {
            resp.set_absent(name.clone(), value.clone());
        }
        if request.tls {
            if let Some(hsts) = &self.hsts {
                resp.set(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
            }
        }
        // The id was checked (or made) as a token when the request arrived.
        if let Ok(id) = HeaderValue::from_str(request.request_id) {
            resp.set(X_REQUEST_ID, id);
        }
        let [(process_time, took), (server_timing, total)] = self.timing(request);
        if let Some(value) = took {
            resp.set(process_time, value);
        }
        if let Some(value) = total {
            resp.add(server_timing, value);
        }
    }

    /// The fields of [`Self::downstream`] that change with every request's timing, each with
    /// its value when it is configured: `X-Process-Time`, then `Server-Timing`.
    pub fn timing(&self, request: &Downstream<'_>) -> [(HeaderName, Option<HeaderValue>); 2] {
        // Time so far: the response header is about to leave, the body may still stream.
        let elapsed = request.started.elapsed();
        let took = self.process_time.then(|| seconds_with_micros(elapsed));
        let total = self.server_timing.then(|| {
            let total = elapsed.as_secs_f64() * 1000.0;
            let value = match request.upstream_time {
                Some(up) => format!(
                    "upstream;dur={:.3}, total;dur={total:.3}",
                    up.as_secs_f64() * 1000.0
                ),
                None => format!("total;dur={total:.3}"),
            };
            HeaderValue::try_from(value).ok()
        });
        [(X_PROCESS_TIME, took), (SERVER_TIMING, total.flatten())]
    }
}

/// `elapsed` in seconds with six decimals (`0.000123`), from integers: the float formatting
/// `{:.6}` rounds with, then `format!` itself, were visible shares of a hit's and a 429's
/// profiles.
fn seconds_with_micros(elapsed: std::time::Duration) -> HeaderValue {
    let micros = elapsed.as_micros();
    let mut text = Vec::with_capacity(24);
    text.extend_from_slice(itoa::Buffer::new().format(micros / 1_000_000).as_bytes());
    // The fraction is below 1,000,000: 1,000,000 + it has seven digits, the last six its own.
    let fraction = 1_000_000 + micros % 1_000_000;
    text.push(b'.');
    text.extend_from_slice(&itoa::Buffer::new().format(fraction).as_bytes()[1..]);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
        .unwrap_or(HeaderValue::from_static("0.000000"))
}

/// What [`Headers::downstream`] needs to know about the request being answered.
pub struct Downstream<'a> {
    pub request_id: &'a str,
    /// Arrived over the TLS listener (HSTS goes out).
    pub tls: bool,
    /// When Rampart first saw the request.
    pub started: std::time::Instant,
    /// How long the upstream took to send its response header, if it was asked.
    pub upstream_time: Option<std::time::Duration>,
}

/// Fields that describe one connection, not the message (RFC 9110 section 7.6.1), besides
/// those the message's own `Connection` names.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Remove the hop-by-hop fields of an upstream response before it is stored or forwarded:
/// `Connection` and every field it names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`,
/// `Transfer-Encoding` and `Upgrade`. A `101 Switching Protocols` keeps `Connection` and
/// `Upgrade`: they are the upgrade itself.
///
/// Only responses: for requests Pingora's default upstream request policy
/// (`HttpUpstreamRequestPolicy::standard`) already strips the same set, nominated fields
/// included, and forwards only a WebSocket upgrade. Framing is not affected: Pingora reads the
/// upstream body from the raw header it parsed, and frames the client's copy itself.
///
/// Why one pass over the names first: a response usually carries one of these fields at
/// most (`Connection: keep-alive`), and a removal costs a lookup whether the name is there or
/// not (callgrind: seven lookups and a name made for `keep-alive`, per proxied response).
pub fn remove_hop_by_hop(resp: &mut impl Fields) {
    let mut present = 0u8;
    for name in resp.names() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return; // no `Connection`, so nothing nominated either
    }
    let upgrade = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    // The usual `Connection: keep-alive` names no field: skip taking the list apart (about
    // 400 instructions per proxied response).
    let names_no_field = resp.get_all(&header::CONNECTION).all(|v| {
        let v = v.as_bytes();
        v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
    });
    let nominated: Vec<HeaderName> = if names_no_field {
        Vec::new()
    } else {
        resp.get_all(&header::CONNECTION)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // Connection options, not field names: `keep-alive` is in the list below, and
            // `close` is a reserved name no field may have (RFC 9110 section 7.6.1).
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect()
    };
    for name in &nominated {
        if !(upgrade && *name == header::UPGRADE) {
            resp.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        let kept = upgrade && (*name == header::CONNECTION || *name == header::UPGRADE);
        if present & (1 << i) != 0 && !kept {
            resp.remove(name);
        }
    }
}

/// The client's `X-Request-Id` when it is a sane token, else a fresh UUID. Anything longer or
/// stranger is replaced so it cannot forge log lines or bloat headers.
pub fn request_id(req: &RequestHeader) -> String {
    if let Some(v) = req.headers.get(X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
        {
            return String::from_utf8_lossy(b).into_owned();
        }
    }
    uuid::Uuid::new_v4().to_string()
}

/// The tokens of every `Vary` field line, trimmed, empty elements skipped (RFC 9110 section
/// 12.5.5). The one `Vary` parser: compression, CORS and the cache's variance all use it.
pub fn vary_tokens<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
) -> impl Iterator<Item = &'a str> {
    values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Add a token to `Vary` once, keeping what is there (`*` already covers everything).
pub fn add_vary(resp: &mut impl Fields, token: &str) {
    let mut tokens: Vec<&str> = Vec::new();
    for t in vary_tokens(resp.get_all(&http::header::VARY)) {
        if t == "*" || t.eq_ignore_ascii_case(token) {
            return;
        }
        tokens.push(t);
    }
    tokens.push(token);
    // Tokens of a value that parsed, and ours: a valid value.
    if let Ok(value) = HeaderValue::try_from(tokens.join(", ")) {
        resp.set(http::header::VARY, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;

    fn with_id(id: &[u8]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).expect("request");
        r.insert_header(REQUEST_ID, HeaderValue::from_bytes(id).expect("value"))
            .expect("header");
        r
    }

    #[test]
    fn request_ids() {
        assert_eq!(request_id(&with_id(b"abc-123_x.y:z")), "abc-123_x.y:z");
        let long = [b'a'; 129];
        for bad in [&b"has space"[..], b"new\tline", &long[..], b"quote\""] {
            let id = request_id(&with_id(bad));
            assert_ne!(id.as_bytes(), bad);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        }
        let none = RequestHeader::build("GET", b"/", None).expect("request");
        assert!(uuid::Uuid::parse_str(&request_id(&none)).is_ok());
    }

    #[test]
    fn vary_tokens_are_added_once() {
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        resp.append_header("vary", "Accept, origin").expect("h");
        add_vary(&mut resp, "Origin");
        assert_eq!(
            resp.headers.get("vary").map(|v| v.as_bytes()),
            Some(&b"Accept, origin"[..])
        );
        add_vary(&mut resp, "Accept-Encoding");
        assert_eq!(
            resp.headers.get("vary").map(|v| v.as_bytes()),
            Some(&b"Accept, origin, Accept-Encoding"[..])
        );
        let mut star = ResponseHeader::build(200, None).expect("resp");
        star.append_header("vary", "*").expect("h");
        add_vary(&mut star, "Origin");
        assert_eq!(
            star.headers.get("vary").map(|v| v.as_bytes()),
            Some(&b"*"[..])
        );
    }

    /// A response of `status` with `fields` appended in order.
    fn response(status: u16, fields: &[(&str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(status, None).expect("resp");
        for (k, v) in fields {
            resp.append_header(k.to_string(), *v).expect("h");
        }
        resp
    }

    fn names(resp: &ResponseHeader) -> Vec<&str> {
        resp.headers.keys().map(|k| k.as_str()).collect()
    }

    /// Only what is there goes: `Connection` and what it nominates, the rest untouched; a
    /// response without any of these fields is left as it is.
    #[test]
    fn a_lone_connection_field_is_removed_with_what_it_names() {
        let mut resp = response(
            200,
            &[
                ("content-type", "application/json"),
                ("connection", "keep-alive, X-Debug"),
                ("x-debug", "1"),
                ("etag", "\"v1\""),
            ],
        );
        crate::fields::Bare::edit(&mut resp, remove_hop_by_hop);
        assert_eq!(names(&resp), ["content-type", "etag"]);

        let mut plain = response(200, &[("etag", "\"v2\"")]);
        remove_hop_by_hop(&mut plain);
        assert_eq!(plain.headers.len(), 1);
    }

    #[test]
    fn hop_by_hop_fields_and_the_nominated_ones_are_removed() {
        let mut resp = response(
            200,
            &[
                ("connection", "x-foo, close"),
                ("connection", "X-Bar"),
                ("x-foo", "1"),
                ("x-bar", "2"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("transfer-encoding", "chunked"),
                ("trailer", "x-sum"),
                ("upgrade", "h2c"),
                ("te", "trailers"),
                ("etag", "\"v1\""),
            ],
        );
        remove_hop_by_hop(&mut resp);
        assert_eq!(names(&resp), ["etag"]);

        let mut switching = response(
            101,
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("keep-alive", "timeout=5"),
            ],
        );
        remove_hop_by_hop(&mut switching);
        assert!(switching.headers.get("upgrade").is_some());
        assert!(switching.headers.get("connection").is_some());
        assert!(switching.headers.get("keep-alive").is_none());
    }

    #[test]
    fn security_headers_keep_the_upstreams_and_hsts_only_on_tls() {
        let h = Headers::new(&Config::default(), false, false);
        let facts = |tls| Downstream {
            request_id: "id",
            tls,
            started: std::time::Instant::now(),
            upstream_time: None,
        };
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        resp.insert_header("x-frame-options", "DENY").expect("h");
        h.downstream(&mut resp, &facts(false));
        assert_eq!(
            resp.headers.get("x-frame-options").map(|v| v.as_bytes()),
            Some(&b"DENY"[..])
        );
        assert!(resp.headers.get("x-content-type-options").is_some());
        assert!(resp.headers.get("strict-transport-security").is_none());
        assert!(resp.headers.get("x-process-time").is_none());
        let mut tls = ResponseHeader::build(200, None).expect("resp");
        h.downstream(&mut tls, &facts(true));
        assert!(tls.headers.get("strict-transport-security").is_some());
        assert_eq!(
            tls.headers.get(REQUEST_ID).map(|v| v.as_bytes()),
            Some(&b"id"[..])
        );
    }

    #[test]
    fn process_time_is_seconds_with_six_decimals() {
        use std::time::Duration;
        let text = |d| seconds_with_micros(d).to_str().ok().map(str::to_owned);
        assert_eq!(
            text(Duration::from_micros(123)).as_deref(),
            Some("0.000123")
        );
        assert_eq!(
            text(Duration::from_micros(2_500_001)).as_deref(),
            Some("2.500001")
        );
        assert_eq!(text(Duration::from_nanos(999)).as_deref(), Some("0.000000"));
    }
}
