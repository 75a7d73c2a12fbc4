//! Fuzz targets for the code that reads what clients and operators send: each takes arbitrary
//! bytes, must not panic, and asserts the invariant in its doc comment.
//!
//! Two drivers run these bodies: the cargo-fuzz binaries in `fuzz_targets/` (libFuzzer,
//! coverage-guided, for long runs) and `tests/fuzz.rs` in the main crate (stable Rust, seeds
//! from `fuzz/corpus/` mutated for a bounded time, in every test run and in CI).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use pingora::cache::key::CacheHashKey;
use pingora::cache::RespCacheable;
use pingora::http::{RequestHeader, ResponseHeader};
use rampart::limits::head::{self, Scan, Scanner};

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by name (the driver's table).
pub const TARGETS: [(&str, Target); 8] = [
    ("config", config),
    ("accept_encoding", accept_encoding),
    ("cache_control", cache_control),
    ("canonical_path", canonical_path),
    ("cache_key", cache_key),
    ("client_identify", client_identify),
    ("request_head", request_head),
    ("chunked_body", chunked_body),
];

/// The config loader: any text is a config or an error located in the file, never a panic.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match rampart::config::parse("fuzz.toml", &text, &BTreeMap::new()) {
        Ok(c) => {
            let _ = c.summary();
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("fuzz.toml:"), "{message}");
            if let rampart::config::Error::Invalid { line, column, .. } = e {
                assert!(line >= 1 && column >= 1, "{message}");
                assert!(line <= text.lines().count() + 1, "{message}");
            }
        }
    }
}

/// `Accept-Encoding` (one field line per input line): the coding negotiated is one the
/// cache's variance also lists (both read the same parser), and the variance text is
/// lower-case, sorted and without duplicates.
pub fn accept_encoding(data: &[u8]) {
    use rampart::compress::{acceptable_codings, Accept, Coding};
    let lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    let accept = Accept::parse(lines.iter().copied());
    let accepted = acceptable_codings(lines.iter().copied());
    let listed: Vec<&str> = accepted.split(',').filter(|t| !t.is_empty()).collect();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(listed, sorted, "{accepted}");
    assert!(
        !accepted.chars().any(|c| c.is_ascii_uppercase()),
        "{accepted}"
    );
    if let Some(c) = accept.choose(&[Coding::Zstd, Coding::Br, Coding::Gzip]) {
        assert!(
            listed.contains(&c.token()) || listed.contains(&"*"),
            "chose {} from {accepted:?}",
            c.token()
        );
    }
}

/// `Cache-Control` and the store decision (status from the first byte, one response header
/// per line): `no-store`, `private` and `Set-Cookie` are never stored, nothing is fresh for
/// more than a year, and what is stored keeps no `Set-Cookie`.
pub fn cache_control(data: &[u8]) {
    use rampart::cache::{cacheable, Policy, PolicyConfig};
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let status = [200, 203, 204, 206, 301, 304, 404, 410, 500][usize::from(first) % 9];
    let Ok(mut resp) = ResponseHeader::build(status, None) else {
        return;
    };
    for line in rest.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(trim(&line[colon + 1..])),
        ) else {
            continue;
        };
        let _ = resp.append_header(name, value);
    }
    let policy = Policy::new(
        "fuzz",
        &PolicyConfig {
            override_origin: first & 0x80 != 0,
            store_set_cookie: first & 0x40 != 0,
            ..PolicyConfig::default()
        },
    );
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let cc = pingora::cache::cache_control::CacheControl::from_resp_headers(&resp);
    match cacheable(&policy, &resp, now, std::time::Duration::ZERO) {
        RespCacheable::Cacheable(meta) => {
            assert!(
                !cc.as_ref().is_some_and(|c| c.no_store()),
                "no-store stored"
            );
            assert!(!cc.as_ref().is_some_and(|c| c.private()), "private stored");
            assert!(
                first & 0x40 != 0 || !resp.headers.contains_key(http::header::SET_COOKIE),
                "Set-Cookie response stored"
            );
            assert!(!meta.headers().contains_key(http::header::SET_COOKIE));
            let year = Duration::from_secs(366 * 24 * 3600);
            assert!(meta.fresh_until() <= now + year, "fresh beyond a year");
        }
        RespCacheable::Uncacheable(_) => {}
    }
}

/// The canonical path: what it accepts starts with `/`, has no empty, dot or encoded-slash
/// segment, and is its own canonical form (`canonical(canonical(p)) == canonical(p)`).
pub fn canonical_path(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(canonical) = rampart::path::canonical_path(path) else {
        return;
    };
    assert!(canonical.starts_with('/'), "{canonical}");
    assert!(!canonical.contains("//"), "{canonical}");
    assert!(
        canonical.split('/').all(|s| s != "." && s != ".."),
        "{canonical}"
    );
    let upper = canonical.to_ascii_uppercase();
    assert!(
        !upper.contains("%2F") && !upper.contains("%5C"),
        "{canonical}"
    );
    let again = rampart::path::canonical_path(&canonical)
        .unwrap_or_else(|e| panic!("{path:?} -> {canonical:?} is refused: {e}"));
    assert_eq!(again, canonical, "not idempotent for {path:?}");
}

/// Cache keys (two requests, `Host` and target, split at the first 0xff byte): a key is the
/// same each time and for any order of the query's parameters, and two requests with the
/// same key have the same host and path (the parts are framed, nothing spills over).
pub fn cache_key(data: &[u8]) {
    use rampart::cache::{request_key, Policy, PolicyConfig};
    let policy = Policy::new("fuzz", &PolicyConfig::default());
    let (a, b) = match data.iter().position(|b| *b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let (Some(ra), Some(rb)) = (request(a), request(b)) else {
        return;
    };
    let ka = request_key("r", &ra, &policy);
    assert_eq!(
        ka.primary_bin(),
        request_key("r", &ra, &policy).primary_bin()
    );
    if let Some(query) = ra.uri.query() {
        let mut params: Vec<&str> = query.split('&').collect();
        params.reverse();
        let target = format!("{}?{}", ra.uri.path(), params.join("&"));
        if let Ok(mut reordered) = RequestHeader::build("GET", target.as_bytes(), None) {
            if let Some(host) = ra.headers.get(http::header::HOST) {
                let _ = reordered.insert_header(http::header::HOST, host.clone());
            }
            let kr = request_key("r", &reordered, &policy);
            assert_eq!(
                ka.primary_bin(),
                kr.primary_bin(),
                "query order changed the key"
            );
        }
    }
    let kb = request_key("r", &rb, &policy);
    if ka.primary_bin() == kb.primary_bin() {
        let host = |r: &RequestHeader| {
            r.headers
                .get(http::header::HOST)
                .map(|h| h.as_bytes().to_ascii_lowercase())
        };
        assert_eq!(host(&ra), host(&rb), "different hosts share a key");
        assert_eq!(ra.uri.path(), rb.uri.path(), "different paths share a key");
    }
}

/// `host\ntarget` as a GET request (`None` when the target or host is not valid).
fn request(data: &[u8]) -> Option<RequestHeader> {
    let (host, target) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"h"[..], data),
    };
    let mut req = RequestHeader::build("GET", target, None).ok()?;
    let host = http::HeaderValue::from_bytes(host).ok()?;
    req.insert_header(http::header::HOST, host).ok()?;
    Some(req)
}

/// Client identity (peer and TLS from the first byte, `X-Forwarded-For` and
/// `X-Forwarded-Proto` as the next two lines): an untrusted peer is the client and cannot
/// change the scheme; a different client address only comes from a trusted peer's
/// `X-Forwarded-For`.
pub fn client_identify(data: &[u8]) {
    use rampart::client::{Cidrs, Client};
    use rampart::types::Cidr;
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let peers: [Option<IpAddr>; 5] = [
        Some([10, 0, 0, 2].into()),
        Some([203, 0, 113, 9].into()),
        Some([127, 0, 0, 1].into()),
        Some("::ffff:10.1.2.3".parse().expect("address")),
        None,
    ];
    let peer = peers[usize::from(first) % peers.len()];
    let tls = first & 0x80 != 0;
    let mut lines = rest.splitn(2, |b| *b == b'\n');
    let xff = lines.next();
    let xfp = lines.next();
    let net = |t: &str| Cidr::try_from(t.to_string()).expect("network");
    let trusted = Cidrs::new(&[net("10.0.0.0/8"), net("127.0.0.1"), net("::1")]);
    let c = Client::identify(peer, || (xff, xfp), tls, &trusted);
    assert!(c.scheme == "http" || c.scheme == "https");
    let canonical_peer = peer.map(|p| match p {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    });
    assert_eq!(c.peer, canonical_peer);
    let trusted_peer = canonical_peer.is_some_and(|p| trusted.contains(p));
    if !trusted_peer {
        assert_eq!(
            c.ip, canonical_peer,
            "an untrusted peer changed its address"
        );
        assert_eq!(c.scheme, if tls { "https" } else { "http" });
    } else if c.ip != canonical_peer {
        // The address must be one of the X-Forwarded-For entries, read as addresses.
        let listed: Vec<IpAddr> = std::str::from_utf8(xff.unwrap_or_default())
            .unwrap_or_default()
            .split(',')
            .filter_map(|e| {
                let e = e.trim();
                e.parse::<IpAddr>()
                    .ok()
                    .or_else(|| e.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
            })
            .map(|ip| match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                v4 => v4,
            })
            .collect();
        assert!(
            c.ip.is_some_and(|ip| listed.contains(&ip)),
            "{:?} is not in X-Forwarded-For {listed:?}",
            c.ip
        );
    }
}

/// Request heads: scanning byte by byte finds what scanning at once finds; a complete head
/// the checks accept is one `httparse` parses to the same length; refusals use the statuses
/// documented for them.
pub fn request_head(data: &[u8]) {
    let limits = head::Limits {
        request_line: 256,
        header_line: 256,
        section: 2048,
        headers: 16,
        method: 16,
    };
    let whole = Scanner::default().scan(data, &limits);
    let mut scanner = Scanner::default();
    let mut trickled = Scan::Partial;
    for end in 1..=data.len() {
        trickled = scanner.scan(&data[..end], &limits);
        if trickled != Scan::Partial {
            break;
        }
    }
    if data.is_empty() {
        trickled = whole.clone();
    }
    match (&whole, &trickled) {
        // Scanning stops at the first limit crossed; at once, a later complete head may be
        // visible first only when the trickled scan completed earlier: both say the same.
        (Scan::Refused(a), Scan::Refused(b)) => assert_eq!(a.status, b.status),
        (w, t) => assert_eq!(w, t, "at once and byte by byte disagree"),
    }
    match whole {
        Scan::Partial => {}
        Scan::Refused(r) => assert!(matches!(r.status, 400 | 414 | 431 | 501), "{r:?}"),
        Scan::Complete(n) => {
            assert!(n <= data.len() && n <= limits.section);
            match head::check(&data[..n], &limits) {
                Ok(accepted) => {
                    assert_eq!(accepted.len, n);
                    let mut fields = [httparse::EMPTY_HEADER; 16];
                    let mut req = httparse::Request::new(&mut fields);
                    assert_eq!(req.parse(&data[..n]), Ok(httparse::Status::Complete(n)));
                }
                Err(r) => assert!(matches!(r.status, 400 | 405 | 431 | 501), "{r:?}"),
            }
        }
    }
}

/// Chunked bodies: the end found byte by byte is the end found at once, never past the data.
pub fn chunked_body(data: &[u8]) {
    use rampart::limits::chunked::Chunked;
    let whole = Chunked::default().scan(data);
    let mut c = Chunked::default();
    let mut claimed = Ok(0);
    for b in data {
        match c.scan(std::slice::from_ref(b)) {
            Ok(n) => claimed = claimed.map(|sum| sum + n),
            Err(e) => {
                claimed = Err(e);
                break;
            }
        }
        if c.done() {
            break;
        }
    }
    assert_eq!(whole, claimed);
    if let Ok(n) = whole {
        assert!(n <= data.len());
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| *b != b' ').unwrap_or(v.len());
    let end = v.iter().rposition(|b| *b != b' ').map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}
