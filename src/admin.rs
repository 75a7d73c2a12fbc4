//! The admin listener (`server.admin_listen`, loopback by default): `/healthz`, `/metrics`.
//!
//! Not a proxy phase: a separate Pingora service, so admin endpoints never share the public
//! listener. Invariant: answers only from state it was built with; never touches upstreams.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;

pub struct Admin {
    health: Vec<u8>,
    metrics: Arc<Metrics>,
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
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        let (status, ctype, body) = match path {
            "/healthz" => (StatusCode::OK, "application/json", self.health.clone()),
            "/metrics" => (
                StatusCode::OK,
                crate::metrics::CONTENT_TYPE,
                self.metrics.render(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                b"not found; try /healthz or /metrics\n".to_vec(),
            ),
        };
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, ctype)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }
}
