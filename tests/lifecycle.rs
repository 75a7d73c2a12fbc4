//! The real binary's process life: the pid file, `SIGHUP` and `rampart reload` (including
//! refusals and their log lines), and a binary upgrade (`run --upgrade` + `SIGQUIT`) during
//! which requests keep succeeding.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::*;

fn body(up: &Upstream, version: &str) -> String {
    format!(
        "{}[[routes]]\nname = \"api\"\nprefix = \"/api/\"\nupstream = \"u\"\n[headers.security]\nX-Config = \"{version}\"\n",
        upstream_toml("u", &[&up.addr])
    )
}

fn config_header(setup: &BinarySetup) -> Option<String> {
    try_request(setup.addr, "GET", "/api/x", &[], None)
        .ok()
        .and_then(|r| r.header("x-config").map(str::to_string))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn sighup_and_rampart_reload_apply_or_refuse_the_file() {
    let up = Upstream::named("ok");
    let setup = BinarySetup::new(&body(&up, "one"));
    let mut rampart = setup.spawn(&["run"], "rampart.log");
    setup.wait_ready();
    assert_eq!(setup.pid_in_file(), Some(rampart.pid()));
    assert_eq!(config_header(&setup).as_deref(), Some("one"));

    // SIGHUP applies a valid file.
    setup.write(&body(&up, "two"));
    rampart.signal(Signal::SIGHUP);
    eventually("SIGHUP applied the new header", || {
        config_header(&setup).as_deref() == Some("two")
    });

    // A broken file: refused, logged at ERROR with file:line:col, the running config kept.
    setup.write(&format!(
        "{}[[routes]]\nname = \"api\"\nprefix = \"api\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&up.addr])
    ));
    rampart.signal(Signal::SIGHUP);
    let location = format!("{}:13:10: routes[0].prefix:", setup.config.display());
    eventually("the refusal is logged", || {
        rampart
            .log()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("reload refused") && l.contains(&location))
    });
    assert_eq!(config_header(&setup).as_deref(), Some("two"));
    let metrics = get(setup.admin, "/metrics").text();
    assert!(
        metrics.contains("\nrampart_config_load_success 0\n"),
        "{metrics}"
    );

    // `rampart reload` checks the file first: nothing is signalled.
    let out = setup.run(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&location), "{stderr}");
    assert!(stderr.contains("not reloaded"), "{stderr}");
    let health = get(setup.admin, "/healthz").json();
    assert_eq!(health["config"]["reloads_refused"], 1, "not signalled");
    assert_eq!(health["config"]["sighup"], true);

    // A listener change: the process refuses it, and `rampart reload` says so.
    let moved = setup.header.replacen(
        &format!("listen = \"{}\"", setup.addr),
        &format!("listen = \"127.0.0.1:{}\"", free_port()),
        1,
    );
    setup.write_raw(&format!("{moved}{}", body(&up, "three")));
    let out = setup.run(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("refused the reload"), "{stderr}");
    assert!(stderr.contains("server.listen"), "{stderr}");
    assert!(stderr.contains("restart"), "{stderr}");
    assert_eq!(config_header(&setup).as_deref(), Some("two"));

    // A valid change, the process named by --pid (systemd's $MAINPID): applied, and the
    // answer names the generation.
    setup.write(&body(&up, "three"));
    let out = setup.run(&["reload", "--pid", &rampart.pid().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("(generation 3)"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(config_header(&setup).as_deref(), Some("three"));
    let metrics = get(setup.admin, "/metrics").text();
    assert!(
        metrics.contains("\nrampart_config_load_success 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rampart_config_reloads_total{result=\"refused\"} 2"),
        "{metrics}"
    );

    // SIGTERM: gone, and so is its pid file.
    rampart.signal(Signal::SIGTERM);
    assert_eq!(rampart.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(!setup.pid_file.exists(), "pid file removed at exit");

    // Nothing runs: `rampart reload` says the pid file is missing, and exits 1.
    let out = setup.run(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("rampart.pid"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn rampart_reload_refuses_a_stale_pid_file() {
    let up = Upstream::named("ok");
    let setup = BinarySetup::new(&body(&up, "one"));
    // This test process is not a rampart: a stale pid file naming it must not be signalled
    // (SIGHUP's default action would kill the test run).
    std::fs::write(&setup.pid_file, format!("{}\n", std::process::id())).expect("pid file");
    let out = setup.run(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("not rampart"), "{stderr}");
}

/// Requests made by a client thread, until stopped (bounded in count and time).
struct Load {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, usize, Vec<String>)>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, after: Arc<Mutex<Option<Instant>>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let (mut ok, mut failures) = (0, Vec::new());
            let mut served_after = 0;
            while !stopping.load(Ordering::SeqCst)
                && ok + failures.len() < 20_000
                && started.elapsed() < Duration::from_secs(60)
            {
                match try_request(addr, "GET", "/api/x", &[], None) {
                    Ok(r) if r.status == 200 => {
                        ok += 1;
                        let old_gone = after.lock().expect("lock").is_some();
                        if old_gone {
                            served_after += 1;
                        }
                    }
                    Ok(r) => failures.push(format!("status {}", r.status)),
                    Err(e) => failures.push(format!("{e} (at {})", unix_time())),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (ok, served_after, failures)
        });
        Self { stop, thread }
    }

    /// (succeeded, succeeded after the old process exited, failures)
    fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("load thread")
    }
}

/// Seconds since the epoch with milliseconds, to set a failure beside the processes' logs.
fn unix_time() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", now.as_secs(), now.subsec_millis())
}

/// A process's log without its access-log lines (one per request of the load).
fn without_access_lines(log: &str) -> String {
    log.lines()
        .filter(|l| !l.contains("\"GET /api/x\" 200"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_binary_upgrade_hands_over_the_sockets_without_failing_a_request() {
    let up = Upstream::named("ok");
    // A request the old process accepted just before it stopped accepting is finished within
    // the grace period (1 s here, 5 s by default); with none it would be cut, and logged so.
    let setup = BinarySetup::with_grace_period(&body(&up, "one"), "1s");
    let mut old = setup.spawn(&["run"], "old.log");
    setup.wait_ready();
    assert_eq!(setup.pid_in_file(), Some(old.pid()));

    let old_exited = Arc::new(Mutex::new(None));
    // Several clients at once, so that some request is in flight when the old process stops
    // accepting (one client alone meets that moment only now and then).
    let loads: Vec<Load> = (0..4)
        .map(|_| Load::start(setup.addr, old_exited.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    // The documented sequence: start the new binary with --upgrade, then SIGQUIT the old one.
    let mut new = setup.spawn(&["run", "--upgrade"], "new.log");
    std::thread::sleep(Duration::from_millis(500));
    old.signal(Signal::SIGQUIT);
    eventually("the new process took over the pid file", || {
        setup.pid_in_file() == Some(new.pid())
    });
    // The old process sends its sockets, keeps accepting 5 s, then stops accepting, finishes
    // what it accepted within the grace period and exits.
    assert_eq!(
        old.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        old.log()
    );
    *old_exited.lock().expect("lock") = Some(Instant::now());
    std::thread::sleep(Duration::from_millis(1000));
    let (mut ok, mut after_exit, mut failures) = (0, 0, Vec::new());
    for load in loads {
        let (served, served_after, failed) = load.finish();
        ok += served;
        after_exit += served_after;
        failures.extend(failed);
    }

    assert!(
        failures.is_empty(),
        "{} failed of {}: {failures:?}\n--- old process:\n{}\n--- new process:\n{}",
        failures.len(),
        ok + failures.len(),
        without_access_lines(&old.log()),
        without_access_lines(&new.log())
    );
    assert!(ok > 50, "only {ok} requests made");
    assert!(
        after_exit > 0,
        "no request was made after the old process exited"
    );
    assert!(old.log().contains("listener sockets sent"), "{}", old.log());
    assert_eq!(
        setup.pid_in_file(),
        Some(new.pid()),
        "the old process left the new pid file"
    );
    let health = get(setup.admin, "/healthz").json();
    assert_eq!(health["status"], "ok");
    assert_eq!(config_header(&setup).as_deref(), Some("one"));

    // The new process reloads like any other.
    setup.write(&body(&up, "two"));
    let out = setup.run(&["reload"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(config_header(&setup).as_deref(), Some("two"));

    new.signal(Signal::SIGTERM);
    assert_eq!(new.wait_exit(Duration::from_secs(20)), Some(0));
}
