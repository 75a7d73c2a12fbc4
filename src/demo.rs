//! `rampart demo`: Rampart with `config/demo.toml` and two small sample upstreams on loopback
//! (a KPI-style JSON API and a static page), so a newcomer sees the proxy work with nothing
//! else installed. The samples are ordinary Pingora services beside the proxy: they are not
//! part of the request path, which treats them like any other upstream.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use pingora::services::ServiceWithDependents;

use crate::config::{self, Config};

/// The demo configuration, compiled in so `rampart demo` works from any directory.
pub const CONFIG: &str = include_str!("../config/demo.toml");

/// Parse the embedded config (with the environment's overrides) and the sample services for
/// its `backend` and `frontend` upstreams.
pub fn setup() -> Result<(Config, Vec<Box<dyn ServiceWithDependents>>), config::Error> {
    let env = std::env::vars().collect();
    let config = config::parse("config/demo.toml (embedded)", CONFIG, &env)?;
    let mut services: Vec<Box<dyn ServiceWithDependents>> = Vec::new();
    for (name, kind) in [("backend", Sample::Api), ("frontend", Sample::Page)] {
        if let Some(addr) = config.upstreams.get(name).and_then(|u| u.addrs.first()) {
            let mut s = Service::new(format!("demo {name}"), kind);
            s.add_tcp(addr);
            services.push(Box::new(s));
        }
    }
    Ok((config, services))
}

/// The lines printed for the newcomer to try.
pub fn instructions(config: &Config) -> String {
    let port = config.server.listen.0.port();
    let base = format!("http://127.0.0.1:{port}");
    let admin = &config.server.admin_listen;
    format!(
        "Rampart demo: proxy on {base}, admin on http://{admin}\n\
         Try:\n  \
         curl -i {base}/api/v1/dashboard/kpis          # JSON API through the proxy (again: X-Cache: HIT)\n  \
         curl -i --compressed {base}/api/v1/dashboard/expense-trend   # compressed, cached 300 s\n  \
         curl -i {base}/api/v1/echo                    # what the upstream received (forwarding headers)\n  \
         curl -i {base}/                               # the static frontend page\n  \
         curl -i {base}/health                         # backend health, as in the old nginx.conf\n  \
         curl -i -X OPTIONS {base}/api/v1/dashboard/kpis -H 'Origin: https://dash.example.com' -H 'Access-Control-Request-Method: GET'\n  \
         curl -i http://{admin}/healthz                  # Rampart itself\n  \
         curl -s http://{admin}/metrics | grep ^http_     # Prometheus metrics\n  \
         for i in $(seq 25); do curl -s -o /dev/null -w '%{{http_code}} ' {base}/api/v1/echo; done; echo   # 429 after the burst of 20\n\
         Ctrl-C stops it.\n"
    )
}

enum Sample {
    Api,
    Page,
}

#[async_trait]
impl ServeHttp for Sample {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let (status, ctype, body) = match self {
            Sample::Api => api(&path, req),
            Sample::Page => (StatusCode::OK, "text/html; charset=utf-8", page()),
        };
        crate::admin::response(status, ctype, body)
    }
}

fn api(path: &str, req: &pingora::http::RequestHeader) -> (StatusCode, &'static str, Vec<u8>) {
    let json = |v: serde_json::Value| {
        (
            StatusCode::OK,
            "application/json",
            v.to_string().into_bytes(),
        )
    };
    match path {
        "/health" => json(serde_json::json!({"status": "healthy"})),
        "/api/v1/dashboard/kpis" => json(serde_json::json!({
            "period_days": 30,
            "kpis": (1..=12).map(|i| serde_json::json!({
                "id": i,
                "name": format!("kpi-{i}"),
                "value": 1000 + i * 37,
                "change_pct": (i as f64) * 1.5 - 6.0,
                "trend": if i % 2 == 0 { "up" } else { "down" },
            })).collect::<Vec<_>>(),
        })),
        "/api/v1/dashboard/expense-trend" => json(serde_json::json!({
            "months": (0..36).map(|m| serde_json::json!({
                "month": format!("{}-{:02}", 2024 + m / 12, m % 12 + 1),
                "expenses": 40000 + m * 1250,
                "budget": 52000,
            })).collect::<Vec<_>>(),
        })),
        "/api/v1/echo" => {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect();
            json(serde_json::json!({
                "method": req.method.as_str(),
                "uri": req.uri.to_string(),
                "headers": headers,
            }))
        }
        _ => (
            StatusCode::NOT_FOUND,
            "application/json",
            br#"{"detail":"Not Found"}"#.to_vec(),
        ),
    }
}

fn page() -> Vec<u8> {
    let rows: String = (1..=40)
        .map(|i| format!("<li>Widget {i}: served by the demo frontend through Rampart</li>\n"))
        .collect();
    format!(
        "<!doctype html>\n<html><head><title>KPI dashboard (demo)</title></head>\n\
         <body><h1>KPI dashboard</h1><p>This page comes from the demo frontend upstream.</p>\n\
         <ul>\n{rows}</ul></body></html>\n"
    )
    .into_bytes()
}
