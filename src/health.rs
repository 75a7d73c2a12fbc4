//! Upstream health: which addresses of a group may get requests, from two signals.
//!
//! - Active checks: pingora-load-balancing runs a probe per address every
//!   `health_check_interval` (its `TcpHealthCheck` connect, or its `HttpHealthCheck` GET of
//!   `health_check_path` expecting `health_check_status`). [`Probe`] wraps that check and
//!   records each result here; `health_check_fails` consecutive failures take an address out,
//!   `health_check_passes` consecutive successes put it back (nginx Plus's `health_check
//!   fails= passes=`).
//! - Passive ejection, as nginx's `max_fails`/`fail_timeout`: requests that failed on an
//!   address (connect failure, upstream timeout, 5xx answer) are counted from the request path
//!   ([`GroupHealth::request_failed`], [`GroupHealth::request_answered`]); `max_fails`
//!   consecutive ones take it out for `fail_timeout`. Then it gets requests again; the first
//!   success puts it back, a failure takes it out for another `fail_timeout`.
//!
//! Phases: `upstream_peer` reads [`GroupHealth::usable`]; `fail_to_connect`,
//! `upstream_response_filter` and `logging` report outcomes. The probes run in the load
//! balancer's background service.
//!
//! Invariants: an address is "up" when both signals say so; `troubled` counts the addresses
//! whose state is anything but the resting one (probe up, no failed request, not ejected), so
//! while it is 0 the request path answers [`GroupHealth::usable`] and records a success
//! without taking the group's lock; `rampart_upstream_healthy
//! {upstream,addr}` is that state (1/0), and each change of it is logged exactly once (warn
//! when an address goes down, info when it comes back), never per request or per probe. The
//! state lives here, not in pingora's own health flag: [`Probe`] always reports success to
//! pingora, so pingora neither flips nor logs, and one place owns the combined state.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::Backend;
use pingora::protocols::l4::socket::SocketAddr;
use prometheus::IntGaugeVec;

/// How a group judges its addresses (from `[upstreams.NAME]`).
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Consecutive failed probes that take an address out.
    pub probe_fails: usize,
    /// Consecutive passed probes that put it back.
    pub probe_passes: usize,
    /// Consecutive failed requests that take an address out; 0: never.
    pub max_fails: u32,
    /// How long an address taken out by failed requests gets none.
    pub fail_timeout: Duration,
}

/// One address's state.
#[derive(Debug)]
struct Addr {
    /// `upstream,addr` label values of its gauge series.
    label: String,
    /// Active checks say up (after the thresholds).
    probe_up: bool,
    /// Consecutive probe results that disagree with `probe_up`.
    probe_streak: usize,
    /// Consecutive failed requests (reset by a success, kept past `fail_timeout` as nginx
    /// does, so one more failure after it takes the address out again).
    fails: u32,
    /// Taken out by failed requests; stays true until a request succeeds.
    ejected: bool,
    /// No requests before this (meaningful while `ejected`).
    until: Instant,
    /// What the gauge and the log last said.
    reported_up: bool,
}

impl Addr {
    fn new(label: String, now: Instant) -> Self {
        Self {
            label,
            probe_up: true,
            probe_streak: 0,
            fails: 0,
            ejected: false,
            until: now,
            reported_up: true,
        }
    }

    fn up(&self) -> bool {
        self.probe_up && !self.ejected
    }

    /// Anything but the resting state: a request's success or a usable check has something
    /// to read or reset.
    fn troubled(&self) -> bool {
        !self.probe_up || self.ejected || self.fails > 0
    }
}

/// The health of one upstream group's addresses, shared by its probe and the request path.
pub struct GroupHealth {
    upstream: String,
    thresholds: Thresholds,
    gauge: IntGaugeVec,
    addrs: Mutex<HashMap<SocketAddr, Addr>>,
    /// How many of `addrs` are [`Addr::troubled`]; written under the lock, read without it.
    /// Two lock round trips per proxied request on a lock every worker shares cost more than
    /// the rest of the health bookkeeping; with every address at rest there is nothing to do.
    troubled: AtomicUsize,
}

impl GroupHealth {
    /// `gauge`: `rampart_upstream_healthy{upstream,addr}`.
    pub fn new(upstream: &str, thresholds: Thresholds, gauge: IntGaugeVec) -> Self {
        Self {
            upstream: upstream.to_string(),
            thresholds,
            gauge,
            addrs: Mutex::new(HashMap::new()),
            troubled: AtomicUsize::new(0),
        }
    }

    /// Count the troubled addresses again, under the lock that changed them.
    fn recount(&self, addrs: &HashMap<SocketAddr, Addr>) {
        let troubled = addrs.values().filter(|a| a.troubled()).count();
        self.troubled.store(troubled, Ordering::Release);
    }

    /// Every address at rest: usable, and a success changes nothing. A change made at the
    /// same moment on another worker is ordered after this request's look.
    fn at_rest(&self) -> bool {
        self.troubled.load(Ordering::Acquire) == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Addr>> {
        // A panic while holding this lock leaves consistent data (every update is a few
        // field writes), so a poisoned lock is used as is.
        self.addrs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The addresses discovery found: new ones start up (gauge 1), gone ones are forgotten
    /// and their gauge series removed.
    pub fn set_addresses(&self, backends: &BTreeSet<Backend>) {
        let now = Instant::now();
        let mut addrs = self.lock();
        addrs.retain(|addr, state| {
            let keep = backends.iter().any(|b| &b.addr == addr);
            if !keep {
                let _ = self
                    .gauge
                    .remove_label_values(&[&self.upstream, &state.label]);
            }
            keep
        });
        for b in backends {
            addrs.entry(b.addr.clone()).or_insert_with(|| {
                let label = b.addr.to_string();
                self.gauge
                    .with_label_values(&[&self.upstream, &label])
                    .set(1);
                Addr::new(label, now)
            });
        }
        self.recount(&addrs);
    }

    /// Whether `backend` may get a request now: up, or taken out by failed requests whose
    /// `fail_timeout` has passed (it is tried again). Unknown addresses are usable.
    pub fn usable(&self, backend: &Backend) -> bool {
        if self.at_rest() {
            return true;
        }
        self.lock()
            .get(&backend.addr)
            .is_none_or(|a| a.probe_up && (!a.ejected || Instant::now() >= a.until))
    }

    /// Whether the combined state says up (what the gauge shows).
    pub fn is_up(&self, backend: &Backend) -> bool {
        self.lock().get(&backend.addr).is_none_or(Addr::up)
    }

    /// One active probe's result (`Err`: why it failed).
    pub fn probe_result(&self, backend: &Backend, result: Result<(), String>) {
        self.update(backend, |a, t| {
            let passed = result.is_ok();
            if passed == a.probe_up {
                a.probe_streak = 0;
                return None;
            }
            a.probe_streak += 1;
            let needed = if passed {
                t.probe_passes
            } else {
                t.probe_fails
            };
            if a.probe_streak < needed {
                return None;
            }
            a.probe_up = passed;
            a.probe_streak = 0;
            Some(match &result {
                Ok(()) => format!("health check passed {needed} time(s)"),
                Err(why) => format!("health check failed {needed} time(s): {why}"),
            })
        });
    }

    /// A request on `backend` failed (connect failure, timeout, 5xx): `why` says which.
    pub fn request_failed(&self, backend: &Backend, why: &str) {
        self.update(backend, |a, t| {
            a.fails = a.fails.saturating_add(1);
            if t.max_fails == 0 || a.fails < t.max_fails {
                return None;
            }
            a.until = Instant::now() + t.fail_timeout;
            let newly = !a.ejected;
            a.ejected = true;
            newly.then(|| {
                format!(
                    "{} consecutive failed request(s), last: {why}; no requests for {}",
                    a.fails,
                    humantime::format_duration(t.fail_timeout)
                )
            })
        });
    }

    /// `backend` answered a request with `status`: a 5xx counts as a failure, anything else
    /// as a success.
    pub fn request_answered(&self, backend: &Backend, status: u16) {
        if status >= 500 {
            self.request_failed(backend, &format!("answered {status}"));
            return;
        }
        if self.at_rest() {
            return;
        }
        self.update(backend, |a, _| {
            a.fails = 0;
            let was = a.ejected;
            a.ejected = false;
            was.then(|| "a request succeeded".to_string())
        });
    }

    /// Apply `change` to `backend`'s state (it returns why, when it changed something that
    /// may flip the combined state); report a flip on the gauge and in one log line.
    fn update(
        &self,
        backend: &Backend,
        change: impl FnOnce(&mut Addr, &Thresholds) -> Option<String>,
    ) {
        let mut addrs = self.lock();
        let Some(a) = addrs.get_mut(&backend.addr) else {
            return;
        };
        let was_troubled = a.troubled();
        if let Some(why) = change(a, &self.thresholds) {
            self.report(a, &why);
        }
        if a.troubled() != was_troubled {
            self.recount(&addrs);
        }
    }

    /// Say on the gauge and in the log that `a`'s combined state flipped, if it did.
    fn report(&self, a: &mut Addr, why: &str) {
        let up = a.up();
        if up == a.reported_up {
            return;
        }
        a.reported_up = up;
        self.gauge
            .with_label_values(&[&self.upstream, &a.label])
            .set(i64::from(up));
        if up {
            log::info!(
                "upstream {} address {} is back up: {why}",
                self.upstream,
                a.label
            );
        } else {
            log::warn!(
                "upstream {} address {} is down: {why}",
                self.upstream,
                a.label
            );
        }
    }
}

/// Pingora's check (TCP connect or HTTP GET) with its results recorded in a [`GroupHealth`].
pub struct Probe {
    pub check: Box<dyn HealthCheck + Send + Sync>,
    pub health: Arc<GroupHealth>,
}

#[async_trait]
impl HealthCheck for Probe {
    /// Always `Ok` to pingora: its own health flag stays up and it logs nothing; the result
    /// counts here, where passive ejection counts too (see the module header).
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let result = self
            .check
            .check(target)
            .await
            .map_err(|e| e.to_string().trim().to_string());
        self.health.probe_result(target, result);
        Ok(())
    }

    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    fn group(max_fails: u32, fail_timeout: Duration) -> (GroupHealth, Backend) {
        let gauge = IntGaugeVec::new(Opts::new("g", "g"), &["upstream", "addr"]).expect("gauge");
        let t = Thresholds {
            probe_fails: 2,
            probe_passes: 1,
            max_fails,
            fail_timeout,
        };
        let h = GroupHealth::new("u", t, gauge);
        let b = Backend::new("127.0.0.1:1").expect("backend");
        h.set_addresses(&BTreeSet::from([b.clone()]));
        (h, b)
    }

    fn gauge(h: &GroupHealth) -> i64 {
        h.gauge.with_label_values(&["u", "127.0.0.1:1"]).get()
    }

    #[test]
    fn probes_flip_after_their_thresholds() {
        let (h, b) = group(0, Duration::from_secs(1));
        assert_eq!(gauge(&h), 1);
        h.probe_result(&b, Err("refused".into()));
        assert!(h.is_up(&b), "one failure of two");
        h.probe_result(&b, Ok(()));
        h.probe_result(&b, Err("refused".into()));
        assert!(h.is_up(&b), "the streak was broken");
        h.probe_result(&b, Err("refused".into()));
        assert!(!h.is_up(&b) && !h.usable(&b));
        assert_eq!(gauge(&h), 0);
        h.probe_result(&b, Ok(()));
        assert!(h.is_up(&b));
        assert_eq!(gauge(&h), 1);
    }

    #[test]
    fn failed_requests_eject_for_fail_timeout_then_a_success_restores() {
        let (h, b) = group(2, Duration::from_millis(50));
        h.request_failed(&b, "connect refused");
        h.request_answered(&b, 200);
        h.request_failed(&b, "connect refused");
        assert!(h.usable(&b), "a success reset the count");
        h.request_answered(&b, 502);
        assert!(!h.usable(&b) && !h.is_up(&b));
        assert_eq!(gauge(&h), 0);
        std::thread::sleep(Duration::from_millis(60));
        assert!(h.usable(&b), "tried again after fail_timeout");
        assert!(!h.is_up(&b), "but not up until a request succeeds");
        h.request_answered(&b, 500);
        assert!(!h.usable(&b), "one more failure takes it out again");
        std::thread::sleep(Duration::from_millis(60));
        h.request_answered(&b, 404);
        assert!(h.is_up(&b));
        assert_eq!(gauge(&h), 1);
    }

    #[test]
    fn troubled_counts_the_addresses_away_from_rest_and_at_rest_nothing_locks() {
        let (h, a) = group(2, Duration::from_secs(60));
        let b = Backend::new("127.0.0.1:2").expect("backend");
        h.set_addresses(&BTreeSet::from([a.clone(), b.clone()]));
        let troubled = |h: &GroupHealth| h.troubled.load(Ordering::Acquire);
        assert_eq!(troubled(&h), 0);
        h.request_failed(&a, "refused");
        assert_eq!(troubled(&h), 1, "one failed request, not yet ejected");
        h.probe_result(&b, Err("refused".into()));
        h.probe_result(&b, Err("refused".into()));
        assert_eq!(troubled(&h), 2);
        assert!(h.usable(&a) && !h.usable(&b));
        h.request_answered(&a, 200);
        assert_eq!(troubled(&h), 1, "a success reset the count");
        h.set_addresses(&BTreeSet::from([a.clone()]));
        assert_eq!(troubled(&h), 0, "the troubled address is gone");

        // At rest the request path reads the count alone: it answers while the lock is held.
        let h = Arc::new(h);
        let held = h.lock();
        let (done, answered) = std::sync::mpsc::channel();
        let worker = {
            let h = h.clone();
            std::thread::spawn(move || {
                h.request_answered(&a, 200);
                let _ = done.send(h.usable(&a));
            })
        };
        let usable = answered.recv_timeout(Duration::from_secs(5));
        drop(held);
        worker.join().expect("worker");
        assert_eq!(usable, Ok(true), "the request path waited for the lock");
    }

    #[test]
    fn max_fails_zero_never_ejects_and_gone_addresses_are_forgotten() {
        let (h, b) = group(0, Duration::from_secs(1));
        for _ in 0..10 {
            h.request_failed(&b, "refused");
        }
        assert!(h.usable(&b));
        h.set_addresses(&BTreeSet::new());
        assert_eq!(
            prometheus::core::Collector::collect(&h.gauge)
                .iter()
                .map(|f| f.get_metric().len())
                .sum::<usize>(),
            0,
            "series removed"
        );
    }
}
