//! The configuration file: typed, defaulted, validated, located.
//!
//! Loading happens before any listener opens, and again on each reload (`SIGHUP`, `rampart
//! reload`); `rampart check` runs exactly this code. [`Config::restart_needed`] names what a
//! reload cannot change in a running process.
//! Each feature owns the type of its own section (`routing::UpstreamConfig`, `cors::Config`,
//! ...); this module assembles them into [`Config`], applies the documented environment
//! overrides and reports any problem as `file:line:column: key: what was expected`.
//!
//! Invariant: a [`Config`] that [`load`] returned has passed every check; nothing downstream
//! re-validates, and nothing starts half-configured.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

mod locate;

use crate::types::{Cidr, Duration, HostPort, Invalid, ListenAddr, Name};
use crate::{
    accesslog, cache, compress, cors, headers, limits, metrics, ratelimit, redis, routing,
};
use locate::{line_col, locate};

/// The whole file. Every section has defaults, so an empty file is a valid (if useless) one.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// Write the process id here at start (for `rampart reload` and `kill -HUP`); removed on
    /// exit. CLI: `--pid-file`.
    pub pid_file: Option<String>,
    /// Unix socket through which a binary upgrade (`rampart run --upgrade`) takes over the
    /// listening sockets of the running process; both must name the same path.
    pub upgrade_sock: String,
    /// Send proxied responses with the upstream's spelling of each field name (nginx's
    /// behaviour). Off: names are sent as Pingora spells them (twelve common ones titled,
    /// the rest lower case), as Envoy and HAProxy do, and each field Rampart adds costs one
    /// map insert instead of Pingora's case-keeping insert (`fields::Bare`).
    pub preserve_header_case: bool,
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
            pid_file: None,
            upgrade_sock: "/tmp/rampart-upgrade.sock".into(),
            preserve_header_case: false,
        }
    }
}

/// `[server.tls]`: a TLS listener (rustls) beside the plain one.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub listen: ListenAddr,
    /// PEM certificate chain, re-read on every reload (a renewed certificate at the same path
    /// is served to new connections after `SIGHUP`).
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1), re-read with the certificate.
    pub key: String,
    /// Answer every request on the plain listener with `308` to `https://host:<tls port>/...`
    /// (except `[metrics] public_path`, so scrapers keep working).
    #[serde(default)]
    pub redirect_http: bool,
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
        if self.server.upgrade_sock.is_empty() {
            return Err(Invalid::new(
                "server.upgrade_sock",
                "a path for the upgrade socket, e.g. \"/run/rampart/upgrade.sock\"",
            ));
        }
        if self.server.pid_file.as_deref() == Some("") {
            return Err(Invalid::new(
                "server.pid_file",
                "a file path, or leave the key out for no pid file",
            ));
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

    /// Why `self` cannot replace `running` in a live process, or `None` when a reload can apply
    /// it. Listening sockets and worker threads are set up once per process: changing them
    /// takes a restart or a binary upgrade (`rampart run --upgrade`).
    pub fn restart_needed(&self, running: &Config) -> Option<String> {
        let (new, old) = (&self.server, &running.server);
        let mut changed = Vec::new();
        if new.listen != old.listen {
            changed.push(format!("server.listen ({} -> {})", old.listen, new.listen));
        }
        if new.admin_listen != old.admin_listen {
            changed.push(format!(
                "server.admin_listen ({} -> {})",
                old.admin_listen, new.admin_listen
            ));
        }
        let tls_listen = |c: &ServerConfig| c.tls.as_ref().map(|t| t.listen.to_string());
        if tls_listen(new) != tls_listen(old) {
            let show = |a: Option<String>| a.unwrap_or_else(|| "none".into());
            changed.push(format!(
                "server.tls.listen ({} -> {})",
                show(tls_listen(old)),
                show(tls_listen(new))
            ));
        }
        if new.threads != old.threads {
            changed.push(format!(
                "server.threads ({} -> {})",
                old.threads, new.threads
            ));
        }
        (!changed.is_empty()).then(|| {
            format!(
                "{} changed: listeners and threads change only on restart or binary upgrade",
                changed.join(", ")
            )
        })
    }

    /// Keys a reload accepts but whose new value waits for the next start: process settings
    /// read once (the grace period and upgrade socket of the Pingora server, the pid file) and
    /// the metric families' shape (registered once, so counters survive reloads).
    pub fn kept_until_restart(&self, running: &Config) -> Vec<&'static str> {
        let (new, old) = (&self.server, &running.server);
        let mut kept = Vec::new();
        if new.grace_period != old.grace_period {
            kept.push("server.grace_period");
        }
        if new.pid_file != old.pid_file {
            kept.push("server.pid_file");
        }
        if new.upgrade_sock != old.upgrade_sock {
            kept.push("server.upgrade_sock");
        }
        if self.metrics.buckets != running.metrics.buckets {
            kept.push("metrics.buckets");
        }
        if self.metrics.enabled != running.metrics.enabled {
            kept.push("metrics.enabled");
        }
        // The connection gate is built once, in front of Pingora's parser: its sizes, timers and
        // connection caps change on restart; body sizes and in-flight limits apply at once.
        let gate = |l: &crate::limits::Config| crate::limits::Config {
            max_body_size: crate::types::ByteSize(0),
            max_inflight_per_client: 0,
            max_inflight_per_upstream: 0,
            ..l.clone()
        };
        if gate(&self.limits) != gate(&running.limits) {
            kept.push("limits (head sizes, timeouts, connection caps)");
        }
        kept
    }

    /// `rampart check --print` (nginx's `-T`): the configuration that runs, as TOML. Every key
    /// with its value after defaults and environment overrides; secrets print masked (their
    /// types serialize that way), so the output is safe to paste and reads back as a valid
    /// file.
    pub fn effective_toml(&self) -> Result<String, toml::ser::Error> {
        let body = toml::to_string(self)?;
        Ok(format!(
            "# The effective configuration: defaults filled in, environment overrides applied,\n\
             # secrets masked ({}).\n\n{body}",
            redis::MASK
        ))
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

    /// A file using every kind of value prints (`check --print`) as TOML that parses back to
    /// a config printing the same: nothing is lost or changed on the way.
    #[test]
    fn effective_toml_reads_back_unchanged() {
        let text = r#"
[server]
listen = "127.0.0.1:8080"
admin_listen = "[::1]:9091"
trusted_proxies = ["10.0.0.0/8", "192.168.1.1"]
[server.tls]
listen = "0.0.0.0:8443"
cert = "/etc/rampart/cert.pem"
key = "/etc/rampart/key.pem"
[upstreams.back-end]
addrs = ["backend:8000", "10.0.0.2:8000"]
health_check_path = "/health?deep=1"
health_check_status = 204
fail_timeout = "1m 30s"
host = "api.internal"
[[routes]]
name = "api"
prefix = "/api/"
upstream = "back-end"
rewrite = "/v2/"
cors = "strict"
cache = "short"
compression = "fast"
[headers.security]
"X-Frame-Options" = "DENY"
[cors.strict]
allow_origins = ["https://dash.example.com"]
allow_methods = ["GET", "PATCH"]
allow_headers = ["X-Api-Key"]
allow_credentials = true
[store]
redis_url = "unix:///run/redis.sock?db=2"
[metrics]
public_path = "/metrics"
public_allow = ["127.0.0.1"]
[access_log]
format = "json"
[ratelimit.policies.keys]
rate = "5/90s"
burst = 7
key = "header:X-Api-Key"
routes = ["api"]
[cache.policies.short]
ttl = "5s"
max_ttl = "1h"
vary = ["Accept-Language"]
ignore_query = ["utm_source"]
[compression.policies.fast]
encodings = ["gzip"]
types = ["application/*+json", "*/*"]
"#;
        let c = parse("t.toml", text, &env()).expect("valid");
        let printed = c.effective_toml().expect("print");
        let back = parse("printed.toml", &printed, &env()).expect("reads back");
        assert_eq!(back.effective_toml().expect("print"), printed);
        for line in [
            "trusted_proxies = [\"10.0.0.0/8\", \"192.168.1.1/32\"]",
            "fail_timeout = \"1m 30s\"",
            "rate = \"5/1m 30s\"",
            "key = \"header:x-api-key\"",
            "types = [\"application/*+json\", \"*/*\"]",
            "allow_origins = [\"https://dash.example.com\"]",
        ] {
            assert!(printed.contains(line), "{line} in:\n{printed}");
        }
    }

    #[test]
    fn listener_changes_need_a_restart() {
        let base = "[server]\nlisten = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:2\"\n";
        let running = parse("t.toml", base, &env()).expect("valid");
        let same = parse(
            "t.toml",
            &format!("{base}trusted_proxies = [\"10.0.0.0/8\"]\n"),
            &env(),
        )
        .expect("valid");
        assert_eq!(same.restart_needed(&running), None);
        let moved = parse(
            "t.toml",
            "[server]\nlisten = \"127.0.0.1:3\"\nadmin_listen = \"127.0.0.1:2\"\nthreads = 4\n",
            &env(),
        )
        .expect("valid");
        let why = moved.restart_needed(&running).expect("refused");
        assert!(
            why.contains("server.listen (127.0.0.1:1 -> 127.0.0.1:3)"),
            "{why}"
        );
        assert!(why.contains("server.threads (2 -> 4)"), "{why}");
        let tls = parse(
            "t.toml",
            &format!("{base}[server.tls]\nlisten = \"127.0.0.1:4\"\ncert = \"c\"\nkey = \"k\"\n"),
            &env(),
        )
        .expect("valid");
        let why = tls.restart_needed(&running).expect("refused");
        assert!(
            why.contains("server.tls.listen (none -> 127.0.0.1:4)"),
            "{why}"
        );
        let slower =
            parse("t.toml", &format!("{base}grace_period = \"9s\"\n"), &env()).expect("valid");
        assert_eq!(slower.restart_needed(&running), None);
        assert_eq!(slower.kept_until_restart(&running), ["server.grace_period"]);
    }

    #[test]
    fn bad_env_value_is_named() {
        let mut env = env();
        env.insert("RAMPART_LISTEN".into(), "nonsense".into());
        let e = parse("t.toml", "", &env).expect_err("bad listen");
        assert!(e.to_string().contains("server.listen"), "{e}");
    }

    /// The gate's keys wait for a restart (and a reload says so); body sizes and in-flight
    /// limits do not.
    #[test]
    fn connection_level_limits_are_kept_until_restart() {
        let running = parse("t.toml", "", &env()).expect("valid");
        let timers = parse("t.toml", "[limits]\nheader_timeout = \"5s\"\n", &env()).expect("valid");
        let body = parse("t.toml", "[limits]\nmax_body_size = \"2m\"\n", &env()).expect("valid");
        let gate = "limits (head sizes, timeouts, connection caps)";
        assert!(timers.kept_until_restart(&running).contains(&gate));
        assert!(!body.kept_until_restart(&running).contains(&gate));
    }
}
