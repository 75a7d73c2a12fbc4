//! The admin listener (`server.admin_listen`, loopback by default): `/healthz`, `/metrics`,
//! `POST /cache/purge`.
//!
//! Not a proxy phase: a separate Pingora service, so admin endpoints never share the public
//! listener. Invariant: answers from the current configuration generation (a purge after a
//! reload uses the new routes); never touches upstreams.
//!
//! `/healthz` also reports the configuration: `{"config": {"generation": N, "sighup": true,
//! "reloads_applied": A, "reloads_refused": R, "last_error": null | "why the last reload was
//! refused"}}`; `rampart reload` reads it to know SIGHUP is handled before sending one, and to
//! report the outcome.
//!
//! `POST /cache/purge` takes a JSON body with exactly one of `{"url": "http://host/path?q"}`,
//! `{"route": "NAME"}` or `{"all": true}` and answers `{"purged": N}` (entries removed);
//! 400 for a bad body, 503 when the cache store does not answer.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use std::sync::Arc;

use crate::cache::{Purge, PurgeError};
use crate::runtime::Live;

pub struct Admin {
    live: Arc<Live>,
}

impl Admin {
    pub fn new(live: Arc<Live>) -> Self {
        Self { live }
    }

    /// `/healthz`: up, and which configuration runs.
    fn health(&self) -> Vec<u8> {
        let rt = self.live.current();
        let reloads = self.live.status();
        let health = serde_json::json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "routes": rt.config.routes.len(),
            "upstreams": rt.config.upstreams.len(),
            "config": {
                "generation": rt.generation,
                "sighup": self.live.sighup_handled(),
                "reloads_applied": reloads.applied,
                "reloads_refused": reloads.refused,
                "last_error": reloads.last_error,
            },
        });
        health.to_string().into_bytes()
    }

    /// `POST /cache/purge`.
    async fn purge(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        use serde_json::json;
        if session.req_header().method != http::Method::POST {
            return json_response(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "use POST"}));
        }
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
        match self.live.current().cache.purge(what).await {
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
            "/healthz" => response(StatusCode::OK, "application/json", self.health()),
            "/metrics" => response(
                StatusCode::OK,
                crate::metrics::CONTENT_TYPE,
                self.live.metrics.render(),
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
