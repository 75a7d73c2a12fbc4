//! The connection gate: what happens on a client connection before, and between, the requests
//! Pingora parses.
//!
//! Phase: before any of Pingora's. The proxy service's application is a [`Gate`] around
//! Pingora's `HttpProxy`. It counts the connection (overall and per client address), then,
//! for HTTP/1.x, reads each request head itself under the header and keep-alive timers,
//! checks it (`limits::head`) and only then hands Pingora a session. The stream Pingora reads
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
//! ended a request at different bytes is closed, never reused.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, DATE};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::proxy::{HttpProxy, ProxyHttp};
use pingora::server::ShutdownWatch;
use pingora_limits::inflight::{Guard, Inflight};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::accesslog;
use crate::client::Cidrs;
use crate::headers::{Downstream, Headers};
use crate::limits::chunked::Chunked;
use crate::limits::head::{self, Framing, Scan, Scanner};
use crate::limits::{self, Reason};
use crate::metrics::{self, Metrics};
use crate::respond::LocalResponse;

/// Bytes of a next request held while Pingora finishes the current one; past this the gate
/// stops reading until it is its turn.
const HOLD_MAX: usize = 64 * 1024;
/// After a refusal, how long and how much of what the client still sends is read and thrown
/// away before closing, so the answer is not lost to a reset (nginx's lingering close).
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// The proxy service's application: Pingora's `HttpProxy` behind the gate.
pub struct Gate<SV> {
    app: Arc<HttpProxy<SV>>,
    limits: limits::Config,
    head: head::Limits,
    open: AtomicUsize,
    per_client: Inflight,
    trusted: Cidrs,
    metrics: Arc<Metrics>,
    headers: Headers,
    access_log: accesslog::Config,
}

impl<SV> Gate<SV> {
    /// `app` is configured here too: HTTP/2's head size and idle connections follow
    /// `[limits]` as HTTP/1's do.
    pub fn new(
        mut app: HttpProxy<SV>,
        limits: &limits::Config,
        trusted: Cidrs,
        metrics: Arc<Metrics>,
        headers: Headers,
        access_log: accesslog::Config,
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
            head: limits.head(),
            limits: limits.clone(),
            open: AtomicUsize::new(0),
            per_client: Inflight::new(),
            trusted,
            metrics,
            headers,
            access_log,
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
impl<SV> ServerApp for Gate<SV>
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
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
            limits::log_refusal(0, Reason::Connections, peer, "connection closed unanswered");
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
                    "HTTP/2 connection closed",
                );
                return None;
            }
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }
        self.serve_h1(stream, peer, crowded, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

impl<SV> Gate<SV>
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
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
        loop {
            let started = Instant::now();
            let wait = if first {
                Wait::first(&self.limits)
            } else {
                Wait::idle(&self.limits)
            };
            let refusal = match conn.read_head(&self.head, wait, shutdown).await {
                HeadRead::Ready if crowded => Refused::new(
                    503,
                    Reason::ClientConnections,
                    "too many connections from this address",
                ),
                HeadRead::Ready => {
                    let session = self.session(conn, settings.take(), first);
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
                    if *shutdown.borrow() {
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
            self.refuse(&mut conn, refusal, peer, tls, started).await;
            return;
        }
    }

    /// A Pingora session over `conn`, with the body and send timers; the keep-alive state of
    /// the previous request on the connection, or the request budget of a new one.
    fn session(
        &self,
        conn: Box<Conn>,
        settings: Option<pingora::apps::HttpPersistentSettings>,
        first: bool,
    ) -> ServerSession {
        let mut session = ServerSession::new_http1(conn);
        session.set_read_timeout(Some(self.limits.body_timeout.0));
        session.set_write_timeout(Some(self.limits.send_timeout.0));
        session.set_total_drain_timeout(Some(self.limits.body_timeout.0));
        match settings {
            Some(s) => s.apply_to_session(&mut session),
            None if first => {
                // The gate times the wait between requests; Pingora's own timer is off.
                session.set_keepalive(Some(0));
                let budget = self.limits.max_requests_per_connection.saturating_sub(1);
                session.set_keepalive_reuses_remaining(Some(budget));
            }
            None => session.set_keepalive(Some(0)),
        }
        session
    }

    /// Answer a refused head (problem+json with the security headers, `Connection: close`),
    /// log and count it, then close after a short lingering read.
    async fn refuse(
        &self,
        conn: &mut Conn,
        refused: Refused,
        peer: Option<IpAddr>,
        tls: bool,
        started: Instant,
    ) {
        let request_id = uuid::Uuid::new_v4().to_string();
        let line = RequestLine::of(conn.head_bytes());
        let mut resp = match self.response(&refused, &request_id, tls, started) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("cannot build the {} response: {e}", refused.status);
                return;
            }
        };
        let body = std::mem::take(&mut resp.1);
        let mut bytes = resp.0;
        if line.method != "HEAD" {
            bytes.extend_from_slice(&body);
        }
        let write = async {
            conn.inner.write_all(&bytes).await?;
            conn.inner.flush().await?;
            conn.inner.shutdown().await
        };
        let sent = tokio::time::timeout(self.limits.send_timeout.0, write).await;
        if matches!(sent, Ok(Ok(()))) {
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
    ) -> pingora::Result<(Vec<u8>, bytes::Bytes)> {
        let local = LocalResponse::problem(refused.status, refused.detail, request_id);
        let mut resp = ResponseHeader::build(local.status, Some(local.headers.len() + 10))?;
        for (name, value) in local.headers {
            resp.insert_header(name, value)?;
        }
        if refused.status == 503 {
            let secs = HeaderValue::from(limits::RETRY_AFTER_SECS);
            resp.insert_header(http::header::RETRY_AFTER, secs)?;
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
        resp.insert_header(DATE, pingora::protocols::http::date::get_cached_date())?;
        resp.insert_header(CONTENT_LENGTH, local.body.len())?;
        resp.insert_header(CONNECTION, "close")?;
        let mut out = format!(
            "HTTP/1.1 {} {}\r\n",
            resp.status.as_u16(),
            resp.status.canonical_reason().unwrap_or("")
        )
        .into_bytes();
        for (name, value) in resp.headers.iter() {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Ok((out, local.body))
    }
}

/// A refusal decided by the gate.
struct Refused {
    status: u16,
    reason: Reason,
    detail: &'static str,
}

impl Refused {
    fn new(status: u16, reason: Reason, detail: &'static str) -> Self {
        Self {
            status,
            reason,
            detail,
        }
    }
}

/// What can be logged of a refused head: its method and target, printable and short.
struct RequestLine {
    method: String,
    target: String,
}

impl RequestLine {
    fn of(head: &[u8]) -> Self {
        let line = head
            .iter()
            .position(|b| *b != b'\r' && *b != b'\n')
            .map_or(&[][..], |start| &head[start..]);
        let line = &line[..line.iter().position(|b| *b == b'\n').unwrap_or(line.len())];
        let mut parts = line.splitn(3, |b| *b == b' ');
        let method = parts.next().unwrap_or_default();
        let target = parts.next().unwrap_or_default();
        Self {
            method: if method.is_empty() {
                "-".into()
            } else {
                limits::printable(method, 32)
            },
            target: if target.is_empty() {
                "-".into()
            } else {
                limits::printable(target, 200)
            },
        }
    }
}

fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    let ip = digest.peer_addr()?.as_inet()?.ip();
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    })
}

/// How long the gate waits for a head.
#[derive(Debug, Clone, Copy)]
struct Wait {
    /// Until the first byte of the head (`None`: the head timer runs from the start).
    idle: Option<std::time::Duration>,
    /// For the whole head, from its first byte (or the start, without `idle`).
    head: std::time::Duration,
}

impl Wait {
    /// A new connection: the whole head within the header timeout of the accept
    /// (nginx's `client_header_timeout` runs from the accept too).
    fn first(l: &limits::Config) -> Self {
        Self {
            idle: None,
            head: l.header_timeout.0,
        }
    }

    /// Between requests: the keep-alive timeout until the next head starts, then the header
    /// timeout for the rest of it.
    fn idle(l: &limits::Config) -> Self {
        Self {
            idle: Some(l.keepalive_timeout.0),
            head: l.header_timeout.0,
        }
    }
}

/// How the gate's wait for a head ended.
enum HeadRead {
    /// A checked head is buffered; the connection releases it to Pingora.
    Ready,
    Refused(head::Rejection),
    /// Part of a head came, not all of it, within the header timeout.
    TimedOut,
    /// Nothing more to do: closed by the client, idle too long, or shutting down.
    Closed(&'static str),
}

/// What of the buffered bytes Pingora may read now.
#[derive(Debug)]
enum Release {
    /// Between requests: nothing (the gate reads the next head itself).
    Hold,
    /// The head of the current request (bytes left), then its body.
    Head {
        left: usize,
        body: Body,
        upgrade: bool,
    },
    Body {
        body: Body,
        upgrade: bool,
    },
    /// Everything as it comes: a protocol switch was asked for, or the body's framing could
    /// not be followed (the connection then ends with this request).
    All,
}

#[derive(Debug)]
enum Body {
    Length(u64),
    Chunked(Chunked),
}

/// A client connection as Pingora reads it: the socket, and the bytes the gate read ahead.
pub struct Conn {
    inner: Stream,
    buf: BytesMut,
    /// Bytes at the front of `buf` Pingora may take now.
    approved: usize,
    release: Release,
    /// The head the gate is scanning.
    scanner: Scanner,
    /// The client closed its side.
    eof: bool,
    /// The framing was not followed to its end: never reuse the connection.
    poisoned: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("inner", &self.inner)
            .field("buffered", &self.buf.len())
            .field("release", &self.release)
            .finish()
    }
}

impl Conn {
    fn new(inner: Stream) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
            approved: 0,
            release: Release::Hold,
            scanner: Scanner::default(),
            eof: false,
            poisoned: false,
        }
    }

    /// The request ended where Pingora stopped reading, and nothing of it is left.
    fn between_requests(&self) -> bool {
        matches!(self.release, Release::Hold) && self.approved == 0 && !self.poisoned
    }

    /// The buffered bytes of the head being read (for the log line of a refusal).
    fn head_bytes(&self) -> &[u8] {
        &self.buf[..self.buf.len().min(512)]
    }

    /// Read and check the next head, within `wait`. On [`HeadRead::Ready`] the connection
    /// releases that request to its reader.
    async fn read_head(
        &mut self,
        limits: &head::Limits,
        wait: Wait,
        shutdown: &ShutdownWatch,
    ) -> HeadRead {
        self.scanner = Scanner::default();
        let mut shutdown = shutdown.clone();
        let mut idle = wait.idle.filter(|_| self.buf.is_empty());
        let mut deadline = tokio::time::Instant::now() + idle.unwrap_or(wait.head);
        loop {
            match self.scanner.scan(&self.buf, limits) {
                Scan::Complete(len) => {
                    return match head::check(&self.buf[..len], limits) {
                        Ok(head) => {
                            let body = match head.framing {
                                Framing::None => Body::Length(0),
                                Framing::Length(n) => Body::Length(n),
                                Framing::Chunked => Body::Chunked(Chunked::default()),
                            };
                            self.release = Release::Head {
                                left: head.len,
                                body,
                                upgrade: head.upgrade,
                            };
                            HeadRead::Ready
                        }
                        Err(rejection) => HeadRead::Refused(rejection),
                    };
                }
                Scan::Refused(rejection) => return HeadRead::Refused(rejection),
                Scan::Partial => {}
            }
            if self.eof {
                return HeadRead::Closed("the client closed it");
            }
            if *shutdown.borrow_and_update() && self.buf.is_empty() {
                return HeadRead::Closed("shutting down");
            }
            let room = (limits.section + 1).saturating_sub(self.buf.len()).max(1);
            let mut chunk = [0u8; 8192];
            let max = room.min(chunk.len());
            let read = tokio::select! {
                read = self.inner.read(&mut chunk[..max]) => read,
                () = tokio::time::sleep_until(deadline) => {
                    return if idle.is_some() || self.buf.is_empty() {
                        HeadRead::Closed("idle too long")
                    } else {
                        HeadRead::TimedOut
                    };
                }
                _ = shutdown.changed(), if self.buf.is_empty() => {
                    return HeadRead::Closed("shutting down");
                }
            };
            match read {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if idle.take().is_some() {
                        deadline = tokio::time::Instant::now() + wait.head;
                    }
                }
                Err(_) => return HeadRead::Closed("read error"),
            }
        }
    }

    /// Approve what the current request's framing allows of the buffered bytes.
    fn approve(&mut self) {
        loop {
            let rest = self.buf.len() - self.approved;
            match &mut self.release {
                Release::Hold => return,
                Release::All => {
                    self.approved = self.buf.len();
                    return;
                }
                Release::Head {
                    left,
                    body,
                    upgrade,
                } => {
                    let take = (*left).min(rest);
                    *left -= take;
                    self.approved += take;
                    if *left > 0 {
                        return;
                    }
                    let body = std::mem::replace(body, Body::Length(0));
                    self.release = Release::Body {
                        body,
                        upgrade: *upgrade,
                    };
                }
                Release::Body { body, upgrade } => {
                    let done = match body {
                        Body::Length(left) => {
                            let take = (*left).min(rest as u64);
                            *left -= take;
                            self.approved += take as usize;
                            *left == 0
                        }
                        Body::Chunked(scanner) => {
                            match scanner.scan(&self.buf[self.approved..]) {
                                Ok(take) => {
                                    self.approved += take;
                                    scanner.done()
                                }
                                Err(_) => {
                                    // Pingora's parser will report it; the connection ends.
                                    self.poisoned = true;
                                    self.release = Release::All;
                                    continue;
                                }
                            }
                        }
                    };
                    if !done {
                        return;
                    }
                    self.release = if *upgrade {
                        self.poisoned = true;
                        Release::All
                    } else {
                        Release::Hold
                    };
                }
            }
        }
    }

    /// Read more from the socket into the buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut chunk = [0u8; 16 * 1024];
        let mut read = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
        self.buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    }

    /// After a refusal: read and drop what the client still sends, for a moment, so closing
    /// does not reset the connection under the answer.
    async fn linger(&mut self) {
        let mut chunk = [0u8; 8192];
        let mut drained = 0;
        let drain = async {
            while drained < LINGER_BYTES {
                match self.inner.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            this.approve();
            if this.approved > 0 {
                let n = this.approved.min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                this.approved -= n;
                return Poll::Ready(Ok(()));
            }
            if matches!(this.release, Release::Hold) {
                // Between requests (Pingora's idle probe): a next request's bytes stay here
                // until its turn; only the client's close is passed on, and only when no
                // request of it is still waiting.
                if this.eof {
                    return if this.buf.is_empty() {
                        Poll::Ready(Ok(()))
                    } else {
                        Poll::Pending
                    };
                }
                if this.buf.len() >= HOLD_MAX {
                    return Poll::Pending;
                }
            } else if this.eof {
                return Poll::Ready(Ok(()));
            }
            if ready!(this.poll_fill(cx))? == 0 {
                this.eof = true;
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

// The rest of Pingora's transport interface: the socket's, unchanged.

#[async_trait]
impl Shutdown for Conn {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for Conn {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Conn {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Conn {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> std::time::Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> std::time::Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Conn {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Conn {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for Conn {}
