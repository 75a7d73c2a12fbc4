//! Rampart itself, started through the library on free ports, with readiness deadlines.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::*;

/// Rampart started through the library on free ports; stopped on drop.
pub struct Rampart {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: rampart::config::Config,
    running: Option<rampart::app::Running>,
}

impl Rampart {
    /// Start with `body` as the config file after a generated `[server]` table (free ports, one
    /// thread). `server_extra` lines go into that table.
    pub fn start(body: &str) -> Self {
        Self::start_with(body, "")
    }

    pub fn start_with(body: &str, server_extra: &str) -> Self {
        // A port can still be taken between choosing and binding (another process): try again
        // with fresh ports, a bounded number of times.
        for _ in 0..5 {
            let (port, admin_port) = (free_port(), free_port());
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\nthreads = 1\ngrace_period = \"0s\"\n{server_extra}\n{body}"
            );
            let config = rampart::config::parse("test.toml", &text, &BTreeMap::new())
                .unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
            match rampart::app::build(&config, Vec::new()) {
                Ok(app) => return Self::started(app, config, port, admin_port),
                Err(rampart::app::Error::Listen { .. }) => continue,
                Err(e) => panic!("build rampart: {e}"),
            }
        }
        panic!("no free ports for rampart after 5 tries")
    }

    fn started(
        app: rampart::app::App,
        config: rampart::config::Config,
        port: u16,
        admin_port: u16,
    ) -> Self {
        let running = app.spawn();
        let rampart = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            config,
            running: Some(running),
        };
        rampart.wait_ready();
        rampart
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + READY;
        loop {
            let admin_up = try_request(self.admin, "GET", "/healthz", &[("Host", "a")], None)
                .is_ok_and(|r| r.status == 200);
            if admin_up && TcpStream::connect(self.addr).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "rampart did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn get(&self, path: &str) -> Response {
        get(self.addr, path)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        request(self.addr, method, path, headers, body)
    }

    pub fn admin_get(&self, path: &str) -> Response {
        get(self.admin, path)
    }
}

impl Drop for Rampart {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop();
        }
    }
}

/// The TOML for an upstream group pointing at `upstreams`.
pub fn upstream_toml(name: &str, upstreams: &[&SocketAddr]) -> String {
    let addrs: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[upstreams.{name}]\naddrs = [{}]\n", addrs.join(", "))
}

/// The real `rampart` binary on free ports, its stderr (log lines, access log) kept in a
/// file; killed on drop.
pub struct RampartProcess {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl RampartProcess {
    /// `server_extra` goes into the generated `[server]` table, `body` after it.
    pub fn start(body: &str, server_extra: &str) -> Self {
        use std::process::{Command, Stdio};
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        for _ in 0..5 {
            let (port, admin_port) = (free_port(), free_port());
            let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("rampart-proc-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let file = dir.join("rampart.toml");
            let grace = if server_extra.contains("grace_period") {
                ""
            } else {
                "grace_period = \"0s\"\n"
            };
            std::fs::write(
                &file,
                format!(
                    "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\nthreads = 2\n{grace}{server_extra}\n{body}"
                ),
            )
            .expect("write config");
            let log = std::fs::File::create(dir.join("stderr.log")).expect("log file");
            let child = Command::new(env!("CARGO_BIN_EXE_rampart"))
                .arg("run")
                .arg("--config")
                .arg(&file)
                .env_remove("RAMPART_CONFIG")
                .env_remove("RAMPART_REDIS_URL")
                .env_remove("RAMPART_LISTEN")
                .env_remove("RAMPART_ADMIN_LISTEN")
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn rampart");
            let mut p = Self {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
                child,
                dir,
            };
            let deadline = Instant::now() + READY;
            loop {
                if let Ok(Some(_)) = p.child.try_wait() {
                    break; // exited: most likely a lost port race; try fresh ports
                }
                let up = try_request(p.admin, "GET", "/healthz", &[("Host", "a")], None)
                    .is_ok_and(|r| r.status == 200);
                if up && TcpStream::connect(p.addr).is_ok() {
                    return p;
                }
                assert!(
                    Instant::now() < deadline,
                    "rampart did not start: {}",
                    p.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let log = p.log();
            assert!(log.contains("cannot listen"), "rampart exited: {log}");
        }
        panic!("no free ports for rampart after 5 tries")
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Wait until the log has a line containing `needle`.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let mut log = String::new();
        eventually(&format!("a log line with {needle:?}"), || {
            log = self.log();
            log.contains(needle)
        });
        log
    }

    /// SIGTERM (graceful shutdown), then wait for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let deadline = Instant::now() + READY;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "rampart did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn metrics(&self) -> String {
        get(self.admin, "/metrics").text()
    }
}

impl Drop for RampartProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
