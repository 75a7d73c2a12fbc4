//! Per-request context: what one phase learns and a later one needs, one field per feature.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::lb::Backend;

use crate::client::Client;
use crate::ratelimit;
use crate::routing::Route;

pub struct Ctx {
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
    /// Addresses this request already tried to connect to (retries go elsewhere).
    pub tried: Vec<Backend>,
    /// When the request was sent upstream, and how long the response header took.
    pub upstream_started: Option<Instant>,
    pub upstream_time: Option<Duration>,
    /// The rate limiter's verdicts (their headers go on the response); `None`: no policy.
    pub ratelimit: Option<ratelimit::Decision>,
    /// The response cache's decisions for this request.
    pub cache: crate::cache::RequestState,
    /// Accept-Encoding, policy and the body encoder of this response.
    pub compress: crate::compress::State,
}

impl Ctx {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            request_id: String::new(),
            client: None,
            tls: false,
            route: None,
            tried: Vec::new(),
            upstream_started: None,
            upstream_time: None,
            ratelimit: None,
            cache: Default::default(),
            compress: Default::default(),
        }
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Self::new()
    }
}
