//! Reload without downtime: on `SIGHUP` (or [`Handle::reload`]), re-read the config file,
//! build the next generation beside the running one and make it current; and the background
//! work that follows the current generation (upstream discovery and health checks, the Redis
//! PING).
//!
//! Not a proxy phase: one Pingora background service, [`Reloader`]. Requests pick up the
//! current generation in `new_ctx` (see `runtime`), so in-flight requests finish on the one
//! they started with.
//!
//! A reload is refused, and the running generation kept, when the file is invalid (the
//! `file:line:col: key: message` of `rampart check` is logged at ERROR), when it changes what
//! only a restart can (`Config::restart_needed`: listeners, threads), or when the next
//! generation cannot be built (an unreadable certificate, a bad Redis URL). Refused or applied,
//! the outcome is logged once and exported (`rampart_config_load_success`,
//! `rampart_config_load_timestamp_seconds`, `rampart_config_reloads_total`, `/healthz`).
//!
//! Invariants: reloads run one at a time, in this service's task; the background tasks of a
//! generation's upstream groups and Redis store run exactly while that group or store is part
//! of the current generation (a kept group keeps its task; a dropped one's task is stopped).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config;
use crate::redis::Redis;
use crate::routing::Upstream;
use crate::runtime::{Live, Runtime};

/// How long a reload waits for one new upstream group's first discovery (DNS) before it goes
/// ahead anyway; the group's background task keeps trying.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The outcome of one reload: the generation now current, or why the file was refused.
pub type Outcome = Result<u64, String>;

type Request = oneshot::Sender<Outcome>;

/// The background service that reloads and runs the current generation's background tasks.
pub struct Reloader {
    live: Arc<Live>,
    /// The file to re-read; `None` (the demo's embedded config): reloads are refused.
    path: Option<PathBuf>,
    /// Reload on `SIGHUP` (the binary); servers embedded in tests reload through [`Handle`].
    sighup: bool,
    requests: Mutex<Option<mpsc::Receiver<Request>>>,
}

/// Asks a running [`Reloader`] to reload, and waits for the outcome.
#[derive(Clone)]
pub struct Handle {
    requests: mpsc::Sender<Request>,
}

impl Reloader {
    pub fn new(live: Arc<Live>, path: Option<PathBuf>, sighup: bool) -> (Self, Handle) {
        let (tx, rx) = mpsc::channel(4);
        let reloader = Self {
            live,
            path,
            sighup,
            requests: Mutex::new(Some(rx)),
        };
        (reloader, Handle { requests: tx })
    }

    /// Reload once, log the outcome and export it.
    pub async fn reload(&self) -> Outcome {
        let running = self.live.current();
        match self.next(&running).await {
            Ok(next) => {
                let generation = next.generation;
                let summary = next.config.summary();
                self.live.replace(next);
                log::info!("configuration reloaded (generation {generation}): {summary}");
                Ok(generation)
            }
            Err(why) => {
                log::error!(
                    "reload refused, still serving generation {}: {why}",
                    running.generation
                );
                self.live.refused(&why);
                Err(why)
            }
        }
    }

    /// Read, check and build the generation that follows `running`.
    async fn next(&self, running: &Runtime) -> Result<Runtime, String> {
        let Some(path) = self.path.clone() else {
            return Err(
                "this server was started without a config file (demo): nothing to re-read".into(),
            );
        };
        let config = tokio::task::spawn_blocking(move || config::load(&path))
            .await
            .map_err(|e| format!("reading the config file failed: {e}"))?
            .map_err(|e| e.to_string())?;
        if let Some(why) = config.restart_needed(&running.config) {
            return Err(why);
        }
        for key in config.kept_until_restart(&running.config) {
            log::warn!("reload: {key} changed; its new value applies at the next start");
        }
        let next = Runtime::build(
            config,
            running.generation + 1,
            &self.live.metrics,
            Some(running),
        )
        .map_err(|e| e.to_string())?;
        for upstream in next.new_upstreams(Some(running)) {
            match tokio::time::timeout(DISCOVERY_TIMEOUT, upstream.balancer.update()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::warn!("upstream {}: discovery failed: {e}", upstream.name),
                Err(_) => log::warn!(
                    "upstream {}: discovery took over {DISCOVERY_TIMEOUT:?}; retried in the background",
                    upstream.name
                ),
            }
        }
        Ok(next)
    }
}

impl Handle {
    /// Reload now and return the outcome. Blocks the calling thread: call it from outside
    /// the server's runtimes (a test, an embedding application's own thread).
    pub fn reload(&self) -> Outcome {
        let (tx, rx) = oneshot::channel();
        self.requests
            .blocking_send(tx)
            .map_err(|_| "the server is not running".to_string())?;
        rx.blocking_recv()
            .map_err(|_| "the server stopped during the reload".to_string())?
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let mut requests = requests;
        let mut hangup = if self.sighup {
            match signal(SignalKind::hangup()) {
                Ok(s) => {
                    self.live.handling_sighup();
                    Some(s)
                }
                Err(e) => {
                    log::error!("cannot listen for SIGHUP ({e}): reload by signal is off");
                    None
                }
            }
        } else {
            None
        };
        let mut tasks = Tasks::default();
        loop {
            tasks.follow(&self.live.current(), &shutdown);
            tokio::select! {
                got = hangup_received(&mut hangup) => {
                    if got {
                        log::info!("SIGHUP received: reloading the configuration");
                        let _ = self.reload().await;
                    }
                }
                reply = request_received(&mut requests) => {
                    let outcome = self.reload().await;
                    let _ = reply.send(outcome);
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        tasks.stop();
    }
}

/// The next `SIGHUP` (`true`), or never when signals are off; `false` once the signal stream
/// ended (it is then switched off).
async fn hangup_received(hangup: &mut Option<Signal>) -> bool {
    match hangup {
        Some(s) => {
            let got = s.recv().await.is_some();
            if !got {
                *hangup = None;
            }
            got
        }
        None => std::future::pending().await,
    }
}

/// The next [`Handle::reload`] request; never once every handle is gone (the binary keeps
/// none: it reloads on signals only).
async fn request_received(requests: &mut Option<mpsc::Receiver<Request>>) -> Request {
    if let Some(r) = requests {
        if let Some(request) = r.recv().await {
            return request;
        }
        *requests = None;
    }
    std::future::pending().await
}

/// The background tasks of the current generation: one per upstream group (pingora's own
/// discovery and health-check loop, `LoadBalancer::run`) and one for the Redis store's PING.
#[derive(Default)]
struct Tasks {
    upstreams: Vec<(Arc<Upstream>, JoinHandle<()>)>,
    redis: Option<(Arc<Redis>, JoinHandle<()>)>,
}

impl Tasks {
    /// Stop the tasks of what `rt` no longer has; start tasks for what it added. Identity is
    /// the shared handle: a group or store a reload kept keeps its task (and its timers).
    fn follow(&mut self, rt: &Runtime, shutdown: &ShutdownWatch) {
        let wanted = rt.router.upstreams();
        self.upstreams.retain(|(u, task)| {
            let keep = wanted.iter().any(|w| Arc::ptr_eq(w, u));
            if !keep {
                log::info!(
                    "upstream {}: no longer configured, its health checks stop",
                    u.name
                );
                task.abort();
            }
            keep
        });
        for u in wanted {
            if !self.upstreams.iter().any(|(k, _)| Arc::ptr_eq(k, u)) {
                let (group, watch) = (u.clone(), shutdown.clone());
                let task = tokio::spawn(async move { group.balancer.run(watch, None).await });
                self.upstreams.push((u.clone(), task));
            }
        }
        let same_redis = match (&self.redis, &rt.redis) {
            (Some((running, _)), Some(wanted)) => Arc::ptr_eq(running, wanted),
            (None, None) => true,
            _ => false,
        };
        if !same_redis {
            if let Some((_, task)) = self.redis.take() {
                task.abort();
            }
            self.redis = rt.redis.as_ref().map(|r| {
                let (store, watch) = (r.clone(), shutdown.clone());
                (
                    r.clone(),
                    tokio::spawn(async move { store.start(watch).await }),
                )
            });
        }
    }

    fn stop(&mut self) {
        for (_, task) in self.upstreams.drain(..) {
            task.abort();
        }
        if let Some((_, task)) = self.redis.take() {
            task.abort();
        }
    }
}
