//! Headers: what the upstream is told about the client; what every response carries.

use crate::common::*;

const SECURITY: [(&str, &str); 3] = [
    ("x-frame-options", "SAMEORIGIN"),
    ("x-content-type-options", "nosniff"),
    ("x-xss-protection", "1; mode=block"),
];

fn assert_security_headers(resp: &Response, what: &str) {
    for (name, value) in SECURITY {
        assert_eq!(resp.header(name), Some(value), "{what}: {name}");
    }
    assert!(
        resp.header("x-request-id").is_some(),
        "{what}: x-request-id"
    );
}

fn one_route(up: &Upstream) -> String {
    format!(
        "{}[[routes]]\nname = \"api\"\nprefix = \"/api/\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&up.addr])
    )
}

#[test]
fn upstream_sees_forwarding_headers() {
    let up = Upstream::named("ok");
    let r = Rampart::start(&one_route(&up));
    let resp = r.request(
        "GET",
        "/api/x",
        &[
            ("Host", "dash.example.com"),
            ("X-Forwarded-For", "198.51.100.1"),
        ],
        None,
    );
    assert_eq!(resp.status, 200);
    let seen = up.last();
    assert_eq!(
        seen.header("host"),
        Some("dash.example.com"),
        "Host is preserved"
    );
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    // Appended, as nginx's $proxy_add_x_forwarded_for does ...
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("198.51.100.1, 127.0.0.1")
    );
    // ... but an untrusted peer's claim does not become its identity.
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    let id = seen
        .header("x-request-id")
        .expect("request id sent upstream");
    assert_eq!(id.len(), 36, "a generated UUID: {id}");
    assert_eq!(
        resp.header("x-request-id"),
        Some(id),
        "echoed to the client"
    );
}

#[test]
fn sane_request_ids_are_kept_and_others_replaced() {
    let up = Upstream::named("ok");
    let r = Rampart::start(&one_route(&up));
    let resp = r.request("GET", "/api/x", &[("X-Request-Id", "abc-123.DEF")], None);
    assert_eq!(resp.header("x-request-id"), Some("abc-123.DEF"));
    assert_eq!(up.last().header("x-request-id"), Some("abc-123.DEF"));
    let long = "a".repeat(300);
    for bad in ["has space", "quote\"s", long.as_str()] {
        let resp = r.request("GET", "/api/x", &[("X-Request-Id", bad)], None);
        let id = resp.header("x-request-id").expect("id");
        assert_ne!(id, bad);
        assert_eq!(id.len(), 36);
    }
}

#[test]
fn trusted_proxy_forwarding_headers_are_believed() {
    let up = Upstream::named("ok");
    let r = Rampart::start_with(&one_route(&up), "trusted_proxies = [\"127.0.0.0/8\"]");
    r.request(
        "GET",
        "/api/x",
        &[
            ("X-Forwarded-For", "203.0.113.50, 203.0.113.7"),
            ("X-Forwarded-Proto", "https"),
        ],
        None,
    );
    let seen = up.last();
    assert_eq!(
        seen.header("x-real-ip"),
        Some("203.0.113.7"),
        "right-most untrusted entry"
    );
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.50, 203.0.113.7, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}

#[test]
fn upstream_host_override() {
    let up = Upstream::named("ok");
    let r = Rampart::start(&format!(
        "[upstreams.u]\naddrs = [\"{}\"]\nhost = \"api.internal\"\n[[routes]]\nname = \"api\"\nprefix = \"/\"\nupstream = \"u\"\n",
        up.addr
    ));
    r.request("GET", "/", &[("Host", "public.example.com")], None);
    assert_eq!(up.last().header("host"), Some("api.internal"));
}

#[test]
fn security_headers_on_proxied_and_self_made_responses() {
    let up = Upstream::start(|req| match req.target.as_str() {
        "/api/deny" => Reply::ok("x").header("X-Frame-Options", "DENY"),
        "/api/500" => Reply::ok("boom").status(500),
        _ => Reply::ok("x"),
    });
    let dead = free_port();
    let r = Rampart::start(&format!(
        "{}[upstreams.dead]\naddrs = [\"127.0.0.1:{dead}\"]\n[[routes]]\nname = \"dead\"\nprefix = \"/api/dead\"\nupstream = \"dead\"\n",
        one_route(&up)
    ));
    let proxied = r.get("/api/x");
    assert_eq!(proxied.status, 200);
    assert_security_headers(&proxied, "proxied 200");
    let upstream_500 = r.get("/api/500");
    assert_eq!(upstream_500.status, 500);
    assert_security_headers(&upstream_500, "upstream 500");
    let not_found = r.get("/nothing-here");
    assert_eq!(not_found.status, 404);
    assert_security_headers(&not_found, "404");
    let bad_gateway = r.get("/api/dead");
    assert_eq!(bad_gateway.status, 502);
    assert_security_headers(&bad_gateway, "502");
    // A stricter value chosen by the upstream is kept.
    assert_eq!(r.get("/api/deny").header("x-frame-options"), Some("DENY"));
    // HSTS only over TLS: never on the plain listener.
    assert_eq!(proxied.header("strict-transport-security"), None);
}

#[test]
fn configured_security_headers_replace_the_defaults() {
    let up = Upstream::named("ok");
    let r = Rampart::start(&format!(
        "{}[headers.security]\n\"Content-Security-Policy\" = \"default-src 'self'\"\n",
        one_route(&up)
    ));
    let resp = r.get("/api/x");
    assert_eq!(
        resp.header("content-security-policy"),
        Some("default-src 'self'")
    );
    assert_eq!(resp.header("x-xss-protection"), None);
    let resp = r.get("/elsewhere");
    assert_eq!(resp.status, 404);
    assert_eq!(
        resp.header("content-security-policy"),
        Some("default-src 'self'")
    );
}
