//! Prometheus metrics: one registry per running server, every family Rampart exports.
//!
//! Phases: `logging` records each finished request ([`Metrics::request_done`]); features record
//! their own events through the typed families here (limiter decisions, cache lookups, store
//! calls, compression bytes). The admin listener serves [`Metrics::render`] at `/metrics`.
//!
//! Invariant: bounded cardinality. Label values come from configuration (route, upstream and
//! policy names, the addresses an upstream's configured names resolve to) or small fixed sets
//! (method, status, outcome): never a raw path, query, header or client address.

use serde::{Deserialize, Serialize};

use crate::client::{Cidrs, Client};
use crate::types::{Cidr, Invalid, UrlPath};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Ids of [`Metrics`] made so far.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many label sets of finished requests a thread keeps handles on ([`RECENT`]).
const RECENT_SLOTS: usize = 32;

thread_local! {
    /// Each thread's handles on the `http_requests_total` and duration series it recorded
    /// lately, direct-mapped by their labels. `with_label_values` hashes the labels, takes the
    /// family's lock and clones the series' `Arc` for every request: two per request, with the
    /// lock and the reference count on cache lines every worker thread writes.
    static RECENT: std::cell::RefCell<[Option<Series>; RECENT_SLOTS]> =
        const { std::cell::RefCell::new([const { None }; RECENT_SLOTS]) };
}

/// The series of one label set of finished requests.
struct Series {
    metrics: u64,
    method: &'static str,
    route: Box<str>,
    status: u16,
    requests: prometheus::IntCounter,
    duration: prometheus::Histogram,
}

impl Series {
    fn new(metrics: &Metrics, method: &'static str, route: &str, status: u16) -> Self {
        let mut buf = [0u8; 3];
        let status_text = status_label(status, &mut buf);
        Self {
            metrics: metrics.id,
            method,
            route: route.into(),
            status,
            requests: metrics
                .requests
                .with_label_values(&[method, route, status_text]),
            duration: metrics.duration.with_label_values(&[method, route]),
        }
    }

    fn is(&self, metrics: u64, method: &str, route: &str, status: u16) -> bool {
        self.metrics == metrics
            && self.status == status
            && self.method == method
            && *self.route == *route
    }

    /// Where a label set's handles go in [`RECENT`]: FNV-1a over its labels.
    fn slot(method: &str, route: &str, status: u16) -> usize {
        let bytes = method
            .bytes()
            .chain(route.bytes())
            .chain(status.to_le_bytes());
        let hash = bytes.fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (hash % RECENT_SLOTS as u64) as usize
    }
}

/// `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Route label for requests that matched no route.
pub const UNMATCHED: &str = "(unmatched)";

/// Buckets for `http_request_duration_seconds`: fine enough for a cache hit (sub-millisecond),
/// long enough for a slow report.
pub const DEFAULT_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Record per-request metrics (`http_requests_total`, durations, in-flight, upstream
    /// latency). `false` exists to measure what observability costs; feature counters (cache,
    /// limiter, store, compression) are recorded either way.
    pub enabled: bool,
    /// Upper bounds (seconds) of the `http_request_duration_seconds` buckets.
    pub buckets: Vec<f64>,
    /// Also serve the metrics on the public listener at this path (off by default: the admin
    /// listener is the place for them).
    pub public_path: Option<UrlPath>,
    /// Who may read `public_path` (CIDRs); empty means everyone who reaches the listener.
    pub public_allow: Vec<Cidr>,
    /// `X-Process-Time: <seconds>` on every response, as the old FastAPI middleware did.
    pub process_time_header: bool,
    /// `Server-Timing: upstream;dur=<ms>, total;dur=<ms>` on every response.
    pub server_timing: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            buckets: DEFAULT_BUCKETS.to_vec(),
            public_path: None,
            public_allow: Vec::new(),
            process_time_header: true,
            server_timing: false,
        }
    }
}

impl Config {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if self.buckets.is_empty() || self.buckets.len() > 64 {
            return Err(Invalid::new("buckets", "1 to 64 bucket bounds in seconds"));
        }
        if self.buckets.iter().any(|b| !b.is_finite() || *b <= 0.0)
            || self.buckets.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(Invalid::new(
                "buckets",
                "positive bounds in strictly increasing order, e.g. [0.005, 0.05, 0.5, 5]",
            ));
        }
        Ok(())
    }
}

/// `[metrics] public_path`: metrics on the public listener, for some clients only.
pub struct PublicEndpoint {
    pub path: String,
    pub allow: Cidrs,
}

impl PublicEndpoint {
    /// `None` unless `[metrics] public_path` is set.
    pub fn new(config: &Config) -> Option<Self> {
        let path = config.public_path.as_ref()?;
        Some(Self {
            path: path.to_string(),
            allow: Cidrs::new(&config.public_allow),
        })
    }

    /// Whether `client` may read it (an empty allow list means anyone).
    pub fn allows(&self, client: Option<&Client>) -> bool {
        self.allow.is_empty()
            || client
                .and_then(|c| c.ip)
                .is_some_and(|ip| self.allow.contains(ip))
    }
}

/// Every family, registered on a private registry (several servers can share a process, as
/// the tests do, without mixing their figures).
pub struct Metrics {
    registry: Registry,
    /// This set of families among others in the process (tests make several): the key of
    /// its series among a thread's [`RECENT`] handles.
    id: u64,
    /// `[metrics] enabled`: per-request recording on or off.
    per_request: bool,
    /// Old stack's name: `http_requests_total{method,route,status}`.
    pub requests: IntCounterVec,
    /// Old stack's name: `http_request_duration_seconds{method,route}`.
    pub duration: HistogramVec,
    pub in_flight: IntGauge,
    /// `rampart_upstream_request_duration_seconds{upstream}`.
    pub upstream_duration: HistogramVec,
    /// `rampart_upstream_errors_total{upstream,kind}`: kind = connect | timeout | 5xx |
    /// broken (the connection failed or the response was malformed after it was sent).
    pub upstream_errors: IntCounterVec,
    /// `rampart_upstream_healthy{upstream,addr}`: 1 while an address gets requests, 0 while
    /// health checks or failed requests keep it out.
    pub upstream_healthy: IntGaugeVec,
    /// `rampart_upstream_retries_total{upstream,reason}`: reason = connect (another address
    /// after a failed connect) | closed (a fresh connection to the same address after a pooled
    /// one turned out closed).
    pub upstream_retries: IntCounterVec,
    /// `rampart_rejections_total{reason}`: requests and connections refused or cut by a limit
    /// or a parsing rule (`limits::Reason`).
    pub rejections: IntCounterVec,
    /// `rampart_connections_open`: client connections open now.
    pub connections_open: IntGauge,
    /// `rampart_cache_lookups_total{route,result}`: hit | miss | stale | bypass | expired.
    pub cache_lookups: IntCounterVec,
    /// `rampart_cache_stored_bytes_total{route}`.
    pub cache_stored_bytes: IntCounterVec,
    /// `rampart_cache_near_hits_total{route}`.
    pub cache_near_hits: IntCounterVec,
    /// `rampart_ratelimit_decisions_total{policy,outcome}`:
    /// allowed | limited | report_only_limited | fallback.
    pub ratelimit_decisions: IntCounterVec,
    /// `rampart_ratelimit_lease_tokens_total{policy,event}`: leased | returned.
    pub ratelimit_lease_tokens: IntCounterVec,
    /// `rampart_store_command_duration_seconds{backend,op}`.
    pub store_duration: HistogramVec,
    /// `rampart_store_errors_total{backend,op}`.
    pub store_errors: IntCounterVec,
    /// `rampart_store_up{backend}`: 1 when the shared store answers, 0 during an outage.
    pub store_up: IntGaugeVec,
    /// `rampart_store_fallback_active{feature}`: 1 while a feature runs on its local fallback.
    pub store_fallback: IntGaugeVec,
    /// `rampart_compression_bytes_in_total{encoding}` / `..._out_total{encoding}`.
    pub compress_in: IntCounterVec,
    pub compress_out: IntCounterVec,
    /// `rampart_build_info{version}` = 1.
    pub build_info: IntGaugeVec,
    /// `rampart_config_load_success`: 1 when the configuration running is the file's (start,
    /// or the last reload applied), 0 after a refused reload (invalid file, or a change that
    /// needs a restart) until a reload is applied.
    pub config_success: IntGauge,
    /// `rampart_config_load_timestamp_seconds`: Unix time the running configuration was
    /// loaded (start, or the last applied reload); a refused reload leaves it.
    pub config_timestamp: IntGauge,
    /// `rampart_config_reloads_total{result}`: applied | refused.
    pub config_reloads: IntCounterVec,
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// Methods outside the standard set count as `OTHER` (a client can send any token).
pub fn method_label(method: &http::Method) -> &'static str {
    METHODS
        .iter()
        .find(|m| **m == method.as_str())
        .copied()
        .unwrap_or("OTHER")
}

impl Metrics {
    /// Build every family as `[metrics]` says.
    pub fn new(config: &Config) -> Result<Self, prometheus::Error> {
        let buckets = config.buckets.as_slice();
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram = |name: &str,
                         help: &str,
                         labels: &[&str],
                         b: Vec<f64>|
         -> Result<HistogramVec, prometheus::Error> {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(b), labels)?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let gauges =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let fast = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        ];
        let m = Self {
            requests: counter(
                "http_requests_total",
                "Requests answered, by method, route name and status.",
                &["method", "route", "status"],
            )?,
            duration: histogram(
                "http_request_duration_seconds",
                "Time from request to the end of the response, by method and route name.",
                &["method", "route"],
                buckets.to_vec(),
            )?,
            in_flight: gauge("rampart_requests_in_flight", "Requests being processed.")?,
            upstream_duration: histogram(
                "rampart_upstream_request_duration_seconds",
                "Time the upstream took to answer, by upstream group.",
                &["upstream"],
                buckets.to_vec(),
            )?,
            rejections: counter(
                "rampart_rejections_total",
                "Requests and connections refused or cut by a limit or a parsing rule, by reason.",
                &["reason"],
            )?,
            connections_open: gauge("rampart_connections_open", "Client connections open now.")?,
            upstream_errors: counter(
                "rampart_upstream_errors_total",
                "Upstream failures by group and kind (connect, timeout, 5xx).",
                &["upstream", "kind"],
            )?,
            upstream_healthy: gauges(
                "rampart_upstream_healthy",
                "1 while an upstream address is up, 0 while health checks or failed requests keep it out.",
                &["upstream", "addr"],
            )?,
            upstream_retries: counter(
                "rampart_upstream_retries_total",
                "Upstream attempts sent again, by group and reason (connect, closed).",
                &["upstream", "reason"],
            )?,
            cache_lookups: counter(
                "rampart_cache_lookups_total",
                "Cache lookups by route and result (hit, miss, stale, bypass, expired).",
                &["route", "result"],
            )?,
            cache_stored_bytes: counter(
                "rampart_cache_stored_bytes_total",
                "Response bytes written to the cache, by route.",
                &["route"],
            )?,
            cache_near_hits: counter(
                "rampart_cache_near_hits_total",
                "Cache hits answered by the near tier in front of Redis (no round trip), by route.",
                &["route"],
            )?,
            ratelimit_decisions: counter(
                "rampart_ratelimit_decisions_total",
                "Rate-limit decisions by policy and outcome.",
                &["policy", "outcome"],
            )?,
            ratelimit_lease_tokens: counter(
                "rampart_ratelimit_lease_tokens_total",
                "Tokens of leased policies taken from Redis to spend on this replica (leased), \
                 and unspent ones given back (returned).",
                &["policy", "event"],
            )?,
            store_duration: histogram(
                "rampart_store_command_duration_seconds",
                "Shared-store (Redis) call latency by backend and operation.",
                &["backend", "op"],
                fast,
            )?,
            store_errors: counter(
                "rampart_store_errors_total",
                "Shared-store call failures (errors and timeouts) by backend and operation.",
                &["backend", "op"],
            )?,
            store_up: gauges(
                "rampart_store_up",
                "1 while the shared store answers, 0 during an outage.",
                &["backend"],
            )?,
            store_fallback: gauges(
                "rampart_store_fallback_active",
                "1 while a feature runs on its in-process fallback.",
                &["feature"],
            )?,
            compress_in: counter(
                "rampart_compression_bytes_in_total",
                "Bytes before compression, by encoding.",
                &["encoding"],
            )?,
            compress_out: counter(
                "rampart_compression_bytes_out_total",
                "Bytes after compression, by encoding.",
                &["encoding"],
            )?,
            build_info: gauges(
                "rampart_build_info",
                "Always 1; the version is in the label.",
                &["version"],
            )?,
            config_success: gauge(
                "rampart_config_load_success",
                "1 if the last configuration load (start or reload) was applied, 0 if the last reload was refused.",
            )?,
            config_timestamp: gauge(
                "rampart_config_load_timestamp_seconds",
                "Unix time of the last successful configuration load.",
            )?,
            config_reloads: counter(
                "rampart_config_reloads_total",
                "Configuration reloads by result (applied, refused).",
                &["result"],
            )?,
            registry,
            per_request: config.enabled,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for result in ["applied", "refused"] {
            // Exported at 0 from the start, so `increase()` sees the first reload.
            m.config_reloads.with_label_values(&[result]);
        }
        m.config_success.set(1);
        m.config_timestamp.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        );
        Ok(m)
    }

    /// A request started (`new_ctx`).
    pub fn request_started(&self) {
        if self.per_request {
            self.in_flight.inc();
        }
    }

    /// One finished request (called from `logging`, which every request reaches).
    pub fn request_done(&self, method: &http::Method, route: Option<&str>, status: u16, secs: f64) {
        if !self.per_request {
            return;
        }
        self.in_flight.dec();
        let method = method_label(method);
        let route = route.unwrap_or(UNMATCHED);
        RECENT.with_borrow_mut(|recent| {
            let slot = &mut recent[Series::slot(method, route, status)];
            let series = match slot {
                Some(series) if series.is(self.id, method, route, status) => series,
                _ => slot.insert(Series::new(self, method, route, status)),
            };
            series.requests.inc();
            series.duration.observe(secs);
        });
    }

    /// An upstream answered after `took`; a 5xx also counts as an error of the group.
    /// `latency`: the group's `upstream_duration` series, resolved when it was built.
    pub fn upstream_response(
        &self,
        latency: &prometheus::Histogram,
        upstream: &str,
        status: u16,
        took: std::time::Duration,
    ) {
        if !self.per_request {
            return;
        }
        latency.observe(took.as_secs_f64());
        if status >= 500 {
            self.upstream_error(upstream, "5xx");
        }
    }

    /// A request or connection a limit or a parsing rule refused (`reason`: a
    /// `limits::Reason` label).
    pub fn rejected(&self, reason: &'static str) {
        self.rejections.with_label_values(&[reason]).inc();
    }

    /// A request refused by the connection gate, before it became a Pingora request: counted
    /// in `http_requests_total` under route `(unmatched)` and in `rampart_rejections_total`.
    pub fn rejected_request(&self, method: &'static str, status: u16, reason: &'static str) {
        self.rejected(reason);
        if self.per_request {
            let mut buf = [0u8; 3];
            let status = status_label(status, &mut buf);
            self.requests
                .with_label_values(&[method, UNMATCHED, status])
                .inc();
        }
    }

    /// `kind`: connect | timeout | 5xx | broken.
    pub fn upstream_error(&self, upstream: &str, kind: &'static str) {
        self.upstream_errors
            .with_label_values(&[upstream, kind])
            .inc();
    }

    /// `reason`: connect | closed.
    pub fn upstream_retry(&self, upstream: &str, reason: &'static str) {
        self.upstream_retries
            .with_label_values(&[upstream, reason])
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("metrics encoding failed: {e}");
        }
        out
    }
}

/// The `rampart_upstream_errors_total` kind of a request's final error, when the upstream
/// caused it; connect failures are counted where they happen (`fail_to_connect`).
pub fn upstream_error_kind(e: &pingora::Error) -> Option<&'static str> {
    use pingora::ErrorType::*;
    if e.esource() != &pingora::ErrorSource::Upstream {
        return None;
    }
    match e.etype() {
        ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure
        | TLSHandshakeTimedout | HTTPStatus(_) => None,
        ReadTimedout | WriteTimedout => Some("timeout"),
        _ => Some("broken"),
    }
}

/// `0` stands for "no response was sent" (a client that went away first counts as 499, see
/// `proxy::CLIENT_CLOSED_REQUEST`). Statuses are three
/// digits, written into a stack buffer: no allocation per request.
fn status_label(status: u16, buf: &mut [u8; 3]) -> &str {
    let status = if (100..1000).contains(&status) {
        status
    } else {
        0
    };
    if status == 0 {
        return "0";
    }
    buf[0] = b'0' + (status / 100) as u8;
    buf[1] = b'0' + (status / 10 % 10) as u8;
    buf[2] = b'0' + (status % 10) as u8;
    std::str::from_utf8(buf).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finished requests land in their own series, whichever handles a thread kept: more label
    /// sets than slots, in turns, and two sets of families on one thread.
    #[test]
    fn finished_requests_are_counted_by_their_labels() {
        let config = Config::default();
        let (a, b) = (
            Metrics::new(&config).expect("a"),
            Metrics::new(&config).expect("b"),
        );
        let routes: Vec<String> = (0..RECENT_SLOTS * 2).map(|i| format!("r{i}")).collect();
        for round in 0..3 {
            for (i, route) in routes.iter().enumerate() {
                let status = if i % 2 == 0 { 200 } else { 429 };
                a.request_started();
                a.request_done(&http::Method::GET, Some(route), status, 0.001);
                if round == 0 {
                    b.request_started();
                    b.request_done(&http::Method::POST, Some(route), status, 0.001);
                }
            }
        }
        let (a, b) = (a.render(), b.render());
        let (a, b) = (String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
        for (i, route) in routes.iter().enumerate() {
            let status = if i % 2 == 0 { 200 } else { 429 };
            let line = |method| {
                format!("http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}")
            };
            assert!(a.contains(&format!("{} 3\n", line("GET"))), "{route}: {a}");
            assert!(b.contains(&format!("{} 1\n", line("POST"))), "{route}: {b}");
            assert!(!a.contains(&line("POST")) && !b.contains(&line("GET")));
        }
    }

    #[test]
    fn upstream_errors_are_counted_by_kind() {
        use pingora::{Error, ErrorType::*};
        let kind = |e: Box<Error>| upstream_error_kind(&e);
        assert_eq!(kind(Error::new_up(ReadTimedout)), Some("timeout"));
        assert_eq!(kind(Error::new_up(ConnectionClosed)), Some("broken"));
        assert_eq!(kind(Error::new_up(ReadError)), Some("broken"));
        assert_eq!(
            kind(Error::new_up(ConnectRefused)),
            None,
            "counted at connect"
        );
        assert_eq!(
            kind(Error::new_down(ConnectionClosed)),
            None,
            "the client's"
        );
    }

    #[test]
    fn status_labels() {
        let mut buf = [0u8; 3];
        assert_eq!(status_label(200, &mut buf), "200");
        assert_eq!(status_label(504, &mut buf), "504");
        assert_eq!(status_label(101, &mut buf), "101");
        assert_eq!(status_label(0, &mut buf), "0");
        assert_eq!(status_label(1000, &mut buf), "0");
    }
}
