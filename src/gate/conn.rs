//! The stream Pingora reads: one request at a time (its head, then as much body as the head's
//! framing says); bytes of a pipelined next request stay here until Pingora finished this one.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use bytes::{Buf, BufMut, BytesMut};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::limits::chunked::Chunked;
use crate::limits::head::{self, Framing, Recent, Scan, Scanner};

use super::stopping::Stopping;
use super::timer::HeadTimer;
use super::wait::{HeadRead, Wait};
use super::{HOLD_MAX, LINGER, LINGER_BYTES};

/// The most one read of a request head takes from the socket.
const HEAD_READ: usize = 8192;
/// Room a connection's buffer is given for a head (nginx's `client_header_buffer_size`): the
/// buffer keeps its capacity while the connection lives, so an idle one holds this little.
const HEAD_ROOM: usize = 1024;
/// One read for a request body, on the stack.
const BODY_READ: usize = 16 * 1024;
/// One read between requests (Pingora's idle probe, a pipelined next head), on the stack: it
/// runs on every proxied request, and zeroing a body-sized chunk for it showed in callgrind.
const IDLE_READ: usize = 1024;

/// What of the buffered bytes Pingora may read now.
#[derive(Debug)]
pub(super) enum Release {
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
pub(super) enum Body {
    Length(u64),
    Chunked(Chunked),
}

/// A client connection as Pingora reads it: the socket, and the bytes the gate read ahead.
pub struct Conn {
    pub(super) inner: Stream,
    pub(super) buf: BytesMut,
    /// Bytes at the front of `buf` Pingora may take now.
    pub(super) approved: usize,
    pub(super) release: Release,
    /// The head the gate is scanning.
    pub(super) scanner: Scanner,
    /// The last head accepted, so the same head again is not checked again.
    recent: Recent,
    /// The client closed its side.
    pub(super) eof: bool,
    /// The framing was not followed to its end: never reuse the connection.
    pub(super) poisoned: bool,
    /// The wait for the next head (armed once, kept across the connection's requests).
    timer: HeadTimer,
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
    pub(super) fn new(inner: Stream) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
            approved: 0,
            release: Release::Hold,
            scanner: Scanner::default(),
            recent: Recent::default(),
            eof: false,
            poisoned: false,
            timer: HeadTimer::default(),
        }
    }

    /// The request ended where Pingora stopped reading, and nothing of it is left.
    pub(super) fn between_requests(&self) -> bool {
        matches!(self.release, Release::Hold) && self.approved == 0 && !self.poisoned
    }

    /// The head just read, when its request has no body and asks for no protocol switch:
    /// one the gate can answer itself.
    pub(super) fn bodiless_head(&self) -> Option<&[u8]> {
        match self.release {
            Release::Head {
                left,
                body: Body::Length(0),
                upgrade: false,
            } if self.approved == 0 => self.buf.get(..left),
            _ => None,
        }
    }

    /// The gate answered the request just read: its head is dropped and nothing released,
    /// so the next read starts at the next request's bytes.
    pub(super) fn skip_head(&mut self) {
        if let Release::Head { left, .. } = self.release {
            self.buf.advance(left.min(self.buf.len()));
            self.release = Release::Hold;
        }
    }

    /// The buffered bytes of the head being read (for the log line of a refusal).
    pub(super) fn head_bytes(&self) -> &[u8] {
        &self.buf[..self.buf.len().min(512)]
    }

    /// Read and check the next head, within `wait`. On [`HeadRead::Ready`] the connection
    /// releases that request to its reader.
    pub(super) async fn read_head(
        &mut self,
        limits: &head::Limits,
        wait: Wait,
        stopping: &Stopping,
    ) -> HeadRead {
        self.scanner = Scanner::default();
        let mut idle = wait.idle.filter(|_| self.buf.is_empty());
        self.timer.set(idle.unwrap_or(wait.head));
        loop {
            match self.scanner.scan(&self.buf, limits) {
                Scan::Complete(len) => {
                    return match self.recent.check(&self.buf[..len], limits) {
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
            // Shutting down closes a connection idle between requests; a fresh one still gets
            // its first request served (its client has just connected and is sending it).
            let between_requests = idle.is_some();
            if stopping.is_set() && self.buf.is_empty() && between_requests {
                return HeadRead::Closed("shutting down");
            }
            let room = (limits.section + 1).saturating_sub(self.buf.len()).max(1);
            let max = room.min(HEAD_READ);
            let empty = self.buf.is_empty();
            // Read into the buffer's spare room: no zeroed chunk to fill and copy on every head.
            self.buf.reserve(HEAD_ROOM);
            let mut spare = (&mut self.buf).limit(max);
            // The read first: a head already sent (pipelined, or arrived) is read without
            // waiting on the timer.
            let read = tokio::select! {
                biased;
                read = self.inner.read_buf(&mut spare) => read,
                () = self.timer.expired() => {
                    return if idle.is_some() || empty {
                        HeadRead::Closed("idle too long")
                    } else {
                        HeadRead::TimedOut
                    };
                }
                () = stopping.wait(), if empty && between_requests => {
                    return HeadRead::Closed("shutting down");
                }
            };
            match read {
                Ok(0) => self.eof = true,
                Ok(_) => {
                    if idle.take().is_some() {
                        self.timer.set(wait.head);
                    }
                }
                Err(_) => return HeadRead::Closed("read error"),
            }
        }
    }

    /// Approve what the current request's framing allows of the buffered bytes.
    pub(super) fn approve(&mut self) {
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
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if matches!(self.release, Release::Hold) {
            self.poll_fill_by::<IDLE_READ>(cx)
        } else {
            self.poll_fill_by::<BODY_READ>(cx)
        }
    }

    /// [`Conn::poll_fill`], at most `N` bytes.
    fn poll_fill_by<const N: usize>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut chunk = [0u8; N];
        let mut read = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
        self.buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    }

    /// After a refusal: read and drop what the client still sends, for a moment, so closing
    /// does not reset the connection under the answer.
    pub(super) async fn linger(&mut self) {
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
