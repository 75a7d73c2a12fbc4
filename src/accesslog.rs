//! The access log: one line per request, plain or JSON, through `log` with the target
//! `rampart::access` (so `RUST_LOG=rampart::access=off` silences it like any Rust log).
//!
//! Phase: `logging`, which every request reaches, answered or not.
//!
//! Invariant: one line per request, never more; a JSON line is one complete JSON object
//! (the binary prints records of this target without a prefix, see `main.rs`). A request that
//! never reaches `logging` (the runtime dropped it when the shutdown grace period ended) is
//! logged as cut by its [`Unfinished`] guard.

use serde::{Deserialize, Serialize};

use crate::types::UrlPath;

/// The `log` target of access lines.
pub const TARGET: &str = "rampart::access";

/// `[access_log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    pub format: Format,
    /// Exact paths not logged (nginx's `access_log off` on `/health`).
    pub skip_paths: Vec<UrlPath>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Plain,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            format: Format::Plain,
            skip_paths: vec![
                UrlPath::from_static("/health"),
                UrlPath::from_static("/healthz"),
            ],
        }
    }
}

/// One request, as logged. The path is logged without its query string (queries carry
/// tokens often enough that leaving them out is the safe default).
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub client: Option<String>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes: usize,
    pub duration_ms: f64,
    pub route: Option<&'a str>,
    pub upstream: Option<String>,
    pub cache: Option<&'a str>,
    pub limit: Option<&'a str>,
    /// Why the request was refused or failed (a `limits::Reason` label, or who broke it).
    pub error: Option<&'a str>,
}

impl Config {
    /// Whether a request to `path` is logged: checked before an [`Entry`] is built, so a
    /// disabled log costs nothing per request (no time formatting, no address strings).
    pub fn wants(&self, path: &str) -> bool {
        self.enabled
            && log::log_enabled!(target: TARGET, log::Level::Info)
            && !self.skip_paths.iter().any(|p| p.as_str() == path)
    }

    /// Write `entry` (the caller asked [`Config::wants`] first).
    pub fn write(&self, entry: &Entry<'_>) {
        match self.format {
            Format::Json => match serde_json::to_string(entry) {
                Ok(line) => log::info!(target: TARGET, "{line}"),
                Err(e) => log::warn!("access log entry not serialisable: {e}"),
            },
            Format::Plain => log::info!(
                target: TARGET,
                "{} {} \"{} {}\" {} {}B {:.3}ms route={} upstream={} cache={} limit={} error={} id={}",
                entry.time,
                entry.client.as_deref().unwrap_or("-"),
                entry.method,
                entry.path.escape_debug(),
                entry.status,
                entry.bytes,
                entry.duration_ms,
                entry.route.unwrap_or("-"),
                entry.upstream.as_deref().unwrap_or("-"),
                entry.cache.unwrap_or("-"),
                entry.limit.unwrap_or("-"),
                entry.error.unwrap_or("-"),
                entry.request_id,
            ),
        }
    }
}

/// A request in progress: dropped before [`Unfinished::finish`] (the runtime cut it when
/// the grace period after SIGTERM ended), it logs the request as cut, at warn.
///
/// It keeps the method and the URI as they are (both share the request's bytes, no copy) and
/// formats the line only when it is logged: every request passes here, few are ever cut.
#[derive(Debug, Default)]
pub struct Unfinished {
    request: Option<(String, http::Method, http::Uri, std::time::Instant)>,
}

impl Unfinished {
    /// The request started: its id, method and target.
    pub fn begin(
        &mut self,
        request_id: &str,
        method: &http::Method,
        uri: &http::Uri,
        started: std::time::Instant,
    ) {
        self.request = Some((request_id.to_string(), method.clone(), uri.clone(), started));
    }

    /// The request reached `logging`: nothing to report.
    pub fn finish(&mut self) {
        self.request = None;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some((id, method, uri, started)) = self.request.take() {
            let path = uri.path().escape_debug();
            log::warn!(
                "request cut before it finished: \"{method} {path}\" id={id} after {:.3}s (the shutdown grace period ended, or its task was dropped)",
                started.elapsed().as_secs_f64()
            );
        }
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
