//! Configuration reload (what SIGHUP does), on servers started from a config file: new
//! requests see the new file, requests in flight finish on the old one, a broken file or a
//! listener change is refused with the running configuration kept, and what should survive a
//! reload (the Redis connection, cached entries, drained rate-limit buckets, health checks of
//! kept groups) does.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

/// An upstream group, a route `/api/` to it, and an `X-Config` response header saying which
/// file version is running.
fn body(up: &Upstream, version: &str, extra: &str) -> String {
    format!(
        "{}[[routes]]\nname = \"api\"\nprefix = \"/api/\"\nupstream = \"u\"\n{extra}\n[headers.security]\nX-Config = \"{version}\"\n",
        upstream_toml("u", &[&up.addr])
    )
}

fn health(r: &Rampart) -> serde_json::Value {
    r.admin_get("/healthz").json()
}

#[test]
fn reload_applies_a_new_route_and_a_changed_header() {
    let a = Upstream::named("a");
    let b = Upstream::named("b");
    let r = Rampart::start_reloadable(&body(&a, "one", ""), "");
    assert_eq!(r.get("/api/x").header("x-config"), Some("one"));
    assert_eq!(r.get("/new/x").status, 404);
    assert_eq!(health(&r)["config"]["generation"], 1);
    assert_eq!(
        health(&r)["config"]["sighup"],
        false,
        "embedded: reloads through the API"
    );
    let loaded_at = r
        .metric("rampart_config_load_timestamp_seconds")
        .expect("timestamp");

    r.rewrite(&format!(
        "{}{}[[routes]]\nname = \"new\"\nprefix = \"/new/\"\nupstream = \"b\"\n",
        body(&a, "two", ""),
        upstream_toml("b", &[&b.addr])
    ));
    assert_eq!(r.reload(), Ok(2));

    let resp = r.get("/api/x");
    assert_eq!((resp.status, resp.text().as_str()), (200, "a"));
    assert_eq!(resp.header("x-config"), Some("two"));
    let resp = r.get("/new/x");
    assert_eq!((resp.status, resp.text().as_str()), (200, "b"));
    assert_eq!(b.last().target, "/new/x");
    assert_eq!(r.metric("rampart_config_load_success"), Some(1.0));
    assert_eq!(
        r.metric("rampart_config_reloads_total{result=\"applied\"}"),
        Some(1.0)
    );
    assert!(
        r.metric("rampart_config_load_timestamp_seconds")
            .is_some_and(|t| t >= loaded_at),
        "timestamp updated"
    );
    let h = health(&r);
    assert_eq!(h["config"]["generation"], 2);
    assert_eq!(h["routes"], 2);
    assert!(h["config"]["last_error"].is_null());
}

#[test]
fn a_request_in_flight_during_a_reload_completes_on_the_old_config() {
    let slow = Upstream::start(|_| Reply::ok("old upstream").delay(Duration::from_millis(1500)));
    let fresh = Upstream::named("new upstream");
    let r = Rampart::start_reloadable(&body(&slow, "one", ""), "");
    let addr = r.addr;
    let in_flight = std::thread::spawn(move || get(addr, "/api/slow"));
    eventually("the slow request reached its upstream", || {
        slow.count() == 1
    });

    r.rewrite(&body(&fresh, "two", ""));
    assert_eq!(r.reload(), Ok(2));
    // New requests: the new upstream and header, while the old request still waits.
    let resp = r.get("/api/x");
    assert_eq!(resp.text(), "new upstream");
    assert_eq!(resp.header("x-config"), Some("two"));

    let old = in_flight.join().expect("in-flight request");
    assert_eq!((old.status, old.text().as_str()), (200, "old upstream"));
    // Its response headers were added after the reload, by the generation it started on.
    assert_eq!(old.header("x-config"), Some("one"));
    assert_eq!(slow.count(), 1, "the old upstream got no new requests");
}

#[test]
fn a_broken_file_is_refused_and_the_running_config_kept() {
    let up = Upstream::named("ok");
    let r = Rampart::start_reloadable(&body(&up, "one", ""), "");
    let loaded_at = r
        .metric("rampart_config_load_timestamp_seconds")
        .expect("timestamp");

    // Line 7 of the file (5 lines of [server] table, a blank, then the body).
    r.rewrite("[upstreams.u]\naddrs = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"api\"\nprefix = \"api\"\nupstream = \"u\"\n");
    let path = r.file().path.display().to_string();
    let why = r.reload().expect_err("refused");
    assert!(
        why.starts_with(&format!("{path}:11:10: routes[0].prefix:")),
        "{why}"
    );

    let resp = r.get("/api/x");
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok"));
    assert_eq!(resp.header("x-config"), Some("one"));
    assert_eq!(r.metric("rampart_config_load_success"), Some(0.0));
    assert_eq!(
        r.metric("rampart_config_reloads_total{result=\"refused\"}"),
        Some(1.0)
    );
    assert_eq!(
        r.metric("rampart_config_load_timestamp_seconds"),
        Some(loaded_at),
        "a refused reload leaves the load time"
    );
    let h = health(&r);
    assert_eq!(h["config"]["generation"], 1);
    assert_eq!(h["config"]["last_error"], why.as_str());

    // Fixed: applied, and the gauge is back to 1.
    r.rewrite(&body(&up, "two", ""));
    assert_eq!(r.reload(), Ok(2));
    assert_eq!(r.get("/api/x").header("x-config"), Some("two"));
    assert_eq!(r.metric("rampart_config_load_success"), Some(1.0));
    assert!(health(&r)["config"]["last_error"].is_null());
}

#[test]
fn listener_changes_are_refused_until_a_restart() {
    let up = Upstream::named("ok");
    let r = Rampart::start_reloadable(&body(&up, "one", ""), "");
    let header = r.file().header.clone();
    let moved_to = free_port();
    let moved = header.replacen(
        &format!("listen = \"{}\"", r.addr),
        &format!("listen = \"127.0.0.1:{moved_to}\""),
        1,
    );
    assert_ne!(moved, header);
    r.rewrite_raw(&format!("{moved}{}", body(&up, "two", "")));
    let why = r.reload().expect_err("refused");
    assert!(
        why.contains(&format!(
            "server.listen ({} -> 127.0.0.1:{moved_to})",
            r.addr
        )),
        "{why}"
    );
    assert!(why.contains("restart"), "{why}");
    assert_eq!(r.get("/api/x").header("x-config"), Some("one"));
    assert!(std::net::TcpStream::connect(("127.0.0.1", moved_to)).is_err());
    assert_eq!(r.metric("rampart_config_load_success"), Some(0.0));

    let threads = header.replacen("threads = 1", "threads = 3", 1);
    r.rewrite_raw(&format!("{threads}{}", body(&up, "two", "")));
    let why = r.reload().expect_err("refused");
    assert!(why.contains("server.threads (1 -> 3)"), "{why}");
}

/// Ids of the clients connected to `redis`, except the connection asking.
fn redis_clients(redis: &Redis) -> Vec<String> {
    let list: String = redis.cmd(&["CLIENT", "LIST"]);
    let mut ids: Vec<String> = list
        .lines()
        .filter(|l| !l.contains("cmd=client|list") && !l.contains("cmd=client "))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_string)
        .collect();
    ids.sort();
    ids
}

#[test]
fn the_redis_connection_survives_a_reload_with_the_same_store() {
    let redis = Redis::start();
    let up = Upstream::named("ok");
    let store = |prefix: &str| {
        format!(
            "[store]\nredis_url = \"{}\"\nkey_prefix = \"{prefix}\"\n[ratelimit.policies.p]\nrate = \"100/s\"\n",
            redis.url()
        )
    };
    let r = Rampart::start_reloadable(&body(&up, "one", &store("a:")), "");
    assert_eq!(r.get("/api/x").status, 200);
    let before = redis_clients(&redis);
    assert_eq!(before.len(), 1, "one connection from rampart: {before:?}");

    r.rewrite(&body(&up, "two", &store("a:")));
    assert_eq!(r.reload(), Ok(2));
    assert_eq!(r.get("/api/x").header("x-config"), Some("two"));
    assert_eq!(redis_clients(&redis), before, "same connection");

    // A changed [store] is a new store, with a connection of its own.
    r.rewrite(&body(&up, "three", &store("b:")));
    assert_eq!(r.reload(), Ok(3));
    assert_eq!(r.get("/api/x").status, 200);
    let keys: Vec<String> = redis.cmd(&["KEYS", "b:*"]);
    assert!(!keys.is_empty(), "the new prefix is used");
    assert!(
        redis_clients(&redis).iter().any(|id| !before.contains(id)),
        "a new connection"
    );
}

#[test]
fn cached_entries_and_drained_buckets_survive_a_reload() {
    let up = Upstream::start(|_| Reply::ok("fresh").header("cache-control", "max-age=60"));
    let policies = |rate: &str| {
        format!(
            "[cache.policies.short]\nttl = \"60s\"\n[ratelimit.policies.p]\nrate = \"{rate}\"\nroutes = [\"limited\"]\n"
        )
    };
    let routes = "[[routes]]\nname = \"cached\"\nprefix = \"/cached/\"\nupstream = \"u\"\ncache = \"short\"\n[[routes]]\nname = \"limited\"\nprefix = \"/limited/\"\nupstream = \"u\"\n";
    let r = Rampart::start_reloadable(
        &body(&up, "one", &format!("{routes}{}", policies("2/h"))),
        "",
    );
    assert_eq!(r.get("/cached/x").header("x-cache"), Some("MISS"));
    assert_eq!(r.get("/cached/x").header("x-cache"), Some("HIT"));
    assert_eq!(r.get("/limited/x").status, 200);
    assert_eq!(r.get("/limited/x").status, 200);
    assert_eq!(r.get("/limited/x").status, 429);

    r.rewrite(&body(&up, "two", &format!("{routes}{}", policies("2/h"))));
    assert_eq!(r.reload(), Ok(2));
    let hit = r.get("/cached/x");
    assert_eq!(hit.header("x-cache"), Some("HIT"), "the entry is kept");
    assert_eq!(hit.header("x-config"), Some("two"));
    assert_eq!(r.get("/limited/x").status, 429, "still drained");
    assert_eq!(up.count(), 3, "one fill, two limited requests");

    // A changed policy is a new bucket.
    r.rewrite(&body(&up, "three", &format!("{routes}{}", policies("3/h"))));
    assert_eq!(r.reload(), Ok(3));
    assert_eq!(r.get("/limited/x").status, 200);
}

/// A TCP listener that counts connections (health checks connect and close).
fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if conn.is_ok() {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (addr, count)
}

fn group(name: &str, addr: SocketAddr) -> String {
    format!("[upstreams.{name}]\naddrs = [\"{addr}\"]\nhealth_check_interval = \"100ms\"\n")
}

#[test]
fn health_checks_follow_the_reloaded_upstream_groups() {
    let (old_addr, old_checks) = counting_listener();
    let (new_addr, new_checks) = counting_listener();
    let route =
        |up: &str| format!("[[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"{up}\"\n");
    let r = Rampart::start_reloadable(&format!("{}{}", group("old", old_addr), route("old")), "");
    eventually("the old group is health-checked", || {
        old_checks.load(Ordering::SeqCst) >= 3
    });
    assert_eq!(new_checks.load(Ordering::SeqCst), 0);

    r.rewrite(&format!("{}{}", group("new", new_addr), route("new")));
    assert_eq!(r.reload(), Ok(2));
    eventually("the new group is health-checked", || {
        new_checks.load(Ordering::SeqCst) >= 3
    });
    // The old group's checks have stopped: at most one that was under way at the reload.
    let stopped_at = old_checks.load(Ordering::SeqCst);
    let until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        old_checks.load(Ordering::SeqCst) <= stopped_at + 1,
        "old group still checked: {stopped_at} -> {}",
        old_checks.load(Ordering::SeqCst)
    );

    // A kept group keeps one task: its check rate does not double across reloads.
    let before = new_checks.load(Ordering::SeqCst);
    r.rewrite(&format!(
        "{}{}[headers.security]\nX-Config = \"three\"\n",
        group("new", new_addr),
        route("new")
    ));
    assert_eq!(r.reload(), Ok(3));
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let checks = new_checks.load(Ordering::SeqCst) - before;
    let expected = started.elapsed().as_millis() as usize / 100;
    assert!(
        checks <= expected + 3,
        "{checks} checks in {:?}: more than one task per group",
        started.elapsed()
    );
}

#[test]
fn a_server_without_a_file_refuses_to_reload() {
    let up = Upstream::named("ok");
    let r = Rampart::start(&body(&up, "one", ""));
    let why = r.reload().expect_err("nothing to re-read");
    assert!(why.contains("without a config file"), "{why}");
    assert_eq!(r.get("/api/x").status, 200);
}
