//! Config -> a Pingora server: listeners, the proxy service, the admin service, and the
//! reloader (config reloads and the current generation's background tasks). Nothing else.
//!
//! Invariant: every check that can fail does so here, before a listener opens, with a message
//! naming what failed; a server that [`build`] returned only fails on operating-system errors.
//!
//! Binary upgrade ([`Options::upgrade`]): the new process is built as usual except that it
//! does not bind; Pingora's bootstrap receives the running process's listening sockets through
//! `server.upgrade_sock` (the old process sends them on `SIGQUIT`, then drains and exits), so
//! no connection is refused while binaries change.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::GenBackgroundService;
use pingora::services::listening::Service;
use pingora::services::ServiceWithDependents;

use crate::admin::Admin;
use crate::client::Cidrs;
use crate::config::Config;
use crate::gate::Gate;
use crate::headers::Headers;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::reload::{self, Reloader};
use crate::routing::Upstream;
use crate::runtime::{self, Live, Runtime};
use crate::tls;

/// Why the server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr} ({key}): {source}")]
    Listen {
        addr: std::net::SocketAddr,
        key: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Build(#[from] runtime::Error),
    #[error("pid file {path}: {source}")]
    PidFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start: {0}")]
    Runtime(String),
}

/// How the process runs, beyond what the config file says.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The file the config was read from: reloads re-read it (`None`: reloads are refused).
    pub config_path: Option<PathBuf>,
    /// Reload on `SIGHUP` (the binary; servers embedded in tests reload through
    /// [`Running::reload`]).
    pub sighup: bool,
    /// Take over the listening sockets of the Rampart running now (binary upgrade).
    pub upgrade: bool,
    /// Write the process id here (instead of `server.pid_file`).
    pub pid_file: Option<PathBuf>,
}

/// A configured server, ready to run.
pub struct App {
    server: Server,
    reload: reload::Handle,
    pid_file: Option<PidFile>,
}

/// Build the server for `config` with default [`Options`] (no reload source, no upgrade);
/// `extra` services (the demo's sample upstreams) run beside it.
pub fn build(config: &Config, extra: Vec<Box<dyn ServiceWithDependents>>) -> Result<App, Error> {
    build_with(config, &Options::default(), extra)
}

/// Build the server for `config` as `options` say.
pub fn build_with(
    config: &Config,
    options: &Options,
    extra: Vec<Box<dyn ServiceWithDependents>>,
) -> Result<App, Error> {
    if !options.upgrade {
        // Upgrading, the running process holds these addresses and hands them over.
        check_listeners(config)?;
    }
    let metrics =
        Arc::new(Metrics::new(&config.metrics).map_err(|e| Error::Runtime(e.to_string()))?);
    let first = Runtime::build(config.clone(), 1, &metrics, None)?;
    discover_now(first.router.upstreams())?;
    let live = Arc::new(Live::new(first, metrics.clone()));

    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(config.server.grace_period.0.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.server.grace_period.0.as_secs() + 1),
        upgrade_sock: config.server.upgrade_sock.clone(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: options.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // Upgrading, this waits (up to 5 s) for the running process's sockets; it gets them once
    // that process receives SIGQUIT.
    server.bootstrap();

    let (reloader, reload) =
        Reloader::new(live.clone(), options.config_path.clone(), options.sighup);
    server.add_service(GenBackgroundService::new(
        "reloader".to_string(),
        Arc::new(reloader),
    ));

    let proxy = Proxy {
        metrics: metrics.clone(),
        live: live.clone(),
    };
    // The gate's own handle on the request path, for the requests it answers itself.
    let early = Arc::new(proxy.clone());
    let gate = Gate::new(
        pingora::proxy::http_proxy(&server.configuration, proxy),
        early,
        &config.limits,
        Cidrs::new(&config.server.trusted_proxies),
        metrics.clone(),
        Headers::new(
            &config.headers,
            config.metrics.process_time_header,
            config.metrics.server_timing,
        ),
        config.access_log.clone(),
        config.server.threads,
    );
    let mut service = Service::new("rampart".to_string(), gate);
    service.add_listener(client_listener(&config.server.listen.to_string()));
    if let Some(tls) = &config.server.tls {
        // The certificate comes from the current generation at each handshake, so a reload
        // rotates it; the paths given to Pingora are unused once a resolver is set.
        let mut settings = pingora::listeners::tls::TlsSettings::intermediate(&tls.cert, &tls.key)
            .map_err(|e| Error::Build(runtime::Error::Tls(e.to_string())))?;
        let certs = live.clone();
        settings.set_cert_resolver(Arc::new(tls::Resolver::new(move || certs.certificate())));
        // HTTP/2 is offered over TLS (ALPN h2, then http/1.1), as nginx's `http2 on` does.
        settings.enable_h2();
        service.add_listener(client_listener(&tls.listen.to_string()).tls(settings));
    }
    server.add_service(service);

    let mut admin = Service::new("admin".to_string(), Admin::new(live));
    admin.add_tcp(&config.server.admin_listen.to_string());
    server.add_service(admin);

    for s in extra {
        server.add_boxed_service(s);
    }
    let pid_file = match options
        .pid_file
        .clone()
        .or_else(|| config.server.pid_file.as_ref().map(PathBuf::from))
    {
        Some(path) => Some(PidFile::write(path)?),
        None => None,
    };
    Ok(App {
        server,
        reload,
        pid_file,
    })
}

/// The size of a client connection's write buffer (Pingora's default is one 1460-byte segment).
/// A response whose header and body fit in it leaves in one `send` at the end instead of one
/// for the header and one for the body: a cached KPI (3 KB) or its gzip copy (10 KB) is one
/// syscall. Bodies of unknown length are still flushed chunk by chunk (Pingora flushes those
/// itself), so streaming is not delayed; the cost is this much per open connection, beside
/// Pingora's 64 KiB read buffer.
const CLIENT_WRITE_BUFFER: usize = 16 * 1024;

/// A client-facing listener at `addr`, with [`CLIENT_WRITE_BUFFER`].
fn client_listener(addr: &str) -> pingora::listeners::ListenerConfig {
    pingora::listeners::ListenerConfig::tcp(addr)
        .l4_buffer(pingora::listeners::L4BufferSettings::default().write(CLIENT_WRITE_BUFFER))
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

/// `server.pid_file`: the process id, written when the server is built (after a binary
/// upgrade took over the sockets), removed at exit unless another process has written it
/// since (the new process of an upgrade).
struct PidFile {
    path: PathBuf,
    pid: String,
}

impl PidFile {
    fn write(path: PathBuf) -> Result<Self, Error> {
        let pid = std::process::id().to_string();
        let fail = |source| Error::PidFile {
            path: path.display().to_string(),
            source,
        };
        // Written beside and renamed: a reader never sees a half-written number.
        let tmp = path.with_extension(format!("tmp.{pid}"));
        std::fs::write(&tmp, format!("{pid}\n")).map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail(e)
        })?;
        Ok(Self { path, pid })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path).is_ok_and(|s| s.trim() == self.pid);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl App {
    /// Run until SIGTERM (graceful), SIGINT (fast) or SIGQUIT (hand the listening sockets to
    /// a process started with `--upgrade`, then drain); the process exits afterwards.
    pub fn run_forever(self) -> ! {
        let Self {
            server, pid_file, ..
        } = self;
        server.run(RunArgs::default());
        drop(pid_file);
        std::process::exit(0)
    }

    /// Run on a thread of its own until [`Running::stop`]: for tests and embedding.
    pub fn spawn(self) -> Running {
        let stop = Arc::new(tokio::sync::Notify::new());
        let signal = StopSignal(stop.clone());
        let Self {
            server,
            reload,
            pid_file,
        } = self;
        let thread = std::thread::spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(signal),
            });
            drop(pid_file);
        });
        Running {
            stop,
            reload,
            thread: Some(thread),
        }
    }
}

/// A server started with [`App::spawn`]; stopping it closes its listeners.
pub struct Running {
    stop: Arc<tokio::sync::Notify>,
    reload: reload::Handle,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Re-read the config file (as `SIGHUP` does) and return the generation now current, or
    /// why the reload was refused. Blocks until the reload is done.
    pub fn reload(&self) -> reload::Outcome {
        self.reload.reload()
    }

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
