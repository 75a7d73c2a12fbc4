//! A refusal sent again: the last refusal the connection gate answered on a connection, kept so
//! that the same head, refused the same way, is answered by patching its bytes.
//!
//! Phase: the gate's early answers (`proxy::early`); one [`Repeat`] per connection, made when
//! it opens (`gate::Early::Memo`). A client over its limit sends the same request again and
//! again, usually on one connection. Parsing each head, then building each refusal (the
//! problem body, some 17 fields, their bytes), cost about as much as the gate's read and write
//! together (BENCHMARKS.md, session 11). Kept, the head's parse and the answer's bytes are used
//! again, and so is what the head was found to be ([`Known`]: its client, its route, the
//! limiter's charges); what depends on the moment still runs for every request (the request
//! id, the in-flight limits, the limiter's decision), and the request is counted and recorded
//! as any.
//!
//! Invariant: kept bytes are sent again only for a byte-identical head on the same connection
//! (so the same peer and TLS), under the same configuration generation, with the same `last`,
//! for a decision that writes the same fields and body (`Decision::answers_as`). What differs
//! per request is patched in place at the same length: the request id wherever the kept one
//! occurs, the timing fields (`Headers::timing`) and `Date`. Anything else, or a value of
//! another length, builds the answer again. [`Known`] follows from the head, the peer, TLS and
//! the generation alone, so the same conditions make it true again.

use std::ops::Range;
use std::sync::Arc;

use http::HeaderName;
use pingora::http::RequestHeader;

use crate::client::Client;
use crate::ctx::Ctx;
use crate::ratelimit::{Charge, Decision, PerPolicy};
use crate::routing::Route;
use crate::runtime::Runtime;

/// What one connection keeps between its early answers: nothing, or the last refused head.
#[derive(Default)]
pub struct Repeat {
    kept: Option<Kept>,
}

struct Kept {
    runtime: Arc<Runtime>,
    head: Vec<u8>,
    last: bool,
    /// `head` parsed, its path canonical.
    req: RequestHeader,
    known: Known,
    refusal: Template,
}

/// What a refused head was found to be the first time, which the same head on the same
/// connection under the same generation is again.
pub(super) struct Known {
    /// Who sent it (`steps::identify`): from the peer, TLS and the forwarding fields.
    pub client: Option<Client>,
    /// Where its path goes; the steps of `before_limits` before the route passed it.
    pub route: Arc<Route>,
    /// The limiter's charges (`Limiter::charges`): from the route, the client and the head.
    pub charges: PerPolicy<Charge>,
}

/// The kept head seen again: its parse, what it is, and the refusal last sent to it.
pub(super) struct Again<'k> {
    pub req: &'k mut RequestHeader,
    pub known: &'k Known,
    pub refusal: &'k mut Template,
}

impl Repeat {
    /// What is kept for `head`, if it is the kept head again under the same generation and
    /// `last`. A different head forgets what was kept.
    pub(super) fn same(
        &mut self,
        head: &[u8],
        runtime: &Arc<Runtime>,
        last: bool,
    ) -> Option<Again<'_>> {
        let same = self.kept.as_ref().is_some_and(|kept| {
            kept.head == head && kept.last == last && Arc::ptr_eq(&kept.runtime, runtime)
        });
        if !same {
            self.kept = None;
        }
        let kept = self.kept.as_mut()?;
        Some(Again {
            req: &mut kept.req,
            known: &kept.known,
            refusal: &mut kept.refusal,
        })
    }

    /// Keep `refusal`, the answer to `head`: with `first`, the head's parse (canonical) and
    /// what it was found to be, or for the head kept already (`first` is `None`:
    /// [`Self::same`] lent them).
    pub(super) fn keep(
        &mut self,
        head: &[u8],
        runtime: &Arc<Runtime>,
        last: bool,
        first: Option<(RequestHeader, Known)>,
        refusal: Template,
    ) {
        match (first, self.kept.as_mut()) {
            (Some((req, known)), _) => {
                self.kept = Some(Kept {
                    runtime: runtime.clone(),
                    head: head.to_vec(),
                    last,
                    req,
                    known,
                    refusal,
                })
            }
            (None, Some(kept)) => kept.refusal = refusal,
            // Not reached: only `same` lends a parse, and only of a kept head.
            (None, None) => {}
        }
    }

    /// The kept answer, as [`Template::again`] last patched it or as it was built.
    pub(super) fn answer(&self) -> Option<&Sent> {
        self.kept.as_ref().map(|kept| &kept.refusal.sent)
    }
}

/// An early answer as it is written, with what the access log needs of it.
pub(super) struct Sent {
    pub status: u16,
    pub body_len: usize,
    pub bytes: Vec<u8>,
    pub keep_alive: bool,
}

#[cfg(test)]
impl Repeat {
    /// The head kept, if any.
    pub(super) fn kept_head(&self) -> Option<&[u8]> {
        self.kept.as_ref().map(|k| k.head.as_slice())
    }
}

/// A refusal as it was sent, and where the values that change per request are in its bytes.
pub(super) struct Template {
    /// The decision the refusal was built on.
    decision: Decision,
    request_id: String,
    sent: Sent,
    /// Where `request_id` occurs in `bytes` (its field and the problem body).
    id_at: Vec<usize>,
    /// The value of `Date` and of each timing field in `bytes`.
    fields: Vec<(HeaderName, Range<usize>)>,
}

impl Template {
    /// `sent`: the answer to a request refused on `decision`, with `ctx`'s request id.
    pub(super) fn new(sent: Sent, decision: Decision, ctx: &Ctx) -> Self {
        let request_id = ctx.request_id.clone();
        let bytes = &sent.bytes;
        let id_at = occurrences(bytes, request_id.as_bytes());
        let timing = ctx.runtime.headers.timing(&ctx.downstream());
        let names = std::iter::once(http::header::DATE).chain(
            timing
                .into_iter()
                .filter(|(_, v)| v.is_some())
                .map(|(n, _)| n),
        );
        let fields = names
            .filter_map(|name| Some((name.clone(), value_at(bytes, &name)?)))
            .collect();
        Self {
            decision,
            request_id,
            sent,
            id_at,
            fields,
        }
    }

    /// The kept answer, patched for a request refused on `decision` with `ctx`'s request id
    /// and timing; `None` (and nothing patched) when it would differ in more than those.
    pub(super) fn again(&mut self, decision: &Decision, ctx: &Ctx) -> Option<&Sent> {
        if !decision.answers_as(&self.decision) {
            return None;
        }
        // A kept id the client chose (not a generated one) is the same again, and is left as it
        // is, so its occurrences may be anywhere; a generated one occurs only where it was put.
        let id = Some(ctx.request_id.as_bytes()).filter(|id| **id != *self.request_id.as_bytes());
        let date = pingora::protocols::http::date::get_cached_date();
        let [took, total] = ctx.runtime.headers.timing(&ctx.downstream());
        let values = [(http::header::DATE, Some(date)), took, total];
        let mut patches: [Option<(Range<usize>, &[u8])>; 3] = Default::default();
        for (patch, (name, value)) in patches.iter_mut().zip(&values) {
            let Some(value) = value else { continue };
            let (_, at) = self.fields.iter().find(|(n, _)| n == name)?;
            *patch = Some((at.clone(), value.as_bytes()));
        }
        // Every value fits, or nothing is written.
        let fits = |at: &Range<usize>, value: &[u8]| at.len() == value.len();
        let ids_fit = id.is_none_or(|id| id.len() == self.request_id.len());
        if !ids_fit || !patches.iter().flatten().all(|(at, v)| fits(at, v)) {
            return None;
        }
        let bytes = &mut self.sent.bytes;
        if let Some(id) = id {
            for &at in &self.id_at {
                place(bytes, at..at + id.len(), id)?;
            }
            self.request_id.clear();
            self.request_id.push_str(&ctx.request_id);
        }
        for (at, value) in patches.into_iter().flatten() {
            place(bytes, at, value)?;
        }
        Some(&self.sent)
    }
}

/// Write `value` over `at` if it has that length.
fn place(bytes: &mut [u8], at: Range<usize>, value: &[u8]) -> Option<()> {
    let slot = bytes.get_mut(at)?;
    (slot.len() == value.len()).then(|| slot.copy_from_slice(value))
}

/// Where `needle` starts in `bytes`, without overlaps.
fn occurrences(bytes: &[u8], needle: &[u8]) -> Vec<usize> {
    let mut found = Vec::with_capacity(2);
    if needle.is_empty() {
        return found;
    }
    let mut at = 0;
    while let Some(i) = bytes
        .get(at..)
        .and_then(|rest| rest.windows(needle.len()).position(|w| w == needle))
    {
        found.push(at + i);
        at += i + needle.len();
    }
    found
}

/// Where the value of the field `name` is in the head that starts `bytes` (the status line
/// and field lines as `Fields::head_to_h1` writes them); `None` when it is absent, or there
/// more than once.
fn value_at(bytes: &[u8], name: &HeaderName) -> Option<Range<usize>> {
    let mut found = None;
    let mut lines = Lines { bytes, at: 0 };
    lines.next(); // the status line
    for line in lines {
        if line.is_empty() {
            break;
        }
        let text = &bytes[line.clone()];
        let Some(colon) = text.iter().position(|&b| b == b':') else {
            continue;
        };
        if !text[..colon].eq_ignore_ascii_case(name.as_str().as_bytes()) {
            continue;
        }
        if found.is_some() {
            return None;
        }
        let blanks = text[colon + 1..]
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        found = Some(line.start + colon + 1 + blanks..line.end);
    }
    found
}

/// The lines of `bytes` ended by CRLF, as ranges without their ends.
struct Lines<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Iterator for Lines<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        let rest = self.bytes.get(self.at..)?;
        let end = self.at + rest.windows(2).position(|w| w == b"\r\n")?;
        let line = self.at..end;
        self.at = end + 2;
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn value_in(bytes: &[u8], name: &HeaderName) -> Option<HeaderValue> {
        value_at(bytes, name).and_then(|at| HeaderValue::from_bytes(&bytes[at]).ok())
    }

    const HEAD: &[u8] =
        b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/problem+json\r\n\
x-request-id: 95b08b5a-9605-403c-979d-fb17bf7892c7\r\nx-process-time:  0.000049\r\n\
Date: Tue, 01 Dec 2026 12:46:08 GMT\r\nserver-timing: a\r\nserver-timing: b\r\n\r\n\
{\"request_id\":\"95b08b5a-9605-403c-979d-fb17bf7892c7\"}";

    #[test]
    fn field_values_are_found_by_name_once() {
        let date = value_in(HEAD, &http::header::DATE).expect("date");
        assert_eq!(date, "Tue, 01 Dec 2026 12:46:08 GMT");
        let took = value_in(HEAD, &HeaderName::from_static("x-process-time")).expect("time");
        assert_eq!(took, "0.000049", "blanks after the colon are not the value");
        assert!(
            value_at(HEAD, &HeaderName::from_static("server-timing")).is_none(),
            "a field there twice is not patched"
        );
        assert!(value_at(HEAD, &http::header::RETRY_AFTER).is_none());
        assert!(
            value_at(b"HTTP/1.1 200 OK\r\n\r\nDate: x\r\n", &http::header::DATE).is_none(),
            "the body is not the head"
        );
    }

    #[test]
    fn ids_are_found_wherever_they_occur() {
        let id = b"95b08b5a-9605-403c-979d-fb17bf7892c7";
        let at = occurrences(HEAD, id);
        assert_eq!(at.len(), 2);
        assert!(at.iter().all(|&i| &HEAD[i..i + id.len()] == id));
        assert_eq!(occurrences(b"aaaa", b"aa"), vec![0, 2], "without overlaps");
        assert!(occurrences(HEAD, b"").is_empty());
    }

    #[test]
    fn a_value_of_another_length_is_not_placed() {
        let mut bytes = b"abcdef".to_vec();
        assert!(place(&mut bytes, 1..3, b"XY").is_some());
        assert_eq!(bytes, b"aXYdef");
        assert!(place(&mut bytes, 1..3, b"XYZ").is_none());
        assert!(
            place(&mut bytes, 5..9, b"WXYZ").is_none(),
            "out of the bytes"
        );
        assert_eq!(bytes, b"aXYdef");
    }
}
