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
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Deserializer};

use crate::{accesslog, cache, compress, cors, headers, metrics, ratelimit, routing, store};

/// The whole file. Every section has defaults, so an empty file is a valid (if useless) one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub upstreams: BTreeMap<String, routing::UpstreamConfig>,
    pub routes: Vec<routing::RouteConfig>,
    pub headers: headers::Config,
    pub cors: BTreeMap<String, cors::Config>,
    pub store: store::Config,
    pub metrics: metrics::Config,
    pub access_log: accesslog::Config,
    pub ratelimit: ratelimit::Config,
    pub cache: cache::Config,
    pub compression: compress::Config,
}

/// `[server]`: listeners and process settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Public listener (plain HTTP). Env: `RAMPART_LISTEN`.
    pub listen: String,
    /// Admin listener (`/healthz`, later `/metrics`). Env: `RAMPART_ADMIN_LISTEN`.
    pub admin_listen: String,
    /// Worker threads for the proxy service.
    pub threads: usize,
    /// Peers whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed (CIDRs or addresses).
    pub trusted_proxies: Vec<String>,
    /// Optional TLS listener; when present, HSTS is sent on its responses.
    pub tls: Option<TlsConfig>,
    /// How long in-flight requests may take to finish on shutdown.
    pub grace_period: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            admin_listen: "127.0.0.1:9091".into(),
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
    pub listen: String,
    pub cert: String,
    pub key: String,
}

/// A duration written as text: `"250ms"`, `"5s"`, `"2m"`, `"1h 30m"` (humantime syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Duration).map_err(|e| {
            serde::de::Error::custom(format!("a duration like \"5s\" or \"250ms\" ({e})"))
        })
    }
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
    Env { var: String, message: String },
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
            Error::Env { var, message } => write!(f, "environment variable {var}: {message}"),
        }
    }
}

impl std::error::Error for Error {}

/// A problem found by a feature's own validation: the key path below its section and why.
#[derive(Debug)]
pub struct Invalid {
    pub key: String,
    pub message: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
    /// Prefix the key with the section it was found in (`routes[2]` + `upstream`).
    pub fn within(mut self, parent: &str) -> Self {
        self.key = if self.key.is_empty() {
            parent.to_string()
        } else if self.key.starts_with('[') {
            format!("{parent}{}", self.key)
        } else {
            format!("{parent}.{}", self.key)
        };
        self
    }
}

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
fn apply_env(config: &mut Config, env: &BTreeMap<String, String>) -> Result<(), Error> {
    let get = |var: &str| env.get(var).filter(|v| !v.trim().is_empty()).cloned();
    if let Some(v) = get("RAMPART_LISTEN") {
        config.server.listen = v;
    }
    if let Some(v) = get("RAMPART_ADMIN_LISTEN") {
        config.server.admin_listen = v;
    }
    if let Some(v) = get("RAMPART_REDIS_URL") {
        config.store.redis_url = Some(v);
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
            let addrs: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(String::from)
                .collect();
            for a in &addrs {
                routing::check_addr(a).map_err(|message| Error::Env {
                    var: var.clone(),
                    message,
                })?;
            }
            upstream.addrs = addrs;
        }
    }
    Ok(())
}

impl Config {
    fn validate(&self) -> Result<(), Invalid> {
        check_listen(&self.server.listen).map_err(|m| Invalid::new("server.listen", m))?;
        check_listen(&self.server.admin_listen)
            .map_err(|m| Invalid::new("server.admin_listen", m))?;
        if self.server.threads == 0 || self.server.threads > 1024 {
            return Err(Invalid::new(
                "server.threads",
                "a thread count from 1 to 1024",
            ));
        }
        for (i, cidr) in self.server.trusted_proxies.iter().enumerate() {
            parse_cidr(cidr)
                .map_err(|m| Invalid::new(format!("server.trusted_proxies[{i}]"), m))?;
        }
        if let Some(tls) = &self.server.tls {
            check_listen(&tls.listen).map_err(|m| Invalid::new("server.tls.listen", m))?;
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
            check_name(name).map_err(|m| Invalid::new(format!("upstreams.{name}"), m))?;
            upstream
                .validate()
                .map_err(|e| e.within(&format!("upstreams.{name}")))?;
        }
        for (name, cors) in &self.cors {
            check_name(name).map_err(|m| Invalid::new(format!("cors.{name}"), m))?;
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
        self.headers.validate().map_err(|e| e.within("headers"))?;
        self.store.validate().map_err(|e| e.within("store"))?;
        self.metrics.validate().map_err(|e| e.within("metrics"))?;
        self.access_log
            .validate()
            .map_err(|e| e.within("access_log"))?;
        let route_names: Vec<&str> = self.routes.iter().map(|r| r.name.as_str()).collect();
        self.ratelimit
            .validate(&route_names)
            .map_err(|e| e.within("ratelimit"))?;
        self.cache.validate().map_err(|e| e.within("cache"))?;
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

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.map(String::as_str).collect();
    if v.is_empty() {
        "(none defined)".into()
    } else {
        v.join(", ")
    }
}

/// Names of upstreams, routes and policies appear in metrics labels and Redis keys.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err("a name of 1 to 64 characters from [A-Za-z0-9_-]".into())
    }
}

fn check_listen(addr: &str) -> Result<(), String> {
    addr.parse::<SocketAddr>()
        .map(|_| ())
        .map_err(|_| format!("an IP:port address such as \"0.0.0.0:8080\", not \"{addr}\""))
}

/// `10.0.0.0/8`, `::1/128` or a bare address (meaning a single host).
pub fn parse_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    text.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("a CIDR such as \"10.0.0.0/8\" or an address, not \"{text}\""))
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// Find where a key path such as `routes[2].upstream` is written in the file.
///
/// Walks the parsed document as far as the path exists and returns the position of the deepest
/// item found (the value itself when the key is present, else the table it belongs in), so a
/// missing key points at the table that lacks it and a key set from the environment points at
/// the start of the file.
fn locate(text: &str, key: &str) -> (usize, usize) {
    let Ok(doc) = toml_edit::ImDocument::parse(text) else {
        return (1, 1);
    };
    let mut item: &toml_edit::Item = doc.as_item();
    let mut best = None;
    for step in split_path(key) {
        let next = match step {
            Step::Key(k) => item.get(k.as_str()),
            Step::Index(i) => item.get(i),
        };
        match next {
            Some(n) => {
                item = n;
                if let Some(span) = span_of(n) {
                    best = Some(span);
                }
            }
            None => break,
        }
    }
    best.map_or((1, 1), |start| line_col(text, start))
}

fn span_of(item: &toml_edit::Item) -> Option<usize> {
    match item {
        toml_edit::Item::Value(v) => v.span().map(|s| s.start),
        toml_edit::Item::Table(t) => t.span().map(|s| s.start),
        toml_edit::Item::ArrayOfTables(a) => a.span().map(|s| s.start),
        toml_edit::Item::None => None,
    }
}

enum Step {
    Key(String),
    Index(usize),
}

fn split_path(key: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for part in key.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            if open > 0 {
                steps.push(Step::Key(rest[..open].to_string()));
            }
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(close) = stripped.find(']') else {
                    break;
                };
                if let Ok(i) = stripped[..close].parse() {
                    steps.push(Step::Index(i));
                }
                rest = &stripped[close + 1..];
            }
        } else if !rest.is_empty() {
            steps.push(Step::Key(rest.to_string()));
        }
    }
    steps
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
        assert_eq!(c.server.listen, "0.0.0.0:8080");
        assert_eq!(c.server.admin_listen, "127.0.0.1:9091");
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
        assert_eq!(
            c.upstreams["back-end"].addrs,
            ["10.0.0.1:80", "10.0.0.2:80"]
        );
        assert_eq!(c.server.listen, "127.0.0.1:9999");
    }

    #[test]
    fn bad_env_value_is_named() {
        let mut env = env();
        env.insert("RAMPART_LISTEN".into(), "nonsense".into());
        let e = parse("t.toml", "", &env).expect_err("bad listen");
        assert!(e.to_string().contains("server.listen"), "{e}");
    }
}
