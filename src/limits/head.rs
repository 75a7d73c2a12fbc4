//! HTTP/1.x request heads as RFC 9112 wants them, checked before Pingora parses them.
//!
//! Phase: the connection gate (`gate/`) feeds the bytes of each request head to a
//! [`Scanner`] as they arrive and hands the complete head to [`check`]; Pingora only ever
//! sees heads that passed both. Pingora parses with the same `httparse` defaults, so a head
//! accepted here is accepted there.
//!
//! Invariants: every byte is scanned once, so a head trickled byte by byte costs linear time;
//! a size limit is enforced before the head is complete, so a client can make Rampart buffer
//! no more than `max_header_section` bytes; an accepted head has exactly one meaning for its
//! body's length ([`Framing`]). Refused, all with `Connection: close`: a request line over
//! the limit (414), a header line, the whole head or the field count over theirs (431), a
//! method that is not a token (400) or longer than the limit (501), `CONNECT` and `TRACE`
//! (405), a missing, repeated or malformed `Host` or one an absolute-form target contradicts
//! (400), a repeated or malformed `Content-Length` even when the copies agree (400), a
//! `Transfer-Encoding` whose final coding is not `chunked` or that applies it twice (400), or
//! that names another coding (501), and anything `httparse` cannot parse (400).

use std::mem::MaybeUninit;

use crate::limits::{Reason, PINGORA_MAX_HEADERS};

/// Sizes and counts a head must stay within (from `[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub request_line: usize,
    pub header_line: usize,
    pub section: usize,
    pub headers: usize,
    pub method: usize,
}

/// Why a head was refused, and what of it can be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: Reason,
    pub detail: &'static str,
}

impl Rejection {
    fn new(status: u16, reason: Reason, detail: &'static str) -> Self {
        Self {
            status,
            reason,
            detail,
        }
    }
}

/// How the body of an accepted request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding (a `Content-Length` beside it is ignored, RFC 9112 6.3).
    Chunked,
}

/// A head that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Bytes of the head, its final empty line included.
    pub len: usize,
    pub framing: Framing,
    /// The client asks to switch protocols (`Connection: upgrade` with `Upgrade`).
    pub upgrade: bool,
}

/// What the scanner found so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// More bytes are needed; those so far are within the limits.
    Partial,
    /// The head is the first `n` bytes.
    Complete(usize),
    Refused(Rejection),
}

/// Finds the end of a head as its bytes arrive, enforcing the size limits on the way.
#[derive(Debug, Default, Clone)]
pub struct Scanner {
    /// Bytes already looked at.
    scanned: usize,
    /// Where the line being scanned starts.
    line_start: usize,
    /// Whether the request line is complete.
    request_line: bool,
    /// Complete header field lines.
    fields: usize,
}

impl Scanner {
    /// Look at the bytes of `buf` not seen yet (`buf` only ever grows between calls, from
    /// the start of the head).
    pub fn scan(&mut self, buf: &[u8], limits: &Limits) -> Scan {
        while let Some(nl) = buf
            .get(self.scanned..)
            .and_then(|rest| rest.iter().position(|b| *b == b'\n'))
        {
            let end = self.scanned + nl;
            let line = trim_cr(&buf[self.line_start..end]);
            self.scanned = end + 1;
            let start = std::mem::replace(&mut self.line_start, end + 1);
            if !self.request_line {
                if line.is_empty() {
                    continue; // empty lines before the request line are ignored (RFC 9112 2.2)
                }
                if let Some(refused) = check_method(line, limits) {
                    return Scan::Refused(refused);
                }
                if line.len() > limits.request_line {
                    return Scan::Refused(too_long_request_line());
                }
                self.request_line = true;
            } else if line.is_empty() {
                return if end + 1 > limits.section {
                    Scan::Refused(too_large_head())
                } else {
                    Scan::Complete(end + 1)
                };
            } else {
                self.fields += 1;
                if end - start > limits.header_line {
                    return Scan::Refused(too_large_head());
                }
                if self.fields > limits.headers {
                    return Scan::Refused(Rejection::new(
                        431,
                        Reason::TooManyHeaders,
                        "too many header fields",
                    ));
                }
            }
        }
        self.scanned = buf.len();
        let partial = &buf[self.line_start.min(buf.len())..];
        if !self.request_line {
            // Empty lines before it were skipped above; a final CR may be the start of the
            // line's CRLF: judged when the line ends.
            let partial = trim_cr(partial);
            if let Some(refused) = check_method(partial, limits) {
                return Scan::Refused(refused);
            }
            if partial.len() > limits.request_line || buf.len() > limits.section {
                return Scan::Refused(too_long_request_line());
            }
        } else if partial.len() > limits.header_line || buf.len() > limits.section {
            return Scan::Refused(too_large_head());
        }
        Scan::Partial
    }
}

fn too_long_request_line() -> Rejection {
    Rejection::new(414, Reason::RequestLineTooLong, "request line too long")
}

fn too_large_head() -> Rejection {
    Rejection::new(
        431,
        Reason::HeaderTooLarge,
        "request header fields too large",
    )
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The method of a (possibly partial) request line: a token of at most `limits.method` bytes.
fn check_method(line: &[u8], limits: &Limits) -> Option<Rejection> {
    let method_end = line.iter().position(|b| *b == b' ').unwrap_or(line.len());
    let method = &line[..method_end.min(limits.method + 1)];
    if !method.iter().all(|b| is_tchar(*b)) {
        return Some(Rejection::new(
            400,
            Reason::Malformed,
            "method is not a token",
        ));
    }
    if method.len() > limits.method {
        return Some(Rejection::new(
            501,
            Reason::MethodTooLong,
            "method longer than any this server implements",
        ));
    }
    None
}

/// `tchar` of RFC 9110 section 5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parse and check a complete head (the first `len` bytes the [`Scanner`] reported).
pub fn check(head: &[u8], limits: &Limits) -> Result<Accepted, Rejection> {
    let malformed = |detail| Rejection::new(400, Reason::Malformed, detail);
    // Uninitialised slots on the stack: a zeroed vector of `max_headers` slots was an
    // allocation and a 3 KB fill per request (callgrind, session 15).
    // `max_headers` is at most Pingora's limit (checked with the config), so it fits.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; PINGORA_MAX_HEADERS];
    let fields = &mut slots[..limits.headers.clamp(1, PINGORA_MAX_HEADERS)];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(head, fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(malformed("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Rejection::new(
                431,
                Reason::TooManyHeaders,
                "too many header fields",
            ))
        }
        Err(httparse::Error::Version) => return Err(malformed("not an HTTP/1.x request")),
        Err(_) => return Err(malformed("malformed request head")),
    };
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    let http11 = req.version == Some(1);
    if method.len() > limits.method {
        return Err(Rejection::new(
            501,
            Reason::MethodTooLong,
            "method longer than any this server implements",
        ));
    }
    if method == "CONNECT" || method == "TRACE" {
        return Err(Rejection::new(
            405,
            Reason::MethodNotAllowed,
            "method not allowed here",
        ));
    }

    let mut host = None;
    let mut hosts = 0;
    let mut content_length = None;
    let mut lengths = 0;
    let mut codings: Vec<&[u8]> = Vec::new();
    let mut upgrade_header = false;
    let mut connection_upgrade = false;
    for field in req.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = Some(field.value);
        } else if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            content_length = Some(field.value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings.extend(list(field.value));
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_header = true;
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= list(field.value).any(|t| t.eq_ignore_ascii_case(b"upgrade"));
        }
    }

    // Host (RFC 9112 3.2): exactly one on HTTP/1.1, at most one on HTTP/1.0, an authority.
    let bad_host = |detail| Rejection::new(400, Reason::BadHost, detail);
    if hosts > 1 {
        return Err(bad_host("more than one Host header field"));
    }
    if http11 && hosts == 0 {
        return Err(bad_host("HTTP/1.1 request without Host"));
    }
    if host.is_some_and(|h| !is_authority(trim_ows(h))) {
        return Err(bad_host("Host is not a valid authority"));
    }
    check_target(method, target, host.map(trim_ows))?;

    // Message framing (RFC 9112 6): one meaning for the body's length, or none at all.
    let bad_framing = |detail| Rejection::new(400, Reason::BadFraming, detail);
    let framing = if !codings.is_empty() {
        if !http11 {
            return Err(bad_framing("Transfer-Encoding on an HTTP/1.0 request"));
        }
        let chunked = |c: &[u8]| c.eq_ignore_ascii_case(b"chunked");
        if !codings.last().is_some_and(|c| chunked(c)) {
            return Err(bad_framing("final transfer coding is not chunked"));
        }
        if codings.iter().filter(|c| chunked(c)).count() > 1 {
            return Err(bad_framing("chunked applied more than once"));
        }
        if codings.len() > 1 {
            return Err(Rejection::new(
                501,
                Reason::UnsupportedCoding,
                "transfer coding not implemented",
            ));
        }
        Framing::Chunked
    } else if let Some(value) = content_length {
        if lengths > 1 {
            return Err(bad_framing("more than one Content-Length"));
        }
        match parse_length(value) {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => return Err(bad_framing("Content-Length is not a number")),
        }
    } else {
        Framing::None
    };
    Ok(Accepted {
        len,
        framing,
        upgrade: upgrade_header && connection_upgrade,
    })
}

/// The longest head [`Recent`] remembers: a client repeating its request sends a short one
/// (a flood, a load generator); longer heads are checked every time.
const RECENT_MAX: usize = 512;

/// [`check`], with one connection's last accepted head remembered: the same bytes again are
/// accepted again without being parsed. Sound because `check` depends on nothing but the
/// bytes and the limits, and a connection's limits do not change while it is open. A client
/// flooding a connection with one request is what it is for: the parse and checks were
/// about a tenth of the instructions of a refusal answered in the gate (callgrind, session 15).
#[derive(Debug, Default)]
pub struct Recent {
    head: Vec<u8>,
    accepted: Option<Accepted>,
}

impl Recent {
    /// What [`check`] says of `head` under `limits` (the same limits on every call).
    pub fn check(&mut self, head: &[u8], limits: &Limits) -> Result<Accepted, Rejection> {
        if let Some(accepted) = self.accepted.filter(|_| self.head == head) {
            return Ok(accepted);
        }
        let checked = check(head, limits);
        self.accepted = None;
        if let Some(accepted) = checked.as_ref().ok().filter(|_| head.len() <= RECENT_MAX) {
            self.head.clear();
            self.head.extend_from_slice(head);
            self.accepted = Some(*accepted);
        }
        checked
    }
}

/// The request target's form must suit the method (RFC 9112 3.2); an absolute-form target
/// names the same authority as `Host`.
fn check_target(method: &str, target: &str, host: Option<&[u8]>) -> Result<(), Rejection> {
    let malformed = |detail| Rejection::new(400, Reason::Malformed, detail);
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(())
        } else {
            Err(malformed("asterisk-form target is for OPTIONS only"))
        };
    }
    if target.contains('#') {
        return Err(malformed("request target has a fragment"));
    }
    if target.starts_with('/') {
        return target
            .parse::<http::Uri>()
            .map(|_| ())
            .map_err(|_| malformed("request target is not a valid URI path"));
    }
    let scheme_end = target.find("://").unwrap_or(0);
    let scheme = &target[..scheme_end];
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return Err(malformed(
            "request target is neither a path nor an http(s) URI",
        ));
    }
    let rest = &target[scheme_end + 3..];
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    if !is_authority(authority.as_bytes()) || authority.is_empty() {
        return Err(malformed("absolute-form target has no valid authority"));
    }
    if target.parse::<http::Uri>().is_err() {
        return Err(malformed("request target is not a valid URI"));
    }
    // Pingora refuses any difference, case included; so does Rampart, with the reason.
    if host.is_some_and(|h| h != authority.as_bytes()) {
        return Err(Rejection::new(
            400,
            Reason::BadHost,
            "Host differs from the request target's authority",
        ));
    }
    Ok(())
}

/// `uri-host [ ":" port ]` (RFC 3986 3.2.2): an IP literal in brackets, or a reg-name /
/// IPv4 address of unreserved, sub-delims and percent-escapes; a port of at most 5 digits.
/// No userinfo, no path, no whitespace.
pub fn is_authority(value: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = value.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|b| *b == b']') else {
            return false;
        };
        let literal = &rest[..close];
        let ok = !literal.is_empty()
            && literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
            && std::str::from_utf8(literal).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
        if !ok {
            return false;
        }
        match &rest[close + 1..] {
            [] => return true,
            [b':', port @ ..] => (&[][..], port),
            _ => return false,
        }
    } else {
        match value.iter().rposition(|b| *b == b':') {
            Some(colon) => (&value[..colon], &value[colon + 1..]),
            None => (value, &[][..]),
        }
    };
    let reg_name = host.iter().enumerate().all(|(i, b)| match b {
        b'%' => host
            .get(i + 1..i + 3)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)),
        b => b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(b),
    });
    reg_name && port.len() <= 5 && port.iter().all(u8::is_ascii_digit)
}

/// The elements of a comma-separated field value, trimmed, empty ones skipped.
pub fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// `Content-Length = 1*DIGIT` that fits in 64 bits.
fn parse_length(value: &[u8]) -> Option<u64> {
    let v = trim_ows(value);
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        request_line: 64,
        header_line: 48,
        section: 256,
        headers: 4,
        method: 10,
    };

    fn scan(bytes: &[u8]) -> Scan {
        Scanner::default().scan(bytes, &LIMITS)
    }

    /// The scanner fed byte by byte agrees with one fed everything at once.
    fn scan_trickled(bytes: &[u8]) -> Scan {
        let mut s = Scanner::default();
        for end in 1..=bytes.len() {
            match s.scan(&bytes[..end], &LIMITS) {
                Scan::Partial => {}
                done => return done,
            }
        }
        Scan::Partial
    }

    fn status(bytes: &[u8]) -> u16 {
        match scan(bytes) {
            Scan::Refused(r) => r.status,
            Scan::Partial => 0,
            Scan::Complete(n) => match check(&bytes[..n], &LIMITS) {
                Ok(_) => 200,
                Err(r) => r.status,
            },
        }
    }

    #[test]
    fn heads_complete_where_the_empty_line_is() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
        assert_eq!(scan(head), Scan::Complete(27));
        assert_eq!(scan_trickled(head), Scan::Complete(27));
        assert_eq!(
            scan(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Scan::Complete(29)
        );
        assert_eq!(scan(b"GET / HTTP/1.1\nHost: a\n\n"), Scan::Complete(24));
        assert_eq!(scan(b"GET / HTTP/1.1\r\nHost: a\r\n"), Scan::Partial);
        let ok = check(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &LIMITS).expect("valid");
        assert_eq!((ok.len, ok.framing, ok.upgrade), (27, Framing::None, false));
    }

    #[test]
    fn sizes_are_refused_before_the_head_is_complete() {
        let long_target = format!("GET /{} HTTP/1.1\r\n", "a".repeat(80));
        assert_eq!(status(long_target.as_bytes()), 414);
        assert_eq!(status(&long_target.as_bytes()[..70]), 414, "partial line");
        let long_field = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(60));
        assert_eq!(status(long_field.as_bytes()), 431);
        assert_eq!(status(&long_field.as_bytes()[..70]), 431, "partial field");
        let many = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
        assert_eq!(status(many.as_bytes()), 431);
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..4 {
            big.extend_from_slice(format!("X: {}\r\n", "v".repeat(45)).as_bytes());
        }
        big.extend_from_slice(b"\r\n");
        assert_eq!(status(&big), 431, "whole section");
        let trickled = scan_trickled(long_target.as_bytes());
        assert!(matches!(trickled, Scan::Refused(r) if r.status == 414));
    }

    #[test]
    fn methods_are_short_tokens() {
        assert_eq!(status(b"G(T / HTTP/1.1\r\n"), 400);
        assert_eq!(
            status(b"GETGETGETGETGET"),
            501,
            "refused before the line ends"
        );
        assert_eq!(status(b"PROPFIND / HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
        assert_eq!(
            status(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
            405
        );
        assert_eq!(status(b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n"), 405);
    }

    #[test]
    fn host_is_required_single_and_an_authority() {
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.0\r\n\r\n"), 200);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), 400);
        for bad in [
            "a/../x", "a b", "user@a", "a:80x", "[zz]", "a:123456", "a\\b",
        ] {
            let head = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            assert_eq!(status(head.as_bytes()), 400, "{bad}");
        }
        for good in [
            "a",
            "a.example:8080",
            "[::1]:80",
            "10.0.0.1",
            "xn--d1a.example",
            "",
        ] {
            let head = format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n");
            assert_eq!(status(head.as_bytes()), 200, "{good}");
        }
    }

    #[test]
    fn absolute_targets_must_agree_with_host() {
        assert_eq!(status(b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
        assert_eq!(status(b"GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status(b"GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status(b"GET http://u@a/x HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
        assert_eq!(status(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status(b"GET a.example:80 HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    }

    #[test]
    fn framing_has_one_meaning() {
        let ok = |h: &str| {
            check(
                format!("POST / HTTP/1.1\r\nHost: a\r\n{h}\r\n").as_bytes(),
                &LIMITS,
            )
        };
        assert_eq!(
            ok("Content-Length: 5\r\n").map(|a| a.framing),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            ok("Content-Length: 0\r\n").map(|a| a.framing),
            Ok(Framing::None)
        );
        assert_eq!(
            ok("Transfer-Encoding: Chunked\r\n").map(|a| a.framing),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            ok("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n").map(|a| a.framing),
            Ok(Framing::Chunked),
            "TE wins over CL, as Pingora does (and closes the connection after)"
        );
        let refused = |h: &str| ok(h).map_err(|r| r.status).err();
        assert_eq!(
            refused("Content-Length: 5\r\nContent-Length: 5\r\n"),
            Some(400)
        );
        assert_eq!(refused("Content-Length: 5, 5\r\n"), Some(400));
        assert_eq!(refused("Content-Length: -1\r\n"), Some(400));
        assert_eq!(
            refused("Content-Length: 99999999999999999999\r\n"),
            Some(400)
        );
        assert_eq!(refused("Transfer-Encoding: gzip\r\n"), Some(400));
        assert_eq!(refused("Transfer-Encoding: chunked, gzip\r\n"), Some(400));
        assert_eq!(
            refused("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
            Some(400)
        );
        assert_eq!(refused("Transfer-Encoding: gzip, chunked\r\n"), Some(501));
        let http10 = check(
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            &LIMITS,
        );
        assert_eq!(http10.map_err(|r| r.status), Err(400));
    }

    /// A head accepted is accepted again as it was; anything else is checked, refusals are
    /// not remembered, and a long head is not kept.
    #[test]
    fn a_repeated_head_is_accepted_as_before() {
        let mut recent = Recent::default();
        let post = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n";
        let first = recent.check(post, &LIMITS);
        assert_eq!(first.clone().map(|a| a.framing), Ok(Framing::Length(5)));
        assert_eq!(recent.check(post, &LIMITS), first, "the same again");
        assert_eq!(recent.head, post, "kept");
        let bad = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n";
        for _ in 0..2 {
            assert_eq!(recent.check(bad, &LIMITS).map_err(|r| r.status), Err(400));
            assert!(recent.accepted.is_none(), "a refusal is not remembered");
        }
        assert_eq!(recent.check(post, &LIMITS), first);
        let long = format!(
            "GET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
            "a".repeat(RECENT_MAX)
        );
        let limits = Limits {
            request_line: 2 * RECENT_MAX,
            section: 4 * RECENT_MAX,
            ..LIMITS
        };
        assert!(recent.check(long.as_bytes(), &limits).is_ok());
        assert!(recent.accepted.is_none(), "too long to keep");
    }

    #[test]
    fn upgrades_are_recognised() {
        let head = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let limits = Limits {
            headers: 8,
            header_line: 64,
            ..LIMITS
        };
        assert!(check(head, &limits).expect("valid").upgrade);
    }

    /// Found by the request_head fuzz target: a request line without a space, cut just after
    /// its CR, was refused as a method with a CR in it when scanned byte by byte.
    #[test]
    fn a_cr_at_the_end_of_a_partial_line_is_not_judged_early() {
        let head = b"GECONN\r\nOPTECTP/1.1\x0c\nHost";
        assert_eq!(scan_trickled(head), scan(head));
        assert_eq!(scan(b"GET\r"), Scan::Partial);
        // And a CR that is not part of an empty line is no empty line, whenever it is seen.
        let cr_cr = b"\n\n\r\rOPTIONSOPTIONSOPTIONS";
        assert_eq!(scan_trickled(cr_cr), scan(cr_cr));
        assert!(matches!(scan(cr_cr), Scan::Refused(r) if r.status == 400));
    }

    #[test]
    fn garbage_is_400() {
        assert_eq!(status(b"GARBAGE\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"), 400);
        assert_eq!(status(b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nX: a\r\n b\r\nHost: a\r\n\r\n"),
            400,
            "obs-fold"
        );
    }
}
