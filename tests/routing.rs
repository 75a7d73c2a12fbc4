//! Routing: longest prefix, byte-for-byte forwarding, rewrites, round-robin, retries, bodies.

use crate::common::*;

fn dashboard(backend: &Upstream, frontend: &Upstream, special: &Upstream) -> Rampart {
    Rampart::start(&format!(
        r#"{}{}{}
[[routes]]
name = "frontend"
prefix = "/"
upstream = "frontend"

[[routes]]
name = "api"
prefix = "/api/"
upstream = "backend"

[[routes]]
name = "special"
prefix = "/api/v1/special/"
upstream = "special"

[[routes]]
name = "health"
prefix = "/health"
upstream = "backend"
"#,
        upstream_toml("backend", &[&backend.addr]),
        upstream_toml("frontend", &[&frontend.addr]),
        upstream_toml("special", &[&special.addr]),
    ))
}

#[test]
fn longest_prefix_wins() {
    let (b, f, s) = (
        Upstream::named("backend"),
        Upstream::named("frontend"),
        Upstream::named("special"),
    );
    let r = dashboard(&b, &f, &s);
    for (path, who) in [
        ("/api/v1/dashboard/kpis", "backend"),
        ("/api/v1/special/x", "special"),
        ("/api/v1/special", "backend"),
        ("/health", "backend"),
        ("/", "frontend"),
        ("/apix", "frontend"),
        ("/static/app.js", "frontend"),
    ] {
        let resp = r.get(path);
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.text(), who, "{path}");
    }
    assert_eq!(
        b.requests()
            .iter()
            .filter(|q| q.target == "/health")
            .count(),
        1
    );
}

#[test]
fn path_and_query_are_forwarded_byte_for_byte() {
    let (b, f, s) = (
        Upstream::named("b"),
        Upstream::named("f"),
        Upstream::named("s"),
    );
    let r = dashboard(&b, &f, &s);
    let target = "/api/v1/dashboard/kpis?z=1&a=%20x&a=2&empty=&utf=%C3%A9;semi";
    assert_eq!(r.get(target).status, 200);
    assert_eq!(b.last().target, target);
    assert_eq!(b.last().method, "GET");
}

#[test]
fn rewrite_and_strip_prefix() {
    let up = Upstream::named("u");
    let r = Rampart::start(&format!(
        r#"{}
[[routes]]
name = "legacy"
prefix = "/legacy/"
upstream = "u"
rewrite = "/api/v2/"

[[routes]]
name = "stripped"
prefix = "/svc"
upstream = "u"
strip_prefix = true
"#,
        upstream_toml("u", &[&up.addr])
    ));
    r.get("/legacy/items?id=7");
    assert_eq!(up.last().target, "/api/v2/items?id=7");
    r.get("/svc/v1/x?q");
    assert_eq!(up.last().target, "/v1/x?q");
    r.get("/svc");
    assert_eq!(up.last().target, "/");
}

#[test]
fn round_robin_over_a_groups_addresses() {
    let (a, b) = (Upstream::named("a"), Upstream::named("b"));
    let r = Rampart::start(&format!(
        "{}[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&a.addr, &b.addr])
    ));
    for _ in 0..10 {
        assert_eq!(r.get("/").status, 200);
    }
    assert_eq!(a.count(), 5, "a got {}, b got {}", a.count(), b.count());
    assert_eq!(b.count(), 5);
}

#[test]
fn connect_failure_is_retried_on_the_next_address_for_idempotent_requests() {
    let live = Upstream::named("live");
    let dead = format!("127.0.0.1:{}", free_port());
    let r = Rampart::start(&format!(
        r#"[upstreams.u]
addrs = ["{dead}", "{}"]
health_check_interval = "1h"
max_fails = 0
[[routes]]
name = "all"
prefix = "/"
upstream = "u"
"#,
        live.addr
    ));
    for _ in 0..6 {
        let resp = r.get("/");
        assert_eq!(resp.status, 200, "GET must be retried: {}", resp.text());
        assert_eq!(resp.text(), "live");
    }
    // POST is not idempotent: a failed connect is reported, never replayed elsewhere.
    let statuses: Vec<u16> = (0..6)
        .map(|_| r.request("POST", "/", &[], Some(b"x")).status)
        .collect();
    assert!(statuses.contains(&502), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
}

#[test]
fn request_bodies_stream_through() {
    let up = Upstream::start(|req| Reply::ok(format!("{} {}", req.method, req.body.len())));
    let r = Rampart::start(&format!(
        "{}[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&up.addr])
    ));
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    for method in ["POST", "PUT", "PATCH"] {
        let resp = r.request(
            method,
            "/api/items",
            &[("Content-Type", "application/octet-stream")],
            Some(&body),
        );
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), format!("{method} {}", body.len()));
        assert_eq!(up.last().body, body, "{method} body");
    }
    // Chunked upload without a length.
    let resp = request_chunked(
        r.addr,
        "POST",
        "/chunked",
        &[("Host", "t")],
        &[b"hello", b" world"],
    );
    assert_eq!(resp.status, 200);
    assert_eq!(up.last().body, b"hello world");
}

/// The bypass shapes an attacker tries (encoded letters, doubled slashes, encoded slashes and
/// dot segments) reach the route the upstream would act on, or are refused before any
/// upstream sees them; the upstream receives the canonical path.
#[test]
fn encoded_paths_route_like_the_plain_path() {
    let (b, f, s) = (
        Upstream::named("backend"),
        Upstream::named("frontend"),
        Upstream::named("special"),
    );
    let r = dashboard(&b, &f, &s);
    for (path, who, forwarded) in [
        ("/%61pi/v1/x", "backend", "/api/v1/x"),
        ("//api/v1/x", "backend", "/api/v1/x"),
        (
            "/api//v1/special/x?q=%2F",
            "special",
            "/api/v1/special/x?q=%2F",
        ),
        ("/api/v1/%73pecial/x", "special", "/api/v1/special/x"),
    ] {
        let resp = r.get(path);
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.text(), who, "{path}");
        let upstream = [&b, &f, &s]
            .into_iter()
            .find(|u| u.count() > 0 && u.last().target == forwarded);
        assert!(
            upstream.is_some(),
            "{path} was not forwarded as {forwarded}"
        );
    }
    let before = b.count() + f.count() + s.count();
    for path in [
        "/api%2fv1/x",
        "/x/..%2fapi/v1/x",
        "/x/%2e%2e/api/v1/x",
        "/api/%zz",
    ] {
        assert_eq!(r.get(path).status, 400, "{path}");
    }
    assert_eq!(
        b.count() + f.count() + s.count(),
        before,
        "refused paths reached an upstream"
    );
}

/// A route may ask for the client's target as written (an upstream that signs or hashes raw
/// paths): routing and limits still use the canonical path, the upstream gets the original.
#[test]
fn a_route_can_forward_the_original_target() {
    let (raw, canon) = (Upstream::named("raw"), Upstream::named("canon"));
    let r = Rampart::start(&format!(
        "{}{}[[routes]]\nname = \"raw\"\nprefix = \"/raw/\"\nupstream = \"raw\"\nforward_original_path = true\n\
         [[routes]]\nname = \"canon\"\nprefix = \"/\"\nupstream = \"canon\"\n",
        upstream_toml("raw", &[&raw.addr]),
        upstream_toml("canon", &[&canon.addr]),
    ));
    assert_eq!(r.get("/r%61w//x%7e?q=%2F").text(), "raw");
    assert_eq!(raw.last().target, "/r%61w//x%7e?q=%2F");
    assert_eq!(r.get("/other//x%7e").text(), "canon");
    assert_eq!(canon.last().target, "/other/x~");
    // Refused shapes stay refused whatever the route asks.
    assert_eq!(r.get("/raw/..%2fx").status, 400);
}
