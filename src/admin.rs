//! The admin listener (`server.admin_listen`, loopback by default): `/healthz`, `/metrics`,
//! `POST /cache/purge`.
//!
//! Not a proxy phase: a separate Pingora service, so admin endpoints never share the public
//! listener. Invariant: answers only from state it was built with; never touches upstreams.
//!
//! `POST /cache/purge` takes a JSON body with exactly one of `{"url": "http://host/path?q"}`,
//! `{"route": "NAME"}` or `{"all": true}` and answers `{"purged": N}` (entries removed);
//! 400 for a bad body, 503 when the cache store does not answer.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use std::sync::Arc;

use crate::cache::{Cache, Purge, PurgeError};
use crate::config::Config;
use crate::metrics::Metrics;

pub struct Admin {
    health: Vec<u8>,
    metrics: Arc<Metrics>,
    cache: Option<Arc<Cache>>,
}

impl Admin {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let health = serde_json::json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "routes": config.routes.len(),
            "upstreams": config.upstreams.len(),
        });
        Self {
            health: health.to_string().into_bytes(),
            metrics,
            cache: None,
        }
    }

    /// Serve `POST /cache/purge` for this cache.
    pub fn with_cache(mut self, cache: Arc<Cache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// `POST /cache/purge`.
    async fn purge(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        use serde_json::json;
        if session.req_header().method != http::Method::POST {
            return json_response(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "use POST"}));
        }
        let Some(cache) = &self.cache else {
            return json_response(StatusCode::NOT_FOUND, json!({"error": "no cache"}));
        };
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = session.read_request_body().await {
            body.extend_from_slice(&chunk);
            if body.len() > 64 * 1024 {
                let error = json!({"error": "body over 64 KiB"});
                return json_response(StatusCode::PAYLOAD_TOO_LARGE, error);
            }
        }
        let bad = |m: &str| json_response(StatusCode::BAD_REQUEST, json!({ "error": m }));
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return bad(
                r#"a JSON body: {"url": "http://host/path"}, {"route": "NAME"} or {"all": true}"#,
            );
        };
        let what = match (v.get("url"), v.get("route"), v.get("all")) {
            (Some(serde_json::Value::String(u)), None, None) => Purge::Url(u.clone()),
            (None, Some(serde_json::Value::String(r)), None) => Purge::Route(r.clone()),
            (None, None, Some(serde_json::Value::Bool(true))) => Purge::All,
            _ => {
                return bad(
                    r#"exactly one of {"url": "http://host/path"}, {"route": "NAME"}, {"all": true}"#,
                )
            }
        };
        match cache.purge(what).await {
            Ok(n) => json_response(StatusCode::OK, json!({ "purged": n })),
            Err(PurgeError::Bad(m)) => bad(&m),
            Err(e @ PurgeError::Store(_)) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": e.to_string()}),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/cache/purge" => self.purge(session).await,
            "/healthz" => response(StatusCode::OK, "application/json", self.health.clone()),
            "/metrics" => response(
                StatusCode::OK,
                crate::metrics::CONTENT_TYPE,
                self.metrics.render(),
            ),
            _ => response(
                StatusCode::NOT_FOUND,
                "text/plain",
                b"not found; try /healthz, /metrics or POST /cache/purge\n".to_vec(),
            ),
        }
    }
}

/// The admin listener's JSON answers: one object and a newline.
fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Vec<u8>> {
    response(
        status,
        "application/json",
        format!("{value}\n").into_bytes(),
    )
}

/// A whole response for Pingora's `ServeHttp` services (this one and the demo's samples).
pub fn response(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_default()
}
