//! Limits for hostile clients: how big a request may be, how long each part of an exchange may
//! take, and how many connections and requests one client (and one upstream group) may hold.
//!
//! Phases: the connection gate (`gate/`) applies the head limits ([`head`]), the header and
//! idle timers and the connection counts before Pingora parses anything; then
//! `request_filter` ([`Limits::admit`]: a declared body too large -> 413, too many requests of
//! this client in flight -> 503), `proxy_upstream_filter` ([`Limits::admit_upstream`]: the
//! group is full -> 503) and `request_body_filter` ([`Limits::body`]: a body that grows past
//! the limit -> 413).
//!
//! Invariants: every default is no looser than nginx's stock one (the README's "Hardening"
//! table); every refusal names a [`Reason`], the only label of `rampart_rejections_total`; an
//! in-flight slot is a guard held in the request's state, so it is released however the
//! request ends.

pub mod chunked;
pub mod head;

use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use pingora_limits::inflight::{Guard, Inflight};
use serde::{Deserialize, Serialize};

use crate::types::{ByteSize, Duration, Invalid};

/// `[limits]`. nginx's equivalent of each key is named beside it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Request line (method, target, version) longer than this: 414
    /// (nginx: `large_client_header_buffers 4 8k`, one buffer).
    pub max_request_line: ByteSize,
    /// One header field line longer than this: 431 (nginx: one 8k buffer, answered 400).
    pub max_header_line: ByteSize,
    /// The whole head, request line and header fields: 431 (nginx: 4 x 8k buffers).
    pub max_header_section: ByteSize,
    /// Header field lines: 431 (nginx: bounded by the buffers only; Pingora: 256).
    pub max_headers: usize,
    /// Method names longer than this: 501 (RFC 9112 section 3).
    pub max_method_length: usize,
    /// Request body: 413; `0` means unlimited. Routes override it with `max_body_size`
    /// (nginx: `client_max_body_size 1m`).
    pub max_body_size: ByteSize,
    /// The whole request head must arrive within this, counted from the connection's start
    /// or from the first byte of a later request: else 408 and close
    /// (nginx: `client_header_timeout 60s`).
    pub header_timeout: Duration,
    /// A keep-alive connection idle this long between requests is closed
    /// (nginx: `keepalive_timeout 75s`).
    pub keepalive_timeout: Duration,
    /// Longest wait for the next piece of a request body: else 408
    /// (nginx: `client_body_timeout 60s`).
    pub body_timeout: Duration,
    /// Longest wait for the client to accept the next piece of a response: else the connection
    /// is closed (nginx: `send_timeout 60s`).
    pub send_timeout: Duration,
    /// Requests served on one connection before it is closed
    /// (nginx: `keepalive_requests 1000`).
    pub max_requests_per_connection: u32,
    /// Client connections open at once; more are closed at once
    /// (nginx: `worker_connections 768` per worker in Debian's stock nginx.conf).
    pub max_connections: usize,
    /// Connections from one client address (trusted proxies exempt): 503 with Retry-After
    /// (nginx: `limit_conn`, off by default).
    pub max_connections_per_client: usize,
    /// Requests of one client (the address `server.trusted_proxies` resolves) in flight at
    /// once: 503 with Retry-After (nginx: none).
    pub max_inflight_per_client: usize,
    /// Requests in flight to one upstream group; groups override it with `max_inflight`:
    /// 503 with Retry-After (nginx: `max_conns` per server, off by default).
    pub max_inflight_per_upstream: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_request_line: ByteSize::kib(8),
            max_header_line: ByteSize::kib(8),
            max_header_section: ByteSize::kib(32),
            max_headers: 100,
            max_method_length: 32,
            max_body_size: ByteSize::mib(1),
            header_timeout: Duration::secs(60),
            keepalive_timeout: Duration::secs(75),
            body_timeout: Duration::secs(60),
            send_timeout: Duration::secs(60),
            max_requests_per_connection: 1000,
            max_connections: 768,
            max_connections_per_client: 128,
            max_inflight_per_client: 64,
            max_inflight_per_upstream: 256,
        }
    }
}

/// Pingora refuses heads above this with a bare 400 of its own, whatever Rampart allows.
const PINGORA_MAX_HEADER_SECTION: u64 = 1_048_575;
/// Pingora parses at most this many header fields (a bare 400 above it).
const PINGORA_MAX_HEADERS: usize = 256;

impl Config {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        let section = self.max_header_section.0;
        if !(1024..=PINGORA_MAX_HEADER_SECTION).contains(&section) {
            return Err(Invalid::new(
                "max_header_section",
                "from \"1k\" to 1048575 bytes (Pingora's own ceiling)",
            ));
        }
        for (key, size) in [
            ("max_request_line", self.max_request_line),
            ("max_header_line", self.max_header_line),
        ] {
            if size.0 < 256 || size.0 > section {
                return Err(Invalid::new(
                    key,
                    format!(
                        "from 256 bytes to max_header_section ({})",
                        self.max_header_section
                    ),
                ));
            }
        }
        if self.max_headers == 0 || self.max_headers > PINGORA_MAX_HEADERS {
            return Err(Invalid::new(
                "max_headers",
                "from 1 to 256 (Pingora parses no more)",
            ));
        }
        if !(1..=1024).contains(&self.max_method_length) {
            return Err(Invalid::new("max_method_length", "from 1 to 1024"));
        }
        for (key, d) in [
            ("header_timeout", self.header_timeout),
            ("keepalive_timeout", self.keepalive_timeout),
            ("body_timeout", self.body_timeout),
            ("send_timeout", self.send_timeout),
        ] {
            if d.0 < std::time::Duration::from_millis(10) {
                return Err(Invalid::new(key, "at least \"10ms\""));
            }
        }
        for (key, n) in [
            ("max_connections", self.max_connections),
            (
                "max_connections_per_client",
                self.max_connections_per_client,
            ),
            ("max_inflight_per_client", self.max_inflight_per_client),
            ("max_inflight_per_upstream", self.max_inflight_per_upstream),
        ] {
            if n == 0 {
                return Err(Invalid::new(key, "at least 1"));
            }
        }
        if self.max_requests_per_connection == 0 {
            return Err(Invalid::new("max_requests_per_connection", "at least 1"));
        }
        Ok(())
    }

    /// The limits a request head is checked against.
    pub fn head(&self) -> head::Limits {
        let bytes = |b: ByteSize| usize::try_from(b.0).unwrap_or(usize::MAX);
        head::Limits {
            request_line: bytes(self.max_request_line),
            header_line: bytes(self.max_header_line),
            section: bytes(self.max_header_section),
            headers: self.max_headers,
            method: self.max_method_length,
        }
    }
}

/// Why Rampart refused or cut a request or connection: the label of
/// `rampart_rejections_total{reason}` and the `error` of the access log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    RequestLineTooLong,
    HeaderTooLarge,
    TooManyHeaders,
    MethodTooLong,
    MethodNotAllowed,
    Malformed,
    BadHost,
    BadFraming,
    UnsupportedCoding,
    HeaderTimeout,
    BodyTooLarge,
    BodyTimeout,
    SendTimeout,
    Connections,
    ClientConnections,
    ClientInflight,
    UpstreamInflight,
}

impl Reason {
    pub const ALL: [Reason; 17] = [
        Reason::RequestLineTooLong,
        Reason::HeaderTooLarge,
        Reason::TooManyHeaders,
        Reason::MethodTooLong,
        Reason::MethodNotAllowed,
        Reason::Malformed,
        Reason::BadHost,
        Reason::BadFraming,
        Reason::UnsupportedCoding,
        Reason::HeaderTimeout,
        Reason::BodyTooLarge,
        Reason::BodyTimeout,
        Reason::SendTimeout,
        Reason::Connections,
        Reason::ClientConnections,
        Reason::ClientInflight,
        Reason::UpstreamInflight,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::RequestLineTooLong => "request_line_too_long",
            Reason::HeaderTooLarge => "header_too_large",
            Reason::TooManyHeaders => "too_many_headers",
            Reason::MethodTooLong => "method_too_long",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::Malformed => "malformed",
            Reason::BadHost => "bad_host",
            Reason::BadFraming => "bad_framing",
            Reason::UnsupportedCoding => "unsupported_coding",
            Reason::HeaderTimeout => "header_timeout",
            Reason::BodyTooLarge => "body_too_large",
            Reason::BodyTimeout => "body_timeout",
            Reason::SendTimeout => "send_timeout",
            Reason::Connections => "connections",
            Reason::ClientConnections => "client_connections",
            Reason::ClientInflight => "client_inflight",
            Reason::UpstreamInflight => "upstream_inflight",
        }
    }
}

/// Seconds a client is asked to wait after a 503 for a full slot.
pub const RETRY_AFTER_SECS: u32 = 1;

/// A self-made answer instead of proxying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: Reason,
    pub detail: &'static str,
    /// `Retry-After` (seconds), for a refusal that passes when a slot frees up.
    pub retry_after: Option<u32>,
}

impl Refusal {
    pub fn new(status: u16, reason: Reason, detail: &'static str) -> Self {
        Self {
            status,
            reason,
            detail,
            retry_after: None,
        }
    }

    /// 503: a slot frees up soon.
    pub fn full(reason: Reason, detail: &'static str) -> Self {
        Self {
            retry_after: Some(RETRY_AFTER_SECS),
            ..Self::new(503, reason, detail)
        }
    }

    pub fn retry_after_header(&self) -> Option<(HeaderName, HeaderValue)> {
        self.retry_after.map(|s| {
            (
                http::header::RETRY_AFTER,
                crate::fields::number(u64::from(s)),
            )
        })
    }
}

/// The request-level limits, with their in-flight counters (shared by all workers).
pub struct Limits {
    max_body: u64,
    per_client: usize,
    per_upstream: usize,
    clients: Inflight,
    upstreams: Inflight,
}

/// One request's slots and body count (a field of the request context).
#[derive(Debug, Default)]
pub struct RequestState {
    client: Option<Guard>,
    upstream: Option<Guard>,
    /// The body limit of the request's route; `0`: unlimited.
    body_max: u64,
    body_seen: u64,
    /// Set when a limit refused or cut this request.
    pub rejected: Option<Reason>,
}

impl Limits {
    pub fn new(c: &Config) -> Self {
        Self {
            max_body: c.max_body_size.0,
            per_client: c.max_inflight_per_client,
            per_upstream: c.max_inflight_per_upstream,
            clients: Inflight::new(),
            upstreams: Inflight::new(),
        }
    }

    /// `request_filter`, once the route is known: the declared body against the route's limit
    /// (`route_max`, else `[limits] max_body_size`), then a slot among the client's requests in
    /// flight. `content_length` has been checked by the gate (HTTP/1) or Pingora (HTTP/2).
    pub fn admit(
        &self,
        content_length: Option<&[u8]>,
        route_max: Option<ByteSize>,
        client: Option<IpAddr>,
        state: &mut RequestState,
    ) -> Result<(), Refusal> {
        state.body_max = route_max.map_or(self.max_body, |b| b.0);
        let declared = content_length
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| state.body_max > 0 && n > state.body_max) {
            return Err(state.refuse(Refusal::new(
                413,
                Reason::BodyTooLarge,
                "request body larger than this route accepts",
            )));
        }
        if let Some(ip) = client {
            let (guard, count) = self.clients.incr(ip, 1);
            if count > self.per_client as isize {
                return Err(state.refuse(Refusal::full(
                    Reason::ClientInflight,
                    "too many requests of this client in flight",
                )));
            }
            state.client = Some(guard);
        }
        Ok(())
    }

    /// `proxy_upstream_filter`: a slot among the group's requests in flight (`group_max`, else
    /// `[limits] max_inflight_per_upstream`). Cache hits never get here.
    pub fn admit_upstream(
        &self,
        group: &str,
        group_max: Option<usize>,
        state: &mut RequestState,
    ) -> Result<(), Refusal> {
        if state.upstream.is_some() {
            return Ok(()); // a retry of the same request keeps its slot
        }
        let max = group_max.unwrap_or(self.per_upstream);
        let (guard, count) = self.upstreams.incr(group, 1);
        if count > max as isize {
            return Err(state.refuse(Refusal::full(
                Reason::UpstreamInflight,
                "too many requests in flight to this upstream",
            )));
        }
        state.upstream = Some(guard);
        Ok(())
    }

    /// `request_body_filter`: `len` more body bytes arrived; past the limit the request is
    /// cut with 413 (a body without `Content-Length`, or one longer than it said).
    pub fn body(&self, len: usize, state: &mut RequestState) -> Result<(), Refusal> {
        state.body_seen = state.body_seen.saturating_add(len as u64);
        if state.body_max > 0 && state.body_seen > state.body_max {
            return Err(state.refuse(Refusal::new(
                413,
                Reason::BodyTooLarge,
                "request body larger than this route accepts",
            )));
        }
        Ok(())
    }
}

impl RequestState {
    /// Record a refusal decided elsewhere (a timeout attributed to the client).
    pub fn refuse(&mut self, refusal: Refusal) -> Refusal {
        self.rejected = Some(refusal.reason);
        refusal
    }
}

/// Which side's limit an error means, when it is the client's: a body that stopped arriving
/// (the body timer fired, or the upstream gave up waiting for a response while the request
/// body was still incomplete: it cannot answer what it has not received) or a response the
/// client stopped reading. `None`: not the client's doing.
pub fn blame_client(
    etype: &pingora::ErrorType,
    source: &pingora::ErrorSource,
    body_done: bool,
) -> Option<Reason> {
    use pingora::{ErrorSource, ErrorType};
    match (etype, source) {
        (ErrorType::ReadTimedout, ErrorSource::Downstream) => Some(Reason::BodyTimeout),
        (ErrorType::ReadTimedout, ErrorSource::Upstream) if !body_done => Some(Reason::BodyTimeout),
        (ErrorType::WriteTimedout, ErrorSource::Downstream) => Some(Reason::SendTimeout),
        _ => None,
    }
}

/// Log lines about refusals: at most this many a second, the rest counted and summed up.
const LOG_LINES_PER_SEC: u64 = 20;

/// Log a refusal at info, throttled process-wide so a flood cannot flood the log too (the
/// metric counts every one).
pub fn log_refusal(
    status: u16,
    reason: Reason,
    client: Option<IpAddr>,
    request: &dyn std::fmt::Display,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    static LINES: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if WINDOW.swap(now, Ordering::Relaxed) != now {
        LINES.store(0, Ordering::Relaxed);
        let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
        if suppressed > 0 {
            log::info!("{suppressed} more refusals not logged (see rampart_rejections_total)");
        }
    }
    if LINES.fetch_add(1, Ordering::Relaxed) >= LOG_LINES_PER_SEC {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let client: &dyn std::fmt::Display = match &client {
        Some(ip) => ip,
        None => &"-",
    };
    log::info!(
        "refused {status} {} from {client}: {request}",
        reason.label()
    );
}

/// At most `max` characters of `bytes` for a log line: printable ASCII kept, anything else
/// escaped, and `...` where it was cut.
pub fn printable(bytes: &[u8], max: usize) -> String {
    let mut out: String = bytes
        .iter()
        .take(max)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    if bytes.len() > max {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_client: usize, per_upstream: usize) -> Limits {
        Limits::new(&Config {
            max_inflight_per_client: per_client,
            max_inflight_per_upstream: per_upstream,
            ..Config::default()
        })
    }

    #[test]
    fn defaults_are_valid_and_no_looser_than_nginx() {
        let c = Config::default();
        c.validate().expect("defaults valid");
        assert_eq!(c.max_body_size, ByteSize::mib(1)); // client_max_body_size 1m
        assert!(c.header_timeout <= Duration::secs(60)); // client_header_timeout
        assert!(c.keepalive_timeout <= Duration::secs(75)); // keepalive_timeout
        assert!(c.body_timeout <= Duration::secs(60)); // client_body_timeout
        assert!(c.send_timeout <= Duration::secs(60)); // send_timeout
        assert!(c.max_request_line <= ByteSize::kib(8)); // large_client_header_buffers 4 8k
        assert!(c.max_header_section <= ByteSize::kib(32));
        assert!(c.max_requests_per_connection <= 1000); // keepalive_requests
    }

    #[test]
    fn declared_bodies_over_the_limit_are_413() {
        let l = limits(10, 10);
        let mut s = RequestState::default();
        let r = l.admit(Some(b"1048577"), None, None, &mut s);
        assert_eq!(r.map_err(|r| r.status), Err(413));
        assert_eq!(s.rejected, Some(Reason::BodyTooLarge));
        let mut s = RequestState::default();
        assert!(l.admit(Some(b"1048576"), None, None, &mut s).is_ok());
        let mut s = RequestState::default();
        let route = Some(ByteSize(10));
        assert!(l.admit(Some(b"11"), route, None, &mut s).is_err());
        let mut s = RequestState::default();
        assert!(l
            .admit(Some(b"999999999"), Some(ByteSize(0)), None, &mut s)
            .is_ok());
    }

    #[test]
    fn streamed_bodies_are_cut_past_the_limit() {
        let l = limits(10, 10);
        let mut s = RequestState::default();
        l.admit(None, Some(ByteSize(10)), None, &mut s)
            .expect("admitted");
        assert!(l.body(6, &mut s).is_ok());
        assert!(l.body(4, &mut s).is_ok());
        assert_eq!(l.body(1, &mut s).map_err(|r| r.status), Err(413));
    }

    #[test]
    fn in_flight_slots_are_released_with_the_request() {
        let l = limits(2, 1);
        let ip: IpAddr = [192, 0, 2, 1].into();
        let mut a = RequestState::default();
        let mut b = RequestState::default();
        let mut c = RequestState::default();
        assert!(l.admit(None, None, Some(ip), &mut a).is_ok());
        assert!(l.admit(None, None, Some(ip), &mut b).is_ok());
        let refused = l.admit(None, None, Some(ip), &mut c).expect_err("third");
        assert_eq!((refused.status, refused.retry_after), (503, Some(1)));
        drop(a);
        let mut d = RequestState::default();
        assert!(l.admit(None, None, Some(ip), &mut d).is_ok());
        // Upstream groups: one slot, kept across retries, freed with the request.
        assert!(l.admit_upstream("g", None, &mut b).is_ok());
        assert!(l.admit_upstream("g", None, &mut b).is_ok());
        assert!(l.admit_upstream("g", None, &mut d).is_err());
        assert!(l.admit_upstream("g", Some(5), &mut c).is_ok());
        drop(b);
        drop(c);
        let mut e = RequestState::default();
        assert!(l.admit_upstream("g", None, &mut e).is_ok());
    }

    #[test]
    fn bad_values_are_named() {
        let key = |c: Config| c.validate().expect_err("invalid").key;
        let d = Config::default;
        assert_eq!(
            key(Config {
                max_headers: 300,
                ..d()
            }),
            "max_headers"
        );
        assert_eq!(
            key(Config {
                max_header_line: ByteSize::kib(64),
                ..d()
            }),
            "max_header_line"
        );
        assert_eq!(
            key(Config {
                header_timeout: Duration::millis(0),
                ..d()
            }),
            "header_timeout"
        );
        assert_eq!(
            key(Config {
                max_connections: 0,
                ..d()
            }),
            "max_connections"
        );
    }
}
