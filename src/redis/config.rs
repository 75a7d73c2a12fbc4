//! `[store]`: where the shared state lives (`redis_url`, single node or cluster), how Rampart
//! authenticates (`redis_password`, TLS files) and its deadlines. Parsed and validated with the
//! rest of the config; the TLS files are read when the server is built, before any listener
//! opens.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::{ClientTlsConfig, ErrorKind, RedisError, TlsCertificates};
use serde::{Deserialize, Serialize, Serializer};

use crate::types::{Duration as ConfigDuration, Invalid};

/// `redis://host:6379/0`, `rediss://...` (TLS), `redis+unix://` or `unix://`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RedisUrl(String);

impl TryFrom<String> for RedisUrl {
    type Error = String;
    fn try_from(url: String) -> Result<Self, String> {
        let ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|s| url.starts_with(s));
        if ok {
            Ok(Self(url))
        } else {
            Err("a URL such as \"redis://redis:6379/0\" (or rediss://, unix://)".into())
        }
    }
}

impl RedisUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL with any password in it replaced by [`MASK`]: the user-info password
    /// (`redis://user:secret@host`) and a `pass`/`password` query parameter (`unix://` URLs).
    pub fn masked(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:{MASK}@{host}"),
                None => format!("{userinfo}@{host}"),
            },
            None => authority.to_string(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) => {
                let params: Vec<String> = query
                    .split('&')
                    .map(|p| match p.split_once('=') {
                        Some((k, _)) if k == "pass" || k == "password" => format!("{k}={MASK}"),
                        _ => p.to_string(),
                    })
                    .collect();
                format!("{path}?{}", params.join("&"))
            }
            None => tail.to_string(),
        };
        format!("{scheme}://{authority}{tail}")
    }
}

/// What a secret prints as (`rampart check --print`).
pub const MASK: &str = "********";

/// Masked: the only place a URL is serialized is printed config, which must not show a
/// password.
impl Serialize for RedisUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}

/// A secret serializes as [`MASK`], never as itself.
fn mask<S: Serializer>(secret: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => s.serialize_some(MASK),
        None => s.serialize_none(),
    }
}

/// `[store]`. A reload that leaves it unchanged keeps the running [`super::Redis`] (and its
/// connection); any change builds a new one.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `redis://host:6379/0`, `rediss://...` (TLS). Absent: in-process stores.
    /// Env: `RAMPART_REDIS_URL`.
    pub redis_url: Option<RedisUrl>,
    /// Password, kept out of the URL and the file. Env: `RAMPART_REDIS_PASSWORD`.
    /// Serialized masked.
    #[serde(serialize_with = "mask")]
    pub redis_password: Option<String>,
    /// Redis Cluster: the URL is one seed node (the others are discovered from it).
    pub cluster: bool,
    /// PEM file of the CA(s) that sign Redis's certificate (`rediss://` only). Absent: the
    /// system roots.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for a Redis with `tls-auth-clients yes` (`rediss://`
    /// only; with `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Prefix of every key Rampart writes.
    pub key_prefix: String,
    /// Per-call deadline; past it the call counts as a store error.
    pub timeout: ConfigDuration,
    /// How often Redis is PINGed in the background, so an outage is noticed (and exported as
    /// `rampart_store_up 0`) without waiting for traffic.
    pub health_interval: ConfigDuration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_password: None,
            cluster: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            key_prefix: "rampart:".into(),
            timeout: ConfigDuration::millis(50),
            health_interval: ConfigDuration::secs(5),
        }
    }
}

impl Config {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if self.health_interval.0 < Duration::from_millis(100) {
            return Err(Invalid::new("health_interval", "at least \"100ms\""));
        }
        if self.timeout.0.is_zero() {
            return Err(Invalid::new("timeout", "a duration above zero"));
        }
        let tls = self
            .redis_url
            .as_ref()
            .is_some_and(|u| u.as_str().starts_with("rediss://"));
        for (key, set) in [
            ("tls_ca_file", self.tls_ca_file.is_some()),
            ("tls_cert_file", self.tls_cert_file.is_some()),
            ("tls_key_file", self.tls_key_file.is_some()),
        ] {
            if set && !tls {
                return Err(Invalid::new(
                    key,
                    "only with a TLS redis_url (\"rediss://host:port\")",
                ));
            }
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => Err(Invalid::new(
                "tls_cert_file",
                "set with tls_key_file, its private key (both or neither)",
            )),
            (None, Some(_)) => Err(Invalid::new(
                "tls_key_file",
                "set with tls_cert_file, its certificate (both or neither)",
            )),
            _ => Ok(()),
        }
    }
}

/// Why the store could not be set up (checked before any listener opens).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("store.redis_url: {0}")]
    Url(RedisError),
    #[error("store.{key}: cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("store.{key}: {path} holds no PEM {what}")]
    NoPem {
        key: &'static str,
        path: String,
        what: &'static str,
    },
    #[error("store TLS files: {0}")]
    Tls(RedisError),
}

impl SetupError {
    /// redis-rs reports a URL it cannot use as `InvalidClientConfig`; anything else from
    /// building a client comes from the certificate files.
    pub(super) fn from_client(e: RedisError) -> Self {
        if e.kind() == ErrorKind::InvalidClientConfig {
            Self::Url(e)
        } else {
            Self::Tls(e)
        }
    }
}

/// The certificates of `[store]` (`None`: no file configured, the system roots apply).
pub(super) fn tls_certificates(config: &Config) -> Result<Option<TlsCertificates>, SetupError> {
    let read = |key: &'static str, path: &Path, marker: &str, what: &'static str| {
        let bytes = std::fs::read(path).map_err(|source| SetupError::Read {
            key,
            path: path.display().to_string(),
            source,
        })?;
        // redis-rs accepts a file without any PEM block as an empty trust store, which would
        // only surface as failed handshakes: refuse it here, by name.
        if !String::from_utf8_lossy(&bytes).contains(marker) {
            return Err(SetupError::NoPem {
                key,
                path: path.display().to_string(),
                what,
            });
        }
        Ok(bytes)
    };
    let root_cert = match &config.tls_ca_file {
        Some(p) => Some(read(
            "tls_ca_file",
            p,
            "-----BEGIN CERTIFICATE-----",
            "certificate",
        )?),
        None => None,
    };
    let client_tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read(
                "tls_cert_file",
                cert,
                "-----BEGIN CERTIFICATE-----",
                "certificate",
            )?,
            client_key: read("tls_key_file", key, "PRIVATE KEY-----", "private key")?,
        }),
        _ => None,
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

#[cfg(test)]
mod masking_tests {
    use super::*;

    fn masked(url: &str) -> String {
        RedisUrl::try_from(url.to_string()).expect("url").masked()
    }

    #[test]
    fn passwords_in_urls_are_masked() {
        assert_eq!(masked("redis://redis:6379/0"), "redis://redis:6379/0");
        assert_eq!(
            masked("redis://:s3cret@redis:6379/0"),
            "redis://:********@redis:6379/0"
        );
        assert_eq!(
            masked("rediss://app:s3:cr@t@redis.example.com:6380"),
            "rediss://app:********@redis.example.com:6380"
        );
        assert_eq!(masked("redis://app@redis/1"), "redis://app@redis/1");
        assert_eq!(
            masked("unix:///run/redis.sock?db=1&pass=s3cret"),
            "unix:///run/redis.sock?db=1&pass=********"
        );
        assert_eq!(
            masked("redis+unix:///run/redis.sock?password=s3cret&user=app"),
            "redis+unix:///run/redis.sock?password=********&user=app"
        );
    }
}
