//! `[upstreams.NAME]` and `[[routes]]` as written in the file, their defaults and the checks
//! that span fields.

use serde::{Deserialize, Serialize};

use crate::types::{ByteSize, Duration, HeaderValueText, HostPort, Invalid, Name, UrlPath};

/// `[upstreams.NAME]`: a group of interchangeable addresses.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// One or more `host:port`; names are resolved at start and every `resolve_interval`.
    pub addrs: Vec<HostPort>,
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Duration,
    #[serde(default = "defaults::io_timeout")]
    pub read_timeout: Duration,
    #[serde(default = "defaults::io_timeout")]
    pub write_timeout: Duration,
    /// How long an idle upstream connection is kept for reuse ("0s" disables keepalive). An
    /// upstream's `Keep-Alive: timeout=N` lowers it to just under N for that group.
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Duration,
    /// How many other addresses to try when connecting fails (idempotent requests only).
    #[serde(default = "defaults::connect_retries")]
    pub connect_retries: usize,
    /// Active health check period; failing addresses are skipped while others are healthy.
    #[serde(default = "defaults::health_check_interval")]
    pub health_check_interval: Duration,
    /// `GET` this path on every address and expect `health_check_status`; absent: the check
    /// only connects (TCP).
    #[serde(default)]
    pub health_check_path: Option<UrlPath>,
    /// The status a passing HTTP health check answers.
    #[serde(default = "defaults::health_check_status")]
    pub health_check_status: u16,
    /// Deadline of one HTTP health check's response (the connect has `connect_timeout`).
    #[serde(default = "defaults::health_check_timeout")]
    pub health_check_timeout: Duration,
    /// Consecutive failed checks that take an address out.
    #[serde(default = "defaults::health_check_fails")]
    pub health_check_fails: usize,
    /// Consecutive passed checks that put it back.
    #[serde(default = "defaults::health_check_passes")]
    pub health_check_passes: usize,
    /// Consecutive failed requests (connect failure, timeout, 5xx) that take an address out
    /// for `fail_timeout` (nginx's `max_fails`); 0: never.
    #[serde(default = "defaults::max_fails")]
    pub max_fails: u32,
    /// How long an address taken out by failed requests gets none before it is tried again
    /// (nginx's `fail_timeout`).
    #[serde(default = "defaults::fail_timeout")]
    pub fail_timeout: Duration,
    /// Re-resolve DNS names this often (containers get new addresses when they restart).
    #[serde(default = "defaults::resolve_interval")]
    pub resolve_interval: Duration,
    /// `Host` to send instead of the client's (default: the client's `Host` is preserved).
    #[serde(default)]
    pub host: Option<HeaderValueText>,
    /// Requests in flight to this group at once (default: `[limits]
    /// max_inflight_per_upstream`); more get 503 with `Retry-After`.
    #[serde(default)]
    pub max_inflight: Option<usize>,
}

/// `[[routes]]`: a path prefix sent to an upstream group.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Used in metrics labels, logs and cache keys; unique.
    pub name: Name,
    /// Matches when the request path starts with it; the longest matching prefix wins.
    pub prefix: UrlPath,
    /// Name of an `[upstreams.NAME]` group.
    pub upstream: Name,
    /// Remove the prefix before forwarding (`/api/v1/x` with prefix `/api` -> `/v1/x`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the prefix with this before forwarding (`/old/x` -> `/new/x`).
    #[serde(default)]
    pub rewrite: Option<UrlPath>,
    /// Send the upstream the target exactly as the client wrote it instead of its canonical
    /// form (routing and limits still use the canonical path). Not with a rewrite.
    #[serde(default)]
    pub forward_original_path: bool,
    /// Name of a `[cors.NAME]` policy applied to this route.
    #[serde(default)]
    pub cors: Option<Name>,
    /// Name of a `[cache.policies.NAME]` policy: responses of this route are cached.
    #[serde(default)]
    pub cache: Option<Name>,
    /// Name of a `[compression.policies.NAME]` policy (default: `[compression]` itself).
    #[serde(default)]
    pub compression: Option<Name>,
    /// Largest request body on this route, `0` for unlimited (default: `[limits]
    /// max_body_size`; nginx's `client_max_body_size` in a `location`).
    #[serde(default)]
    pub max_body_size: Option<ByteSize>,
}

mod defaults {
    use crate::types::Duration;
    pub fn connect_timeout() -> Duration {
        Duration::secs(2)
    }
    pub fn io_timeout() -> Duration {
        Duration::secs(60)
    }
    /// Below the 5 s keep-alive of uvicorn, Node.js and Apache, so Rampart drops an idle
    /// connection before the server does (the server closing first races with a new request).
    pub fn idle_timeout() -> Duration {
        Duration::secs(4)
    }
    pub fn connect_retries() -> usize {
        2
    }
    pub fn health_check_interval() -> Duration {
        Duration::secs(5)
    }
    pub fn health_check_status() -> u16 {
        200
    }
    pub fn health_check_timeout() -> Duration {
        Duration::secs(2)
    }
    pub fn health_check_fails() -> usize {
        2
    }
    pub fn health_check_passes() -> usize {
        1
    }
    pub fn max_fails() -> u32 {
        3
    }
    pub fn fail_timeout() -> Duration {
        Duration::secs(10)
    }
    pub fn resolve_interval() -> Duration {
        Duration::secs(30)
    }
}

impl UpstreamConfig {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if self.addrs.is_empty() {
            return Err(Invalid::new("addrs", "at least one \"host:port\" address"));
        }
        if self.connect_timeout.0.is_zero() {
            return Err(Invalid::new("connect_timeout", "a duration above zero"));
        }
        if self.read_timeout.0.is_zero() {
            return Err(Invalid::new("read_timeout", "a duration above zero"));
        }
        if self.write_timeout.0.is_zero() {
            return Err(Invalid::new("write_timeout", "a duration above zero"));
        }
        if self.connect_retries > 16 {
            return Err(Invalid::new("connect_retries", "at most 16"));
        }
        if self.health_check_interval.0 < std::time::Duration::from_millis(100) {
            return Err(Invalid::new("health_check_interval", "at least \"100ms\""));
        }
        if !(100..=599).contains(&self.health_check_status) {
            return Err(Invalid::new(
                "health_check_status",
                "an HTTP status from 100 to 599",
            ));
        }
        if self.health_check_timeout.0.is_zero() {
            return Err(Invalid::new(
                "health_check_timeout",
                "a duration above zero",
            ));
        }
        for (key, n) in [
            ("health_check_fails", self.health_check_fails),
            ("health_check_passes", self.health_check_passes),
        ] {
            if !(1..=100).contains(&n) {
                return Err(Invalid::new(key, "a count from 1 to 100"));
            }
        }
        if self.max_fails > 1000 {
            return Err(Invalid::new("max_fails", "at most 1000 (0 turns it off)"));
        }
        if self.max_fails > 0 && self.fail_timeout.0 < std::time::Duration::from_millis(100) {
            return Err(Invalid::new("fail_timeout", "at least \"100ms\""));
        }
        if self.resolve_interval.0 < std::time::Duration::from_secs(1) {
            return Err(Invalid::new("resolve_interval", "at least \"1s\""));
        }
        if self.max_inflight == Some(0) {
            return Err(Invalid::new("max_inflight", "at least 1"));
        }
        Ok(())
    }
}

impl RouteConfig {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if self.rewrite.is_some() && self.strip_prefix {
            return Err(Invalid::new(
                "rewrite",
                "either strip_prefix or rewrite, not both",
            ));
        }
        if self.forward_original_path && (self.rewrite.is_some() || self.strip_prefix) {
            return Err(Invalid::new(
                "forward_original_path",
                "the original target cannot also be rewritten (rewrite, strip_prefix)",
            ));
        }
        Ok(())
    }
}
