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

/// One exchange through Rampart with a raw upstream: what the upstream read (its head, as
/// sent) and what the client read (the whole response, as sent).
fn raw_exchange(server_extra: &str) -> (String, String) {
    use std::io::{Read, Write};
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let up_addr = upstream.local_addr().expect("addr");
    let seen = std::thread::spawn(move || {
        // The health check's connections close without a request; the proxied one has one.
        for _ in 0..10 {
            let (mut conn, _) = upstream.accept().expect("accept");
            conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .expect("timeout");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && matches!(conn.read(&mut byte), Ok(1)) {
                head.push(byte[0]);
            }
            if head.ends_with(b"\r\n\r\n") {
                conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Upstream-Thing: 1\r\nConnection: close\r\n\r\nok",
                )
                .expect("reply");
                return String::from_utf8_lossy(&head).into_owned();
            }
        }
        panic!("no request reached the upstream");
    });
    let config = format!(
        "{}[[routes]]\nname = \"api\"\nprefix = \"/api/\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&up_addr])
    );
    let r = Rampart::start_with(&config, server_extra);
    let mut client = std::net::TcpStream::connect(r.addr).expect("connect");
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    client
        .write_all(
            b"GET /api/x HTTP/1.1\r\nHost: h\r\nX-Client-Thing: 2\r\nConnection: close\r\n\r\n",
        )
        .expect("send");
    let mut response = Vec::new();
    client.read_to_end(&mut response).expect("response");
    let seen = seen.join().expect("upstream thread");
    (seen, String::from_utf8_lossy(&response).into_owned())
}

/// By default field names cross Rampart as Pingora spells names it keeps no case for (a
/// dozen common ones titled, the rest lower case), as Envoy and HAProxy send them;
/// `preserve_header_case` keeps the client's and the upstream's spelling, as nginx does.
/// Either way the same fields arrive, Rampart's own included.
#[test]
fn field_names_keep_their_spelling_only_when_configured() {
    let cases = [
        ("", "x-upstream-thing", "x-client-thing"),
        (
            "preserve_header_case = true",
            "X-Upstream-Thing",
            "X-Client-Thing",
        ),
    ];
    for (server_extra, upstream_name, client_name) in cases {
        let (seen, response) = raw_exchange(server_extra);
        let sent = |field: &str| response.contains(&format!("\r\n{field}\r\n"));
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(sent(&format!("{upstream_name}: 1")), "{response}");
        assert!(sent("Content-Length: 2"), "{response}");
        assert!(sent("x-frame-options: SAMEORIGIN"), "{response}");
        assert!(response.ends_with("\r\n\r\nok"), "{response}");
        let read = |field: &str| seen.contains(&format!("\r\n{field}\r\n"));
        assert!(read(&format!("{client_name}: 2")), "{seen}");
        assert!(read("x-forwarded-for: 127.0.0.1"), "{seen}");
    }
}
