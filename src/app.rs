//! Config -> a Pingora server: listeners, the proxy service, the admin service and the
//! background tasks (upstream discovery and health checks). Nothing else.
//!
//! Invariant: every check that can fail does so here, before a listener opens, with a message
//! naming what failed; a server that [`build`] returned only fails on operating-system errors.

use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::GenBackgroundService;
use pingora::services::listening::Service;
use pingora::services::ServiceWithDependents;

use crate::admin::Admin;
use crate::cache::Cache;
use crate::client::Cidrs;
use crate::compress;
use crate::config::Config;
use crate::gate::Gate;
use crate::headers::Headers;
use crate::limits::Limits;
use crate::metrics::{Metrics, PublicEndpoint};
use crate::proxy::Proxy;
use crate::ratelimit::Limiter;
use crate::redis::Redis;
use crate::routing::{Router, Upstream};

/// Why the server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr} ({key}): {source}")]
    Listen {
        addr: std::net::SocketAddr,
        key: &'static str,
        source: std::io::Error,
    },
    #[error("TLS listener: {0}")]
    Tls(String),
    #[error("store.redis_url: {0}")]
    Store(String),
    #[error("cannot start: {0}")]
    Runtime(String),
    #[error(transparent)]
    Unresolved(#[from] crate::routing::Unresolved),
}

/// A configured server, ready to run.
pub struct App {
    server: Server,
}

/// Build the server for `config`; `extra` services (the demo's sample upstreams) run beside it.
pub fn build(config: &Config, extra: Vec<Box<dyn ServiceWithDependents>>) -> Result<App, Error> {
    check_listeners(config)?;
    check_tls(config)?;

    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(config.server.grace_period.0.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.server.grace_period.0.as_secs() + 1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let compression = compress::Policies::new(&config.compression);
    let router = Router::new(
        &config.routes,
        &config.upstreams,
        &config.cors,
        &compression,
    )?;
    discover_now(router.upstreams())?;
    for upstream in router.upstreams() {
        server.add_service(GenBackgroundService::new(
            format!("upstream {}", upstream.name),
            upstream.balancer.clone(),
        ));
    }

    let metrics =
        Arc::new(Metrics::new(&config.metrics).map_err(|e| Error::Runtime(e.to_string()))?);
    let redis = Redis::from_config(&config.store, metrics.clone())
        .map_err(|e| Error::Store(e.to_string()))?;
    if let Some(r) = &redis {
        server.add_service(GenBackgroundService::new(
            "redis health".to_string(),
            r.clone(),
        ));
    }
    let ratelimit = Limiter::new(
        &config.ratelimit,
        config.store.cluster,
        redis.clone(),
        metrics.clone(),
    );
    let cache = Cache::new(&config.cache, &config.routes, redis, metrics.clone());
    let proxy = Proxy {
        ratelimit,
        cache: cache.clone(),
        metrics: metrics.clone(),
        router,
        headers: Headers::new(
            &config.headers,
            config.metrics.process_time_header,
            config.metrics.server_timing,
        ),
        access_log: config.access_log.clone(),
        public_metrics: PublicEndpoint::new(&config.metrics),
        trusted: Cidrs::new(&config.server.trusted_proxies),
        compression,
        limits: Limits::new(&config.limits),
    };
    let gate = Gate::new(
        pingora::proxy::http_proxy(&server.configuration, proxy),
        &config.limits,
        Cidrs::new(&config.server.trusted_proxies),
        metrics.clone(),
        Headers::new(
            &config.headers,
            config.metrics.process_time_header,
            config.metrics.server_timing,
        ),
        config.access_log.clone(),
    );
    let mut service = Service::new("rampart".to_string(), gate);
    service.add_tcp(&config.server.listen.to_string());
    if let Some(tls) = &config.server.tls {
        // HTTP/2 is offered over TLS (ALPN h2, then http/1.1), as nginx's `http2 on` does.
        let mut settings = pingora::listeners::tls::TlsSettings::intermediate(&tls.cert, &tls.key)
            .map_err(|e| Error::Tls(e.to_string()))?;
        settings.enable_h2();
        service.add_tls_with_settings(&tls.listen.to_string(), None, settings);
    }
    server.add_service(service);

    let mut admin = Service::new(
        "admin".to_string(),
        Admin::new(config, metrics).with_cache(cache),
    );
    admin.add_tcp(&config.server.admin_listen.to_string());
    server.add_service(admin);

    for s in extra {
        server.add_boxed_service(s);
    }
    Ok(App { server })
}

/// Pingora logs and exits deep inside its start-up when a bind fails; probing first turns that
/// into an error naming the config key.
fn check_listeners(config: &Config) -> Result<(), Error> {
    let mut wanted = vec![
        (config.server.listen.0, "server.listen"),
        (config.server.admin_listen.0, "server.admin_listen"),
    ];
    if let Some(tls) = &config.server.tls {
        wanted.push((tls.listen.0, "server.tls.listen"));
    }
    for (addr, key) in wanted {
        TcpListener::bind(addr).map_err(|source| Error::Listen { addr, key, source })?;
    }
    Ok(())
}

/// Pingora panics at listener start on an unreadable certificate; loading it here first turns
/// that into an error naming the files.
fn check_tls(config: &Config) -> Result<(), Error> {
    let Some(tls) = &config.server.tls else {
        return Ok(());
    };
    match pingora::tls::load_certs_and_key_files(&tls.cert, &tls.key) {
        Ok(Some(_)) => Ok(()),
        Ok(None) | Err(_) => Err(Error::Tls(format!(
            "cannot load certificate {} and key {} (PEM expected)",
            tls.cert, tls.key
        ))),
    }
}

/// Resolve every upstream once before listening, so the first request has addresses.
fn discover_now(upstreams: &[Arc<Upstream>]) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(e.to_string()))?;
    rt.block_on(async {
        for u in upstreams {
            if let Err(e) = u.balancer.update().await {
                log::warn!("upstream {}: discovery failed: {e}", u.name);
            }
        }
    });
    Ok(())
}

impl App {
    /// Run until SIGTERM (graceful) or SIGINT (fast); the process exits afterwards.
    pub fn run_forever(self) -> ! {
        self.server.run_forever()
    }

    /// Run on a thread of its own until [`Running::stop`]: for tests and embedding.
    pub fn spawn(self) -> Running {
        let stop = Arc::new(tokio::sync::Notify::new());
        let signal = StopSignal(stop.clone());
        let thread = std::thread::spawn(move || {
            self.server.run(RunArgs {
                shutdown_signal: Box::new(signal),
            })
        });
        Running {
            stop,
            thread: Some(thread),
        }
    }
}

/// A server started with [`App::spawn`]; stopping it closes its listeners.
pub struct Running {
    stop: Arc<tokio::sync::Notify>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct StopSignal(Arc<tokio::sync::Notify>);

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}
