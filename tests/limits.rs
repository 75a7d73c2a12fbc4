//! Hardening against hostile clients, over real sockets against the real binary, with short
//! limits in the test config: timers (idle, whole head, body, send), sizes (414, 431, 413),
//! connection and in-flight counts, strict HTTP/1.1 parsing, pipelining, and that every
//! refusal is answered with the security headers, logged and counted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::common::*;

fn route_all(up: &SocketAddr) -> String {
    format!(
        "{}[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"u\"\n",
        upstream_toml("u", &[up])
    )
}

/// The binary in front of `up`, every path routed there, with `limits` in `[limits]`.
fn start(up: &SocketAddr, limits: &str) -> LoggedBinary {
    LoggedBinary::start(&format!("{}[limits]\n{limits}\n", route_all(up)), "")
}

/// An upstream that answers `METHOD target body` (so tests can see what reached it).
fn echo() -> Upstream {
    Upstream::start(|req| {
        Reply::ok(format!(
            "{} {} {}",
            req.method,
            req.target,
            String::from_utf8_lossy(&req.body)
        ))
    })
}

/// A listener that accepts connections and counts the bytes it receives, answering nothing:
/// proof that a request never reached the upstream.
struct Silent {
    addr: SocketAddr,
    bytes: Arc<AtomicUsize>,
}

impl Silent {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let bytes = Arc::new(AtomicUsize::new(0));
        let counted = bytes.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let counted = counted.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        counted.fetch_add(n, Ordering::SeqCst);
                    }
                });
            }
        });
        Self { addr, bytes }
    }
}

fn rejections(r: &LoggedBinary, reason: &str) -> f64 {
    sample(
        &r.metrics(),
        &format!("rampart_rejections_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

/// A refusal Rampart wrote itself: the status, problem+json naming the request id, the
/// security headers, and the connection closed after it.
fn assert_refused(resp: &Response, status: u16) {
    assert_eq!(resp.status, status, "{}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(resp.json()["status"], status);
    assert_eq!(
        resp.json()["request_id"].as_str(),
        resp.header("x-request-id")
    );
    assert_eq!(resp.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(resp.header("connection"), Some("close"));
}

#[test]
fn idle_keep_alive_connections_are_closed_at_the_keepalive_timeout() {
    let up = echo();
    let r = start(
        &up.addr,
        "keepalive_timeout = \"1s\"\nheader_timeout = \"20s\"",
    );
    let mut conn = HttpConn::connect(r.addr).expect("connect");
    conn.send("GET", "/a", &[], None, false).expect("send");
    assert_eq!(conn.read_response(false).expect("response").status, 200);
    let waited = conn
        .closed_within(Duration::from_secs(10))
        .expect("the idle connection was closed");
    assert!(
        waited >= Duration::from_millis(700),
        "closed before the keepalive timeout: {waited:?}"
    );
    assert!(conn.buffered().is_empty(), "closed without a word");
}

/// SIGTERM closes a keep-alive connection waiting for its next request, without a word,
/// long before its idle timer or the grace period would end.
#[test]
fn idle_keep_alive_connections_are_closed_when_shutting_down() {
    let up = echo();
    let r = LoggedBinary::start(
        &format!(
            "{}[limits]\nkeepalive_timeout = \"60s\"\n",
            route_all(&up.addr)
        ),
        "grace_period = \"30s\"",
    );
    let mut conn = HttpConn::connect(r.addr).expect("connect");
    conn.send("GET", "/a", &[], None, false).expect("send");
    assert_eq!(conn.read_response(false).expect("response").status, 200);
    r.begin_shutdown();
    conn.closed_within(Duration::from_secs(10))
        .expect("the idle connection was closed at shutdown");
    assert!(conn.buffered().is_empty(), "closed without a word");
}

#[test]
fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let up = echo();
    let r = start(
        &up.addr,
        "header_timeout = \"1s\"\nkeepalive_timeout = \"20s\"",
    );
    let mut conn = HttpConn::connect(r.addr).expect("connect");
    let waited = conn.closed_within(Duration::from_secs(10)).expect("closed");
    assert!(waited >= Duration::from_millis(700), "{waited:?}");
    assert!(conn.buffered().is_empty());
}

/// The head timer runs over the whole head: a half head on a reused connection gets 408 at
/// the header timeout, though the keep-alive timer is shorter, and a trickled one is cut too.
#[test]
fn half_and_trickled_heads_get_408_at_the_header_timeout() {
    let up = echo();
    let r = start(
        &up.addr,
        "keepalive_timeout = \"1s\"\nheader_timeout = \"3s\"",
    );
    let mut conn = HttpConn::connect(r.addr).expect("connect");
    conn.send("GET", "/first", &[], None, false).expect("send");
    assert_eq!(conn.read_response(false).expect("first").status, 200);
    let started = Instant::now();
    conn.write_all(b"GET /second HTTP/1.1\r\nHost: a\r\n")
        .expect("half a head");
    let resp = conn.read_response(false).expect("408");
    assert_refused(&resp, 408);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "the header timer, not the idle one: {took:?}"
    );

    // One byte every 200 ms never completes the head: cut at the same timer.
    let mut slow = TcpStream::connect(r.addr).expect("connect");
    slow.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let started = Instant::now();
    let mut got = Vec::new();
    for b in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: "
        .iter()
        .chain([b'a'; 200].iter())
    {
        if slow.write_all(&[*b]).is_err() {
            break;
        }
        let mut buf = [0u8; 4096];
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if got.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "never cut");
    }
    assert!(
        got.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(up.count(), 1, "only the first request reached the upstream");
    eventually("both counted", || rejections(&r, "header_timeout") == 2.0);
}

/// 40 slowloris connections trickle their heads while a client keeps being served; each of
/// them is closed at the header timeout.
#[test]
fn slowloris_connections_are_closed_while_legitimate_requests_are_served() {
    let up = echo();
    let r = start(&up.addr, "header_timeout = \"2s\"");
    let addr = r.addr;
    let loris: Vec<_> = (0..40)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("timeout");
                let started = Instant::now();
                let mut got = Vec::new();
                let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ";
                for b in head.iter().chain([b'a'; 500].iter()) {
                    if s.write_all(&[*b]).is_err() {
                        break;
                    }
                    let mut buf = [0u8; 4096];
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => break,
                    }
                    if started.elapsed() > Duration::from_secs(20) {
                        break;
                    }
                }
                (started.elapsed(), got)
            })
        })
        .collect();
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let resp = get(r.addr, "/legit");
        assert_eq!(resp.status, 200);
        served += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        served >= 10,
        "legitimate requests kept being served: {served}"
    );
    for l in loris {
        let (took, got) = l.join().expect("loris thread");
        assert!(
            took < Duration::from_secs(15),
            "a slowloris connection stayed open"
        );
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    eventually("cut ones counted", || {
        rejections(&r, "header_timeout") >= 40.0
    });
}

/// A declared body over the limit is refused before anything goes upstream: the upstream
/// never receives a byte, and the client never has to send its body.
#[test]
fn a_declared_body_over_the_limit_is_413_before_the_upstream_sees_a_byte() {
    let silent = Silent::start();
    let body = format!(
        "{}[[routes]]\nname = \"small\"\nprefix = \"/small/\"\nupstream = \"u\"\nmax_body_size = \"1k\"\n",
        route_all(&silent.addr)
    );
    let r = LoggedBinary::start(&body, "");
    for (path, length) in [("/big", 2 * 1024 * 1024 + 1), ("/small/x", 1025)] {
        let mut conn = HttpConn::connect(r.addr).expect("connect");
        conn.write_all(
            format!("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\n\r\n")
                .as_bytes(),
        )
        .expect("head only");
        assert_refused(&conn.read_response(false).expect("413"), 413);
    }
    // Within the limits a body is proxied as before.
    let up = echo();
    let ok = LoggedBinary::start(
        &format!(
            "{}[[routes]]\nname = \"small\"\nprefix = \"/small/\"\nupstream = \"u\"\nmax_body_size = \"1k\"\n",
            route_all(&up.addr)
        ),
        "",
    );
    let fits = vec![b'x'; 1024];
    let resp = request(ok.addr, "POST", "/small/x", &[], Some(&fits));
    assert_eq!(resp.status, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        silent.bytes.load(Ordering::SeqCst),
        0,
        "the upstream saw bytes"
    );
    eventually("counted", || rejections(&r, "body_too_large") == 2.0);
}

/// A chunked body has no declared length: it is cut with 413 as it grows past the limit, and
/// the upstream never receives a complete request.
#[test]
fn a_streamed_body_past_the_limit_is_cut_with_413() {
    let up = echo();
    let body = format!(
        "{}[[routes]]\nname = \"small\"\nprefix = \"/small/\"\nupstream = \"u\"\nmax_body_size = \"4k\"\n",
        route_all(&up.addr)
    );
    let r = LoggedBinary::start(&body, "");
    let chunk = [b'c'; 1024];
    let chunks: Vec<&[u8]> = (0..10).map(|_| &chunk[..]).collect();
    let resp = request_chunked(r.addr, "POST", "/small/upload", &[], &chunks);
    assert_refused(&resp, 413);
    let fits = request_chunked(r.addr, "POST", "/small/upload", &[], &chunks[..4]);
    assert_eq!(fits.status, 200);
    assert_eq!(
        up.count(),
        1,
        "only the body within the limit arrived whole"
    );
}

#[test]
fn oversized_heads_are_414_and_431_and_long_methods_501() {
    let silent = Silent::start();
    let r = LoggedBinary::start(&route_all(&silent.addr), "");
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(16 * 1024));
    assert_refused(&send_raw(r.addr, long_target.as_bytes()).expect("414"), 414);
    let long_field = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "v".repeat(64 * 1024)
    );
    assert_refused(&send_raw(r.addr, long_field.as_bytes()).expect("431"), 431);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_refused(&send_raw(r.addr, many.as_bytes()).expect("431"), 431);
    let mut large = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..6 {
        large.push_str(&format!("X-{i}: {}\r\n", "v".repeat(7000)));
    }
    large.push_str("\r\n");
    assert_refused(&send_raw(r.addr, large.as_bytes()).expect("431"), 431);
    let long_method = format!("{} / HTTP/1.1\r\nHost: a\r\n\r\n", "A".repeat(70 * 1024));
    assert_refused(&send_raw(r.addr, long_method.as_bytes()).expect("501"), 501);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        silent.bytes.load(Ordering::SeqCst),
        0,
        "the upstream saw bytes"
    );
    let text = r.metrics();
    for (reason, n) in [
        ("request_line_too_long", 1.0),
        ("header_too_large", 2.0),
        ("too_many_headers", 1.0),
        ("method_too_long", 1.0),
    ] {
        let series = format!("rampart_rejections_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&text, &series), Some(n), "{reason}: {text}");
    }
    assert_eq!(
        sample(
            &text,
            "http_requests_total{method=\"GET\",route=\"(unmatched)\",status=\"431\"}"
        ),
        Some(3.0),
        "{text}"
    );
}

/// Each rule of RFC 9112 that says reject, answered by Rampart with its own 4xx/5xx; none of
/// these requests reaches the upstream, and the ones the rules allow do.
#[test]
fn requests_the_rfc_says_to_reject_never_reach_the_upstream() {
    let up = echo();
    let r = LoggedBinary::start(&route_all(&up.addr), "");
    let refused: [(&str, &str, u16); 17] = [
        ("no Host", "GET / HTTP/1.1\r\n\r\n", 400),
        ("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("two equal Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
        ("Host with a path", "GET / HTTP/1.1\r\nHost: a/../x\r\n\r\n", 400),
        ("Host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),
        ("Host with a space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (
            "absolute target for another host",
            "GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
        ),
        ("method not a token", "G{T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (
            "repeated equal Content-Length",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            400,
        ),
        (
            "conflicting Content-Length",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        ),
        (
            "Content-Length list",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
            400,
        ),
        (
            "final coding not chunked",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            400,
        ),
        (
            "chunked twice",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "unknown coding before chunked",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        ("CONNECT", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
        ("TRACE", "TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", 405),
    ];
    for (what, raw, status) in refused {
        let resp = send_raw(r.addr, raw.as_bytes()).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(resp.status, status, "{what}");
        assert_refused(&resp, status);
    }
    assert_eq!(up.count(), 0, "a refused request reached the upstream");
    let allowed = [
        "GET /a HTTP/1.0\r\n\r\n",
        "GET http://a/b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "GET /c HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n",
    ];
    for raw in allowed {
        let resp = send_raw(r.addr, raw.as_bytes()).expect("answered");
        assert!(
            resp.status < 500 && resp.status != 400,
            "{raw:?}: {}",
            resp.status
        );
    }
    assert!(up.count() >= 3, "allowed requests reach the upstream");
    // The refusal's log line is written before its access log line.
    let log = r.wait_for_log("error=bad_host");
    assert!(log.contains("refused 400 bad_host from 127.0.0.1"), "{log}");
}

/// Pipelined requests are answered in order, each once; a refused one ends the pipeline
/// after the answers before it.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let up = echo();
    let r = LoggedBinary::start(&route_all(&up.addr), "");
    let mut conn = HttpConn::connect(r.addr).expect("connect");
    conn.write_all(
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
          POST /three HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /four HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .expect("pipeline");
    for expected in [
        "GET /one ",
        "POST /two hello",
        "POST /three abc",
        "GET /four ",
    ] {
        let resp = conn.read_response(false).expect("a response per request");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), expected);
    }
    // A bad request behind a good one: the good one is answered, then the refusal.
    let mut conn = HttpConn::connect(r.addr).expect("connect");
    conn.write_all(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\nGET /bad HTTP/1.1\r\n\r\nGET /never HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("pipeline");
    assert_eq!(conn.read_response(false).expect("first").text(), "GET /ok ");
    assert_refused(&conn.read_response(false).expect("second"), 400);
    assert!(conn.closed_within(Duration::from_secs(5)).is_some());
    assert!(up.requests().iter().all(|q| q.target != "/never"));
    // Logged after the response went out: wait for the last one, written after the others.
    let log = r.wait_for_log("\"GET /ok\"");
    assert_eq!(
        log.matches("\"GET /one\"").count(),
        1,
        "one access log line each: {log}"
    );
    assert_eq!(log.matches("\"GET /four\"").count(), 1, "{log}");
}

#[test]
fn a_connection_serves_at_most_max_requests_per_connection() {
    let up = echo();
    let r = start(&up.addr, "max_requests_per_connection = 3");
    let mut conn = HttpConn::connect(r.addr).expect("connect");
    for i in 1..=3 {
        conn.send("GET", &format!("/{i}"), &[], None, false)
            .expect("send");
        let resp = conn.read_response(false).expect("response");
        assert_eq!(resp.status, 200);
        let close = resp.header("connection") == Some("close");
        assert_eq!(close, i == 3, "request {i}");
    }
    assert!(conn.closed_within(Duration::from_secs(5)).is_some());
}

/// Over `max_connections` a connection is closed unanswered; over the per-address limit it
/// is answered 503 with Retry-After; connections from a trusted proxy are not counted per
/// address; a freed slot is usable again.
#[test]
fn connection_counts_are_limited_overall_and_per_client() {
    let up = echo();
    let r = start(
        &up.addr,
        "max_connections = 60\nmax_connections_per_client = 20\nheader_timeout = \"30s\"",
    );
    let mut held: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(r.addr).expect("connect"))
        .collect();
    eventually("20 open", || {
        sample(&r.metrics(), "rampart_connections_open") == Some(20.0)
    });
    let resp = send_raw(r.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").expect("answered");
    assert_refused(&resp, 503);
    assert_eq!(resp.header("retry-after"), Some("1"));
    held.pop();
    eventually("a slot is free again", || {
        send_raw(
            r.addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .is_ok_and(|r| r.status == 200)
    });
    drop(held);

    // Behind a trusted proxy every client shares its address: only the overall limit holds.
    let proxied = LoggedBinary::start(
        &format!("{}[limits]\nmax_connections = 60\nmax_connections_per_client = 20\nheader_timeout = \"30s\"\n", route_all(&up.addr)),
        "trusted_proxies = [\"127.0.0.1\"]",
    );
    // The start-up probe's connection (LoggedBinary::start) must be gone first: while it is
    // still counted, the 60th held connection is the one over the limit (seen once in a loaded
    // CI run). None open, twice 250 ms apart: it was accepted and has closed.
    eventually("the start-up probe's connection closed", || {
        let none = || sample(&proxied.metrics(), "rampart_connections_open") == Some(0.0);
        none() && {
            std::thread::sleep(Duration::from_millis(250));
            none()
        }
    });
    let held: Vec<TcpStream> = (0..60)
        .map(|_| TcpStream::connect(proxied.addr).expect("connect"))
        .collect();
    eventually("60 open", || {
        sample(&proxied.metrics(), "rampart_connections_open") == Some(60.0)
    });
    let mut over = HttpConn::connect(proxied.addr).expect("connect");
    let _ = over.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(
        over.closed_within(Duration::from_secs(5)).is_some(),
        "closed"
    );
    assert!(over.buffered().is_empty(), "unanswered");
    eventually("counted", || rejections(&proxied, "connections") >= 1.0);
    drop(held);
    eventually("served again", || {
        send_raw(
            proxied.addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .is_ok_and(|r| r.status == 200)
    });
}

/// Requests in flight: per client, then per upstream group; the one over the limit gets 503
/// with Retry-After while the others are served.
#[test]
fn requests_in_flight_are_limited_per_client_and_per_upstream() {
    let up = Upstream::start(|_| Reply::ok("slow").delay(Duration::from_millis(1500)));
    let concurrent = |addr: SocketAddr, n: usize| -> Vec<Response> {
        let barrier = Arc::new(Barrier::new(n));
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    std::thread::sleep(Duration::from_millis(100 * i as u64));
                    get(addr, "/x")
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("client"))
            .collect()
    };
    let per_client = start(&up.addr, "max_inflight_per_client = 2");
    let answers = concurrent(per_client.addr, 3);
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    let refused = answers.iter().find(|r| r.status == 503).expect("one 503");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(
        refused.json()["detail"],
        "too many requests of this client in flight"
    );
    eventually("counted", || {
        rejections(&per_client, "client_inflight") == 1.0
    });

    let group = LoggedBinary::start(
        &format!(
            "[upstreams.u]\naddrs = [\"{}\"]\nmax_inflight = 1\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"u\"\n",
            up.addr
        ),
        "",
    );
    let answers = concurrent(group.addr, 2);
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert!(
        statuses.contains(&200) && statuses.contains(&503),
        "{statuses:?}"
    );
    let refused = answers.iter().find(|r| r.status == 503).expect("one 503");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.header("x-frame-options"), Some("SAMEORIGIN"));
    eventually("counted", || rejections(&group, "upstream_inflight") == 1.0);
}

/// A client that stalls its body is the client's fault: 408 and a body_timeout rejection,
/// never an upstream timeout, whichever timer fires first.
#[test]
fn a_client_stalling_its_body_gets_408_not_an_upstream_timeout() {
    let up = echo();
    let head = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789";
    // The body timer fires first.
    let r = start(&up.addr, "body_timeout = \"1s\"");
    let mut conn = HttpConn::connect(r.addr).expect("connect");
    conn.write_all(head).expect("part of the body");
    assert_eq!(conn.read_response(false).expect("408").status, 408);
    // The upstream gives up first, waiting for a body that never came.
    let r2 = LoggedBinary::start(
        &format!(
            "[upstreams.u]\naddrs = [\"{}\"]\nread_timeout = \"1s\"\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"u\"\n",
            up.addr
        ),
        "",
    );
    let mut conn = HttpConn::connect(r2.addr).expect("connect");
    conn.write_all(head).expect("part of the body");
    assert_eq!(conn.read_response(false).expect("408").status, 408);
    for r in [&r, &r2] {
        eventually("a body timeout", || rejections(r, "body_timeout") == 1.0);
        let text = r.metrics();
        assert!(
            !text.contains("kind=\"timeout\""),
            "no upstream timeout: {text}"
        );
        assert!(
            sample(
                &text,
                "http_requests_total{method=\"POST\",route=\"all\",status=\"408\"}"
            ) == Some(1.0),
            "{text}"
        );
    }
}

/// An upstream that breaks its response mid-body is an upstream error, though the client
/// already saw a 200 header.
#[test]
fn an_upstream_reset_mid_body_is_an_upstream_error() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789");
            // dropped: the connection closes 990 bytes short
        }
    });
    let r = LoggedBinary::start(&route_all(&addr), "");
    let mut conn = HttpConn::connect(r.addr).expect("connect");
    conn.send("GET", "/report", &[], None, true).expect("send");
    let head = conn.read_head().expect("head");
    assert_eq!(head.status, 200);
    assert!(conn.closed_within(Duration::from_secs(10)).is_some());
    eventually("an upstream error", || {
        sample(
            &r.metrics(),
            "rampart_upstream_errors_total{kind=\"broken\",upstream=\"u\"}",
        ) == Some(1.0)
    });
    r.wait_for_log("error=broken");
}

/// A client that stops reading a large response is cut after the send timeout.
#[test]
fn a_client_that_stops_reading_is_cut_after_the_send_timeout() {
    let big = vec![b'z'; 32 * 1024 * 1024];
    let up = Upstream::start(move |_| Reply::ok(big.clone()));
    let r = start(&up.addr, "send_timeout = \"1s\"");
    let mut conn = TcpStream::connect(r.addr).expect("connect");
    conn.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("send");
    eventually("cut for the send timeout", || {
        rejections(&r, "send_timeout") == 1.0
    });
    drop(conn);
    r.wait_for_log("refused 200 send_timeout");
}

/// SIGTERM: requests still running when the grace period ends are logged as cut.
#[test]
fn requests_cut_by_the_end_of_the_grace_period_are_logged() {
    let up = Upstream::start(|_| Reply::ok("late").delay(Duration::from_secs(8)));
    let mut r = LoggedBinary::start(&route_all(&up.addr), "grace_period = \"1s\"");
    let addr = r.addr;
    let client = std::thread::spawn(move || try_request(addr, "GET", "/slow-report", &[], None));
    eventually("the upstream has the request", || up.count() == 1);
    r.terminate();
    let log = r.log();
    assert!(
        log.contains("request cut before it finished: \"GET /slow-report\""),
        "{log}"
    );
    let _ = client.join();
}

/// config/proxy.toml shows every `[limits]` key with its default.
#[test]
fn the_shipped_config_shows_every_limit_default() {
    let text = std::fs::read_to_string("config/proxy.toml").expect("config/proxy.toml");
    let config = rampart::config::parse("proxy.toml", &text, &Default::default()).expect("valid");
    assert_eq!(config.limits, rampart::limits::Config::default());
    assert!(text.contains("[limits]"));
}
