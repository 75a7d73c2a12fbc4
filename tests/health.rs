//! Upstream health: an HTTP health check takes out an address that answers 500 and puts it
//! back when it recovers; failed requests eject an address for `fail_timeout` (nginx's
//! `max_fails`); `rampart_upstream_healthy` follows, and each change is logged exactly once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::common::*;

fn healthy(admin: std::net::SocketAddr, addr: &std::net::SocketAddr) -> Option<f64> {
    let text = get(admin, "/metrics").text();
    let series = format!("rampart_upstream_healthy{{addr=\"{addr}\",upstream=\"u\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
}

/// Answers `name`, except on `/health` while `sick`: 500.
fn sometimes_sick(name: &'static str, sick: Arc<AtomicBool>) -> Upstream {
    Upstream::start(move |req| {
        if req.target == "/health" && sick.load(Ordering::SeqCst) {
            Reply::ok("sick").status(500)
        } else {
            Reply::ok(name)
        }
    })
}

fn checked_group(a: &Upstream, b: &Upstream) -> String {
    format!(
        r#"[upstreams.u]
addrs = ["{}", "{}"]
health_check_path = "/health"
health_check_interval = "100ms"
health_check_fails = 1
health_check_passes = 1
max_fails = 0
[[routes]]
name = "all"
prefix = "/"
upstream = "u"
"#,
        a.addr, b.addr
    )
}

fn non_health(up: &Upstream) -> usize {
    up.requests()
        .iter()
        .filter(|r| r.target != "/health")
        .count()
}

#[test]
fn http_health_check_takes_out_an_address_answering_500_and_puts_it_back() {
    let sick = Arc::new(AtomicBool::new(true));
    let a = sometimes_sick("a", Arc::new(AtomicBool::new(false)));
    let b = sometimes_sick("b", sick.clone());
    let r = Rampart::start(&checked_group(&a, &b));
    eventually("b taken out", || healthy(r.admin, &b.addr) == Some(0.0));
    assert_eq!(healthy(r.admin, &a.addr), Some(1.0));
    let probe = b
        .requests()
        .into_iter()
        .find(|q| q.target == "/health")
        .expect("b was probed");
    assert_eq!(probe.method, "GET");
    for _ in 0..10 {
        assert_eq!(r.get("/x").text(), "a", "only the healthy address");
    }
    assert_eq!(non_health(&b), 0);

    sick.store(false, Ordering::SeqCst);
    eventually("b put back", || healthy(r.admin, &b.addr) == Some(1.0));
    let answers: Vec<String> = (0..10).map(|_| r.get("/x").text()).collect();
    assert!(answers.iter().any(|t| t == "b"), "{answers:?}");
    assert!(answers.iter().any(|t| t == "a"), "{answers:?}");
}

#[test]
fn without_a_path_the_check_connects_only() {
    let a = Upstream::named("a");
    let dead = free_port();
    let r = Rampart::start(&format!(
        r#"[upstreams.u]
addrs = ["{}", "127.0.0.1:{dead}"]
health_check_interval = "100ms"
max_fails = 0
[[routes]]
name = "all"
prefix = "/"
upstream = "u"
"#,
        a.addr
    ));
    let dead_addr = std::net::SocketAddr::from(([127, 0, 0, 1], dead));
    eventually("dead address taken out", || {
        healthy(r.admin, &dead_addr) == Some(0.0)
    });
    assert_eq!(healthy(r.admin, &a.addr), Some(1.0));
    assert!(
        a.requests().is_empty(),
        "a TCP check sends no request: {:?}",
        a.requests()
    );
}

#[test]
fn connect_failures_eject_an_address_for_fail_timeout_then_it_is_tried_again() {
    let live = Upstream::named("live");
    let dead = free_port();
    let dead_addr = std::net::SocketAddr::from(([127, 0, 0, 1], dead));
    let r = Rampart::start(&format!(
        r#"[upstreams.u]
addrs = ["127.0.0.1:{dead}", "{}"]
health_check_interval = "1h"
max_fails = 1
fail_timeout = "2s"
[[routes]]
name = "all"
prefix = "/"
upstream = "u"
"#,
        live.addr
    ));
    for _ in 0..8 {
        let resp = r.get("/x");
        assert_eq!((resp.status, resp.text().as_str()), (200, "live"));
    }
    let connect_errors = || {
        let text = r.admin_get("/metrics").text();
        text.lines()
            .find_map(|l| {
                l.strip_prefix("rampart_upstream_errors_total{kind=\"connect\",upstream=\"u\"} ")
            })
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    assert_eq!(
        connect_errors(),
        Some(1.0),
        "one failed connect, then the address is skipped"
    );
    assert_eq!(healthy(r.admin, &dead_addr), Some(0.0));

    // The address comes back: after fail_timeout it gets requests again, and the first
    // success puts it back.
    let back = Upstream::start_at(dead, |_| Reply::ok("back"));
    eventually("the recovered address answers", || {
        r.get("/x").text() == "back"
    });
    assert_eq!(healthy(r.admin, &dead_addr), Some(1.0));
    assert!(back.count() >= 1);
}

#[test]
fn consecutive_5xx_answers_eject_an_address() {
    let good = Upstream::named("good");
    let bad = Upstream::start(|_| Reply::ok("broken").status(500));
    let r = Rampart::start(&format!(
        r#"[upstreams.u]
addrs = ["{}", "{}"]
health_check_interval = "1h"
max_fails = 2
fail_timeout = "1h"
[[routes]]
name = "all"
prefix = "/"
upstream = "u"
"#,
        good.addr, bad.addr
    ));
    let statuses: Vec<u16> = (0..6).map(|_| r.get("/x").status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 500).count(),
        2,
        "two 500s, then the address is out: {statuses:?}"
    );
    assert_eq!(bad.count(), 2);
    for _ in 0..6 {
        assert_eq!(r.get("/x").text(), "good");
    }
    assert_eq!(bad.count(), 2);
    assert_eq!(healthy(r.admin, &bad.addr), Some(0.0));
    assert_eq!(healthy(r.admin, &good.addr), Some(1.0));
}

/// The real binary: one warn line when the address goes down, one info line when it comes
/// back, however many probes run in between.
#[test]
fn each_change_is_logged_once() {
    let sick = Arc::new(AtomicBool::new(true));
    let a = sometimes_sick("a", Arc::new(AtomicBool::new(false)));
    let b = sometimes_sick("b", sick.clone());
    let p = RampartProcess::start(&checked_group(&a, &b), "warn,rampart::health=info");
    let down = format!("upstream u address {} is down", b.addr);
    let back = format!("upstream u address {} is back up", b.addr);
    eventually("down logged", || p.stderr().contains(&down));
    // Probes keep failing every 100 ms: wait for five more, then count.
    let probes = b.count();
    eventually("five more probes", || b.count() >= probes + 5);
    sick.store(false, Ordering::SeqCst);
    eventually("back logged", || p.stderr().contains(&back));
    let probes = b.count();
    eventually("five more probes", || b.count() >= probes + 5);
    let log = p.stderr();
    assert_eq!(log.matches(&down).count(), 1, "{log}");
    assert_eq!(log.matches(&back).count(), 1, "{log}");
    let down_line = log.lines().find(|l| l.contains(&down)).expect("line");
    assert!(down_line.contains(" WARN "), "{down_line}");
    assert!(down_line.contains("500"), "says why: {down_line}");
    let back_line = log.lines().find(|l| l.contains(&back)).expect("line");
    assert!(back_line.contains(" INFO "), "{back_line}");
    assert!(!log.contains(&a.addr.to_string()), "a never changed: {log}");
}
