//! The configuration file: typed, defaulted, validated, located.
//!
//! Loading happens once, before any listener opens (`rampart check` runs exactly this code).
//! Each feature owns the type of its own section (`routing::UpstreamConfig`, `cors::Config`,
//! ...); this module assembles them into [`Config`], applies the documented environment
//! overrides and reports any problem as `file:line:column: key: what was expected`.
//!
//! Invariant: a [`Config`] that [`load`] returned has passed every check; nothing downstream
//! re-validates, and nothing starts half-configured.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

mod locate;

use crate::types::{Cidr, Duration, HostPort, Invalid, ListenAddr, Name};
use crate::{
    accesslog, cache, compress, cors, headers, limits, metrics, ratelimit, redis, routing,
};
use locate::{line_col, locate};

/// The whole file. Every section has defaults, so an empty file is a valid (if useless) one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub upstreams: BTreeMap<Name, routing::UpstreamConfig>,
    pub routes: Vec<routing::RouteConfig>,
    pub headers: headers::Config,
    pub cors: BTreeMap<Name, cors::Config>,
    pub store: redis::Config,
    pub metrics: metrics::Config,
    pub access_log: accesslog::Config,
    pub ratelimit: ratelimit::Config,
    pub cache: cache::Config,
    pub compression: compress::Config,
    pub limits: limits::Config,
}

/// `[server]`: listeners and process settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Public listener (plain HTTP). Env: `RAMPART_LISTEN`.
    pub listen: ListenAddr,
    /// Admin listener (`/healthz`, `/metrics`, `/cache/purge`). Env: `RAMPART_ADMIN_LISTEN`.
    pub admin_listen: ListenAddr,
    /// Worker threads for the proxy service.
    pub threads: usize,
    /// Peers whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed (CIDRs or addresses).
    pub trusted_proxies: Vec<Cidr>,
    /// Optional TLS listener; when present, HSTS is sent on its responses.
    pub tls: Option<TlsConfig>,
    /// How long in-flight requests may take to finish on shutdown.
    pub grace_period: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: ListenAddr(([0, 0, 0, 0], 8080).into()),
            admin_listen: ListenAddr(([127, 0, 0, 1], 9091).into()),
            threads: 2,
            trusted_proxies: Vec::new(),
            tls: None,
            grace_period: Duration::secs(5),
        }
    }
}

/// `[server.tls]`: a TLS listener (rustls) beside the plain one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub listen: ListenAddr,
    pub cert: String,
    pub key: String,
}

/// What went wrong, and where.
#[derive(Debug)]
pub enum Error {
    /// The file could not be read at all.
    Read {
        file: String,
        source: std::io::Error,
    },
    /// A value in the file is wrong: located by line and column, named by its key path.
    Invalid {
        file: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    /// A documented environment override holds a bad value.
    Env {
        var: String,
        /// The key of the file it replaces.
        key: String,
        message: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Read { file, source } => write!(f, "{file}: cannot read: {source}"),
            Error::Invalid {
                file,
                line,
                column,
                key,
                message,
            } => write!(f, "{file}:{line}:{column}: {key}: {message}"),
            Error::Env { var, key, message } => {
                write!(f, "environment variable {var} (sets {key}): {message}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// Read, parse, override from the environment, validate.
pub fn load(path: &Path) -> Result<Config, Error> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        file: file.clone(),
        source,
    })?;
    parse(&file, &text, &std::env::vars().collect())
}

/// Parse `text` (named `file` in messages) with `env` as the environment.
pub fn parse(file: &str, text: &str, env: &BTreeMap<String, String>) -> Result<Config, Error> {
    let de = toml::Deserializer::new(text);
    let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let (line, column) = inner
            .span()
            .map(|s| line_col(text, s.start))
            .unwrap_or((1, 1));
        Error::Invalid {
            file: file.to_string(),
            line,
            column,
            key: if key == "." { "(file)".into() } else { key },
            message: inner.message().trim().to_string(),
        }
    })?;
    apply_env(&mut config, env)?;
    config.validate().map_err(|invalid| {
        let (line, column) = locate(text, &invalid.key);
        Error::Invalid {
            file: file.to_string(),
            line,
            column,
            key: invalid.key,
            message: invalid.message,
        }
    })?;
    Ok(config)
}

/// The documented environment overrides, for values that differ per deployment.
///
/// | variable | replaces |
/// |---|---|
/// | `RAMPART_LISTEN` | `server.listen` |
/// | `RAMPART_ADMIN_LISTEN` | `server.admin_listen` |
/// | `RAMPART_REDIS_URL` | `store.redis_url` |
/// | `RAMPART_REDIS_PASSWORD` | `store.redis_password` |
/// | `RAMPART_UPSTREAM_<NAME>` | `upstreams.<name>.addrs` (comma-separated; `-` in the name becomes `_`) |
/// A documented override's value, parsed as the file's value would be.
fn parse_env<T: TryFrom<String, Error = String>>(
    var: &str,
    key: &str,
    value: String,
) -> Result<T, Error> {
    T::try_from(value).map_err(|message| Error::Env {
        var: var.to_string(),
        key: key.to_string(),
        message,
    })
}

fn apply_env(config: &mut Config, env: &BTreeMap<String, String>) -> Result<(), Error> {
    let get = |var: &str| env.get(var).filter(|v| !v.trim().is_empty()).cloned();
    if let Some(v) = get("RAMPART_LISTEN") {
        config.server.listen = parse_env("RAMPART_LISTEN", "server.listen", v)?;
    }
    if let Some(v) = get("RAMPART_ADMIN_LISTEN") {
        config.server.admin_listen = parse_env("RAMPART_ADMIN_LISTEN", "server.admin_listen", v)?;
    }
    if let Some(v) = get("RAMPART_REDIS_URL") {
        config.store.redis_url = Some(parse_env("RAMPART_REDIS_URL", "store.redis_url", v)?);
    }
    if let Some(v) = get("RAMPART_REDIS_PASSWORD") {
        config.store.redis_password = Some(v);
    }
    for (name, upstream) in config.upstreams.iter_mut() {
        let var = format!(
            "RAMPART_UPSTREAM_{}",
            name.to_ascii_uppercase().replace('-', "_")
        );
        if let Some(v) = get(&var) {
            upstream.addrs = v
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(|a| HostPort::try_from(a.to_string()))
                .collect::<Result<_, _>>()
                .map_err(|message| Error::Env {
                    key: format!("upstreams.{name}.addrs"),
                    var: var.clone(),
                    message,
                })?;
        }
    }
    Ok(())
}

impl Config {
    /// The checks no single value can make on its own: ranges, fields that exclude each other,
    /// and names that must refer to something defined elsewhere in the file.
    fn validate(&self) -> Result<(), Invalid> {
        if self.server.threads == 0 || self.server.threads > 1024 {
            return Err(Invalid::new(
                "server.threads",
                "a thread count from 1 to 1024",
            ));
        }
        if let Some(tls) = &self.server.tls {
            if tls.listen == self.server.listen {
                return Err(Invalid::new(
                    "server.tls.listen",
                    "must differ from server.listen",
                ));
            }
        }
        if self.server.listen == self.server.admin_listen {
            return Err(Invalid::new(
                "server.admin_listen",
                "must differ from server.listen (the admin endpoints stay off the public listener)",
            ));
        }
        for (name, upstream) in &self.upstreams {
            upstream
                .validate()
                .map_err(|e| e.within(&format!("upstreams.{name}")))?;
        }
        for (name, cors) in &self.cors {
            cors.validate()
                .map_err(|e| e.within(&format!("cors.{name}")))?;
        }
        self.compression
            .validate()
            .map_err(|e| e.within("compression"))?;
        let mut seen_names = BTreeMap::new();
        let mut seen_prefixes = BTreeMap::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            route.validate().map_err(|e| e.within(&at))?;
            if let Some(j) = seen_names.insert(route.name.as_str(), i) {
                return Err(Invalid::new(
                    format!("{at}.name"),
                    format!(
                        "route name \"{}\" is already used by routes[{j}]",
                        route.name
                    ),
                ));
            }
            if let Some(j) = seen_prefixes.insert(route.prefix.as_str(), i) {
                return Err(Invalid::new(
                    format!("{at}.prefix"),
                    format!(
                        "prefix \"{}\" is already routed by routes[{j}]",
                        route.prefix
                    ),
                ));
            }
            if !self.upstreams.contains_key(&route.upstream) {
                return Err(Invalid::new(
                    format!("{at}.upstream"),
                    format!(
                        "unknown upstream \"{}\"; expected one of: {}",
                        route.upstream,
                        names(self.upstreams.keys())
                    ),
                ));
            }
            if let Some(policy) = &route.cache {
                if !self.cache.policies.contains_key(policy) {
                    return Err(Invalid::new(
                        format!("{at}.cache"),
                        format!(
                            "unknown cache policy \"{policy}\"; expected one of: {}",
                            names(self.cache.policies.keys())
                        ),
                    ));
                }
            }
            if let Some(policy) = &route.cors {
                if !self.cors.contains_key(policy) {
                    return Err(Invalid::new(
                        format!("{at}.cors"),
                        format!(
                            "unknown CORS policy \"{policy}\"; expected one of: {}",
                            names(self.cors.keys())
                        ),
                    ));
                }
            }
            if let Some(policy) = &route.compression {
                if !self.compression.policies.contains_key(policy) {
                    return Err(Invalid::new(
                        format!("{at}.compression"),
                        format!(
                            "unknown compression policy \"{policy}\"; expected one of: {}",
                            names(self.compression.policies.keys())
                        ),
                    ));
                }
            }
        }
        self.store.validate().map_err(|e| e.within("store"))?;
        self.metrics.validate().map_err(|e| e.within("metrics"))?;
        let route_names: Vec<&str> = self.routes.iter().map(|r| r.name.as_str()).collect();
        self.ratelimit
            .validate(&route_names)
            .map_err(|e| e.within("ratelimit"))?;
        self.cache.validate().map_err(|e| e.within("cache"))?;
        self.limits.validate().map_err(|e| e.within("limits"))?;
        Ok(())
    }

    /// One line for `rampart check`, like `nginx -t`.
    pub fn summary(&self) -> String {
        let routes: Vec<String> = self
            .routes
            .iter()
            .map(|r| format!("{} {} -> {}", r.name, r.prefix, r.upstream))
            .collect();
        format!(
            "{} route(s) [{}], {} upstream(s), store {}, listen {}, admin {}",
            self.routes.len(),
            routes.join(", "),
            self.upstreams.len(),
            if self.store.redis_url.is_some() {
                "redis"
            } else {
                "memory"
            },
            self.server.listen,
            self.server.admin_listen
        )
    }
}

fn names<'a>(it: impl Iterator<Item = &'a Name>) -> String {
    let v: Vec<&str> = it.map(Name::as_str).collect();
    if v.is_empty() {
        "(none defined)".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn empty_file_is_defaults() {
        let c = parse("t.toml", "", &env()).expect("valid");
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9091");
    }

    #[test]
    fn unknown_key_is_located() {
        let text = "[server]\nlisten = \"0.0.0.0:1\"\nlisten_port = 3\n";
        let e = parse("t.toml", text, &env()).expect_err("unknown key");
        let s = e.to_string();
        assert!(s.starts_with("t.toml:3:1:"), "{s}");
        assert!(s.contains("listen_port"), "{s}");
    }

    #[test]
    fn semantic_error_points_at_value() {
        let text = "[upstreams.b]\naddrs = [\"127.0.0.1:1\"]\n\n[[routes]]\nname = \"x\"\nprefix = \"/\"\nupstream = \"nope\"\n";
        let e = parse("t.toml", text, &env()).expect_err("unknown upstream");
        let s = e.to_string();
        assert!(s.starts_with("t.toml:7:12: routes[0].upstream:"), "{s}");
    }

    #[test]
    fn env_overrides_addresses() {
        let text = "[upstreams.back-end]\naddrs = [\"127.0.0.1:1\"]\n";
        let mut env = env();
        env.insert(
            "RAMPART_UPSTREAM_BACK_END".into(),
            "10.0.0.1:80, 10.0.0.2:80".into(),
        );
        env.insert("RAMPART_LISTEN".into(), "127.0.0.1:9999".into());
        let c = parse("t.toml", text, &env).expect("valid");
        let addrs: Vec<&str> = c.upstreams["back-end"]
            .addrs
            .iter()
            .map(|a| a.as_str())
            .collect();
        assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.2:80"]);
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:9999");
    }

    #[test]
    fn bad_env_value_is_named() {
        let mut env = env();
        env.insert("RAMPART_LISTEN".into(), "nonsense".into());
        let e = parse("t.toml", "", &env).expect_err("bad listen");
        assert!(e.to_string().contains("server.listen"), "{e}");
    }
}
