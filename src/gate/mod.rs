//! The connection gate: what happens on a client connection before, and between, the requests
//! Pingora parses.
//!
//! Phase: before any of Pingora's. The proxy service's application is a [`Gate`] around
//! Pingora's `HttpProxy`. It counts the connection (overall and per client address), then,
//! for HTTP/1.x, reads each request head itself under the header and keep-alive timers,
//! checks it (`limits::head`) and only then hands Pingora a session, unless the proxy answers
//! it from its head alone ([`Early`]: a client known to be over its rate limits), in which case
//! the gate writes that answer and reads the next head. The stream Pingora reads
//! is a [`Conn`], which releases one request at a time: its head, then as much body as the
//! head's framing says. Bytes of a pipelined next request stay in the gate until Pingora has
//! finished the current one, so pipelined requests are answered in order, each checked like
//! any other. HTTP/2 connections (TLS with ALPN `h2`) are counted and passed on unchanged.
//!
//! Why here: Pingora reads and parses a request head before any `ProxyHttp` hook runs, with a
//! fixed 1 MiB head limit, no timer over the whole head, a keep-alive wait without end, and a
//! bare 400 (no hook, no log, no metric) for whatever it cannot parse. The gate is the one
//! place in front of that parser.
//!
//! Invariants: Pingora only parses heads the gate accepted; every refusal is answered with a
//! problem+json carrying the security headers (except a connection over the overall limit,
//! closed unanswered), logged and counted; at most `max_header_section` bytes of an
//! unfinished head are buffered per connection; a connection on which the gate and Pingora
//! ended a request at different bytes is closed, never reused; only a request without a body
//! is answered early, so the next request's bytes start right after its head; the requests a
//! connection may carry (`max_requests_per_connection`) count both kinds.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::header::{HeaderValue, CONTENT_LENGTH};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::{HttpProxy, ProxyHttp};
use pingora::server::ShutdownWatch;
use pingora_limits::inflight::{Guard, Inflight};
use tokio::io::AsyncWriteExt;

use crate::accesslog;
use crate::client::Cidrs;
use crate::fields::{Fields, Response};
use crate::headers::{Downstream, Headers};
use crate::limits::head::{self};
use crate::limits::{self, Reason};
use crate::metrics::{self, Metrics};
use crate::respond::{self, LocalResponse};

mod conn;
mod stopping;
mod timer;
mod wait;

use conn::Conn;
use stopping::Stopping;
use wait::{peer_ip, HeadRead, Refused, RequestLine, Wait};

/// Bytes of a next request held while Pingora finishes the current one; past this the gate
/// stops reading until it is its turn.
pub(super) const HOLD_MAX: usize = 64 * 1024;
/// After a refusal, how long and how much of what the client still sends is read and thrown
/// away before closing, so the answer is not lost to a reset (nginx's lingering close).
pub(super) const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
pub(super) const LINGER_BYTES: usize = 256 * 1024;

/// Requests the proxy answers from their head alone, in the gate, so Pingora never parses
/// them (`proxy::early`: clients known to be over their rate limits).
pub trait Early: Send + Sync {
    /// What one connection's early answers keep for its next request (`proxy::repeat`: the
    /// last refusal, sent again for the same head); made when the connection opens.
    type Memo: Default + Send;

    /// The whole response to a checked head of a request without a body, or `None` for
    /// Pingora to serve it. `last`: the connection closes after this request (its request
    /// budget is spent, or the server is shutting down), so the answer must say so.
    fn answer<'m>(
        &self,
        memo: &'m mut Self::Memo,
        head: &[u8],
        peer: Option<IpAddr>,
        tls: bool,
        last: bool,
    ) -> Option<Answer<'m>>;
}

/// A response the gate writes itself.
pub struct Answer<'a> {
    /// Status line, fields and body, as Pingora would have written them: made for this
    /// request, or lent by the connection's memo (a kept answer, patched).
    pub bytes: std::borrow::Cow<'a, [u8]>,
    /// The connection stays open for the next request.
    pub keep_alive: bool,
}

/// The proxy service's application: Pingora's `HttpProxy` behind the gate.
pub struct Gate<SV, E> {
    app: Arc<HttpProxy<SV>>,
    early: Arc<E>,
    limits: limits::Config,
    head: head::Limits,
    open: AtomicUsize,
    per_client: Inflight,
    trusted: Cidrs,
    metrics: Arc<Metrics>,
    headers: Headers,
    access_log: accesslog::Config,
    /// Set when the server begins to stop ([`ServerApp::cleanup`]); read per request.
    stopping: Stopping,
}

impl<SV, E> Gate<SV, E> {
    /// `app` is configured here too: HTTP/2's head size and idle connections follow
    /// `[limits]` as HTTP/1's do. `threads`: the service's worker threads.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mut app: HttpProxy<SV>,
        early: Arc<E>,
        limits: &limits::Config,
        trusted: Cidrs,
        metrics: Arc<Metrics>,
        headers: Headers,
        access_log: accesslog::Config,
        threads: usize,
    ) -> Self {
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2_idle_timeout = Some(limits.keepalive_timeout.0);
        options.keepalive_request_limit = Some(limits.max_requests_per_connection);
        app.server_options = Some(options);
        let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
        h2.max_header_list_size(u32::try_from(limits.max_header_section.0).unwrap_or(u32::MAX));
        app.h2_options = Some(h2);
        Self {
            app: Arc::new(app),
            early,
            head: limits.head(),
            limits: limits.clone(),
            open: AtomicUsize::new(0),
            per_client: Inflight::new(),
            trusted,
            metrics,
            headers,
            access_log,
            stopping: Stopping::new(threads),
        }
    }
}

/// A connection's place among the open ones; released when dropped.
struct Slot<'a> {
    open: &'a AtomicUsize,
    metrics: &'a Metrics,
    _client: Option<Guard>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.connections_open.dec();
    }
}

#[async_trait]
impl<SV, E> ServerApp for Gate<SV, E>
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
    E: Early + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = peer_ip(&stream);
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.limits.max_connections {
            self.open.fetch_sub(1, Ordering::Relaxed);
            // Over the overall limit nothing more is spent on the connection: it is closed.
            self.metrics.rejected(Reason::Connections.label());
            limits::log_refusal(
                0,
                Reason::Connections,
                peer,
                &"connection closed unanswered",
            );
            return None;
        }
        self.metrics.connections_open.inc();
        let (client, crowded) = match peer.filter(|ip| !self.trusted.contains(*ip)) {
            Some(ip) => {
                let (guard, n) = self.per_client.incr(ip, 1);
                (
                    Some(guard),
                    n > self.limits.max_connections_per_client as isize,
                )
            }
            None => (None, false),
        };
        let _slot = Slot {
            open: &self.open,
            metrics: &self.metrics,
            _client: client,
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            if crowded {
                self.metrics.rejected(Reason::ClientConnections.label());
                limits::log_refusal(
                    0,
                    Reason::ClientConnections,
                    peer,
                    &"HTTP/2 connection closed",
                );
                return None;
            }
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }
        self.serve_h1(stream, peer, crowded, shutdown).await;
        None
    }

    /// Pingora calls this once its listeners stop accepting, as the server begins to stop.
    async fn cleanup(&self) {
        self.stopping.stop();
        self.app.http_cleanup().await;
    }
}

impl<SV, E> Gate<SV, E>
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
    E: Early,
{
    /// One HTTP/1.x connection: head by head, each checked, then served by Pingora.
    async fn serve_h1(
        &self,
        stream: Stream,
        peer: Option<IpAddr>,
        crowded: bool,
        shutdown: &ShutdownWatch,
    ) {
        let tls = stream.get_ssl_digest().is_some();
        let mut conn = Box::new(Conn::new(stream));
        let mut first = true;
        let mut settings = None;
        // Requests on this connection so far, whoever answered them.
        let mut served = 0;
        let mut memo = E::Memo::default();
        loop {
            let wait = if first {
                Wait::first(&self.limits)
            } else {
                Wait::idle(&self.limits)
            };
            let refusal = match conn.read_head(&self.head, wait, &self.stopping).await {
                HeadRead::Ready if crowded => Refused::new(
                    503,
                    Reason::ClientConnections,
                    "too many connections from this address",
                ),
                HeadRead::Ready => {
                    served += 1;
                    let budget = self
                        .limits
                        .max_requests_per_connection
                        .saturating_sub(served);
                    let last = budget == 0 || self.stopping.is_set();
                    if let Some(answer) = conn
                        .bodiless_head()
                        .and_then(|head| self.early.answer(&mut memo, head, peer, tls, last))
                    {
                        conn.skip_head();
                        if !self.send_answer(&mut conn, answer).await {
                            return;
                        }
                        first = false;
                        continue;
                    }
                    let mut session = self.session(conn, settings.take());
                    // Early answers spent some of the connection's requests too.
                    session.set_keepalive_reuses_remaining(Some(budget));
                    let Some(reused) = self.app.process_new_http(session, shutdown).await else {
                        return;
                    };
                    let (stream, persisted) = reused.consume();
                    let Ok(back) = stream.into_any().downcast::<Conn>() else {
                        return;
                    };
                    conn = back;
                    if !conn.between_requests() {
                        log::debug!("request framing ended apart from Pingora's; closing");
                        return;
                    }
                    if self.stopping.is_set() {
                        return;
                    }
                    settings = persisted;
                    first = false;
                    continue;
                }
                HeadRead::Refused(r) => Refused::new(r.status, r.reason, r.detail),
                HeadRead::TimedOut => Refused::new(
                    408,
                    Reason::HeaderTimeout,
                    "request head not received in time",
                ),
                HeadRead::Closed(why) => {
                    log::debug!("connection from {peer:?} closed while waiting for a head: {why}");
                    return;
                }
            };
            self.refuse(&mut conn, refusal, peer, tls).await;
            return;
        }
    }

    /// Write an early answer; whether the connection goes on to its next request.
    async fn send_answer(&self, conn: &mut Conn, answer: Answer<'_>) -> bool {
        let write = async {
            conn.inner.write_all(&answer.bytes).await?;
            conn.inner.flush().await?;
            if !answer.keep_alive {
                conn.inner.shutdown().await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let sent = within(self.limits.send_timeout.0, write).await;
        matches!(sent, Some(Ok(()))) && answer.keep_alive
    }

    /// A Pingora session over `conn`, with the body and send timers and the keep-alive state
    /// of the previous request Pingora served on the connection.
    fn session(
        &self,
        conn: Box<Conn>,
        settings: Option<pingora::apps::HttpPersistentSettings>,
    ) -> ServerSession {
        let mut session = ServerSession::new_http1(conn);
        session.set_read_timeout(Some(self.limits.body_timeout.0));
        session.set_write_timeout(Some(self.limits.send_timeout.0));
        session.set_total_drain_timeout(Some(self.limits.body_timeout.0));
        match settings {
            Some(s) => s.apply_to_session(&mut session),
            // The gate times the wait between requests; Pingora's own timer is off.
            None => session.set_keepalive(Some(0)),
        }
        session
    }

    /// Answer a refused head (problem+json with the security headers, `Connection: close`),
    /// log and count it, then close after a short lingering read.
    async fn refuse(&self, conn: &mut Conn, refused: Refused, peer: Option<IpAddr>, tls: bool) {
        // Timed from here, as a proxied request is from its parsed head: the wait for the head
        // is not the proxy's processing.
        let started = Instant::now();
        let request_id = uuid::Uuid::new_v4().to_string();
        let line = RequestLine::of(conn.head_bytes());
        let (mut bytes, body) = self.response(&refused, &request_id, tls, started);
        if line.method != "HEAD" {
            bytes.extend_from_slice(&body);
        }
        let write = async {
            conn.inner.write_all(&bytes).await?;
            conn.inner.flush().await?;
            conn.inner.shutdown().await
        };
        let sent = within(self.limits.send_timeout.0, write).await;
        if matches!(sent, Some(Ok(()))) {
            conn.linger().await;
        }
        let method = http::Method::from_bytes(line.method.as_bytes()).ok();
        let method_label = method.as_ref().map_or("OTHER", metrics::method_label);
        self.metrics
            .rejected_request(method_label, refused.status, refused.reason.label());
        limits::log_refusal(
            refused.status,
            refused.reason,
            peer,
            &format!("{} {}", line.method, line.target),
        );
        if self.access_log.wants(&line.target) {
            self.access_log.write(&accesslog::Entry {
                time: accesslog::now(),
                request_id: &request_id,
                client: peer.map(|ip| ip.to_string()),
                method: &line.method,
                path: &line.target,
                status: refused.status,
                bytes: body.len(),
                duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                route: None,
                upstream: None,
                cache: None,
                limit: None,
                error: Some(refused.reason.label()),
            });
        }
    }

    /// The refusal as HTTP/1.1 bytes (status line and fields) and its body.
    fn response(
        &self,
        refused: &Refused,
        request_id: &str,
        tls: bool,
        started: Instant,
    ) -> (Vec<u8>, bytes::Bytes) {
        let local = LocalResponse::problem(refused.status, refused.detail, request_id);
        let mut resp = Response::new(local.status, local.headers.len() + 10);
        for (name, value) in local.headers {
            resp.set(name, value);
        }
        if refused.status == 503 {
            let secs = HeaderValue::from(limits::RETRY_AFTER_SECS);
            resp.set(http::header::RETRY_AFTER, secs);
        }
        self.headers.downstream(
            &mut resp,
            &Downstream {
                request_id,
                tls,
                started,
                upstream_time: None,
            },
        );
        resp.set(CONTENT_LENGTH, HeaderValue::from(local.body.len()));
        (respond::to_h1(resp, b"", false), local.body)
    }
}

/// `write`'s output if it completes within `limit`. It is polled once before any timer is
/// made: an answer usually fits the socket's buffer and completes at once, and tokio's timeout
/// reads the clock when it is made (and, once pending, registers under its driver's lock).
async fn within<F: std::future::Future>(limit: std::time::Duration, write: F) -> Option<F::Output> {
    let mut write = std::pin::pin!(write);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => tokio::time::timeout(limit, write).await.ok(),
    }
}
