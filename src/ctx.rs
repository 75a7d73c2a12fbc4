//! Per-request context: what one phase learns and a later one needs.
//!
//! It only composes: one field per feature, each feature's own state type, and no logic.
//! `proxy.rs` hands each feature its own field (`&mut ctx.cache` to the cache, ...), so no
//! feature module imports this one. `runtime` is the configuration generation the request
//! started on: every phase of the request reads that one, whatever a reload does meanwhile.

use std::sync::Arc;
use std::time::Instant;

use crate::client::Client;
use crate::headers::Downstream;
use crate::routing::{self, Route};
use crate::runtime::Runtime;
use crate::{accesslog, cache, compress, limits, ratelimit};

pub struct Ctx {
    /// The configuration generation current when the request arrived (`new_ctx`).
    pub runtime: Arc<Runtime>,
    /// When Rampart first saw the request.
    pub started: Instant,
    /// `X-Request-Id`: the client's when sane, else generated; echoed on the response.
    pub request_id: String,
    /// Who sent it (peer, or the client behind a trusted proxy).
    pub client: Option<Client>,
    /// Arrived over the TLS listener.
    pub tls: bool,
    /// The matched route; `None` until `request_filter` found one.
    pub route: Option<Arc<Route>>,
    /// Addresses tried and upstream timing.
    pub upstream: routing::RequestState,
    /// The rate limiter's verdicts (their headers go on the response); `None`: no policy.
    pub ratelimit: Option<ratelimit::Decision>,
    /// The response cache's decisions for this request.
    pub cache: cache::RequestState,
    /// Accept-Encoding, policy and the body encoder of this response.
    pub compress: compress::RequestState,
    /// In-flight slots, the body count and any limit that refused the request.
    pub limits: limits::RequestState,
    /// Logs the request as cut if it is dropped before `logging`.
    pub unfinished: accesslog::Unfinished,
}

impl Ctx {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self {
            runtime,
            started: Instant::now(),
            request_id: String::new(),
            client: None,
            tls: false,
            route: None,
            upstream: Default::default(),
            ratelimit: None,
            cache: Default::default(),
            compress: Default::default(),
            limits: Default::default(),
            unfinished: Default::default(),
        }
    }

    /// What the downstream headers say about this request.
    pub fn downstream(&self) -> Downstream<'_> {
        Downstream {
            request_id: &self.request_id,
            tls: self.tls,
            started: self.started,
            upstream_time: self.upstream.response_time,
        }
    }
}
