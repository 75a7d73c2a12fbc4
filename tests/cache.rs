//! The response cache: hits proven by the upstream's request count, keys, safety cases,
//! expiry, Vary, the cache lock, stale serving, invalidation, purge, a Redis outage and
//! encoded bodies; with the Redis store and the in-process one where the store matters.

use std::io::Write;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

pub(crate) const KPIS: &str = "/api/v1/dashboard/kpis";

#[derive(Clone, Copy, Debug)]
pub(crate) enum Store {
    Redis,
    Memory,
}

/// Routes: `kpis` (cached by `policy`, the given extra keys) and `api` (not cached).
pub(crate) fn config(up: &Upstream, redis: Option<&Redis>, policy: &str) -> String {
    let store = redis.map_or(String::new(), |r| {
        format!(
            "[store]\nredis_url = \"{}\"\ntimeout = \"200ms\"\n",
            r.url()
        )
    });
    format!(
        "{}read_timeout = \"500ms\"\nconnect_retries = 0\n\
         [[routes]]\nname = \"kpis\"\nprefix = \"{KPIS}\"\nupstream = \"u\"\ncache = \"kpis\"\n\
         [[routes]]\nname = \"api\"\nprefix = \"/api/\"\nupstream = \"u\"\n\
         {store}[cache.policies.kpis]\n{policy}\n",
        upstream_toml("u", &[&up.addr])
    )
}

/// Rampart (and its Redis, kept alive) on the chosen store.
pub(crate) fn start(store: Store, up: &Upstream, policy: &str) -> (Rampart, Option<Redis>) {
    let redis = matches!(store, Store::Redis).then(Redis::start);
    let r = Rampart::start(&config(up, redis.as_ref(), policy));
    (r, redis)
}

/// A KPI origin: JSON that names how many requests it has seen, origin `Date`, and the
/// per-request headers FastAPI sends.
fn kpi_origin() -> Upstream {
    let n = Arc::new(AtomicUsize::new(0));
    Upstream::start(move |req| {
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::json(format!(
            r#"{{"revenue":1234,"n":{i},"path":"{}"}}"#,
            req.target
        ))
        .header("x-process-time", "0.0123")
        .header("x-request-id", "from-the-origin")
    })
}

pub(crate) fn x_cache(resp: &Response) -> &str {
    resp.header("x-cache").unwrap_or("(none)")
}

/// `POST /cache/purge` on the admin listener.
pub(crate) fn purge(r: &Rampart, body: &str) -> Response {
    request(
        r.admin,
        "POST",
        "/cache/purge",
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    )
}

/// A fresh hit is answered by the connection gate before Pingora parses the request
/// (`proxy::early`): the fields a hit through Pingora carries, counted the same, and the rate
/// limits decide first, exactly.
#[test]
fn hits_answered_before_pingora_match_pingoras_and_are_limited() {
    let up = kpi_origin();
    let limit = "[ratelimit.policies.p]\nrate = \"1/h\"\nburst = 5\nroutes = [\"kpis\"]\n";
    let r = Rampart::start(&format!("{}{limit}", config(&up, None, "ttl = \"60s\"")));
    let mut conn = HttpConn::connect(r.addr).expect("connect");
    let get = format!("GET {KPIS} HTTP/1.1\r\nHost: rampart.test\r\n\r\n").into_bytes();
    // A head with more fields than the gate parses itself (32) is Pingora's: the same hit
    // through Pingora's request_filter.
    let mut crowded = format!("GET {KPIS} HTTP/1.1\r\nHost: rampart.test\r\n").into_bytes();
    for i in 0..40 {
        crowded.extend_from_slice(format!("x-field-{i}: {i}\r\n").as_bytes());
    }
    crowded.extend_from_slice(b"\r\n");
    let mut next = |raw: &[u8]| {
        conn.write_all(raw).expect("write");
        conn.read_response(false).expect("response")
    };
    let miss = next(&get);
    assert_eq!(x_cache(&miss), "MISS");
    let early = next(&get);
    let through_pingora = next(&crowded);
    for hit in [&early, &through_pingora] {
        assert_eq!(hit.status, 200);
        assert_eq!(x_cache(hit), "HIT");
        assert_eq!(hit.body, miss.body);
    }
    // Same fields in the same order; only per-request values differ.
    let names = |r: &Response| r.headers.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(names(&early), names(&through_pingora));
    let per_request = [
        "x-request-id",
        "x-process-time",
        "date",
        "age",
        "ratelimit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ];
    for (name, value) in &through_pingora.headers {
        if !per_request.contains(&name.as_str()) {
            assert_eq!(early.header(name), Some(value.as_str()), "{name}");
        }
    }
    assert_eq!(early.header("x-ratelimit-remaining"), Some("3"));
    assert_eq!(through_pingora.header("x-ratelimit-remaining"), Some("2"));

    // The burst's last two, then the limit's 429 (the gate's too): nothing reaches the origin.
    assert_eq!(next(&get).status, 200);
    assert_eq!(next(&get).status, 200);
    let refused = next(&get);
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("x-cache"), None);
    assert_eq!(up.count(), 1);
    let m = r.metrics();
    for line in [
        r#"rampart_cache_lookups_total{result="hit",route="kpis"} 4"#,
        r#"http_requests_total{method="GET",route="kpis",status="200"} 5"#,
        r#"http_requests_total{method="GET",route="kpis",status="429"} 1"#,
    ] {
        assert!(m.contains(line), "{line}\n{m}");
    }
}

fn hits_are_served_from_cache(store: Store) {
    let up = kpi_origin();
    let (r, redis) = start(store, &up, "ttl = \"60s\"");
    let first = r.get(KPIS);
    assert_eq!(first.status, 200);
    assert_eq!(x_cache(&first), "MISS", "{store:?}");
    assert_eq!(
        first.header("cache-status"),
        Some("rampart; fwd=miss; stored")
    );
    for i in 0..49 {
        let resp = r.get(KPIS);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, first.body, "hit {i} is the stored body");
        assert_eq!(x_cache(&resp), "HIT", "{store:?} request {i}");
        let status = resp.header("cache-status").expect("cache-status");
        assert!(status.starts_with("rampart; hit; ttl="), "{status}");
        let age: u64 = resp
            .header("age")
            .expect("hits carry Age")
            .parse()
            .expect("Age");
        assert!(age < 60, "{age}");
        // Pingora's HTTP/1 writer stamps every response with its own Date (as nginx does
        // unless `proxy_pass_header Date`); with Age, downstream caches still get it right.
        assert!(resp.header("date").is_some());
        // The origin's X-Process-Time (0.0123) is never stored: a hit carries Rampart's own.
        let took = resp
            .header("x-process-time")
            .expect("x-process-time on hits");
        assert_ne!(
            took, "0.0123",
            "per-request timing is Rampart's, not stored"
        );
        let id = resp.header("x-request-id").expect("request id");
        assert_ne!(
            id, "from-the-origin",
            "per-request id is Rampart's, not stored"
        );
        assert_eq!(resp.header("x-frame-options"), Some("SAMEORIGIN"));
    }
    assert_eq!(up.count(), 1, "{store:?}: 50 GETs, one upstream request");

    let head = r.request("HEAD", KPIS, &[], None);
    assert_eq!(head.status, 200);
    assert_eq!(x_cache(&head), "HIT", "HEAD answered from the GET entry");
    assert!(head.body.is_empty());
    assert_eq!(up.count(), 1);

    let range = r.request("GET", KPIS, &[("Range", "bytes=0-4")], None);
    assert_eq!(range.status, 206, "ranges are cut from the stored body");
    assert_eq!(range.body, first.body[..5]);
    assert_eq!(up.count(), 1);

    // The route without a policy is never cached and carries no cache headers.
    r.get("/api/other");
    let plain = r.get("/api/other");
    assert_eq!(plain.header("x-cache"), None);
    assert_eq!(up.count(), 3);

    let m = r.metrics();
    assert!(
        m.contains(r#"rampart_cache_lookups_total{result="hit",route="kpis"} 51"#),
        "{m}"
    );
    assert!(m.contains(r#"rampart_cache_stored_bytes_total{route="kpis"}"#));

    if let Some(redis) = redis {
        // Redis round trips: one MULTI per fill; one lookup script for the miss and one for
        // the first hit, which the near tier keeps: the other 49 GETs, the HEAD and the range
        // are answered in process (cache::near_tier_* below).
        assert!(
            m.contains(
                r#"rampart_store_command_duration_seconds_count{backend="redis",op="cache_get"} 2"#
            ),
            "{m}"
        );
        assert!(
            m.contains(
                r#"rampart_store_command_duration_seconds_count{backend="redis",op="cache_put"} 1"#
            ),
            "{m}"
        );
        let (_cursor, keys): (u64, Vec<String>) = redis.cmd(&[
            "SCAN",
            "0",
            "MATCH",
            "rampart:cache:{kpis:*",
            "COUNT",
            "1000",
        ]);
        assert_eq!(keys.len(), 1, "one key: {keys:?}");
        let ttl: i64 = redis.cmd(&["TTL", &keys[0]]);
        assert!((1..=60).contains(&ttl), "entry expires by TTL: {ttl}");
    }
}

#[test]
fn hits_are_served_from_cache_redis() {
    hits_are_served_from_cache(Store::Redis);
}

#[test]
fn hits_are_served_from_cache_memory() {
    hits_are_served_from_cache(Store::Memory);
}

/// A fresh, plain GET is answered early, in `request_filter`, from what this process holds
/// (the in-process store, or the Redis store's near tier); a conditional GET on the same entry
/// takes pingora-cache's full path. Both answers carry the same fields, the same values (bar
/// the per-request ones) and the same body. (HEAD and ranges, which also take the full path,
/// are in `hits_are_served_from_cache`.)
fn early_hits_match_full_path_hits(store: Store) {
    let up = kpi_origin();
    let (r, _redis) = start(store, &up, "ttl = \"60s\"");
    assert_eq!(x_cache(&r.get(KPIS)), "MISS");
    // Redis: the first hit comes from Redis and is kept by the near tier for the next.
    assert_eq!(x_cache(&r.get(KPIS)), "HIT");
    let early = r.get(KPIS);
    let full = r.request("GET", KPIS, &[("If-None-Match", "\"not-this-one\"")], None);
    let what = format!("{store:?}");
    for resp in [&early, &full] {
        assert_eq!(resp.status, 200, "{what}");
        assert_eq!(x_cache(resp), "HIT", "{what}");
        let status = resp.header("cache-status").unwrap_or("");
        assert!(status.starts_with("rampart; hit; ttl="), "{what}: {status}");
    }
    assert_eq!(early.body, full.body, "{what}");
    let names = |resp: &Response| {
        let mut names: Vec<String> = resp
            .headers
            .iter()
            .map(|(k, _)| k.to_ascii_lowercase())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&early), names(&full), "{what}");
    for name in [
        "content-type",
        "content-length",
        "etag",
        "vary",
        "x-frame-options",
        "x-content-type-options",
        "x-xss-protection",
    ] {
        assert_eq!(early.header(name), full.header(name), "{what}: {name}");
    }
    assert_eq!(up.count(), 1, "{what}: one upstream request");
    let m = r.metrics();
    assert!(
        m.contains(r#"rampart_cache_lookups_total{result="hit",route="kpis"} 3"#),
        "{what}: {m}"
    );
    if matches!(store, Store::Redis) {
        assert!(
            m.contains(r#"rampart_cache_near_hits_total{route="kpis"} 2"#),
            "{what}: the early hit and the full path's lookup, both from the near tier: {m}"
        );
    }
}

#[test]
fn early_hits_match_full_path_hits_redis() {
    early_hits_match_full_path_hits(Store::Redis);
}

#[test]
fn early_hits_match_full_path_hits_memory() {
    early_hits_match_full_path_hits(Store::Memory);
}

#[test]
fn the_query_string_is_part_of_the_key() {
    let up = kpi_origin();
    let (r, _redis) = start(
        Store::Redis,
        &up,
        "ttl = \"60s\"\nignore_query = [\"utm_source\"]",
    );
    let a1 = r.get(&format!("{KPIS}?a=1&b=2"));
    let a2 = r.get(&format!("{KPIS}?a=2&b=2"));
    assert_eq!(up.count(), 2);
    assert_ne!(a1.body, a2.body);
    let reordered = r.get(&format!("{KPIS}?b=2&a=1&utm_source=mail"));
    assert_eq!(
        x_cache(&reordered),
        "HIT",
        "sorted parameters, ignored one dropped"
    );
    assert_eq!(reordered.body, a1.body);
    assert_eq!(up.count(), 2);
    let bare = r.get(KPIS);
    assert_eq!(x_cache(&bare), "MISS");
    assert_eq!(up.count(), 3);
}

#[test]
fn private_responses_and_credentials_are_not_shared() {
    let up = Upstream::start(|req| {
        let reply = Reply::json(format!(r#"{{"for":"{}"}}"#, req.target));
        match req.target.rsplit('/').next() {
            Some("cookie") => reply.header("set-cookie", "session=abc; HttpOnly"),
            Some("private") => reply.header("cache-control", "private, max-age=60"),
            Some("nostore") => reply.header("cache-control", "no-store"),
            Some("created") => reply.status(201),
            Some("broken") => reply.status(500),
            Some("forbidden") => reply.status(403),
            _ => reply,
        }
    });
    let (r, _redis) = start(Store::Redis, &up, "ttl = \"60s\"");
    for case in [
        "cookie",
        "private",
        "nostore",
        "created",
        "broken",
        "forbidden",
    ] {
        let path = format!("{KPIS}/{case}");
        let before = up.count();
        let first = r.get(&path);
        let second = r.get(&path);
        assert_eq!(
            up.count(),
            before + 2,
            "{case}: both requests reached the origin"
        );
        assert_eq!(x_cache(&second), "MISS", "{case}");
        assert!(
            second
                .header("cache-status")
                .is_some_and(|s| s.starts_with("rampart; fwd=miss; detail=")),
            "{case}: {:?}",
            second.header("cache-status")
        );
        let detail = match case {
            "cookie" => "set-cookie",
            "private" => "private",
            "nostore" => "no-store",
            _ => "status",
        };
        assert_eq!(
            second.header("cache-status"),
            Some(format!("rampart; fwd=miss; detail={detail}").as_str()),
            "{case}"
        );
        if case == "cookie" {
            assert_eq!(first.header("set-cookie"), Some("session=abc; HttpOnly"));
        }
    }

    // A stored public entry is not served to requests with credentials.
    r.get(KPIS);
    assert_eq!(x_cache(&r.get(KPIS)), "HIT");
    let before = up.count();
    for (name, value) in [("Authorization", "Bearer x"), ("Cookie", "session=abc")] {
        let resp = r.request("GET", KPIS, &[(name, value)], None);
        assert_eq!(resp.status, 200);
        assert_eq!(x_cache(&resp), "BYPASS", "{name}");
        assert_eq!(
            resp.header("cache-status"),
            Some("rampart; fwd=bypass; detail=credentials")
        );
    }
    assert_eq!(up.count(), before + 2, "credentials go to the origin");
    assert_eq!(
        x_cache(&r.get(KPIS)),
        "HIT",
        "and did not replace the entry"
    );
}

#[test]
fn fallback_ttl_expires() {
    for store in [Store::Redis, Store::Memory] {
        // Without a stale window the entry leaves the store when it stops being fresh ...
        let up = kpi_origin();
        let (r, _redis) = start(store, &up, "ttl = \"1s\"");
        assert_eq!(x_cache(&r.get(KPIS)), "MISS");
        assert_eq!(x_cache(&r.get(KPIS)), "HIT");
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(x_cache(&r.get(KPIS)), "MISS", "{store:?}");
        assert_eq!(up.count(), 2);

        // ... with one it stays, stale, and is refetched (EXPIRED) when next asked for.
        let up = kpi_origin();
        let (r, _redis) = start(store, &up, "ttl = \"1s\"\nstale_if_error = \"10s\"");
        assert_eq!(x_cache(&r.get(KPIS)), "MISS");
        assert_eq!(x_cache(&r.get(KPIS)), "HIT");
        std::thread::sleep(Duration::from_millis(2100));
        let expired = r.get(KPIS);
        assert_eq!(expired.status, 200);
        assert_eq!(x_cache(&expired), "EXPIRED", "{store:?}");
        assert!(expired.text().contains(r#""n":2"#), "{}", expired.text());
        assert_eq!(up.count(), 2);
        assert_eq!(x_cache(&r.get(KPIS)), "HIT", "the refetch was stored");
    }
}

#[test]
fn origin_max_age_wins_and_huge_values_do_not_overflow() {
    let up = Upstream::start(|req| {
        let cc = if req.target.ends_with("huge") {
            "max-age=999999999999999999999"
        } else {
            "max-age=1"
        };
        Reply::json("{}").header("cache-control", cc)
    });
    let (r, redis) = start(Store::Redis, &up, "ttl = \"60s\"");
    let redis = redis.expect("redis");
    r.get(&format!("{KPIS}/huge"));
    let hit = r.get(&format!("{KPIS}/huge"));
    assert_eq!(x_cache(&hit), "HIT");
    let (_cursor, keys): (u64, Vec<String>) =
        redis.cmd(&["SCAN", "0", "MATCH", "rampart:cache:*", "COUNT", "1000"]);
    let ttl: i64 = redis.cmd(&["TTL", &keys[0]]);
    assert!(
        ttl > 3600 && ttl <= 366 * 24 * 3600,
        "capped at a year: {ttl}"
    );

    r.get(&format!("{KPIS}/short"));
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(
        x_cache(&r.get(&format!("{KPIS}/short"))),
        "MISS",
        "origin max-age=1 beats ttl=60s"
    );
    assert_eq!(up.count(), 3);
}

#[test]
fn configured_vary_header_splits_the_cache() {
    let up = Upstream::start(|req| Reply::ok(req.header("accept-language").unwrap_or("none")));
    let (r, _redis) = start(
        Store::Memory,
        &up,
        "ttl = \"60s\"\nvary = [\"Accept-Language\"]",
    );
    let get = |lang: &str| r.request("GET", KPIS, &[("Accept-Language", lang)], None);
    assert_eq!(get("en").text(), "en");
    assert_eq!(get("de").text(), "de");
    let en = get("en");
    assert_eq!(en.text(), "en");
    assert_eq!(x_cache(&en), "HIT");
    assert_eq!(x_cache(&get("de")), "HIT");
    assert_eq!(up.count(), 2);
}

fn concurrent_cold_requests_fetch_once(store: Store) {
    let up = Upstream::start(|_| Reply::json(r#"{"slow":true}"#).delay(Duration::from_millis(300)));
    let (r, _redis) = start(store, &up, "ttl = \"60s\"");
    let addr = r.addr;
    let threads: Vec<_> = (0..20)
        .map(|_| std::thread::spawn(move || get(addr, KPIS)))
        .collect();
    for t in threads {
        let resp = t.join().expect("client thread");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), r#"{"slow":true}"#);
    }
    assert_eq!(
        up.count(),
        1,
        "{store:?}: 20 concurrent misses, one upstream fetch"
    );
}

#[test]
fn concurrent_cold_requests_fetch_once_redis() {
    concurrent_cold_requests_fetch_once(Store::Redis);
}

#[test]
fn concurrent_cold_requests_fetch_once_memory() {
    concurrent_cold_requests_fetch_once(Store::Memory);
}

/// Upstream modes for the stale tests.
const HEALTHY: u8 = 0;
const SLOW: u8 = 1;
const FAILING: u8 = 2;

fn switchable_origin() -> (Upstream, Arc<AtomicU8>) {
    let mode = Arc::new(AtomicU8::new(HEALTHY));
    let m = mode.clone();
    let n = Arc::new(AtomicUsize::new(0));
    let up = Upstream::start(move |_| {
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        match m.load(Ordering::SeqCst) {
            SLOW => Reply::json("late").delay(Duration::from_millis(1500)),
            FAILING => Reply::json("broken").status(503),
            _ => Reply::json(format!(r#"{{"version":{i}}}"#)),
        }
    });
    (up, mode)
}

fn stale_if_error(store: Store) {
    let (up, mode) = switchable_origin();
    let (r, _redis) = start(store, &up, "ttl = \"1s\"\nstale_if_error = \"3s\"");
    let fresh = r.get(KPIS);
    assert_eq!(fresh.text(), r#"{"version":1}"#);
    std::thread::sleep(Duration::from_millis(1200));

    mode.store(SLOW, Ordering::SeqCst);
    let started = Instant::now();
    let stale = r.get(KPIS);
    assert_eq!(stale.status, 200, "{store:?}: timeout -> stale");
    assert_eq!(stale.text(), r#"{"version":1}"#);
    assert_eq!(x_cache(&stale), "STALE");
    assert!(stale
        .header("cache-status")
        .is_some_and(|s| s.contains("detail=stale-if-error")));
    assert!(started.elapsed() < Duration::from_secs(5));

    mode.store(FAILING, Ordering::SeqCst);
    let stale = r.get(KPIS);
    assert_eq!(stale.status, 200, "{store:?}: 5xx -> stale");
    assert_eq!(stale.text(), r#"{"version":1}"#);

    // Past freshness (1 s) plus the window (3 s): the error reaches the client.
    std::thread::sleep(Duration::from_millis(3200));
    mode.store(SLOW, Ordering::SeqCst);
    assert_eq!(
        r.get(KPIS).status,
        504,
        "{store:?}: timeout after the window"
    );
    mode.store(FAILING, Ordering::SeqCst);
    assert_eq!(r.get(KPIS).status, 503, "{store:?}: 5xx after the window");
}

#[test]
fn stale_if_error_redis() {
    stale_if_error(Store::Redis);
}

#[test]
fn stale_if_error_memory() {
    stale_if_error(Store::Memory);
}

#[test]
fn stale_while_revalidate_refreshes_in_the_background() {
    let (up, _mode) = switchable_origin();
    let (r, _redis) = start(
        Store::Redis,
        &up,
        "ttl = \"1s\"\nstale_while_revalidate = \"10s\"",
    );
    assert_eq!(r.get(KPIS).text(), r#"{"version":1}"#);
    std::thread::sleep(Duration::from_millis(1200));
    let stale = r.get(KPIS);
    assert_eq!(stale.text(), r#"{"version":1}"#, "served stale at once");
    assert_eq!(x_cache(&stale), "STALE");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = r.get(KPIS);
        if resp.text() == r#"{"version":2}"# {
            assert_eq!(x_cache(&resp), "HIT", "the background refresh was stored");
            break;
        }
        assert!(Instant::now() < deadline, "never refreshed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(up.count(), 2);
}

#[test]
fn unsafe_methods_invalidate_the_url() {
    let up = kpi_origin();
    let (r, _redis) = start(Store::Redis, &up, "ttl = \"60s\"");
    r.get(KPIS);
    assert_eq!(x_cache(&r.get(KPIS)), "HIT");
    let post = r.request("POST", KPIS, &[], Some(b"{}"));
    assert_eq!(post.status, 200);
    assert_eq!(x_cache(&post), "BYPASS");
    let after = r.get(KPIS);
    assert_eq!(x_cache(&after), "MISS", "the POST dropped the entry");
    assert_eq!(up.count(), 3);
}

fn purge_by_url_and_route(store: Store) {
    let up = kpi_origin();
    let (r, _redis) = start(store, &up, "ttl = \"60s\"");
    for q in ["?a=1", "?a=2"] {
        r.get(&format!("{KPIS}{q}"));
    }
    let url = format!(r#"{{"url": "http://rampart.test{KPIS}?a=1"}}"#);
    let resp = purge(&r, &url);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["purged"], 1, "{store:?}");
    assert_eq!(x_cache(&r.get(&format!("{KPIS}?a=1"))), "MISS");
    assert_eq!(x_cache(&r.get(&format!("{KPIS}?a=2"))), "HIT");

    let resp = purge(&r, r#"{"route": "kpis"}"#);
    assert_eq!(resp.json()["purged"], 2, "{store:?}");
    assert_eq!(x_cache(&r.get(&format!("{KPIS}?a=2"))), "MISS");
    let resp = purge(&r, r#"{"all": true}"#);
    assert_eq!(resp.json()["purged"], 1, "{store:?}");

    assert_eq!(purge(&r, r#"{"route": "nope"}"#).status, 400);
    assert_eq!(purge(&r, "not json").status, 400);
    assert_eq!(purge(&r, r#"{"url": "/relative"}"#).status, 400);
}

#[test]
fn purge_by_url_and_route_redis() {
    purge_by_url_and_route(Store::Redis);
}

#[test]
fn purge_by_url_and_route_memory() {
    purge_by_url_and_route(Store::Memory);
}

#[test]
fn redis_outage_becomes_misses_and_caching_resumes() {
    let up = kpi_origin();
    let mut redis = Redis::start();
    let port = redis.port;
    // The Redis path itself, without the near tier (whose outage is near_tier_*'s).
    let without_near = config(&up, Some(&redis), "ttl = \"60s\"").replace(
        "[cache.policies.kpis]",
        "[cache]\nlocal_bytes = 0\n[cache.policies.kpis]",
    );
    let r = Rampart::start(&without_near);
    r.get(KPIS);
    assert_eq!(x_cache(&r.get(KPIS)), "HIT");
    assert_eq!(up.count(), 1);

    redis.kill();
    for i in 0..10 {
        let started = Instant::now();
        let resp = r.get(KPIS);
        assert_eq!(resp.status, 200, "request {i} answered during the outage");
        assert_eq!(x_cache(&resp), "MISS");
        assert!(started.elapsed() < Duration::from_secs(3), "bounded");
    }
    assert_eq!(up.count(), 11, "every request went to the origin");
    let m = r.metrics();
    assert!(m.contains("rampart_store_up{backend=\"redis\"} 0"), "{m}");
    assert!(m.contains("rampart_store_errors_total{backend=\"redis\",op=\"cache_"));

    let _redis = Redis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let resp = r.get(KPIS);
        assert_eq!(resp.status, 200);
        if x_cache(&resp) == "HIT" {
            break;
        }
        assert!(Instant::now() < deadline, "caching never resumed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

const TREND: &str = r#"{"trend":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]}"#;

/// What the origin sends for a given `Accept-Encoding`; `vary` says whether it says so.
fn encoding_origin(vary: bool) -> Upstream {
    Upstream::start(move |req| {
        let gz = req
            .header("accept-encoding")
            .is_some_and(|v| v.contains("gzip"));
        let reply = if gz {
            Reply::json(gzip(TREND.as_bytes())).header("content-encoding", "gzip")
        } else {
            Reply::json(TREND)
        };
        if vary {
            reply.header("vary", "Accept-Encoding")
        } else {
            reply
        }
    })
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut out).expect("gunzip");
    out
}

/// gzip and identity clients, in both orders, first from the origin then from the cache.
/// With `Vary: Accept-Encoding` each gets exactly the origin's bytes for it. Without it (an
/// origin that varies silently) a gzip body still never reaches an identity client, and a gzip
/// client may get either encoding, correctly labelled.
#[test]
fn encoded_bodies_reach_only_clients_that_accept_them() {
    for store in [Store::Redis, Store::Memory] {
        for vary in [true, false] {
            let up = encoding_origin(vary);
            let (r, _redis) = start(store, &up, "ttl = \"60s\"");
            let expected_gz = gzip(TREND.as_bytes());
            let gz = |q: &str| {
                r.request(
                    "GET",
                    &format!("{KPIS}{q}"),
                    &[("Accept-Encoding", "gzip, deflate")],
                    None,
                )
            };
            let plain = |q: &str| r.request("GET", &format!("{KPIS}{q}"), &[], None);
            let what = format!("{store:?} vary={vary}");
            let check_gz = |resp: &Response, step: &str| {
                assert_eq!(resp.status, 200);
                if vary {
                    assert_eq!(resp.body, expected_gz, "{what} {step}");
                    assert_eq!(
                        resp.header("content-encoding"),
                        Some("gzip"),
                        "{what} {step}"
                    );
                } else if resp.header("content-encoding") == Some("gzip") {
                    assert_eq!(gunzip(&resp.body), TREND.as_bytes(), "{what} {step}");
                } else {
                    assert_eq!(resp.body, TREND.as_bytes(), "{what} {step}");
                }
            };
            let check_plain = |resp: &Response, step: &str| {
                assert_eq!(resp.status, 200);
                assert_eq!(resp.body, TREND.as_bytes(), "{what} {step}");
                assert_eq!(resp.header("content-encoding"), None, "{what} {step}");
            };
            for round in ["origin", "cache"] {
                // gzip client first, then identity ...
                check_gz(&gz(""), &format!("gzip-first {round}"));
                check_plain(&plain(""), &format!("identity-second {round}"));
                // ... and the other order on another URL.
                check_plain(&plain("?order=2"), &format!("identity-first {round}"));
                check_gz(&gz("?order=2"), &format!("gzip-second {round}"));
            }
            // Declared Vary: one fetch per URL and encoding. Silent variance: the gzip-first
            // URL stores both (the encoded body forces a variant), the identity-first URL
            // serves its identity body to gzip clients too.
            let want = if vary { 4 } else { 3 };
            assert_eq!(
                up.count(),
                want,
                "{what}: the second round came from the cache"
            );
            assert_eq!(x_cache(&plain("")), "HIT", "{what}");
            assert_eq!(x_cache(&gz("?order=2")), "HIT", "{what}");
        }
    }
}

/// An origin that answers `requests` requests and then goes away: its port refuses.
fn vanishing_origin(requests: usize) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut answered = 0;
        // Health checks connect and close without a request: they do not count.
        while answered < requests {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut conn = HttpConn::new(stream.try_clone().expect("clone"));
            if !matches!(conn.read_request(), Ok(Some(_))) {
                continue;
            }
            let body = r#"{"last":"words"}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            answered += 1;
        }
        // the listener drops here: connections are refused from now on
    });
    addr
}

#[test]
fn origin_down_stale_within_the_window_then_502() {
    for store in [Store::Redis, Store::Memory] {
        let addr = vanishing_origin(1);
        let redis = matches!(store, Store::Redis).then(Redis::start);
        let store_toml = redis.as_ref().map_or(String::new(), |r| {
            format!("[store]\nredis_url = \"{}\"\n", r.url())
        });
        let r = Rampart::start(&format!(
            "{}connect_retries = 0\n[[routes]]\nname = \"kpis\"\nprefix = \"{KPIS}\"\nupstream = \"u\"\ncache = \"kpis\"\n\
             {store_toml}[cache.policies.kpis]\nttl = \"1s\"\nstale_if_error = \"2s\"\n",
            upstream_toml("u", &[&addr])
        ));
        let first = r.get(KPIS);
        assert_eq!(first.text(), r#"{"last":"words"}"#);
        std::thread::sleep(Duration::from_millis(1200));
        let stale = r.get(KPIS);
        assert_eq!(stale.status, 200, "{store:?}: refused -> stale");
        assert_eq!(stale.body, first.body);
        assert_eq!(x_cache(&stale), "STALE");
        std::thread::sleep(Duration::from_millis(2000));
        assert_eq!(r.get(KPIS).status, 502, "{store:?}: after the window");
    }
}

/// Two replicas on one Redis, 10 concurrent cold requests each: one upstream fetch in all.
/// And when the fetch is not cacheable, the other replica's waiters go upstream at once, not
/// after `lock_timeout`.
#[test]
fn replicas_coordinate_fills_through_redis() {
    let up = Upstream::start(|req| {
        let reply = Reply::json(r#"{"slow":true}"#).delay(Duration::from_millis(400));
        if req.target.ends_with("private") {
            reply.header("cache-control", "private")
        } else {
            reply
        }
    });
    let redis = Redis::start();
    let body = config(&up, Some(&redis), "ttl = \"60s\"\nlock_timeout = \"10s\"");
    let replicas = [Rampart::start(&body), Rampart::start(&body)];

    let run = |path: &'static str| {
        let threads: Vec<_> = (0..20)
            .map(|i| {
                let addr = replicas[i % 2].addr;
                std::thread::spawn(move || get(addr, path))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("client thread"))
            .collect::<Vec<_>>()
    };
    for resp in run(KPIS) {
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), r#"{"slow":true}"#);
    }
    assert_eq!(
        up.count(),
        1,
        "20 cold requests on 2 replicas, one upstream fetch"
    );

    let started = Instant::now();
    for resp in run("/api/v1/dashboard/kpis/private") {
        assert_eq!(resp.status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "waiters were released when the fetch was not cacheable: {:?}",
        started.elapsed()
    );
    assert!(up.count() > 2, "uncacheable: each request fetched");
}

/// The near tier in front of Redis: a hot entry is served in process after its first hit (no
/// round trip), a purge or an unsafe request through one replica reaches the other's tier
/// within its epoch poll (100 ms; asserted within 1 s), and a Redis outage empties it (every
/// request answered, misses within 1 s).
#[test]
fn near_tier_serves_hot_entries_and_purges_reach_every_replica() {
    let up = kpi_origin();
    let mut redis = Redis::start();
    let conf = config(&up, Some(&redis), "ttl = \"60s\"");
    let (a, b) = (Rampart::start(&conf), Rampart::start(&conf));
    let n = |resp: &Response| resp.json()["n"].as_u64().unwrap_or(0);
    let round_trips = |r: &Rampart| {
        sample(
            &r.metrics(),
            r#"rampart_store_command_duration_seconds_count{backend="redis",op="cache_get"}"#,
        )
        .unwrap_or(0.0)
    };

    assert_eq!(x_cache(&b.get(KPIS)), "MISS");
    for _ in 0..21 {
        let hit = b.get(KPIS);
        assert_eq!(x_cache(&hit), "HIT");
        assert_eq!(n(&hit), 1);
    }
    assert_eq!(
        round_trips(&b),
        2.0,
        "the miss and the first hit; 20 from the near tier"
    );
    assert_eq!(
        sample(
            &b.metrics(),
            r#"rampart_cache_near_hits_total{route="kpis"}"#
        ),
        Some(20.0),
        "counted as near hits"
    );
    let hit = a.get(KPIS);
    assert_eq!((x_cache(&hit), n(&hit)), ("HIT", 1), "shared through Redis");
    assert_eq!(up.count(), 1);

    // Purged through a: b's tier forgets it at its next epoch poll.
    let purged = purge(&a, &format!(r#"{{"url": "http://rampart.test{KPIS}"}}"#));
    assert_eq!(purged.status, 200, "{}", purged.text());
    let reached = |r: &Rampart, old: u64| {
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if n(&r.get(KPIS)) != old {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    };
    assert!(reached(&b, 1), "the purge reached b's near tier within 1 s");
    let now = n(&a.get(KPIS));
    assert!(now > 1, "a refilled after its own purge");

    // An unsafe request through a invalidates the URL on b too.
    let before = n(&b.get(KPIS));
    let post = a.request("POST", KPIS, &[], Some(b"{}"));
    assert_eq!(post.status, 200);
    assert!(reached(&b, before), "the invalidation reached b within 1 s");

    // Redis gone: answered, and misses once the outage is seen.
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut missed = false;
    while Instant::now() < deadline && !missed {
        let resp = b.get(KPIS);
        assert_eq!(resp.status, 200);
        missed = x_cache(&resp) == "MISS";
    }
    assert!(missed, "the near tier emptied within 1 s of the outage");
    for _ in 0..5 {
        let resp = b.get(KPIS);
        assert_eq!((resp.status, x_cache(&resp)), (200, "MISS"));
    }
}
