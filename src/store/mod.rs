//! Shared state: one interface, two backends.
//!
//! With `store.redis_url` set, rate-limit buckets and cache entries live in Redis, so every
//! replica shares them; without it, in-process stores keep Rampart self-contained (the
//! embedded default). Features talk to their own store types; this module owns the settings
//! every Redis user shares.
//!
//! Invariant: a store call never blocks a request longer than `store.timeout`.

pub mod redis;

use serde::Deserialize;

use crate::config::{Duration, Invalid};

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `redis://host:6379/0`, `rediss://...` (TLS). Absent: in-process stores.
    /// Env: `RAMPART_REDIS_URL`.
    pub redis_url: Option<String>,
    /// Password, kept out of the URL and the file. Env: `RAMPART_REDIS_PASSWORD`.
    pub redis_password: Option<String>,
    /// Redis Cluster: the URL is one seed node.
    pub cluster: bool,
    /// Prefix of every key Rampart writes.
    pub key_prefix: String,
    /// Per-call deadline; past it the call counts as a store error.
    pub timeout: Duration,
    /// How often Redis is PINGed in the background, so an outage is noticed (and exported as
    /// `rampart_store_up 0`) without waiting for traffic.
    pub health_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_password: None,
            cluster: false,
            key_prefix: "rampart:".into(),
            timeout: Duration::millis(50),
            health_interval: Duration::secs(5),
        }
    }
}

impl Config {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if let Some(url) = &self.redis_url {
            let ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
                .iter()
                .any(|s| url.starts_with(s));
            if !ok {
                return Err(Invalid::new(
                    "redis_url",
                    "a URL such as \"redis://redis:6379/0\" (or rediss://, unix://)",
                ));
            }
        }
        if self.health_interval.0 < std::time::Duration::from_millis(100) {
            return Err(Invalid::new("health_interval", "at least \"100ms\""));
        }
        if self.timeout.0.is_zero() {
            return Err(Invalid::new("timeout", "a duration above zero"));
        }
        Ok(())
    }
}
