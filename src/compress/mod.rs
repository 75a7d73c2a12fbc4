//! Response compression: gzip, brotli and zstd chosen per client, with nginx-grade policy.
//!
//! Phases: `request_filter` (what the client accepts, the route's policy), `response_filter`
//! (decide and rewrite the header, proxied responses and cache hits alike),
//! `response_body_filter` (encode chunk by chunk) and `respond` (Rampart's own responses, in
//! one go). The pieces: [`policy`] (what is compressed and how the header changes),
//! [`accept`] (negotiation), [`codec`] (the encoders).
//!
//! Invariants: a body is never encoded twice (an upstream's coding is left alone or, for a
//! client that cannot read it, decoded); 1xx/204/304/206, HEAD, `Content-Range` and
//! `no-transform` responses leave untouched; every response whose encoding could depend on
//! `Accept-Encoding` carries `Vary: Accept-Encoding`; memory per response is bounded: a
//! body of known length up to 256 KiB is gzipped whole (libdeflate), every other body is
//! encoded as it streams (bounded by the encoder's window). Compression runs downstream of
//! the cache, so one stored body serves every coding (the trap of Pingora issue #283 cannot
//! happen).

mod accept;
mod codec;
mod policy;

use std::sync::Arc;

use bytes::Bytes;
use http::header;
use pingora::http::RequestHeader;
use pingora::protocols::http::compression::Encode;

use crate::fields::Fields;
use crate::headers::add_vary;
use crate::metrics::Metrics;

pub use accept::{acceptable_codings, Accept};
pub use codec::{encode_once, Coding};
use policy::{content_length, decide, rewrite_header, Action};
pub use policy::{Config, Policies, Policy, DEFAULT_TYPES};

/// Per-request compression state (a field of the request context).
#[derive(Default)]
pub struct RequestState {
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

impl RequestState {
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

    /// The coding a whole response to this request is encoded in when its type and size
    /// qualify (what a cached copy of it must be in); `None` for HEAD and when the client
    /// accepts none of the route's codings.
    pub fn preferred(&self) -> Option<Coding> {
        if self.head {
            return None;
        }
        self.policy.as_ref()?.preferred(&self.accept)
    }

    /// Whether a response with header `resp` goes to this client as it is (neither encoded
    /// nor decoded).
    pub fn keeps(&self, resp: &impl Fields) -> bool {
        self.policy.as_ref().is_none_or(|policy| {
            matches!(
                decide(policy, &self.accept, self.head, resp).1,
                Action::Keep
            )
        })
    }

    /// `response_filter`: decide, add `Vary`, rewrite the header, prepare the encoder.
    pub fn response(&mut self, resp: &mut impl Fields) {
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
                .compressor(policy.levels[c.index()], content_length(resp))
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
    /// go and framed with its exact `Content-Length` (set here, whatever the outcome).
    pub fn encode_local(&self, resp: &mut impl Fields, body: Bytes) -> Bytes {
        resp.set(
            header::CONTENT_LENGTH,
            crate::fields::number(body.len() as u64),
        );
        let Some(policy) = self.policy.as_ref() else {
            return body;
        };
        let (vary, action) = decide(policy, &self.accept, self.head, resp);
        if vary {
            add_vary(resp, "Accept-Encoding");
        }
        let Action::Compress(c) = action else {
            return body;
        };
        match encode_once(c, policy.levels[c.index()], &body) {
            Some(out) => {
                encoded_header(resp, c, out.len());
                out
            }
            None => body,
        }
    }
}

/// The header of a whole body encoded in `coding`, `len` bytes long (Rampart's own responses,
/// and cache hits served from an encoded copy): rewritten as a response compressed while it
/// streams, with its exact length instead of chunked framing.
pub fn encoded_header(resp: &mut impl Fields, coding: Coding, len: usize) {
    rewrite_header(resp, Action::Compress(coding), false);
    resp.set(header::CONTENT_LENGTH, crate::fields::number(len as u64));
    add_vary(resp, "Accept-Encoding");
}
