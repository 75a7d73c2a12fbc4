//! Rate limiting with real parts: redis-server, upstreams, Rampart in-process and as three
//! separate processes, raw TCP clients. Exactness is checked with slow refill rates (one token
//! per hour) so the time a burst takes to send cannot add tokens; refill checks state their
//! tolerance.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

const TRUSTED: &str = "trusted_proxies = [\"127.0.0.0/8\"]";

/// Upstream `u`, route `api` (/api/) and route `site` (/), the store, and `rest`.
fn body(up: &Upstream, redis_url: Option<&str>, rest: &str) -> String {
    let store = redis_url
        .map(|u| format!("[store]\nredis_url = \"{u}\"\ntimeout = \"200ms\"\n"))
        .unwrap_or_default();
    format!(
        "{}[[routes]]\nname = \"api\"\nprefix = \"/api/\"\nupstream = \"u\"\n\
         [[routes]]\nname = \"site\"\nprefix = \"/\"\nupstream = \"u\"\n{store}{rest}",
        upstream_toml("u", &[&up.addr])
    )
}

#[test]
fn concurrent_burst_admits_exactly_the_limit_in_memory() {
    let up = Upstream::named("ok");
    for l in [1usize, 5, 20] {
        let r = Rampart::start_with(
            &body(
                &up,
                None,
                &format!("[ratelimit.policies.p{l}]\nrate = \"1/h\"\nburst = {l}\n"),
            ),
            TRUSTED,
        );
        let n = 2 * l + 10;
        let statuses = burst(&[r.addr], "/api/x", &format!("198.51.100.{l}"), n);
        assert_eq!(count(&statuses, 200), l, "limit {l}: {statuses:?}");
        assert_eq!(count(&statuses, 429), n - l, "limit {l}: {statuses:?}");
    }
}

#[test]
fn cors_preflights_are_not_limited() {
    let up = Upstream::named("ok");
    let r = Rampart::start(&format!(
        "{}[[routes]]\nname = \"api\"\nprefix = \"/api/\"\nupstream = \"u\"\ncors = \"c\"\n\
         [cors.c]\nallow_origins = [\"*\"]\n\
         [ratelimit.policies.p]\nrate = \"1/h\"\nburst = 1\n",
        upstream_toml("u", &[&up.addr])
    ));
    let preflight = [
        ("Origin", "https://dash.example"),
        ("Access-Control-Request-Method", "GET"),
    ];
    for _ in 0..3 {
        let resp = r.request("OPTIONS", "/api/x", &preflight, None);
        assert_eq!(resp.status, 204);
        assert_eq!(resp.header("ratelimit"), None);
    }
    assert_eq!(r.get("/api/x").status, 200);
    assert_eq!(r.get("/api/x").status, 429);
}

#[test]
fn concurrent_burst_admits_exactly_the_limit_on_redis() {
    let redis = Redis::start();
    let up = Upstream::named("ok");
    for l in [1usize, 5, 20] {
        let r = Rampart::start_with(
            &body(
                &up,
                Some(&redis.url()),
                &format!("[ratelimit.policies.p{l}]\nrate = \"1/h\"\nburst = {l}\n"),
            ),
            TRUSTED,
        );
        let n = 2 * l + 10;
        let statuses = burst(&[r.addr], "/api/x", &format!("198.51.100.{l}"), n);
        assert_eq!(count(&statuses, 200), l, "limit {l}: {statuses:?}");
        assert_eq!(count(&statuses, 429), n - l, "limit {l}: {statuses:?}");
        // The bucket is in Redis, under the prefix and hash tag, with a TTL.
        let key = format!("rampart:rl:{{ip:198.51.100.{l}}}:p{l}");
        assert_eq!(redis.cmd::<i64>(&["EXISTS", &key]), 1, "{key}");
        let ttl: i64 = redis.cmd(&["PTTL", &key]);
        assert!(ttl > 0, "{key} has a TTL: {ttl}");
    }
}

/// Requests that arrive while the limiter's script calls are in flight go to Redis together,
/// and are decided as one script each would decide them. Redis is paused (`CLIENT PAUSE`)
/// while 40 requests arrive at once: 20 clients of their own, and 20 from one client with a
/// burst of 5. Every request is answered, exactly 5 of the one client's are admitted, and
/// the 40 took a handful of scripts, not 40.
#[test]
fn concurrent_requests_share_limiter_round_trips() {
    let redis = Redis::start();
    let up = Upstream::named("ok");
    let config = body(
        &up,
        Some(&redis.url()),
        "[ratelimit.policies.p]\nrate = \"1/h\"\nburst = 5\n",
    )
    .replace("timeout = \"200ms\"", "timeout = \"3s\"");
    let r = Rampart::start_with(&config, TRUSTED);
    // Warm-up: connects and loads the script.
    assert_eq!(get_as(r.addr, "/api/x", "192.0.2.200").status, 200);
    let _: String = redis.cmd(&["CONFIG", "RESETSTAT"]);
    let _: String = redis.cmd(&["CLIENT", "PAUSE", "500", "ALL"]);
    let addr = r.addr;
    let threads: Vec<_> = (0..40)
        .map(|i| {
            let ip = if i % 2 == 0 {
                format!("192.0.2.{}", i / 2 + 1)
            } else {
                "198.51.100.77".to_string()
            };
            std::thread::spawn(move || (i % 2 == 0, get_as(addr, "/api/x", &ip).status))
        })
        .collect();
    let statuses: Vec<(bool, u16)> = threads
        .into_iter()
        .map(|t| t.join().expect("request thread"))
        .collect();
    let own: Vec<u16> = statuses.iter().filter(|s| s.0).map(|s| s.1).collect();
    let shared: Vec<u16> = statuses.iter().filter(|s| !s.0).map(|s| s.1).collect();
    assert_eq!(count(&own, 200), 20, "clients of their own: {own:?}");
    assert_eq!(count(&shared, 200), 5, "one client, burst 5: {shared:?}");
    assert_eq!(count(&shared, 429), 15, "{shared:?}");
    let calls = script_calls(&redis);
    eprintln!("limiter scripts for 40 concurrent requests: {calls}");
    assert!((1..=8).contains(&calls), "{calls} scripts for 40 requests");
}

/// `EVALSHA` calls Redis counted since the last `CONFIG RESETSTAT`.
fn script_calls(redis: &Redis) -> usize {
    redis
        .info("commandstats")
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The lease tests' policy: 100 tokens, one back per 36 s (none during a test), leased 10 at a
/// time.
const LEASED: &str = "[ratelimit.policies.fast]\nrate = \"100/h\"\nburst = 100\nlease = 10\n";

/// A leased policy (`lease = 10`, burst 100) on two replicas sharing Redis: tokens are taken
/// ten at a time while the bucket is more than half full and one by one after, so 150
/// requests alternating between the replicas admit exactly the 100 the bucket holds, with far
/// fewer scripts than requests; both replicas refuse afterwards.
#[test]
fn leased_tokens_admit_exactly_the_bucket_across_replicas() {
    let redis = Redis::start();
    let up = Upstream::named("ok");
    let config = body(&up, Some(&redis.url()), LEASED);
    let procs: Vec<Process> = (0..2).map(|_| spawn_rampart(&config)).collect();
    // Warm-up on another client: connects and loads the script.
    for p in &procs {
        assert_eq!(get_as(p.addr, "/api/x", "192.0.2.250").status, 200);
    }
    let _: String = redis.cmd(&["CONFIG", "RESETSTAT"]);
    let statuses: Vec<u16> = (0..150)
        .map(|i| get_as(procs[i % 2].addr, "/api/x", "203.0.113.60").status)
        .collect();
    assert_eq!(count(&statuses, 200), 100, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 50, "{statuses:?}");
    assert!(
        statuses[..100].iter().all(|s| *s == 200),
        "admitted first, then refused: {statuses:?}"
    );
    let calls = script_calls(&redis);
    eprintln!("limiter scripts for 150 requests with lease = 10: {calls}");
    // Five leases below half the bucket, then one script per request to the limit, then each
    // replica learns the refusal once: 57 (more if a lease expires unspent on a slow
    // machine); without leases 102.
    assert!((7..=80).contains(&calls), "{calls} scripts");
    for p in &procs {
        assert_eq!(get_as(p.addr, "/api/x", "203.0.113.60").status, 429);
    }
}

/// What a lease did not spend goes back to the bucket with the replica's next call: replica
/// A takes a lease of 10 for one request, lets it expire, and on its next request gives the
/// 9 back (and takes a new lease). Replica B then gets exactly what is left, 100 - 2 - 9
/// held by A = 89 (80 had the 9 not come back).
#[test]
fn unspent_lease_tokens_go_back_to_the_bucket() {
    let redis = Redis::start();
    let up = Upstream::named("ok");
    let config = body(&up, Some(&redis.url()), LEASED);
    let (a, b) = (spawn_rampart(&config), spawn_rampart(&config));
    let ip = "203.0.113.61";
    assert_eq!(get_as(a.addr, "/api/x", ip).status, 200);
    // Past the lease's lifetime (100 ms).
    std::thread::sleep(Duration::from_millis(250));
    let second = get_as(a.addr, "/api/x", ip);
    assert_eq!(second.status, 200);
    assert_eq!(
        second.header("ratelimit"),
        Some("\"fast\";r=98;t=72"),
        "remaining as if each request took one token"
    );
    let statuses: Vec<u16> = (0..120)
        .map(|_| get_as(b.addr, "/api/x", ip).status)
        .collect();
    assert_eq!(count(&statuses, 200), 89, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 31, "{statuses:?}");
    // A leased 9 tokens beyond each of its two requests' own, and gave 9 back.
    let metrics = a.admin_get("/metrics").text();
    for line in [
        "rampart_ratelimit_lease_tokens_total{event=\"leased\",policy=\"fast\"} 18",
        "rampart_ratelimit_lease_tokens_total{event=\"returned\",policy=\"fast\"} 9",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

fn spawn_rampart(body: &str) -> Process {
    spawn_rampart_logging(body, None)
}

/// As [`spawn_rampart`], its log (RUST_LOG=warn) going to `log`.
fn spawn_rampart_logging(body: &str, log: Option<&std::path::Path>) -> Process {
    Process::spawn(body, TRUSTED, log, &[])
}

#[test]
fn three_processes_sharing_redis_admit_exactly_the_limit() {
    let redis = Redis::start();
    let up = Upstream::named("ok");
    let config = body(
        &up,
        Some(&redis.url()),
        "[ratelimit.policies.shared]\nrate = \"1/h\"\nburst = 10\n",
    );
    let procs: Vec<Process> = (0..3).map(|_| spawn_rampart(&config)).collect();
    let addrs: Vec<SocketAddr> = procs.iter().map(|p| p.addr).collect();
    for (round, ip) in ["203.0.113.1", "203.0.113.2"].iter().enumerate() {
        let statuses = burst(&addrs, "/api/x", ip, 36);
        assert_eq!(
            count(&statuses, 200),
            10,
            "round {round}, 36 requests over 3 processes: {statuses:?}"
        );
        assert_eq!(count(&statuses, 429), 26, "{statuses:?}");
    }
    // Each process answered its share of 429s itself (the limit is shared, not per process).
    for addr in &addrs {
        assert_eq!(get_as(*addr, "/api/x", "203.0.113.1").status, 429);
    }
}

#[test]
fn one_redis_round_trip_per_request() {
    let redis = Redis::start();
    let up = Upstream::named("ok");
    // Two policies apply to /api/: still one script.
    let r = Rampart::start_with(
        &body(
            &up,
            Some(&redis.url()),
            "[ratelimit.policies.all]\nrate = \"1000/s\"\n[ratelimit.policies.api]\nrate = \"1000/s\"\nroutes = [\"api\"]\n",
        ),
        TRUSTED,
    );
    // Warm-up: connects and loads the script (NOSCRIPT -> SCRIPT LOAD -> EVALSHA, once).
    assert_eq!(get_as(r.addr, "/api/x", "192.0.2.1").status, 200);

    // MONITOR answers +OK and then streams one status reply per command: the redis crate
    // reads those with `send_packed_command` and `recv_response`.
    let mut monitor = redis.connection().expect("monitor");
    monitor
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    monitor
        .send_packed_command(&redis::cmd("MONITOR").get_packed_command())
        .expect("MONITOR");
    assert_eq!(monitor.recv_response().expect("+OK"), redis::Value::Okay);

    let requests = 10;
    for i in 0..requests {
        assert_eq!(
            get_as(r.addr, "/api/x", &format!("192.0.2.{}", i + 10)).status,
            200
        );
    }
    let mut client_commands = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    // Until a read times out (500 ms without a command) or the deadline passes.
    while let Ok(reply) = monitor.recv_response() {
        let line: String = redis::from_redis_value(&reply).expect("a MONITOR line");
        // Commands run inside the script are shown with source "[0 lua]".
        if !line.contains(" lua]") {
            client_commands.push(line.trim().to_string());
        }
        if Instant::now() > deadline {
            break;
        }
    }
    eprintln!(
        "redis round trips for {requests} requests with 2 policies each: {}",
        client_commands.len()
    );
    assert_eq!(client_commands.len(), requests, "{client_commands:#?}");
    assert!(
        client_commands.iter().all(|c| c.contains("\"EVALSHA\"")),
        "{client_commands:#?}"
    );
    let stats = redis.info("commandstats");
    let evalsha = stats
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .unwrap_or("");
    eprintln!("{evalsha}");
}

#[test]
fn refill_brings_tokens_back() {
    let up = Upstream::named("ok");
    // 4 tokens, one back every 250 ms.
    let r = Rampart::start_with(
        &body(
            &up,
            None,
            "[ratelimit.policies.p]\nrate = \"4/s\"\nburst = 4\n",
        ),
        TRUSTED,
    );
    let ip = "192.0.2.50";
    let admitted = |n: usize| -> usize {
        (0..n)
            .filter(|_| get_as(r.addr, "/x", ip).status == 200)
            .count()
    };
    // Sequential requests take a few ms each: at most one token can come back meanwhile.
    let first = admitted(6);
    assert!((4..=5).contains(&first), "fresh bucket: {first} of 6");
    assert_eq!(get_as(r.addr, "/x", ip).status, 429, "drained");
    // Half a second: 2 tokens back (tolerance +1 for the time the requests take).
    std::thread::sleep(Duration::from_millis(500));
    let half = admitted(5);
    assert!((2..=3).contains(&half), "after 500 ms: {half}");
    // A full second and more: the bucket is full (4), never more than the burst (+1 tolerance).
    std::thread::sleep(Duration::from_millis(1100));
    let full = admitted(7);
    assert!((4..=5).contains(&full), "after 1.1 s: {full}");
}

#[test]
fn spoofed_forwarded_for_does_not_change_the_key() {
    let redis = Redis::start();
    let up = Upstream::named("ok");
    let policy = "[ratelimit.policies.p]\nrate = \"1/h\"\nburst = 2\n";
    // Untrusted peer: its X-Forwarded-For is ignored, all three are 127.0.0.1.
    let r = Rampart::start(&body(&up, Some(&redis.url()), policy));
    assert_eq!(get_as(r.addr, "/x", "1.1.1.1").status, 200);
    assert_eq!(get_as(r.addr, "/x", "2.2.2.2").status, 200);
    assert_eq!(get_as(r.addr, "/x", "3.3.3.3").status, 429);
    assert_eq!(
        redis.cmd::<i64>(&["EXISTS", "rampart:rl:{ip:127.0.0.1}:p"]),
        1
    );
    drop(r);
    // Trusted proxy: the right-most untrusted entry is the client.
    let r = Rampart::start_with(&body(&up, Some(&redis.url()), policy), TRUSTED);
    assert_eq!(get_as(r.addr, "/x", "9.9.9.1").status, 200);
    assert_eq!(get_as(r.addr, "/x", "6.6.6.6, 9.9.9.1").status, 200);
    assert_eq!(get_as(r.addr, "/x", "7.7.7.7, 9.9.9.1").status, 429);
    assert_eq!(get_as(r.addr, "/x", "9.9.9.2").status, 200);
    assert_eq!(
        redis.cmd::<i64>(&["EXISTS", "rampart:rl:{ip:9.9.9.1}:p"]),
        1
    );
}

#[test]
fn header_and_route_keys() {
    let up = Upstream::named("ok");
    let r = Rampart::start(&body(
        &up,
        None,
        "[ratelimit.policies.by_key]\nrate = \"1/h\"\nburst = 1\nkey = \"header:X-Api-Key\"\nroutes = [\"api\"]\n\
         [ratelimit.policies.whole_site]\nrate = \"1/h\"\nburst = 2\nkey = \"route\"\nroutes = [\"site\"]\n",
    ));
    let with_key = |k: &str| r.request("GET", "/api/x", &[("X-Api-Key", k)], None).status;
    assert_eq!(with_key("alpha"), 200);
    assert_eq!(with_key("alpha"), 429);
    assert_eq!(with_key("beta"), 200);
    // Whoever asks, the route has two tokens.
    assert_eq!(get_as(r.addr, "/a", "1.1.1.1").status, 200);
    assert_eq!(get_as(r.addr, "/b", "2.2.2.2").status, 200);
    assert_eq!(get_as(r.addr, "/c", "3.3.3.3").status, 429);
}

#[test]
fn headers_for_accepted_last_token_and_rejected() {
    let up = Upstream::named("ok");
    // 3 tokens, one back every 10 s: w = 30.
    let r = Rampart::start(&body(
        &up,
        None,
        "[ratelimit.policies.p]\nrate = \"3/30s\"\n",
    ));
    let first = r.get("/x");
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "ok");
    assert_eq!(first.header("ratelimit-policy"), Some("\"p\";q=3;w=30"));
    assert_eq!(first.header("ratelimit"), Some("\"p\";r=2;t=10"));
    assert_eq!(first.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("2"));
    assert_eq!(first.header("x-ratelimit-reset"), Some("10"));
    let second = r.get("/x");
    assert_eq!(second.header("ratelimit"), Some("\"p\";r=1;t=20"));
    let last = r.get("/x");
    assert_eq!(last.status, 200);
    assert_eq!(last.header("ratelimit"), Some("\"p\";r=0;t=30"));
    assert_eq!(last.header("x-ratelimit-remaining"), Some("0"));

    let rejected = r.get("/x");
    assert_eq!(rejected.status, 429);
    assert_eq!(rejected.header("retry-after"), Some("10"));
    assert_eq!(rejected.header("ratelimit-policy"), Some("\"p\";q=3;w=30"));
    assert_eq!(rejected.header("ratelimit"), Some("\"p\";r=0;t=30"));
    assert_eq!(rejected.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        rejected.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(rejected.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(rejected.header("x-frame-options"), Some("SAMEORIGIN"));
    let problem = rejected.json();
    assert_eq!(problem["status"], 429);
    assert_eq!(
        problem["request_id"].as_str(),
        rejected.header("x-request-id")
    );
    assert_eq!(
        up.count(),
        3,
        "the rejected request never reached the upstream"
    );
    assert!(r
        .metrics()
        .contains("rampart_ratelimit_decisions_total{outcome=\"limited\",policy=\"p\"} 1"));
}

#[test]
fn two_policies_report_only_and_no_legacy_headers() {
    let up = Upstream::named("ok");
    let r = Rampart::start(&body(
        &up,
        None,
        "[ratelimit]\nlegacy_headers = false\n\
         [ratelimit.policies.api]\nrate = \"1/h\"\nburst = 5\nroutes = [\"api\"]\n\
         [ratelimit.policies.trial]\nrate = \"1/h\"\nburst = 1\nreport_only = true\n",
    ));
    for i in 0..3 {
        let resp = r.get("/api/x");
        assert_eq!(resp.status, 200, "report-only never rejects");
        assert_eq!(
            resp.header("ratelimit-policy"),
            Some("\"api\";q=5;w=18000, \"trial\";q=1;w=3600")
        );
        // trial: its one token went on the first request; later ones are over but pass.
        let expected = format!(
            "\"api\";r={};t={}, \"trial\";r=0;t=3600",
            4 - i,
            3600 * (i + 1)
        );
        assert_eq!(resp.header("ratelimit"), Some(expected.as_str()));
        assert_eq!(resp.header("x-ratelimit-limit"), None);
    }
    let text = r.metrics();
    assert!(
        text.contains(
            "rampart_ratelimit_decisions_total{outcome=\"report_only_limited\",policy=\"trial\"} 2"
        ),
        "{text}"
    );
    assert!(
        text.contains("rampart_ratelimit_decisions_total{outcome=\"allowed\",policy=\"api\"} 3"),
        "{text}"
    );
}

#[test]
fn redis_outage_falls_back_locally_and_recovers() {
    let mut redis = Redis::start();
    let port = redis.port;
    let up = Upstream::named("ok");
    let r = Rampart::start_with(
        &body(
            &up,
            Some(&redis.url()),
            "[ratelimit.policies.p]\nrate = \"1/h\"\nburst = 3\n",
        ),
        TRUSTED,
    );
    let statuses: Vec<u16> = (0..5)
        .map(|_| get_as(r.addr, "/x", "10.9.0.1").status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);

    redis.kill();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let started = Instant::now();
        statuses.push(get_as(r.addr, "/x", "10.9.0.2").status);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "answered within the store timeout"
        );
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429, 429],
        "local buckets limit"
    );
    let text = r.metrics();
    assert!(
        text.contains("rampart_store_fallback_active{feature=\"ratelimit\"} 1"),
        "{text}"
    );
    assert!(text.contains("rampart_ratelimit_decisions_total{outcome=\"fallback\",policy=\"p\"}"));

    let redis = Redis::start_on(port);
    // Shared limiting resumes by itself: wait (bounded) until a request lands in Redis.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    loop {
        n += 1;
        let ip = format!("10.9.1.{n}");
        assert_eq!(get_as(r.addr, "/x", &ip).status, 200);
        if redis
            .try_cmd(&["EXISTS", &format!("rampart:rl:{{ip:{ip}}}:p")])
            .is_ok_and(|n: i64| n == 1)
        {
            break;
        }
        assert!(Instant::now() < deadline, "shared limiting never resumed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let statuses: Vec<u16> = (0..4)
        .map(|_| get_as(r.addr, "/x", "10.9.0.3").status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert!(
        redis
            .cmd::<Option<Vec<u8>>>(&["GET", "rampart:rl:{ip:10.9.0.3}:p"])
            .is_some(),
        "the bucket is in Redis again"
    );
    assert!(r
        .metrics()
        .contains("rampart_store_fallback_active{feature=\"ratelimit\"} 0"));
}

#[test]
fn on_store_error_allow_and_deny() {
    let up = Upstream::named("ok");
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let policy = |mode: &str| {
        format!("[ratelimit]\non_store_error = \"{mode}\"\n[ratelimit.policies.p]\nrate = \"1/h\"\nburst = 1\n")
    };
    let allow = Rampart::start(&body(&up, Some(&dead), &policy("allow")));
    for _ in 0..3 {
        let started = Instant::now();
        let resp = allow.get("/x");
        assert_eq!(resp.status, 200, "allow: unlimited while Redis is out");
        assert_eq!(resp.header("ratelimit"), None, "no bucket, no numbers");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let deny = Rampart::start(&body(&up, Some(&dead), &policy("deny")));
    let before = up.count();
    for _ in 0..3 {
        let resp = deny.get("/x");
        assert_eq!(resp.status, 503, "deny: {}", resp.text());
        assert_eq!(
            resp.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(resp.header("retry-after"), Some("1"));
        assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    }
    assert_eq!(up.count(), before, "deny keeps traffic off the upstream");
}

#[test]
fn shipped_bench_ratelimit_config_passes_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RAMPART_CONFIG")
        .args(["check", "--config", "config/bench-ratelimit.toml"])
        .output()
        .expect("rampart check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fallback_is_logged_once_per_outage() {
    let mut redis = Redis::start();
    let port = redis.port;
    let up = Upstream::named("ok");
    let log_dir = TempDir::new("rl-log");
    let log = log_dir.path().join("stderr.log");
    let p = spawn_rampart_logging(
        &body(
            &up,
            Some(&redis.url()),
            "[ratelimit.policies.p]\nrate = \"1000/s\"\n",
        ),
        Some(&log),
    );
    let logged = |needle: &str| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().filter(|l| l.contains(needle)).count()
    };
    // Shared again: a request's bucket is in Redis and the limiter has said so `resumed`
    // times. (A key alone is not enough under load: a call that timed out on Rampart's side
    // can still have run on Redis.)
    let wait_shared = |redis: &Redis, tag: &str, resumed: usize| {
        let deadline = Instant::now() + Duration::from_secs(15);
        for n in 0.. {
            let ip = format!("10.{tag}.0.{}", n % 250);
            assert_eq!(get_as(p.addr, "/x", &ip).status, 200);
            let key = format!("rampart:rl:{{ip:{ip}}}:p");
            if redis.try_cmd(&["EXISTS", &key]).is_ok_and(|n: i64| n == 1)
                && logged("ratelimit: Redis answers again") >= resumed
            {
                return;
            }
            assert!(Instant::now() < deadline, "shared limiting never resumed");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_shared(&redis, "1", 0);
    for outage in 0..2 {
        redis.kill();
        for i in 0..20 {
            assert_eq!(
                get_as(p.addr, "/x", &format!("10.2.{outage}.{i}")).status,
                200
            );
        }
        redis = Redis::start_on(port);
        wait_shared(&redis, "3", outage + 1);
    }
    drop(p);
    let text = std::fs::read_to_string(&log).expect("read log");
    let lines = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(lines("ratelimit: shared store unavailable"), 2, "{text}");
    assert_eq!(lines("ratelimit: Redis answers again"), 2, "{text}");
}

/// A route's limit cannot be skipped by spelling its path another way: every spelling is
/// charged to the same bucket (or refused), so a burst of 2 admits exactly 2.
#[test]
fn encoded_paths_are_charged_to_the_route_they_reach() {
    let up = Upstream::named("ok");
    let r = Rampart::start_with(
        &body(
            &up,
            None,
            "[ratelimit.policies.api]\nrate = \"1/h\"\nburst = 2\nroutes = [\"api\"]\n",
        ),
        TRUSTED,
    );
    let mut admitted = 0;
    for path in [
        "/api/x",
        "/%61pi/x",
        "//api/x",
        "/api%2fx",
        "/x/..%2fapi/x",
        "/ap%69/x",
        "/api/./x",
    ] {
        let status = get_as(r.addr, path, "198.51.100.77").status;
        assert!(matches!(status, 200 | 429 | 400), "{path}: {status}");
        if status == 200 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 2, "the /api/ limit was bypassed");
    assert_eq!(up.count(), 2);
}

/// config/proxy.toml as shipped: `per_client` (the old FastAPI middleware's 100 / 60 s) counts
/// requests to the backend only, as the middleware did; the frontend is never charged.
#[test]
fn shipped_per_client_limit_counts_backend_routes_only() {
    let backend = Upstream::named("backend");
    let frontend = Upstream::named("frontend");
    let r = Rampart::start_file(
        "config/proxy.toml",
        &[
            ("RAMPART_UPSTREAM_BACKEND", backend.addr.to_string()),
            ("RAMPART_UPSTREAM_FRONTEND", frontend.addr.to_string()),
        ],
    );
    // Its routes are exactly the routes to the backend (a new one must be added to it).
    let policy = &r.config.ratelimit.policies["per_client"];
    let limited: Vec<&str> = policy.routes.iter().map(|n| n.as_str()).collect();
    let to_backend: Vec<&str> = r
        .config
        .routes
        .iter()
        .filter(|route| route.upstream.as_str() == "backend")
        .map(|route| route.name.as_str())
        .collect();
    assert_eq!(limited, to_backend);

    for i in 0..150 {
        let resp = r.get(&format!("/static/app-{i}.js"));
        assert_eq!(resp.status, 200, "frontend request {i}");
        assert_eq!(resp.header("ratelimit-policy"), None);
    }
    // The backend's budget is whole: 100 pass, the 101st is refused.
    let statuses: Vec<u16> = (0..101).map(|_| r.get("/health").status).collect();
    assert_eq!(count(&statuses[..100], 200), 100, "{statuses:?}");
    assert_eq!(statuses[100], 429);
    assert_eq!(r.get("/").text(), "frontend");
}

/// A client the limiter refused is answered by the connection gate until its bucket can
/// admit: the same 429 as the one Pingora sent (fields, order, body but its request id), on
/// the same keep-alive connection, pipelined requests in order, a body-carrying request still
/// answered, `Connection: close` honoured, every refusal counted, none reaching the upstream.
#[test]
fn known_refused_clients_are_answered_like_the_first_refusal() {
    known_refused_clients(None);
}

/// The same on Redis, where the refusals after the first cost no script either.
#[test]
fn known_refused_clients_are_answered_without_redis() {
    let redis = Redis::start();
    let after_first = known_refused_clients(Some(&redis));
    assert_eq!(
        script_calls(&redis),
        after_first,
        "no script after the first refusal"
    );
}

/// The scenario of the two tests above; on Redis, the script calls counted just after the
/// limiter's own refusal.
fn known_refused_clients(redis: Option<&Redis>) -> usize {
    let up = Upstream::named("ok");
    let url = redis.map(|r| r.url());
    let r = Rampart::start(&body(
        &up,
        url.as_deref(),
        "[ratelimit.policies.p]\nrate = \"1/h\"\nburst = 2\nroutes = [\"api\"]\n",
    ));
    let mut conn = HttpConn::connect(r.addr).expect("connect");
    let get = b"GET /api/x HTTP/1.1\r\nHost: rampart.test\r\n\r\n";
    let mut next = |raw: &[u8], head_only: bool| {
        conn.write_all(raw).expect("write");
        conn.read_response(head_only).expect("response")
    };
    assert_eq!(next(get, false).status, 200);
    assert_eq!(next(get, false).status, 200);
    let first = next(get, false);
    assert_eq!(first.status, 429, "the limiter's own refusal");
    let scripts = redis.map_or(0, script_calls);
    let known = next(get, false);
    assert_eq!(known.status, 429, "answered before Pingora");
    // Same fields in the same order; only per-request values differ.
    let names = |r: &Response| r.headers.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(names(&first), names(&known));
    for (name, value) in &first.headers {
        if !matches!(name.as_str(), "x-request-id" | "x-process-time" | "date") {
            assert_eq!(known.header(name), Some(value.as_str()), "{name}");
        }
    }
    assert_eq!(known.header("connection"), Some("keep-alive"));
    let id = known.header("x-request-id").expect("request id");
    assert_ne!(Some(id), first.header("x-request-id"));
    let expected = first
        .text()
        .replace(first.header("x-request-id").expect("request id"), id);
    assert_eq!(known.text(), expected);

    // Pipelined: answered in order on the same connection (HEAD without a body).
    let mut pipelined = b"HEAD /api/x HTTP/1.1\r\nHost: rampart.test\r\n\r\n".to_vec();
    pipelined.extend_from_slice(get);
    conn.write_all(&pipelined).expect("write");
    let head = conn.read_response(true).expect("HEAD");
    assert_eq!(head.status, 429);
    assert_eq!(
        head.header("content-length"),
        first.header("content-length")
    );
    let after = conn.read_response(false).expect("GET after");
    assert_eq!(after.status, 429);
    assert_eq!(after.json()["status"], 429);

    // The client closes: the answer says so and the connection ends.
    conn.write_all(b"GET /api/x HTTP/1.1\r\nHost: rampart.test\r\nConnection: close\r\n\r\n")
        .expect("write");
    let closing = conn.read_response(false).expect("last");
    assert_eq!(closing.status, 429);
    assert_eq!(closing.header("connection"), Some("close"));
    assert!(conn.closed_within(Duration::from_secs(5)).is_some());

    // A request with a body is Pingora's to answer (the gate never reads bodies): refused
    // too.
    let post = request(r.addr, "POST", "/api/x", &[], Some(b"abc"));
    assert_eq!(post.status, 429);

    assert_eq!(up.count(), 2, "no refused request reached the upstream");
    let metrics = r.metrics();
    assert!(
        metrics.contains("rampart_ratelimit_decisions_total{outcome=\"limited\",policy=\"p\"} 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("http_requests_total{method=\"GET\",route=\"api\",status=\"429\"} 4"),
        "{metrics}"
    );
    scripts
}
