//! HTTP semantics at the edge, against real origins: pooled upstream connections the origin
//! closes (idle keep-alive timeouts, the close racing a new request, `Keep-Alive: timeout=`),
//! `Connection: close` when Rampart closes, hop-by-hop fields in both directions, and the
//! RFC 9111 cache rules (Age, Expires against a skewed Date, validators and 304s,
//! must-revalidate / no-cache, conditional requests, targeted fields, freshness without a
//! fallback ttl, any status with explicit freshness), with both stores; and no request waiting
//! on a revalidation under load.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::cache::{config, start, x_cache, Store, KPIS};
use crate::common::*;

const STORES: [Store; 2] = [Store::Redis, Store::Memory];

/// One route `all` on `/` to an upstream group at `addr`, with `extra` lines in the group.
fn proxy_to(addr: SocketAddr, extra: &str) -> Rampart {
    Rampart::start(&format!(
        "[upstreams.u]\naddrs = [\"{addr}\"]\n{extra}\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"u\"\n"
    ))
}

/// Accept connections on a loopback listener, each served by `serve` on its own thread.
fn origin(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
    let addr = listener.local_addr().expect("origin addr");
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let serve = serve.clone();
            std::thread::spawn(move || serve(stream));
        }
    });
    addr
}

fn write_ok(conn: &mut HttpConn, body: &str, extra: &str) -> std::io::Result<()> {
    conn.write_all(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

fn closes(req: &Recorded) -> bool {
    req.header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
}

/// Counts of what an origin saw.
#[derive(Default)]
struct Seen {
    /// Connections that carried at least one request (health checks carry none).
    connections: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
}

impl Seen {
    fn methods(&self) -> Vec<String> {
        let requests = self.requests.lock().expect("lock");
        requests.iter().map(|r| r.method.clone()).collect()
    }
}

/// An origin that closes keep-alive connections idle for `idle`, as uvicorn does after 5 s,
/// announcing `Keep-Alive: timeout=N` when `announce` is set.
fn idle_closing_origin(idle: Duration, announce: Option<u64>) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let addr = origin(move |stream| {
        let _ = stream.set_read_timeout(Some(idle));
        let mut conn = HttpConn::new(stream);
        let mut first = true;
        // A read that times out is the idle timeout: the connection is dropped (closed).
        while let Ok(Some(req)) = conn.read_request() {
            if std::mem::take(&mut first) {
                s.connections.fetch_add(1, Ordering::SeqCst);
            }
            let close = closes(&req);
            s.requests.lock().expect("lock").push(req);
            let ka = announce.map_or(String::new(), |n| format!("keep-alive: timeout={n}\r\n"));
            if write_ok(&mut conn, "ok", &ka).is_err() || close {
                return;
            }
        }
    });
    (addr, seen)
}

/// How a racing origin drops a pooled connection.
#[derive(Clone, Copy, Debug)]
enum Dropped {
    /// Reads the request, then closes without a byte of response.
    Eof,
    /// Closes with the request unread: the kernel answers with a reset.
    Reset,
}

/// An origin that answers the first request of each connection and drops the connection on
/// the second: the server's idle close racing Rampart's reuse, every time.
fn racing_origin(how: Dropped) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let addr = origin(move |stream| {
        let raw = stream.try_clone().expect("clone");
        let mut conn = HttpConn::new(stream);
        let Ok(Some(req)) = conn.read_request() else {
            return;
        };
        s.connections.fetch_add(1, Ordering::SeqCst);
        let close = closes(&req);
        let body = format!("{} {}", req.method, req.body.len());
        s.requests.lock().expect("lock").push(req);
        if write_ok(&mut conn, &body, "").is_err() || close {
            return;
        }
        match how {
            Dropped::Eof => {
                if let Ok(Some(req)) = conn.read_request() {
                    s.requests.lock().expect("lock").push(req);
                }
                let _ = raw.shutdown(Shutdown::Both);
            }
            Dropped::Reset => {
                let _ = raw.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = raw.peek(&mut [0u8; 1]);
                // dropped with the request unread: RST
            }
        }
    });
    (addr, seen)
}

/// The counter line of `rampart_upstream_retries_total` for `reason`, or 0.
fn retries(r: &Rampart, reason: &str) -> u64 {
    let m = r.metrics();
    let prefix = format!("rampart_upstream_retries_total{{reason=\"{reason}\",upstream=\"u\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().expect("counter"))
}

// ---------------------------------------------------------------------------------------------
// Upstream connections

/// A dashboard polling every 2 s through an origin that closes idle connections after 1 s,
/// with the pool configured to keep them a minute: every request is answered.
#[test]
fn polling_through_an_origin_closing_idle_connections_never_fails() {
    let (addr, seen) = idle_closing_origin(Duration::from_secs(1), None);
    let r = proxy_to(addr, "idle_timeout = \"60s\"\nconnect_retries = 0");
    let mut statuses = Vec::new();
    for i in 0..10 {
        if i > 0 {
            std::thread::sleep(Duration::from_secs(2));
        }
        let resp = try_request(r.addr, "GET", "/api/v1/dashboard/kpis", &[], None);
        statuses.push(resp.map_or(0, |r| r.status));
    }
    assert_eq!(statuses, [200; 10], "0 errors in 10 polls");
    assert_eq!(
        seen.methods().len(),
        10,
        "each poll reached the origin once"
    );
}

/// The origin drops the pooled connection just as a request arrives (after reading it, or
/// with a reset): the request is sent again on a fresh connection to the same, only, address.
/// Not a POST the origin may have read: that is a 502, and it says `Connection: close`.
#[test]
fn a_closed_pooled_connection_is_retried_on_a_fresh_one() {
    for how in [Dropped::Eof, Dropped::Reset] {
        let (addr, seen) = racing_origin(how);
        let r = proxy_to(addr, "connect_retries = 0");
        for i in 0..6 {
            let resp = r.get("/poll");
            assert_eq!(
                (resp.status, resp.text().as_str()),
                (200, "GET 0"),
                "{how:?} GET {i}"
            );
        }
        // Every second GET met a dropped connection: three retries, each on its own connection.
        eventually("retries counted", || retries(&r, "closed") == 3);
        assert_eq!(
            seen.connections.load(Ordering::SeqCst),
            6,
            "{how:?}: a fresh one each"
        );
        // A GET leaves a pooled connection; the PUT that reuses it meets the drop.
        assert_eq!(r.get("/poll").status, 200);
        let put = r.request("PUT", "/item", &[], Some(b"abc"));
        assert_eq!(
            (put.status, put.text().as_str()),
            (200, "PUT 3"),
            "{how:?}: idempotent"
        );
        eventually("the PUT's retry counted", || retries(&r, "closed") == 4);
        if let Dropped::Eof = how {
            let get = r.get("/poll");
            assert_eq!(get.status, 200);
            // The next request reuses that connection, and the origin reads this POST.
            let post = r.request("POST", "/orders", &[], Some(b"{}"));
            assert_eq!(post.status, 502, "a POST the origin read is not sent twice");
            assert_eq!(post.header("connection"), Some("close"));
            let posts = seen.methods().iter().filter(|m| *m == "POST").count();
            assert_eq!(posts, 1, "never replayed");
        }
    }
}

/// `Keep-Alive: timeout=2` from the origin: pooled connections are dropped before 2 s even
/// though the group keeps them a minute, and the field never reaches the client.
#[test]
fn the_upstreams_keep_alive_timeout_is_learned() {
    let (addr, seen) = idle_closing_origin(Duration::from_secs(30), Some(2));
    let r = proxy_to(addr, "idle_timeout = \"60s\"");
    let first = r.get("/a");
    assert_eq!(first.status, 200);
    assert_eq!(first.header("keep-alive"), None, "hop-by-hop");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(r.get("/b").status, 200);
    assert_eq!(
        seen.connections.load(Ordering::SeqCst),
        1,
        "the first connection was pooled for the group's minute"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(r.get("/c").status, 200);
    assert_eq!(
        seen.connections.load(Ordering::SeqCst),
        2,
        "learned: idle connections are kept 1 s, under the origin's 2 s"
    );
}

/// Rampart closes the client connection after a 502 (the upstream hung up in the middle of its
/// response head): the 502 says `Connection: close` and the connection is closed. A response
/// that says `keep-alive` leaves the connection usable.
#[test]
fn connection_close_is_announced_when_rampart_closes() {
    let addr = origin(|stream| {
        let mut conn = HttpConn::new(stream);
        if let Ok(Some(req)) = conn.read_request() {
            if req.target.starts_with("/broken") {
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-le");
                return;
            }
            let _ = write_ok(&mut conn, "fine", "connection: close\r\n");
        }
    });
    let r = proxy_to(addr, "connect_retries = 0");
    let mut conn = HttpConn::connect(r.addr).expect("connect");
    conn.send("GET", "/broken", &[], None, false).expect("send");
    let resp = conn.read_response(false).expect("a 502");
    assert_eq!(resp.status, 502);
    assert_eq!(resp.header("connection"), Some("close"));
    let _ = conn.send("GET", "/fine", &[], None, false);
    assert!(
        conn.read_response(false).is_err(),
        "the connection was closed as announced"
    );

    let mut conn = HttpConn::connect(r.addr).expect("connect");
    for path in ["/fine", "/fine", "/nowhere/../x", "/fine"] {
        conn.send("GET", path, &[], None, false).expect("send");
        let resp = conn
            .read_response(false)
            .expect("response on the same connection");
        assert_eq!(resp.header("connection"), Some("keep-alive"), "{path}");
        assert!(
            resp.status == 200 || resp.status == 400,
            "{path}: {}",
            resp.status
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Hop-by-hop fields

/// `Connection: x-foo` and the standard hop-by-hop fields are removed in both directions, and
/// never stored: a hit does not carry them, nor does the stored header in Redis.
#[test]
fn hop_by_hop_fields_never_cross_and_are_never_stored() {
    for store in STORES {
        let up = Upstream::start(|_| {
            Reply::json(r#"{"ok":true}"#)
                .header("cache-control", "max-age=60")
                .header("connection", "x-bar")
                .header("x-bar", "upstream-connection-detail")
                .header("keep-alive", "timeout=30")
                .header("proxy-connection", "keep-alive")
                .header("trailer", "x-checksum")
                .header("upgrade", "foo/1")
                .header("x-end-to-end", "kept")
        });
        let (r, redis) = start(store, &up, "");
        let sent = [
            ("Connection", "x-foo, keep-alive"),
            ("X-Foo", "client-connection-detail"),
            ("Keep-Alive", "300"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Trailer", "x-sum"),
            ("Upgrade", "h2c"),
            ("X-End-To-End", "kept"),
        ];
        let miss = r.request("GET", KPIS, &sent, None);
        let seen = up.last();
        for name in [
            "x-foo",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
        ] {
            assert_eq!(
                seen.header(name),
                None,
                "{store:?}: {name} reached the origin"
            );
        }
        assert_ne!(seen.header("connection"), Some("x-foo, keep-alive"));
        assert_eq!(seen.header("x-end-to-end"), Some("kept"));
        let hit = r.request("GET", KPIS, &sent, None);
        assert_eq!(x_cache(&hit), "HIT", "{store:?}");
        for resp in [&miss, &hit] {
            for name in [
                "x-bar",
                "keep-alive",
                "proxy-connection",
                "trailer",
                "upgrade",
            ] {
                assert_eq!(
                    resp.header(name),
                    None,
                    "{store:?}: {name} reached the client"
                );
            }
            let connection = resp.header("connection");
            assert!(
                connection == Some("close") || connection == Some("keep-alive"),
                "Rampart's own: {connection:?}"
            );
            assert_eq!(resp.header("x-end-to-end"), Some("kept"));
        }
        if let Some(redis) = redis {
            let (_cursor, keys): (u64, Vec<String>) =
                redis.cmd(&["SCAN", "0", "MATCH", "rampart:cache:*", "COUNT", "1000"]);
            assert_eq!(keys.len(), 1);
            // The entry as stored: pingora's meta and (compressed) header fields.
            let fields: std::collections::HashMap<String, Vec<u8>> =
                redis.cmd(&["HGETALL", &keys[0]]);
            let field = |suffix: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k.ends_with(suffix))
                    .map(|(_, v)| v.clone())
                    .expect("entry field")
            };
            let meta = pingora::cache::CacheMeta::deserialize(&field(":m"), &field(":h"))
                .expect("a readable entry");
            assert!(meta.headers().get("x-end-to-end").is_some());
            for name in [
                "connection",
                "x-bar",
                "keep-alive",
                "proxy-connection",
                "trailer",
                "upgrade",
            ] {
                assert!(meta.headers().get(name).is_none(), "{name} stored");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 9111

fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// The upstream's `Age` counts: a hit reports it plus its time in the cache, and a response
/// older than its lifetime is stale on arrival. An invalid `Age` is ignored.
#[test]
fn the_upstreams_age_counts() {
    for store in STORES {
        let up = Upstream::start(|req| {
            let age = req.target.rsplit('=').next().unwrap_or("0").to_string();
            Reply::json("{}")
                .header("cache-control", "max-age=10")
                .header("age", &age)
        });
        let (r, _redis) = start(store, &up, "");
        let path = format!("{KPIS}?age=4");
        assert_eq!(r.get(&path).header("age"), Some("4"), "a miss forwards it");
        let hit = r.get(&path);
        assert_eq!(x_cache(&hit), "HIT", "{store:?}");
        let age: u64 = hit.header("age").expect("Age").parse().expect("number");
        assert!(
            (4..=6).contains(&age),
            "{store:?}: upstream age + resident time: {age}"
        );
        let ttl = hit.header("cache-status").expect("cache-status");
        assert!(
            ttl.contains("ttl=5") || ttl.contains("ttl=6") || ttl.contains("ttl=4"),
            "{store:?}: 10 s lifetime minus 4 s of age: {ttl}"
        );

        let old = format!("{KPIS}?age=11");
        r.get(&old);
        assert_ne!(
            x_cache(&r.get(&old)),
            "HIT",
            "{store:?}: older than its max-age"
        );
        assert_eq!(up.requests().iter().filter(|q| q.target == old).count(), 2);

        let bad = format!("{KPIS}?age=soon");
        r.get(&bad);
        let hit = r.get(&bad);
        assert_eq!(x_cache(&hit), "HIT", "{store:?}: invalid Age ignored");
        assert!(hit.header("age").is_some_and(|a| a == "0" || a == "1"));
    }
}

/// `Expires` counts from the response's `Date`: an origin whose clock is an hour behind gets
/// the 2 s it asked for, not a stale entry; a repeated `Expires` is stale.
#[test]
fn expires_counts_from_a_skewed_date() {
    for store in STORES {
        let up = Upstream::start(|req| {
            let origin_now = SystemTime::now() - Duration::from_secs(3600);
            let expires = http_date(origin_now + Duration::from_secs(2));
            let reply = Reply::json("{}")
                .header("date", &http_date(origin_now))
                .header("expires", &expires);
            if req.target.ends_with("twice") {
                // two field lines of one name
                Reply {
                    headers: [reply.headers.clone(), vec![("expires".into(), expires)]].concat(),
                    ..reply
                }
            } else {
                reply
            }
        });
        let (r, _redis) = start(store, &up, "");
        assert_eq!(x_cache(&r.get(KPIS)), "MISS");
        assert_eq!(
            x_cache(&r.get(KPIS)),
            "HIT",
            "{store:?}: fresh by the origin's clock"
        );
        std::thread::sleep(Duration::from_millis(2600));
        assert_ne!(x_cache(&r.get(KPIS)), "HIT", "{store:?}: stale after 2 s");
        let twice = format!("{KPIS}/twice");
        r.get(&twice);
        assert_ne!(
            x_cache(&r.get(&twice)),
            "HIT",
            "{store:?}: repeated Expires is stale"
        );
    }
}

/// An origin with an `ETag`, answering 304 to `If-None-Match`, whose 304s carry an updated
/// field; `version` changes the representation.
fn validating_origin(max_age: u32) -> (Upstream, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let version = Arc::new(AtomicUsize::new(1));
    let revalidations = Arc::new(AtomicUsize::new(0));
    let (v, n) = (version.clone(), revalidations.clone());
    let up = Upstream::start(move |req| {
        let etag = format!("\"v{}\"", v.load(Ordering::SeqCst));
        let cc = format!("max-age={max_age}");
        if req.header("if-none-match") == Some(etag.as_str()) {
            let i = n.fetch_add(1, Ordering::SeqCst) + 1;
            return Reply::ok("")
                .status(304)
                .header("etag", &etag)
                .header("cache-control", &cc)
                .header("x-meta", &format!("revalidated-{i}"));
        }
        Reply::json(format!(r#"{{"etag":{etag:?}}}"#))
            .header("etag", &etag)
            .header("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")
            .header("cache-control", &cc)
            .header("x-meta", "first")
    });
    (up, version, revalidations)
}

/// A stale entry with a validator is revalidated with `If-None-Match`; the 304 refreshes it
/// and updates its stored header; a changed representation (200) replaces it.
#[test]
fn stale_entries_are_revalidated_and_304s_update_them() {
    for store in STORES {
        let (up, version, revalidations) = validating_origin(1);
        let (r, _redis) = start(store, &up, "");
        let first = r.get(KPIS);
        assert_eq!(
            (x_cache(&first), first.header("x-meta")),
            ("MISS", Some("first"))
        );
        std::thread::sleep(Duration::from_millis(1600));
        let revalidated = r.get(KPIS);
        assert_eq!(revalidated.status, 200, "{store:?}");
        assert_eq!(x_cache(&revalidated), "REVALIDATED", "{store:?}");
        assert_eq!(revalidated.body, first.body);
        assert_eq!(up.last().header("if-none-match"), Some("\"v1\""));
        assert_eq!(
            up.last().header("if-modified-since"),
            Some("Mon, 01 Jan 2024 00:00:00 GMT")
        );
        assert_eq!(revalidated.header("x-meta"), Some("revalidated-1"));
        let hit = r.get(KPIS);
        assert_eq!(x_cache(&hit), "HIT", "{store:?}: the 304 refreshed it");
        assert_eq!(
            hit.header("x-meta"),
            Some("revalidated-1"),
            "{store:?}: stored"
        );
        assert_eq!(revalidations.load(Ordering::SeqCst), 1);

        version.store(2, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(1600));
        let replaced = r.get(KPIS);
        assert_eq!(x_cache(&replaced), "EXPIRED", "{store:?}");
        assert_eq!(replaced.text(), r#"{"etag":"\"v2\""}"#);
        let hit = r.get(KPIS);
        assert_eq!(
            (x_cache(&hit), hit.text()),
            ("HIT", replaced.text()),
            "{store:?}"
        );
    }
}

/// With `stale_while_revalidate`, the stale entry keeps being served at once while one
/// background request revalidates it; the 304 then refreshes it for everyone.
#[test]
fn stale_while_revalidate_serves_during_a_slow_revalidation() {
    for store in STORES {
        let up = Upstream::start(|req| {
            let reply = if req.header("if-none-match") == Some("\"a\"") {
                Reply::ok("").status(304).header("x-meta", "revalidated")
            } else {
                Reply::json(r#"{"v":1}"#).header("x-meta", "first")
            };
            reply
                .header("etag", "\"a\"")
                .header("cache-control", "max-age=1")
                .delay(Duration::from_millis(400))
        });
        let (r, _redis) = start(store, &up, "stale_while_revalidate = \"30s\"");
        assert_eq!(r.get(KPIS).status, 200);
        std::thread::sleep(Duration::from_millis(1600));
        for _ in 0..3 {
            let started = Instant::now();
            let stale = r.get(KPIS);
            let took = started.elapsed();
            assert_eq!((stale.status, x_cache(&stale)), (200, "STALE"), "{store:?}");
            assert_eq!(stale.text(), r#"{"v":1}"#);
            assert!(
                took < Duration::from_millis(350),
                "{store:?}: served without waiting for the 400 ms revalidation: {took:?}"
            );
        }
        eventually("the background revalidation stored", || {
            let resp = r.get(KPIS);
            x_cache(&resp) == "HIT" && resp.header("x-meta") == Some("revalidated")
        });
        assert_eq!(up.count(), 2, "{store:?}: one fill, one revalidation");
        assert_eq!(up.last().header("if-none-match"), Some("\"a\""));
    }
}

/// A conditional request whose validator matches a fresh entry gets a 304 from the cache.
#[test]
fn conditional_requests_are_answered_304_from_fresh_entries() {
    for store in STORES {
        let (up, _version, _n) = validating_origin(60);
        let (r, _redis) = start(store, &up, "");
        let full = r.get(KPIS);
        assert_eq!(full.status, 200);
        for (name, value) in [
            ("If-None-Match", "\"v1\""),
            ("If-None-Match", "W/\"v1\", \"v0\""),
            ("If-Modified-Since", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("If-Modified-Since", "Tue, 02 Jan 2024 00:00:00 GMT"),
        ] {
            let resp = r.request("GET", KPIS, &[(name, value)], None);
            assert_eq!(resp.status, 304, "{store:?} {name}: {value}");
            assert!(resp.body.is_empty());
            assert_eq!(resp.header("etag"), Some("\"v1\""));
            assert_eq!(x_cache(&resp), "HIT");
        }
        for (name, value) in [
            ("If-None-Match", "\"v0\""),
            ("If-Modified-Since", "Sun, 31 Dec 2023 00:00:00 GMT"),
        ] {
            let resp = r.request("GET", KPIS, &[(name, value)], None);
            assert_eq!(
                (resp.status, &resp.body),
                (200, &full.body),
                "{store:?} {value}"
            );
        }
        assert_eq!(up.count(), 1, "{store:?}: all from the cache");
    }
}

/// `no-cache`: stored, revalidated before every use, never served stale though the policy has
/// stale windows. `must-revalidate`: once stale, an origin failure is an error, not stale.
#[test]
fn no_cache_and_must_revalidate_force_revalidation() {
    for store in STORES {
        let failing = Arc::new(AtomicUsize::new(0));
        let f = failing.clone();
        let up = Upstream::start(move |req| {
            let cc = if req.target.ends_with("nocache") {
                "no-cache"
            } else {
                "max-age=1, must-revalidate"
            };
            if f.load(Ordering::SeqCst) == 1 {
                return Reply::json("down").status(503);
            }
            if req.header("if-none-match") == Some("\"a\"") {
                return Reply::ok("")
                    .status(304)
                    .header("etag", "\"a\"")
                    .header("cache-control", cc);
            }
            Reply::json("{}")
                .header("etag", "\"a\"")
                .header("cache-control", cc)
        });
        let policy = "stale_while_revalidate = \"30s\"\nstale_if_error = \"30s\"";
        let (r, _redis) = start(store, &up, policy);
        let nocache = format!("{KPIS}/nocache");
        assert_eq!(x_cache(&r.get(&nocache)), "MISS");
        for _ in 0..3 {
            let resp = r.get(&nocache);
            assert_eq!(
                (resp.status, x_cache(&resp)),
                (200, "REVALIDATED"),
                "{store:?}"
            );
            assert_eq!(up.last().header("if-none-match"), Some("\"a\""));
        }
        assert_eq!(up.count(), 4, "{store:?}: every use asked the origin");

        let strict = format!("{KPIS}/strict");
        assert_eq!(r.get(&strict).status, 200);
        std::thread::sleep(Duration::from_millis(1600));
        failing.store(1, Ordering::SeqCst);
        assert_eq!(
            r.get(&strict).status,
            503,
            "{store:?}: must-revalidate: no stale on error"
        );
    }
}

/// `CDN-Cache-Control` and `Rampart-Cache-Control` decide for Rampart's cache and are not
/// forwarded: "an hour at the edge, not at all in browsers".
#[test]
fn targeted_cache_control_fields_decide_for_the_edge() {
    for store in STORES {
        let up = Upstream::start(|req| {
            let reply = Reply::json("{}").header("cache-control", "no-store");
            match req.target.rsplit('/').next() {
                Some("cdn") => reply.header("cdn-cache-control", "max-age=3600"),
                Some("ours") => reply
                    .header("cdn-cache-control", "max-age=3600")
                    .header("rampart-cache-control", "no-store"),
                Some("invalid") => reply.header("cdn-cache-control", "max-age=\"\"\""),
                _ => reply,
            }
        });
        let (r, _redis) = start(store, &up, "");
        let cdn = format!("{KPIS}/cdn");
        r.get(&cdn);
        let hit = r.get(&cdn);
        assert_eq!(
            x_cache(&hit),
            "HIT",
            "{store:?}: stored despite no-store for browsers"
        );
        assert_eq!(
            hit.header("cache-control"),
            Some("no-store"),
            "browsers still told"
        );
        assert_eq!(hit.header("cdn-cache-control"), None, "not forwarded");
        let ours = format!("{KPIS}/ours");
        r.get(&ours);
        let second = r.get(&ours);
        assert_eq!(
            x_cache(&second),
            "MISS",
            "{store:?}: Rampart-Cache-Control wins"
        );
        assert_eq!(second.header("rampart-cache-control"), None);
        assert_eq!(second.header("cdn-cache-control"), None);
        let invalid = format!("{KPIS}/invalid");
        r.get(&invalid);
        assert_eq!(
            x_cache(&r.get(&invalid)),
            "MISS",
            "{store:?}: invalid field ignored"
        );
    }
}

/// Without a fallback `ttl` the origin alone decides: no freshness information, not stored;
/// `Last-Modified` long ago, heuristically fresh; explicit freshness stores any final status,
/// and error statuses never get the fallback.
#[test]
fn freshness_from_the_origin_alone() {
    for store in STORES {
        let up = Upstream::start(|req| {
            let reply = Reply::json("{}");
            match req.target.rsplit('/').next() {
                Some("modified") => reply
                    .header("date", &http_date(SystemTime::now()))
                    .header("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
                Some("unavailable") => reply.status(503).header("cache-control", "max-age=60"),
                Some("missing") => reply.status(404),
                _ => reply,
            }
        });
        let twice = |r: &Rampart, path: &str| {
            let path = format!("{KPIS}/{path}");
            r.get(&path);
            r.get(&path)
        };
        let (r, _redis) = start(store, &up, "");
        let plain = twice(&r, "plain");
        assert_eq!(x_cache(&plain), "MISS", "{store:?}");
        assert_eq!(
            plain.header("cache-status"),
            Some("rampart; fwd=miss; detail=no-freshness")
        );
        assert_eq!(
            x_cache(&twice(&r, "modified")),
            "HIT",
            "{store:?}: 10% heuristic"
        );
        let unavailable = twice(&r, "unavailable");
        assert_eq!(
            (unavailable.status, x_cache(&unavailable)),
            (503, "HIT"),
            "{store:?}"
        );

        let (r, _redis) = start(store, &up, "ttl = \"60s\"");
        assert_eq!(
            x_cache(&twice(&r, "plain")),
            "HIT",
            "{store:?}: the fallback"
        );
        let missing = twice(&r, "missing");
        assert_eq!(
            (missing.status, x_cache(&missing)),
            (404, "MISS"),
            "{store:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// No request waits on a revalidation

/// 64 clients keep requesting an entry with a validator across several expiries (max-age=1,
/// the origin takes 100 ms): no request waits much longer than the origin's response time. The
/// bound (2 s) is a correctness bound, far under `lock_timeout` (10 s), which is how long a
/// waiter stalled on a revalidation it did not notice; the figures are for benchmarks.
fn no_request_waits_on_a_revalidation(replicas: &[&Rampart], origin: &Upstream) {
    const CLIENTS: usize = 64;
    let deadline = Instant::now() + Duration::from_millis(3500);
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let addr = addrs[i % addrs.len()];
            std::thread::spawn(move || {
                let mut conn = HttpConn::connect(addr).expect("connect");
                let mut worst = Duration::ZERO;
                let mut done = 0;
                while Instant::now() < deadline && done < 1000 {
                    let started = Instant::now();
                    conn.send("GET", KPIS, &[], None, false).expect("send");
                    let resp = conn.read_response(false).unwrap_or_else(|e| {
                        panic!("no response within 10 s: a waiter stalled ({e})")
                    });
                    assert_eq!(resp.status, 200, "{}", resp.text());
                    worst = worst.max(started.elapsed());
                    done += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                (worst, done)
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    let mut total = 0;
    for t in threads {
        let (w, n) = t.join().expect("client thread");
        worst = worst.max(w);
        total += n;
    }
    let conditional = origin
        .requests()
        .iter()
        .filter(|q| q.header("if-none-match").is_some())
        .count();
    assert!(
        conditional >= 2,
        "the entry was revalidated across expiries: {conditional}"
    );
    assert!(
        worst < Duration::from_millis(100) + Duration::from_secs(2),
        "a request waited {worst:?} ({total} requests, {} reached the origin)",
        origin.count()
    );
}

fn slow_validating_origin() -> Upstream {
    Upstream::start(|req| {
        let reply = if req.header("if-none-match") == Some("\"kpi\"") {
            Reply::ok("").status(304)
        } else {
            Reply::json(r#"{"revenue":1234}"#)
        };
        reply
            .header("etag", "\"kpi\"")
            .header("cache-control", "max-age=1")
            .delay(Duration::from_millis(100))
    })
}

#[test]
fn no_request_waits_on_a_revalidation_redis() {
    let up = slow_validating_origin();
    let (r, _redis) = start(Store::Redis, &up, "lock_timeout = \"10s\"");
    no_request_waits_on_a_revalidation(&[&r], &up);
}

#[test]
fn no_request_waits_on_a_revalidation_memory() {
    let up = slow_validating_origin();
    let (r, _redis) = start(Store::Memory, &up, "lock_timeout = \"10s\"");
    no_request_waits_on_a_revalidation(&[&r], &up);
}

#[test]
fn no_request_waits_on_a_revalidation_across_replicas() {
    let up = slow_validating_origin();
    let redis = Redis::start();
    let body = config(&up, Some(&redis), "lock_timeout = \"10s\"");
    let (a, b) = (Rampart::start(&body), Rampart::start(&body));
    no_request_waits_on_a_revalidation(&[&a, &b], &up);
}
