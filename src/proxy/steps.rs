//! The steps of `request_filter` (each decides the answer itself or lets the request go on)
//! and how a failure maps to what the client sees; called from the phases in `proxy/mod.rs`.

use std::net::IpAddr;
use std::sync::Arc;

use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::ErrorSource;

use crate::cache::{FreshHit, HeldHit};
use crate::client::Client;
use crate::cors;
use crate::ctx::Ctx;
use crate::headers;
use crate::metrics::{self};
use crate::ratelimit::Decision;
use crate::respond::{self, LocalResponse};
use crate::routing::Route;
use crate::runtime::Runtime;
use crate::tls;

use super::Proxy;

/// The steps of `request_filter`: each returns the answer when it decides one itself.
impl Proxy {
    /// Request id, TLS, client identity and the client's `Accept-Encoding`.
    pub(super) fn identify(&self, session: &Session, ctx: &mut Ctx) {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        identify(session.req_header(), peer, tls, ctx);
    }

    /// public metrics -> HTTPS redirect (308) -> no route (404) -> preflight -> rate limits,
    /// on the canonical path.
    pub(super) async fn local_response(
        &self,
        req: &RequestHeader,
        ctx: &mut Ctx,
    ) -> Option<LocalResponse> {
        let route = match self.before_limits(req, ctx) {
            Ok(route) => route,
            Err(local) => return Some(local),
        };
        let decision = ctx
            .runtime
            .ratelimit
            .check(req, &route.name, ctx.client.as_ref())
            .await?;
        limited(decision, ctx)
    }

    /// The steps before the rate limits; `Err`: one of them decided the answer. `Ok`: the
    /// route, which `ctx` holds too.
    pub(super) fn before_limits(
        &self,
        req: &RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<Arc<Route>, LocalResponse> {
        let rt: &Runtime = &ctx.runtime;
        if let Some(public) = rt.public_metrics.as_ref() {
            if public.path == req.uri.path() {
                return Err(self.public_metrics(public, ctx));
            }
        }
        if let Some(port) = rt.https_redirect {
            if ctx.client.as_ref().is_some_and(|c| c.scheme == "http") {
                return Err(match tls::https_location(req, port) {
                    Some(location) => LocalResponse::redirect(location),
                    None => LocalResponse::problem(
                        400,
                        "a Host header is needed to redirect to HTTPS",
                        &ctx.request_id,
                    ),
                });
            }
        }
        let Some(route) = rt.router.route(req.uri.path()).cloned() else {
            let detail = "no route matches this path";
            return Err(LocalResponse::problem(404, detail, &ctx.request_id));
        };
        self.limits_on_route(req, ctx, &route)?;
        if let Some(policy) = route.cors.as_ref() {
            if let Some(answer) = preflight(policy, req, &ctx.request_id) {
                return Err(answer);
            }
        }
        Ok(route)
    }

    /// The step of [`Self::before_limits`] once the route is chosen: its compression, and the
    /// body size and in-flight limits (413, 503).
    pub(super) fn limits_on_route(
        &self,
        req: &RequestHeader,
        ctx: &mut Ctx,
        route: &Arc<Route>,
    ) -> Result<(), LocalResponse> {
        ctx.compress.use_route(route.compression.as_ref());
        ctx.route = Some(route.clone());
        let length = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .map(|v| v.as_bytes());
        let client = ctx.client.as_ref().and_then(|c| c.ip);
        if let Err(r) =
            ctx.runtime
                .limits
                .admit(length, route.max_body_size, client, &mut ctx.limits)
        {
            let local = LocalResponse::problem(r.status, r.detail, &ctx.request_id);
            return Err(local.with_headers(r.retry_after_header()));
        }
        Ok(())
    }

    /// A fresh cache hit this process holds (`Cache::held_hit`, `Cache::serve_hit`), with what
    /// `response_filter` adds to a hit after the cache status, in the same order: the headers
    /// every response gets, then compression's decision (`Vary`; the body is sent as it is).
    pub(super) fn fresh_hit(&self, req: &RequestHeader, ctx: &mut Ctx) -> Option<FreshHit> {
        let held = held_hit(req, ctx)?;
        Some(serve_hit(req, held, ctx))
    }

    /// `[metrics] public_path`: the metrics for allowed clients, 403 for the others.
    fn public_metrics(&self, public: &metrics::PublicEndpoint, ctx: &Ctx) -> LocalResponse {
        if public.allows(ctx.client.as_ref()) {
            let body = self.metrics.render();
            LocalResponse::content(http::StatusCode::OK, metrics::CONTENT_TYPE, body)
        } else {
            LocalResponse::problem(403, "metrics not readable here", &ctx.request_id)
        }
    }
}

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");

/// Request id, TLS, client identity and the client's `Accept-Encoding`, from the request and
/// the connection's peer.
pub(super) fn identify(req: &RequestHeader, peer: Option<IpAddr>, tls: bool, ctx: &mut Ctx) {
    identify_request(req, tls, ctx);
    let forwarded = |name| {
        req.headers
            .get(name)
            .map(|v: &http::HeaderValue| v.as_bytes())
    };
    ctx.client = Some(Client::identify(
        peer,
        || (forwarded(X_FORWARDED_FOR), forwarded(X_FORWARDED_PROTO)),
        ctx.tls,
        &ctx.runtime.trusted,
    ));
}

/// [`identify`] but for the client: request id, TLS and `Accept-Encoding`. The gate's kept
/// refusal (`proxy::repeat`) knows the client of its head already.
pub(super) fn identify_request(req: &RequestHeader, tls: bool, ctx: &mut Ctx) {
    ctx.request_id = headers::request_id(req);
    ctx.unfinished
        .begin(&ctx.request_id, &req.method, &req.uri, ctx.started);
    ctx.tls = tls;
    ctx.compress.request(&ctx.runtime.compression, req);
}

/// The entry [`Proxy::fresh_hit`] would send, looked up without counting (`Cache::held_hit`).
pub(super) fn held_hit(req: &RequestHeader, ctx: &mut Ctx) -> Option<HeldHit> {
    let route = ctx.route.as_ref()?;
    let coding = ctx.compress.preferred();
    let compress = &ctx.compress;
    ctx.runtime.cache.held_hit(
        req,
        &route.name,
        coding,
        |header| compress.keeps(header),
        &mut ctx.cache,
    )
}

/// A looked-up entry sent as [`Proxy::fresh_hit`] sends it.
pub(super) fn serve_hit(req: &RequestHeader, held: HeldHit, ctx: &mut Ctx) -> FreshHit {
    let coding = ctx.compress.preferred();
    let mut hit = ctx.runtime.cache.serve_hit(held, coding, &mut ctx.cache);
    respond::finish_headers(&ctx.runtime.headers, req, ctx, &mut hit.header);
    ctx.compress.response(&mut hit.header);
    hit
}

/// The rate limits' decision, kept for the response's headers; the 429 (or 503 under `deny`)
/// when it refuses.
pub(super) fn limited(decision: Decision, ctx: &mut Ctx) -> Option<LocalResponse> {
    let refusal = decision.refusal.as_ref().map(|r| {
        LocalResponse::problem(r.status, &r.detail, &ctx.request_id).with_header(r.retry_after())
    });
    ctx.ratelimit = Some(decision);
    refusal
}

/// A CORS preflight on a route with a policy is answered by Rampart, never proxied or limited:
/// 204 with the policy's headers, or 403 for an origin it does not allow.
pub(super) fn preflight(
    policy: &cors::Policy,
    req: &RequestHeader,
    request_id: &str,
) -> Option<LocalResponse> {
    match policy.classify(req) {
        cors::Request::Preflight { allowed: true } => {
            Some(LocalResponse::preflight(policy.preflight_headers()))
        }
        cors::Request::Preflight { allowed: false } => Some(LocalResponse::problem(
            403,
            "origin not allowed",
            request_id,
        )),
        cors::Request::Actual | cors::Request::None => None,
    }
}

/// An upstream's own failure after the connection was made (timeout, early close, invalid
/// response); connect failures are not, they are counted in `fail_to_connect`.
pub(super) fn failed_after_connect(e: &Error) -> bool {
    use ErrorType::*;
    e.esource() == &ErrorSource::Upstream
        && !matches!(
            e.etype(),
            ConnectTimedout
                | ConnectRefused
                | ConnectNoRoute
                | ConnectError
                | TLSHandshakeFailure
                | TLSHandshakeTimedout
                | HTTPStatus(_)
        )
}

/// The status counted and logged for a request whose client went away before a response
/// header was sent (nginx's 499 "client closed request"). After the header, the status sent
/// is counted, as nginx does.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// The client closed its connection (or it broke) before the response was complete.
pub(super) fn client_gone(e: &Error) -> bool {
    use ErrorType::*;
    e.esource() == &ErrorSource::Downstream
        && matches!(e.etype(), WriteError | ReadError | ConnectionClosed)
}

/// The status a client sees for a failed request, and the sentence explaining it.
/// `0`: the client is gone, nothing to send. `body_done`: the client sent its whole body (an
/// upstream that timed out waiting while it had not is not to blame).
pub(super) fn error_status(e: &Error, body_done: bool) -> (u16, &'static str) {
    use ErrorType::*;
    match (e.etype(), e.esource()) {
        (HTTPStatus(code), _) => (*code, "request rejected"),
        (ReadTimedout, ErrorSource::Upstream) if !body_done => {
            (408, "request body not received in time")
        }
        (ConnectTimedout | TLSHandshakeTimedout, _) => (504, "upstream connect timed out"),
        (ReadTimedout | WriteTimedout, ErrorSource::Upstream) => {
            (504, "upstream did not answer in time")
        }
        (ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure, _) => {
            (502, "upstream unreachable")
        }
        (_, ErrorSource::Upstream) => (502, "upstream failed"),
        _ if client_gone(e) => (0, ""),
        (ReadTimedout | WriteTimedout, ErrorSource::Downstream) => (408, "request timed out"),
        (_, ErrorSource::Downstream) => (400, "malformed request"),
        _ => (500, "internal error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: Box<Error>) -> u16 {
        error_status(&e, true).0
    }

    /// Who caused the failure decides the status: the upstream's side is 502/504, the
    /// client's is 400/408 or nothing at all when it is gone.
    #[test]
    fn errors_map_to_the_side_that_caused_them() {
        use ErrorType::*;
        assert_eq!(status(Error::new_up(ConnectTimedout)), 504);
        assert_eq!(status(Error::new_up(ReadTimedout)), 504);
        assert_eq!(status(Error::new_up(ConnectRefused)), 502);
        assert_eq!(status(Error::new_up(ConnectNoRoute)), 502);
        assert_eq!(status(Error::new_up(TLSHandshakeFailure)), 502);
        assert_eq!(status(Error::new_up(ConnectionClosed)), 502);
        assert_eq!(status(Error::new_down(ReadTimedout)), 408);
        assert_eq!(status(Error::new_down(InvalidHTTPHeader)), 400);
        assert_eq!(status(Error::new_down(ConnectionClosed)), 0);
        assert_eq!(status(Error::new_down(WriteError)), 0);
        assert_eq!(status(Error::new_in(HTTPStatus(413))), 413);
        assert_eq!(status(Error::new_in(InternalError)), 500);
        // An upstream that timed out waiting for a body the client never finished: the
        // client's doing (408), not the upstream's.
        assert_eq!(error_status(&Error::new_up(ReadTimedout), false).0, 408);
        assert_eq!(error_status(&Error::new_up(WriteTimedout), false).0, 504);
    }

    #[test]
    fn preflights_are_answered_locally() {
        let policy = cors::Policy::new(&cors::Config::default());
        let mut req = RequestHeader::build("OPTIONS", b"/api/x", None).expect("request");
        req.insert_header("origin", "https://app.example")
            .expect("h");
        assert!(
            preflight(&policy, &req, "id").is_none(),
            "no ACRM: an actual request"
        );
        req.insert_header("access-control-request-method", "GET")
            .expect("h");
        let answer = preflight(&policy, &req, "id").expect("answered");
        assert_eq!(answer.status, http::StatusCode::NO_CONTENT);
        assert!(answer.body.is_empty());
        assert_eq!(answer.headers.len(), 3);
        let only = cors::Config {
            allow_origins: vec![cors::Origin::Exact("https://other.example".into())],
            ..cors::Config::default()
        };
        let refused = preflight(&cors::Policy::new(&only), &req, "id").expect("answered");
        assert_eq!(refused.status, http::StatusCode::FORBIDDEN);
    }
}
