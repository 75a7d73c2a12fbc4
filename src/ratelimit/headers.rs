//! What a limiter decision looks like to a client: the refusal (429, or 503 under `deny`)
//! and the `RateLimit-Policy` / `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers)
//! with the legacy `X-RateLimit-*` trio.
//!
//! Phase: written from `finish_headers` (`response_filter` and `respond`), after the cache
//! stored a response, so limit headers are never cached.

use http::{HeaderName, HeaderValue};

use super::bucket::{PerPolicy, Verdict};
use crate::fields::Fields;

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// A self-made answer instead of proxying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub detail: String,
    pub retry_after_secs: u64,
}

impl Refusal {
    /// `Retry-After`, beside the problem body.
    pub fn retry_after(&self) -> (HeaderName, HeaderValue) {
        (
            http::header::RETRY_AFTER,
            crate::fields::number(self.retry_after_secs),
        )
    }
}

/// What the limiter decided for one request.
#[derive(Debug, Clone)]
pub struct Decision {
    /// One per applicable policy (empty when `on_store_error = "allow"` let it through).
    pub verdicts: PerPolicy<Verdict>,
    pub legacy_headers: bool,
    /// `Some`: answer this instead of proxying (429, or 503 for `deny`).
    pub refusal: Option<Refusal>,
}

impl Decision {
    /// One word for the access log: `limited` (429), `denied` (503, store down under `deny`),
    /// `report_only_limited`, or `allowed`.
    pub fn outcome(&self) -> &'static str {
        match &self.refusal {
            Some(r) if r.status == 429 => "limited",
            Some(_) => "denied",
            None if self.verdicts.iter().any(|v| !v.admitted) => "report_only_limited",
            None => "allowed",
        }
    }

    /// Whether `other` is answered exactly as this decision is: the same refusal, and the same
    /// policies with the same numbers in the same order, so [`Self::write_headers`] writes the
    /// same fields. The connection gate sends a kept refusal again on it (`proxy::repeat`).
    pub fn answers_as(&self, other: &Decision) -> bool {
        self.refusal == other.refusal
            && self.legacy_headers == other.legacy_headers
            && self.verdicts.len() == other.verdicts.len()
            && self.verdicts.iter().zip(&other.verdicts).all(|(a, b)| {
                std::sync::Arc::ptr_eq(&a.policy, &b.policy)
                    && a.admitted == b.admitted
                    && a.remaining == b.remaining
                    && a.reset_secs == b.reset_secs
                    && a.retry_after_secs == b.retry_after_secs
            })
    }

    /// `RateLimit-Policy`, `RateLimit` (draft-ietf-httpapi-ratelimit-headers, structured-field
    /// lists, one item per policy) and, if configured, the legacy trio for the tightest policy.
    /// Written on every response of a limited route: the policy item is made once, numbers go
    /// straight into header values.
    pub fn write_headers(&self, resp: &mut impl Fields) {
        let [first, rest @ ..] = self.verdicts.as_slice() else {
            return;
        };
        let policy = if rest.is_empty() {
            first.policy.header_item.clone()
        } else {
            let items: Vec<&[u8]> = self
                .verdicts
                .iter()
                .map(|v| v.policy.header_item.as_bytes())
                .collect();
            HeaderValue::from_bytes(&items.join(&b", "[..])).unwrap_or(HeaderValue::from_static(""))
        };
        // `"name";r=N;t=N` per policy, with itoa: `write!` was most of this function's cost.
        let mut state = Vec::with_capacity(48 * self.verdicts.len());
        for (i, v) in self.verdicts.iter().enumerate() {
            if i > 0 {
                state.extend_from_slice(b", ");
            }
            state.push(b'"');
            state.extend_from_slice(v.policy.name.as_bytes());
            state.extend_from_slice(b"\";r=");
            state.extend_from_slice(itoa::Buffer::new().format(v.remaining).as_bytes());
            state.extend_from_slice(b";t=");
            state.extend_from_slice(itoa::Buffer::new().format(v.reset_secs).as_bytes());
        }
        resp.set(RATELIMIT_POLICY, policy);
        // Built from validated names and integers: always a valid header value.
        if let Ok(state) = HeaderValue::from_maybe_shared(bytes::Bytes::from(state)) {
            resp.set(RATELIMIT, state);
        }
        if self.legacy_headers {
            let tightest = self
                .verdicts
                .iter()
                .min_by_key(|v| (v.policy.report_only, v.remaining));
            if let Some(v) = tightest {
                resp.set(X_RATELIMIT_LIMIT, v.policy.burst_value.clone());
                resp.set(X_RATELIMIT_REMAINING, crate::fields::number(v.remaining));
                resp.set(X_RATELIMIT_RESET, crate::fields::number(v.reset_secs));
            }
        }
    }
}
