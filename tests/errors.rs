//! Errors: 404/502/504 as problem+json naming the request id; malformed input gets 4xx and
//! the proxy keeps serving.

use std::time::{Duration, Instant};

use crate::common::*;

fn assert_problem(resp: &Response, status: u16) {
    assert_eq!(resp.status, status, "{}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json")
    );
    let body = resp.json();
    assert_eq!(body["status"], status);
    assert!(body["title"].is_string());
    assert!(body["detail"].is_string());
    assert_eq!(
        body["request_id"].as_str(),
        resp.header("x-request-id"),
        "the body names the request id"
    );
    assert_eq!(resp.header("x-frame-options"), Some("SAMEORIGIN"));
}

#[test]
fn no_route_is_404() {
    let up = Upstream::named("ok");
    let r = Rampart::start(&format!(
        "{}[[routes]]\nname = \"api\"\nprefix = \"/api/\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&up.addr])
    ));
    assert_problem(&r.get("/"), 404);
    assert_problem(&r.get("/ap"), 404);
    let head = r.request("HEAD", "/nope", &[], None);
    assert_eq!(head.status, 404);
    assert!(head.body.is_empty());
    assert_eq!(up.count(), 0);
}

#[test]
fn refused_upstream_is_502() {
    let dead = free_port();
    let r = Rampart::start(&format!(
        "[upstreams.u]\naddrs = [\"127.0.0.1:{dead}\"]\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"u\"\n"
    ));
    assert_problem(&r.get("/api/v1/dashboard/kpis"), 502);
    assert_problem(&r.request("POST", "/api", &[], Some(b"{}")), 502);
}

#[test]
fn slow_upstream_is_504_within_the_read_timeout() {
    let up = Upstream::start(|_| Reply::ok("late").delay(Duration::from_secs(3)));
    let r = Rampart::start(&format!(
        "[upstreams.u]\naddrs = [\"{}\"]\nread_timeout = \"300ms\"\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"u\"\n",
        up.addr
    ));
    let started = Instant::now();
    let resp = r.get("/slow");
    assert_problem(&resp, 504);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered before the upstream"
    );
}

#[test]
fn malformed_requests_get_4xx_and_the_proxy_keeps_serving() {
    let up = Upstream::named("ok");
    let r = Rampart::start(&format!(
        "{}[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&up.addr])
    ));
    let garbage: [&[u8]; 3] = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
    ];
    for raw in garbage {
        if let Ok(resp) = send_raw(r.addr, raw) {
            assert!(
                (400..500).contains(&resp.status),
                "{:?} -> {}",
                String::from_utf8_lossy(raw),
                resp.status
            );
        } // a closed connection is an acceptable answer to garbage too
    }
    // The request-smuggling shape: Transfer-Encoding wins, the length never reaches the
    // upstream, and the connection is not reused (RFC 9112 section 6.1).
    let smuggle = b"POST /te HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let resp = send_raw(r.addr, smuggle).expect("answered");
    assert_eq!(resp.header("connection"), Some("close"));
    let seen = up.last();
    assert_eq!(seen.target, "/te");
    assert_eq!(seen.header("content-length"), None);
    assert!(seen.body.is_empty());
    assert!(up.requests().iter().all(|q| q.target != "/smuggled"));
    assert_problem(&r.get("/api/../admin"), 400);
    assert_problem(&r.get("/api/%2e%2e/admin"), 400);
    assert_eq!(r.get("/still-alive").status, 200);
}

/// `GET /slow` to a 3 s upstream, closed by the client once the upstream has the request.
fn abandon_slow_request(addr: std::net::SocketAddr, up: &Upstream) {
    let before = up.count();
    let mut conn = HttpConn::connect(addr).expect("connect");
    conn.send("GET", "/slow", &[], None, false).expect("send");
    eventually("the upstream has the request", || up.count() > before);
    drop(conn);
}

fn series(admin: std::net::SocketAddr, name: &str) -> Option<f64> {
    sample(&get(admin, "/metrics").text(), name)
}

const GONE_499: &str = "http_requests_total{method=\"GET\",route=\"all\",status=\"499\"}";

#[test]
fn a_client_that_goes_away_counts_as_499() {
    let up = Upstream::start(|_| Reply::ok("late").delay(Duration::from_secs(3)));
    let r = Rampart::start(&format!(
        "{}[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&up.addr])
    ));
    abandon_slow_request(r.addr, &up);
    eventually("499 counted", || series(r.admin, GONE_499) == Some(1.0));
    let text = r.admin_get("/metrics").text();
    assert!(!text.contains("status=\"0\""), "{text}");
    let healthy = format!(
        "rampart_upstream_healthy{{addr=\"{}\",upstream=\"u\"}}",
        up.addr
    );
    assert_eq!(
        series(r.admin, &healthy),
        Some(1.0),
        "a client leaving is no upstream failure"
    );
}

/// The real binary at RUST_LOG=warn: a client that leaves, waiting for its response, while
/// sending its request or while a cache hit is written to it, writes nothing; an upstream that
/// refuses connections still gets its ERROR line (the marker that the log is flushed).
#[test]
fn a_client_that_goes_away_is_not_logged_at_warn() {
    // A cached body larger than the loopback socket buffers, so writing it to a client that
    // stopped reading is still under way when the client leaves.
    const BIG: usize = 16 << 20;
    let up = Upstream::start(|req| {
        if req.target == "/big" {
            Reply::ok(vec![b'x'; BIG]).header("Cache-Control", "max-age=60")
        } else {
            Reply::ok("late").delay(Duration::from_secs(3))
        }
    });
    let dead = free_port();
    let p = RampartProcess::start(
        &format!(
            "{}[upstreams.dead]\naddrs = [\"127.0.0.1:{dead}\"]\nhealth_check_interval = \"1h\"\nmax_fails = 0\n\
             [[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"u\"\n\
             [[routes]]\nname = \"dead\"\nprefix = \"/dead\"\nupstream = \"dead\"\n\
             [[routes]]\nname = \"big\"\nprefix = \"/big\"\nupstream = \"u\"\ncache = \"c\"\n\
             [cache.policies.c]\nmax_body_bytes = {}\n",
            upstream_toml("u", &[&up.addr]),
            2 * BIG
        ),
        "warn",
    );
    // One that leaves while a cache hit is written to it (Pingora logs that outside any hook).
    let stored = p.get("/big");
    assert_eq!((stored.status, stored.body.len()), (200, BIG));
    let mut reader = HttpConn::connect(p.addr).expect("connect");
    reader.send("GET", "/big", &[], None, false).expect("send");
    let hit = reader.read_head().expect("hit head");
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    drop(reader);
    // Its header was sent, so it counts as a 200 (as nginx counts it) once Pingora is done.
    eventually("the abandoned hit is done", || {
        series(
            p.admin,
            "http_requests_total{method=\"GET\",route=\"big\",status=\"200\"}",
        ) == Some(2.0)
    });
    // A client that leaves halfway through its request head (no hook of Pingora's sees it).
    let mut half = HttpConn::connect(p.addr).expect("connect");
    half.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n")
        .expect("send");
    std::thread::sleep(Duration::from_millis(100));
    drop(half);
    // One that leaves while its response is awaited.
    abandon_slow_request(p.addr, &up);
    eventually("499 counted", || series(p.admin, GONE_499) == Some(1.0));
    assert_eq!(p.get("/dead").status, 502);
    eventually("the 502 is logged", || {
        p.stderr().contains("ConnectRefused")
    });
    let log = p.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "only the 502's line: {log}");
    assert!(lines[0].contains(" ERROR "), "{log}");
    assert!(lines[0].contains("/dead"), "{log}");
}
