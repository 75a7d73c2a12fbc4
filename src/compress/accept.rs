//! `Accept-Encoding`: what a client can read, with its weights (RFC 9110 section 12.5.3).
//!
//! Phase: `request_filter` (parsed once per request). Written by hand because Pingora's
//! parser keeps only the order of tokens and drops q-values. Invariant: one parser
//! ([`elements`]) for negotiation and for the cache's variance, so the two agree on what a
//! client accepts; a malformed element is ignored alone.

use super::codec::Coding;

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
        let mut values = values.peekable();
        accept.present = values.peek().is_some();
        for (token, q) in elements(values) {
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
        accept
    }

    /// The client's weight for `c`: its own listing, else `*`, else refused.
    fn q(&self, c: Coding) -> u16 {
        self.codings[c.index()].or(self.star).unwrap_or(0)
    }

    /// The client can read a body in `c`. Without `Accept-Encoding` it cannot (see
    /// [`Accept::choose`]), so an upstream's gzip is decoded for it.
    pub(super) fn accepts(&self, c: Coding) -> bool {
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

/// Every element of the `Accept-Encoding` field lines as (coding, weight in thousandths), in
/// order. An element with a malformed weight is skipped, alone. The one parser of this header:
/// negotiation ([`Accept::parse`]) and the cache's variance ([`acceptable_codings`]) both read
/// the client through it, so they cannot disagree on what a client accepts.
pub fn elements<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> impl Iterator<Item = (&'a str, u16)> {
    values
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|text| text.split(','))
        .filter_map(|element| {
            let mut parts = element.split(';');
            let token = parts.next().unwrap_or("").trim();
            if token.is_empty() {
                return None;
            }
            let mut q = Some(1000);
            for param in parts {
                if let Some((k, v)) = param.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        q = parse_q(v.trim());
                    }
                }
            }
            Some((token, q?))
        })
}

/// The codings a client accepts (weight above 0; its first listing of each counts),
/// lower-cased, sorted and joined: `gzip, br` and `br;q=1.0,gzip` give the same text. The
/// cache keys a stored response that varies on `Accept-Encoding` by it.
pub fn acceptable_codings<'a>(values: impl Iterator<Item = &'a [u8]>) -> String {
    let mut seen: Vec<(String, u16)> = Vec::new();
    for (token, q) in elements(values) {
        let token = token.to_ascii_lowercase();
        if !seen.iter().any(|(t, _)| *t == token) {
            seen.push((token, q));
        }
    }
    let mut accepted: Vec<String> = seen
        .into_iter()
        .filter(|(_, q)| *q > 0)
        .map(|(t, _)| t)
        .collect();
    accepted.sort();
    accepted.join(",")
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
