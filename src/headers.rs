//! Headers: what the upstream is told about the client, and what every client response carries.
//!
//! Phases: `upstream_request_filter` ([`Headers::forward`]); `response_filter` and `respond`
//! ([`Headers::downstream`]), so proxied, cached and self-made responses are treated alike.
//!
//! Invariants: every response leaves with the security headers and the request id; a header
//! value the upstream chose (e.g. a stricter `X-Frame-Options: DENY`) is kept, not overwritten.

use std::collections::BTreeMap;

use http::header::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Deserialize;

use crate::client::Client;
use crate::config::Invalid;
use crate::ctx::Ctx;

pub const REQUEST_ID: &str = "x-request-id";

/// `[headers]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Added to every response unless the upstream set the header itself. Writing this table
    /// replaces the defaults (the old nginx.conf's three headers).
    pub security: BTreeMap<String, String>,
    /// `Strict-Transport-Security`, sent on responses over the TLS listener only ("" = off).
    pub hsts: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            security: [
                ("X-Frame-Options", "SAMEORIGIN"),
                ("X-Content-Type-Options", "nosniff"),
                ("X-XSS-Protection", "1; mode=block"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            hsts: "max-age=31536000; includeSubDomains".into(),
        }
    }
}

impl Config {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        for (name, value) in &self.security {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Invalid::new(format!("security.{name}"), "a valid header name"))?;
            HeaderValue::from_str(value).map_err(|_| {
                Invalid::new(
                    format!("security.{name}"),
                    "a header value of visible ASCII",
                )
            })?;
        }
        HeaderValue::from_str(&self.hsts)
            .map_err(|_| Invalid::new("hsts", "a header value of visible ASCII"))?;
        Ok(())
    }
}

/// The header policy, parsed once at start.
pub struct Headers {
    security: Vec<(HeaderName, HeaderValue)>,
    hsts: Option<HeaderValue>,
    process_time: bool,
    server_timing: bool,
}

impl Headers {
    /// `timing` is the `[metrics]` section: it says whether `X-Process-Time` and
    /// `Server-Timing` go out.
    pub fn new(c: &Config, timing: &crate::metrics::Config) -> Self {
        let security = c
            .security
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect();
        let hsts = (!c.hsts.is_empty())
            .then(|| HeaderValue::from_str(&c.hsts).ok())
            .flatten();
        Self {
            security,
            hsts,
            process_time: timing.process_time_header,
            server_timing: timing.server_timing,
        }
    }

    /// Forwarding headers for the upstream request (nginx's `proxy_set_header` block).
    /// `Host` is left as the client sent it unless the upstream group names one.
    pub fn forward(
        &self,
        req: &mut RequestHeader,
        client: &Client,
        request_id: &str,
        host: Option<&str>,
    ) {
        if let Some(host) = host {
            let _ = req.insert_header(http::header::HOST, host);
        }
        if let Some(peer) = client.peer {
            let peer = peer.to_string();
            let xff = match req.headers.get("x-forwarded-for").map(|v| v.to_str()) {
                Some(Ok(prev)) if !prev.trim().is_empty() => format!("{prev}, {peer}"),
                _ => peer,
            };
            let _ = req.insert_header("x-forwarded-for", xff);
        }
        match client.ip {
            Some(ip) => {
                let _ = req.insert_header("x-real-ip", ip.to_string());
            }
            None => {
                let _ = req.remove_header("x-real-ip");
            }
        }
        let _ = req.insert_header("x-forwarded-proto", client.scheme);
        let _ = req.insert_header(REQUEST_ID, request_id);
    }

    /// Security headers, the request id and timing, on any response Rampart sends.
    pub fn downstream(&self, resp: &mut ResponseHeader, ctx: &Ctx) {
        for (name, value) in &self.security {
            if !resp.headers.contains_key(name) {
                let _ = resp.insert_header(name.clone(), value.clone());
            }
        }
        if ctx.tls {
            if let Some(hsts) = &self.hsts {
                let _ = resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
            }
        }
        let _ = resp.insert_header(REQUEST_ID, ctx.request_id.as_str());
        // Time so far: the response header is about to leave, the body may still stream.
        let elapsed = ctx.started.elapsed();
        if self.process_time {
            let _ = resp.insert_header("x-process-time", format!("{:.6}", elapsed.as_secs_f64()));
        }
        if self.server_timing {
            let total = elapsed.as_secs_f64() * 1000.0;
            let value = match ctx.upstream_time {
                Some(up) => format!(
                    "upstream;dur={:.3}, total;dur={total:.3}",
                    up.as_secs_f64() * 1000.0
                ),
                None => format!("total;dur={total:.3}"),
            };
            let _ = resp.append_header("server-timing", value);
        }
    }
}

/// The client's `X-Request-Id` when it is a sane token, else a fresh UUID. Anything longer or
/// stranger is replaced so it cannot forge log lines or bloat headers.
pub fn request_id(req: &RequestHeader) -> String {
    if let Some(v) = req.headers.get(REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
        {
            return String::from_utf8_lossy(b).into_owned();
        }
    }
    uuid::Uuid::new_v4().to_string()
}

/// Add a token to `Vary` once, keeping what is there (`*` already covers everything).
pub fn add_vary(resp: &mut ResponseHeader, token: &str) {
    let mut tokens: Vec<String> = Vec::new();
    for v in resp.headers.get_all(http::header::VARY) {
        if let Ok(s) = v.to_str() {
            for t in s.split(',') {
                let t = t.trim();
                if t == "*" || t.eq_ignore_ascii_case(token) {
                    return;
                }
                if !t.is_empty() {
                    tokens.push(t.to_string());
                }
            }
        }
    }
    tokens.push(token.to_string());
    let _ = resp.insert_header(http::header::VARY, tokens.join(", "));
}
