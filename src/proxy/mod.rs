//! The request path: the only file that names Pingora's phases.
//!
//! Each phase is a short, ordered list of calls into the feature modules; the table in the
//! README's architecture section mirrors this file. Decisions live in the modules, the order
//! lives here. Everything built from the config file is read from `ctx.runtime`, the
//! generation the request started on (`new_ctx`), never from the current one: a reload in the
//! middle of a request does not change its route, policies or headers.
mod early;
mod repeat;
mod steps;

use std::sync::Arc;

use async_trait::async_trait;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::ErrorSource;

use crate::accesslog;
use crate::cache;
use crate::ctx::Ctx;
use crate::fields::{Bare, Fields};
use crate::headers;
use crate::limits;
use crate::metrics::{self, Metrics};
use crate::path;
use crate::respond::{self, LocalResponse};
use crate::runtime::Live;

pub use steps::CLIENT_CLOSED_REQUEST;
use steps::{client_gone, error_status, failed_after_connect};

/// The request path: the current configuration generation and the process's metrics; built
/// once by `app`, shared by all workers (and, as `gate::Early`, by the gate).
#[derive(Clone)]
pub struct Proxy {
    pub metrics: Arc<Metrics>,
    pub live: Arc<Live>,
}

#[async_trait]
impl ProxyHttp for Proxy {
    // Boxed: Pingora holds the context by value in the futures it makes per request and moves
    // them (the request's future is copied into its box), so a 1.2 KB context was copied several
    // times per request; a box is 8 bytes (callgrind: 132.3k -> 128.5k instructions per proxied
    // request).
    type CTX = Box<Ctx>;

    fn new_ctx(&self) -> Box<Ctx> {
        self.metrics.request_started();
        Box::new(Ctx::new(self.live.current()))
    }

    /// identify -> canonical path (400) -> public metrics? -> route (none: 404) -> the route's
    /// compression -> body size and client in-flight limits (413, 503) -> CORS preflight
    /// (204/403) -> rate limits (429, or 503 under `deny`) -> a fresh cache hit held in this
    /// process, answered here.
    /// Each step may decide the answer itself; it is sent here, in one place.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<bool> {
        self.identify(session, ctx);
        let local = match path::canonicalize(session.req_header_mut()) {
            Err(reason) => Some(LocalResponse::problem(400, reason, &ctx.request_id)),
            Ok(original) => {
                ctx.upstream.original_target = original;
                self.local_response(session.req_header(), ctx).await
            }
        };
        if let Some(local) = local {
            respond::send(session, &ctx.runtime.headers, ctx, local).await?;
            return Ok(true);
        }
        let Some(hit) = self.fresh_hit(session.req_header(), ctx) else {
            return Ok(false);
        };
        respond::send_whole(session, hit.header.into_pingora(), hit.body).await?;
        Ok(true)
    }

    /// A body growing past the route's limit is cut with 413.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        let len = body.as_ref().map_or(0, |b| b.len());
        ctx.runtime
            .limits
            .body(len, &mut ctx.limits)
            .or_else(|r| Error::e_explain(ErrorType::HTTPStatus(r.status), r.detail))
    }

    /// Cache missed (or no cache): a slot among the upstream group's requests in flight,
    /// else 503.
    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut Box<Ctx>,
    ) -> Result<bool> {
        let Some(route) = ctx.route.as_ref() else {
            return Ok(true);
        };
        let (group, max) = (&route.upstream.name, route.upstream.config.max_inflight);
        let Err(full) = ctx
            .runtime
            .limits
            .admit_upstream(group, max, &mut ctx.limits)
        else {
            return Ok(true);
        };
        let local = LocalResponse::problem(full.status, full.detail, &ctx.request_id)
            .with_headers(full.retry_after_header());
        // Boxed: this hook's future is made and copied on every proxied request, and the
        // refusal's state would make it as large as the answer's.
        Box::pin(respond::send(session, &ctx.runtime.headers, ctx, local)).await?;
        Ok(false)
    }

    /// Cacheable method, no credentials, store reachable: enable the cache.
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<()> {
        if let Some(route) = ctx.route.as_ref() {
            ctx.runtime
                .cache
                .request_filter(session, &route.name, &mut ctx.cache);
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Box<Ctx>) -> Result<CacheKey> {
        let coding = ctx.compress.preferred();
        ctx.runtime.cache.key(session, &mut ctx.cache, coding)
    }

    fn cache_miss(&self, session: &mut Session, ctx: &mut Box<Ctx>) {
        ctx.runtime.cache.cache_miss(session);
    }

    /// `response_delay` is the time since the request went upstream (RFC 9111 section 4.2.3).
    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<RespCacheable> {
        let response_delay = ctx
            .upstream
            .sent_at
            .map(|t| t.elapsed())
            .unwrap_or_default();
        Ok(ctx
            .runtime
            .cache
            .response_cacheable(resp, &mut ctx.cache, response_delay))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut Box<Ctx>,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        cache::variance(meta, req)
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut Box<Ctx>,
        error: Option<&Error>,
    ) -> bool {
        cache::should_serve_stale(&ctx.cache, error)
    }

    /// The route's group: a fresh connection to the same address when the pooled one was
    /// found closed, else the next usable address round-robin.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Box<Ctx>,
    ) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "no route for upstream_peer");
        };
        let upstream = &route.upstream;
        match upstream.next_peer(&mut ctx.upstream) {
            Some(peer) => Ok(Box::new(peer)),
            None => Error::e_explain(
                ErrorType::ConnectNoRoute,
                format!("upstream group {} has no usable address", upstream.name),
            ),
        }
    }

    /// A refused or timed-out connect counts against the address and is retried on another
    /// one, idempotent methods only.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Box<Ctx>,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let retry = match ctx.route.as_ref() {
            Some(route) => {
                let upstream = &route.upstream;
                self.metrics.upstream_error(&upstream.name, "connect");
                if let Some(backend) = ctx.upstream.tried.last() {
                    let why = format!("connect failed ({})", e.etype().as_str());
                    upstream.health.request_failed(backend, &why);
                }
                let idempotent = session.req_header().method.is_idempotent();
                let retry = upstream.connect_failed(&mut ctx.upstream, idempotent);
                if retry {
                    self.metrics.upstream_retry(&upstream.name, "connect");
                }
                retry
            }
            None => false,
        };
        e.set_retry(retry);
        e
    }

    /// A failure on an established connection: sent again once, on a fresh connection to the
    /// same address, when the pooled connection turned out closed and sending again cannot
    /// apply the request twice (`routing::reconnect_allowed`). This replaces Pingora's default,
    /// which retries the same failures but through `upstream_peer`, where the only address of a
    /// group counts as tried (a 502) and another pooled connection may be just as dead.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Box<Ctx>,
        client_reused: bool,
    ) -> Box<Error> {
        let idempotent = session.req_header().method.is_idempotent();
        // Nothing went to the client yet, and the request body (if any) can be sent again.
        let replayable =
            session.response_written().is_none() && !session.as_ref().retry_buffer_truncated();
        let retry = replayable
            && ctx.route.as_ref().is_some_and(|route| {
                let upstream = &route.upstream;
                let retry =
                    upstream.reconnect_after(&mut ctx.upstream, &e, client_reused, idempotent);
                if retry {
                    self.metrics.upstream_retry(&upstream.name, "closed");
                }
                retry
            });
        let mut e = e.more_context(format!("Peer: {peer}"));
        e.set_retry(retry);
        e
    }

    /// rewrite path -> Host -> forwarding headers and request id.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        let Some(route) = ctx.route.as_ref() else {
            return Ok(());
        };
        let original = session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str());
        if let (true, Some(target)) = (
            route.forward_original_path,
            ctx.upstream.original_target.as_deref(),
        ) {
            let uri = target.parse::<http::Uri>().or_err(
                ErrorType::InvalidHTTPHeader,
                "the original target is not a valid URI",
            )?;
            upstream_request.set_uri(uri);
        } else if let Some(path) = route.upstream_path(original) {
            let uri = path.parse::<http::Uri>().or_err(
                ErrorType::InvalidHTTPHeader,
                "rewritten path is not a valid URI",
            )?;
            upstream_request.set_uri(uri);
        }
        let host = route
            .upstream
            .host_for(upstream_request.headers.contains_key(http::header::HOST));
        let [host, xff, real_ip, proto, id] = match ctx.client.as_ref() {
            Some(client) => {
                let headers = &upstream_request.headers;
                ctx.runtime
                    .headers
                    .forward(headers, client, &ctx.request_id, host)
            }
            None => Default::default(),
        };
        // The retry's own connection: closed after this response, never pooled.
        let close = ctx.upstream.fresh.then(|| {
            headers::Edit(
                http::header::CONNECTION,
                Some(http::HeaderValue::from_static("close")),
            )
        });
        let edits = [host, xff, real_ip, proto, id, close];
        let preserve_case = ctx.runtime.config.server.preserve_header_case;
        headers::edit_upstream_request(upstream_request, edits, preserve_case);
        ctx.upstream.sent_at = Some(std::time::Instant::now());
        Ok(())
    }

    /// Upstream answered (before the cache stores anything): its latency and 5xx count and its
    /// `Keep-Alive` for the group, the answer counts for the address's health -> hop-by-hop
    /// fields removed -> a 304 kept for the revalidation -> a successful unsafe request
    /// invalidates the URL's cache entries.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if let Some(route) = ctx.route.as_ref() {
            if let Some(sent_at) = ctx.upstream.sent_at {
                let took = sent_at.elapsed();
                ctx.upstream.response_time = Some(took);
                self.metrics.upstream_response(
                    &route.upstream.latency,
                    &route.upstream.name,
                    upstream_response.status.as_u16(),
                    took,
                );
            }
            route.upstream.learn_keep_alive(upstream_response);
        }
        if let (Some(route), Some(backend)) = (ctx.route.as_ref(), ctx.upstream.tried.last()) {
            let status = upstream_response.status.as_u16();
            route.upstream.health.request_answered(backend, status);
        }
        if ctx.runtime.config.server.preserve_header_case {
            headers::remove_hop_by_hop(upstream_response);
        } else {
            Bare::edit(upstream_response, headers::remove_hop_by_hop);
        }
        ctx.runtime
            .cache
            .upstream_response(session, upstream_response, &mut ctx.cache);
        ctx.runtime
            .cache
            .invalidate_unsafe(session, upstream_response, &ctx.cache)
            .await;
        Ok(())
    }

    /// cache status and targeted cache fields -> a stored copy's header -> security, CORS and
    /// request-id headers -> compression decision (cache hits pass here too) -> an identity
    /// hit's encoding kept as the entry's copy.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if ctx.runtime.config.server.preserve_header_case {
            write_response_fields(session, upstream_response, ctx);
        } else {
            Bare::edit(upstream_response, |resp| {
                write_response_fields(session, resp, ctx)
            });
        }
        Ok(())
    }

    /// Encode the body chunk by chunk (synchronous; cache hits pass here too), collecting an
    /// identity hit's encoding for the entry's copy.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<Option<std::time::Duration>> {
        ctx.compress.body(body, end_of_stream, &self.metrics)?;
        ctx.runtime
            .cache
            .copy_chunk(body.as_ref(), end_of_stream, &mut ctx.cache);
        Ok(None)
    }

    /// Every request ends here, answered or not: metrics, then the access log.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Box<Ctx>) {
        ctx.unfinished.finish();
        ctx.runtime.cache.release_claim(&ctx.cache).await;
        ctx.runtime.cache.save_copy(&mut ctx.cache).await;
        let body_done = session.is_body_done();
        let status = match session.response_written() {
            Some(r) => r.status.as_u16(),
            None if e.is_some_and(client_gone) => CLIENT_CLOSED_REQUEST,
            None => 0,
        };
        let req = session.req_header();
        if let Some(e) = e {
            if let Some(reason) = limits::blame_client(e.etype(), e.esource(), body_done) {
                ctx.limits.rejected.get_or_insert(reason);
            } else if let Some(r) = ctx.route.as_ref() {
                if let Some(kind) = metrics::upstream_error_kind(e) {
                    self.metrics.upstream_error(&r.upstream.name, kind);
                }
                // An upstream that timed out, closed early or sent garbage after the connect
                // (connect failures were counted in `fail_to_connect`).
                if let (true, Some(backend)) = (failed_after_connect(e), ctx.upstream.tried.last())
                {
                    let why = format!("{} from the upstream", e.etype().as_str());
                    r.upstream.health.request_failed(backend, &why);
                }
            }
        }
        if let Some(reason) = ctx.limits.rejected {
            self.metrics.rejected(reason.label());
            let client = ctx.client.as_ref().and_then(|c| c.ip);
            // Formatted only when the line is written (refusals come in floods).
            let what = format_args!("{} {}", req.method, req.uri.path().escape_debug());
            limits::log_refusal(status, reason, client, &what);
        }
        let error = ctx
            .limits
            .rejected
            .map(|r| r.label())
            .or(e.and_then(metrics::upstream_error_kind));
        self.record(req, ctx, status, session.body_bytes_sent(), error);
    }

    /// Pingora logs every failed request at ERROR. A client that went away, or sent something
    /// malformed or too slowly, is nothing an operator must act on: such errors are logged
    /// here instead, at debug (went away) or info (other client errors), as nginx logs them at
    /// info; a request refused by a limit is logged once by `logging` (`limits::log_refusal`).
    /// Upstream and internal failures keep Pingora's ERROR line.
    fn suppress_error_log(&self, session: &Session, ctx: &Box<Ctx>, e: &Error) -> bool {
        if ctx.limits.rejected.is_some() {
            return true;
        }
        if e.esource() != &ErrorSource::Downstream {
            return false;
        }
        let summary = session.as_ref().request_summary();
        let id = &ctx.request_id;
        if client_gone(e) {
            log::debug!("client closed the connection before the response was complete: {e}, {summary}, request id {id}");
        } else {
            log::info!("client error: {e}, {summary}, request id {id}");
        }
        true
    }

    /// An error before a response went out: problem+json with the status decided here. The
    /// client connection is closed afterwards (Pingora does not reuse it after a proxy
    /// failure), so the answer says `Connection: close`.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<Ctx>,
    ) -> FailToProxy {
        let body_done = session.is_body_done();
        if let Some(reason) = limits::blame_client(e.etype(), e.esource(), body_done) {
            ctx.limits.rejected.get_or_insert(reason);
        }
        let (code, detail) = error_status(e, body_done);
        session.set_keepalive(None);
        if code > 0 {
            let problem = LocalResponse::problem(code, detail, &ctx.request_id);
            let headers = &ctx.runtime.headers;
            if let Err(write_err) = respond::send(session, headers, ctx, problem).await {
                log::debug!("could not send {code} to the client: {write_err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

/// `response_filter`'s steps, on Pingora's header (`preserve_header_case`) or on its parts.
fn write_response_fields(session: &Session, resp: &mut impl Fields, ctx: &mut Ctx) {
    let cache = &ctx.runtime.cache;
    cache.status_headers(session, resp, &mut ctx.cache);
    cache.serve_copy(session, resp, &ctx.cache);
    respond::finish_headers(&ctx.runtime.headers, session.req_header(), ctx, resp);
    ctx.compress.response(resp);
    ctx.runtime.cache.begin_copy(resp, &mut ctx.cache);
}

impl Proxy {
    /// A finished request in the metrics and the access log, however it was answered.
    fn record(
        &self,
        req: &RequestHeader,
        ctx: &Ctx,
        status: u16,
        bytes: usize,
        error: Option<&'static str>,
    ) {
        let elapsed = ctx.started.elapsed();
        let route = ctx.route.as_ref().map(|r| r.name.as_str());
        self.metrics
            .request_done(&req.method, route, status, elapsed.as_secs_f64());
        let access_log = &ctx.runtime.access_log;
        if !access_log.wants(req.uri.path()) {
            return;
        }
        access_log.write(&accesslog::Entry {
            time: accesslog::now(),
            request_id: &ctx.request_id,
            client: ctx
                .client
                .as_ref()
                .and_then(|c| c.ip)
                .map(crate::client::ip_text),
            method: req.method.as_str(),
            path: req.uri.path(),
            status,
            bytes,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            route,
            upstream: ctx.upstream.tried.last().map(|b| b.addr.to_string()),
            cache: ctx.cache.x_cache,
            limit: ctx.ratelimit.as_ref().map(|d| d.outcome()),
            error,
        });
    }
}
