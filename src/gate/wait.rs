//! What the gate keeps per connection while it reads a head: the refusal it will answer, the
//! request line it scanned, the timers it waits under.

use std::net::IpAddr;

use pingora::protocols::Stream;

use crate::limits::head;
use crate::limits::{self, Reason};

/// A refusal decided by the gate.
pub(super) struct Refused {
    pub(super) status: u16,
    pub(super) reason: Reason,
    pub(super) detail: &'static str,
}

impl Refused {
    pub(super) fn new(status: u16, reason: Reason, detail: &'static str) -> Self {
        Self {
            status,
            reason,
            detail,
        }
    }
}

/// What can be logged of a refused head: its method and target, printable and short.
pub(super) struct RequestLine {
    pub(super) method: String,
    pub(super) target: String,
}

impl RequestLine {
    pub(super) fn of(head: &[u8]) -> Self {
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

pub(super) fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    let ip = digest.peer_addr()?.as_inet()?.ip();
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    })
}

/// How long the gate waits for a head.
#[derive(Debug, Clone, Copy)]
pub(super) struct Wait {
    /// Until the first byte of the head (`None`: the head timer runs from the start).
    pub(super) idle: Option<std::time::Duration>,
    /// For the whole head, from its first byte (or the start, without `idle`).
    pub(super) head: std::time::Duration,
}

impl Wait {
    /// A new connection: the whole head within the header timeout of the accept
    /// (nginx's `client_header_timeout` runs from the accept too).
    pub(super) fn first(l: &limits::Config) -> Self {
        Self {
            idle: None,
            head: l.header_timeout.0,
        }
    }

    /// Between requests: the keep-alive timeout until the next head starts, then the header
    /// timeout for the rest of it.
    pub(super) fn idle(l: &limits::Config) -> Self {
        Self {
            idle: Some(l.keepalive_timeout.0),
            head: l.header_timeout.0,
        }
    }
}

/// How the gate's wait for a head ended.
pub(super) enum HeadRead {
    /// A checked head is buffered; the connection releases it to Pingora.
    Ready,
    Refused(head::Rejection),
    /// Part of a head came, not all of it, within the header timeout.
    TimedOut,
    /// Nothing more to do: closed by the client, idle too long, or shutting down.
    Closed(&'static str),
}
