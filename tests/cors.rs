//! CORS: preflights answered by Rampart, allowed origins echoed with `Vary: Origin`.

use crate::common::*;

fn start(up: &Upstream, origins: &str, credentials: bool) -> Rampart {
    Rampart::start(&format!(
        r#"{}
[[routes]]
name = "api"
prefix = "/api/"
upstream = "u"
cors = "api"

[[routes]]
name = "plain"
prefix = "/"
upstream = "u"

[cors.api]
allow_origins = [{origins}]
allow_methods = ["GET", "POST"]
allow_headers = ["Content-Type", "Authorization"]
expose_headers = ["X-Request-Id"]
max_age = "5m"
allow_credentials = {credentials}
"#,
        upstream_toml("u", &[&up.addr])
    ))
}

const APP: &str = "https://app.example.com";

fn preflight(r: &Rampart, origin: &str) -> Response {
    r.request(
        "OPTIONS",
        "/api/v1/items",
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        None,
    )
}

#[test]
fn preflight_for_an_allowed_origin_is_answered_by_rampart() {
    let up = Upstream::named("ok");
    let r = start(&up, "\"https://app.example.com\"", true);
    let resp = preflight(&r, APP);
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("access-control-allow-origin"), Some(APP));
    assert_eq!(
        resp.header("access-control-allow-methods"),
        Some("GET, POST")
    );
    assert_eq!(
        resp.header("access-control-allow-headers"),
        Some("Content-Type, Authorization")
    );
    assert_eq!(resp.header("access-control-max-age"), Some("300"));
    assert_eq!(
        resp.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(resp.header("vary"), Some("Origin"));
    assert_eq!(resp.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(up.count(), 0, "a preflight never reaches the upstream");
}

#[test]
fn preflight_for_another_origin_is_refused() {
    let up = Upstream::named("ok");
    let r = start(&up, "\"https://app.example.com\"", false);
    let resp = preflight(&r, "https://evil.example.net");
    assert_eq!(resp.status, 403);
    assert_eq!(resp.header("access-control-allow-origin"), None);
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(up.count(), 0);
}

#[test]
fn simple_requests_get_the_origin_echoed() {
    let up = Upstream::named("ok");
    let r = start(
        &up,
        "\"https://app.example.com\", \"https://admin.example.com\"",
        false,
    );
    let resp = r.request("GET", "/api/v1/items", &[("Origin", APP)], None);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("access-control-allow-origin"), Some(APP));
    assert_eq!(
        resp.header("access-control-expose-headers"),
        Some("X-Request-Id")
    );
    assert_eq!(resp.header("vary"), Some("Origin"));
    let other = r.request(
        "GET",
        "/api/v1/items",
        &[("Origin", "https://evil.example.net")],
        None,
    );
    assert_eq!(
        other.status, 200,
        "CORS is enforced by the browser, not by refusing"
    );
    assert_eq!(other.header("access-control-allow-origin"), None);
    assert_eq!(other.header("vary"), Some("Origin"));
    // Routes without a policy get no CORS headers.
    let plain = r.request("GET", "/page", &[("Origin", APP)], None);
    assert_eq!(plain.header("access-control-allow-origin"), None);
}

#[test]
fn any_origin_policy_sends_a_star() {
    let up = Upstream::named("ok");
    let r = start(&up, "\"*\"", false);
    let resp = r.request(
        "GET",
        "/api/v1/items",
        &[("Origin", "https://anyone.example")],
        None,
    );
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"));
    assert_eq!(preflight(&r, "https://anyone.example").status, 204);
    // OPTIONS without Access-Control-Request-Method is an ordinary request: proxied.
    let opts = r.request("OPTIONS", "/api/v1/items", &[("Origin", APP)], None);
    assert_eq!(opts.status, 200);
    assert_eq!(up.count(), 2);
}
