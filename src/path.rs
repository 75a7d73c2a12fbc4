//! The canonical request path: the one form routing, rate limits, cache keys, metrics and the
//! upstream all see.
//!
//! Phase: the first step of `request_filter`, before anything looks at the path. nginx
//! matches locations on a normalised path; matching on the raw one would let `/%72l/x`,
//! `//rl/x` or `/a/..%2frl/x` miss the `/rl/` route and its limit while the upstream, which
//! normalises, serves `/rl/x`. So the path is rewritten once, and the request continues with
//! the canonical form (RFC 3986 section 6.2.2): percent-encoded unreserved characters
//! decoded, other escapes upper-cased, empty segments (`//`) collapsed.
//!
//! Invariants: a path with a dot segment (raw or encoded), an encoded `/` or `\`, a NUL or
//! control byte (raw or encoded), or a malformed escape is refused (400), never guessed at; the query is
//! kept byte for byte; a path already canonical is not copied.

use std::borrow::Cow;

use pingora::http::RequestHeader;

/// Why a path is refused (the 400's detail).
pub type Refusal = &'static str;

/// The canonical form of `path` (the path only, no query), or why it has none.
pub fn canonical_path(path: &str) -> Result<Cow<'_, str>, Refusal> {
    if !path.starts_with('/') {
        // Origin-form targets start with `/`; `*` (OPTIONS) and absolute forms are parsed
        // into a URI whose path does.
        return Err("path does not start with \"/\"");
    }
    if is_canonical(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let out = rebuilt(path)?;
    if out == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(out))
    }
}

/// The canonical form of `path` built segment by segment.
fn rebuilt(path: &str) -> Result<String, Refusal> {
    let mut out = String::with_capacity(path.len());
    for segment in path.split('/').skip(1) {
        if segment.is_empty() {
            continue; // `//` collapses; a trailing `/` is put back below
        }
        let decoded = decode_segment(segment)?;
        if decoded == "." || decoded == ".." {
            return Err("path has dot segments");
        }
        out.push('/');
        out.push_str(&decoded);
    }
    if path.ends_with('/') || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Whether `path` (starting with `/`) is already its canonical form, in one pass over its
/// bytes: no escape, no control byte, no empty segment but a trailing one, no dot segment.
/// Most paths are; they then skip the segment-by-segment rebuild and its allocation, which
/// callgrind put at about 900 instructions per request. Anything else takes the full path.
fn is_canonical(path: &[u8]) -> bool {
    let mut segment_start = 1;
    for i in 1..=path.len() {
        match path.get(i) {
            Some(b'/') | None => {
                let segment = &path[segment_start..i];
                let last = i == path.len();
                if (segment.is_empty() && !last) || segment == b"." || segment == b".." {
                    return false;
                }
                segment_start = i + 1;
            }
            Some(&b) if b == b'%' || b.is_ascii_control() => return false,
            Some(_) => {}
        }
    }
    true
}

/// Rewrite the request's target to its canonical path (query kept), or say why it has none.
/// `Some`: the target as the client wrote it, when it was rewritten.
pub fn canonicalize(req: &mut RequestHeader) -> Result<Option<String>, Refusal> {
    let Cow::Owned(path) = canonical_path(req.uri.path())? else {
        return Ok(None);
    };
    let original = req.uri.path_and_query().map(|pq| pq.as_str().to_string());
    let target = match req.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let uri = target
        .parse::<http::Uri>()
        .map_err(|_| "path is not a valid request target")?;
    req.set_uri(uri);
    Ok(original)
}

/// One segment with unreserved escapes decoded and the others upper-cased. Bytes other than
/// escapes are copied as bytes (a raw UTF-8 character stays itself), so the result is valid
/// UTF-8 whenever the segment is.
fn decode_segment(segment: &str) -> Result<Cow<'_, str>, Refusal> {
    let bytes = segment.as_bytes();
    if bytes.iter().any(u8::is_ascii_control) {
        return Err("path has a control character");
    }
    if !segment.contains('%') {
        return Ok(Cow::Borrowed(segment));
    }
    let mut out = Vec::with_capacity(segment.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).and_then(|b| hex(*b)),
            bytes.get(i + 2).and_then(|b| hex(*b)),
        ) else {
            return Err("path has a malformed percent-escape");
        };
        let byte = hi * 16 + lo;
        match byte {
            b'/' | b'\\' => return Err("path has an encoded slash"),
            0..=0x1f | 0x7f => return Err("path has an encoded control character"),
            b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => out.push(b),
            b => out.extend_from_slice(&[
                b'%',
                HEX_DIGITS[usize::from(b >> 4)],
                HEX_DIGITS[usize::from(b & 0xf)],
            ]),
        }
        i += 3;
    }
    // Only ASCII was written in place of ASCII escapes: still the input's valid UTF-8.
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| "path is not valid UTF-8")
}

const HEX_DIGITS: &[u8; 16] = b"0123456789ABCDEF";

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(p: &str) -> Result<String, Refusal> {
        canonical_path(p).map(Cow::into_owned)
    }

    /// On every path of up to four characters from this alphabet, the one-pass check never
    /// calls a path canonical that the rebuild would change or refuse, and agrees with it on
    /// every path without an escape.
    #[test]
    fn the_quick_check_agrees_with_the_rebuild() {
        let alphabet = ["/", ".", "a", "%", "2", "e", "\u{7f}", "\u{1}", "\u{e9}"];
        let mut paths = vec![String::from("/")];
        for _ in 0..4 {
            let longer: Vec<String> = paths
                .iter()
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                .collect();
            paths.extend(longer);
        }
        paths.sort();
        paths.dedup();
        assert!(paths.len() > 6000);
        for p in &paths {
            let quick = is_canonical(p.as_bytes());
            let full = rebuilt(p);
            let canonical = full.as_deref() == Ok(p.as_str());
            // An escape sends a path the long way even when it is canonical (`/%22`).
            let agrees = if p.contains('%') {
                !quick || canonical
            } else {
                quick == canonical
            };
            assert!(agrees, "{p:?}: quick {quick}, rebuilt {full:?}");
        }
    }

    #[test]
    fn bypass_shapes_become_the_plain_path_or_are_refused() {
        assert_eq!(canon("/%72l/x").as_deref(), Ok("/rl/x"));
        assert_eq!(canon("//rl/x").as_deref(), Ok("/rl/x"));
        assert_eq!(canon("/rl//x/").as_deref(), Ok("/rl/x/"));
        assert!(canon("/rl%2fx").is_err());
        assert!(canon("/rl%2Fx").is_err());
        assert!(canon("/a/..%2frl/x").is_err());
        assert!(canon("/a/../rl/x").is_err());
        assert!(canon("/a/%2e%2E/x").is_err());
        assert!(canon("/./x").is_err());
        assert!(canon("/a%5cb").is_err());
    }

    #[test]
    fn escapes_are_normalised_not_decoded_when_reserved() {
        assert_eq!(canon("/a%7eb%2dc").as_deref(), Ok("/a~b-c"));
        assert_eq!(canon("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(canon("/a%20b").as_deref(), Ok("/a%20b"));
        assert_eq!(canon("/a%3fb").as_deref(), Ok("/a%3Fb"));
        assert!(canon("/a%zz").is_err());
        assert!(canon("/a%4").is_err());
        assert!(canon("/a%00").is_err());
        assert!(canon("/a%0d%0a").is_err());
    }

    /// Found by the canonical_path fuzz target: a raw non-ASCII character beside an escape
    /// was copied byte by byte as Latin-1 characters, so canonicalising twice changed the path.
    #[test]
    fn raw_utf8_beside_escapes_is_kept_and_canonical_is_idempotent() {
        let once = canon("/Pa%7eb%20c/\u{55b}%41").expect("canonical");
        assert_eq!(once, "/Pa~b%20c/\u{55b}A");
        assert_eq!(canon(&once).as_deref(), Ok(once.as_str()));
        assert!(
            canon("/a\0b").is_err(),
            "raw control characters are refused too"
        );
        assert!(canon("/a\tb").is_err());
    }

    #[test]
    fn canonical_paths_are_borrowed_as_they_are() {
        for p in ["/", "/api/v1/x", "/api/v1.2/x..y", "/a/", "/caf%C3%A9"] {
            assert!(matches!(canonical_path(p), Ok(Cow::Borrowed(_))), "{p}");
        }
        assert_eq!(canon("//").as_deref(), Ok("/"));
        assert!(canon("x").is_err());
    }

    #[test]
    fn the_query_is_kept_byte_for_byte() {
        let mut req =
            RequestHeader::build("GET", b"//api/%76%31?b=%2F&a=1", None).expect("request");
        let original = canonicalize(&mut req).expect("canonical");
        assert_eq!(original.as_deref(), Some("//api/%76%31?b=%2F&a=1"));
        assert_eq!(
            req.uri.path_and_query().map(|p| p.as_str()),
            Some("/api/v1?b=%2F&a=1")
        );
    }
}
