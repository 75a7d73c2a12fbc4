//! Rampart itself, started through the library on free ports, with readiness deadlines.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;

/// Rampart started through the library on free ports; stopped on drop.
pub struct Rampart {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: rampart::config::Config,
    running: Option<rampart::app::Running>,
    /// The config file, for servers started with [`Rampart::start_reloadable`].
    file: Option<ConfigFile>,
}

/// A config file in a private temporary directory (removed on drop): the generated
/// `[server]` table, then the test's body.
pub struct ConfigFile {
    pub dir: TempDir,
    pub path: PathBuf,
    /// The generated `[server]` table (listeners on the chosen ports).
    pub header: String,
}

/// A directory under the system's temporary directory, removed with its files on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rampart-{what}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

    /// Like [`Rampart::start_with`], but the config is written to a file the server was
    /// started from, so [`Rampart::rewrite`] and [`Rampart::reload`] can change it.
    pub fn start_reloadable(body: &str, server_extra: &str) -> Self {
        let dir = TempDir::new("reload");
        let path = dir.join("rampart.toml");
        for _ in 0..5 {
            let (port, admin_port) = (free_port(), free_port());
            let header = format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\nthreads = 1\ngrace_period = \"0s\"\n{server_extra}\n"
            );
            std::fs::write(&path, format!("{header}{body}")).expect("write config");
            let config = rampart::config::load(&path)
                .unwrap_or_else(|e| panic!("test config: {e}\n{header}{body}"));
            let options = rampart::app::Options {
                config_path: Some(path.clone()),
                ..Default::default()
            };
            match rampart::app::build_with(&config, &options, Vec::new()) {
                Ok(app) => {
                    let mut r = Self::started(app, config, port, admin_port);
                    r.file = Some(ConfigFile { dir, path, header });
                    return r;
                }
                Err(rampart::app::Error::Listen { .. }) => continue,
                Err(e) => panic!("build rampart: {e}"),
            }
        }
        panic!("no free ports for rampart after 5 tries")
    }

    /// Start with a file of the repository (`config/proxy.toml`) as it is shipped, its
    /// listeners on free ports through the documented environment overrides, plus `env`
    /// (`RAMPART_UPSTREAM_<NAME>` pointing its upstreams at test servers).
    pub fn start_file(path: &str, env: &[(&str, String)]) -> Self {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        let text = std::fs::read_to_string(&file).expect("read config file");
        for _ in 0..5 {
            let (port, admin_port) = (free_port(), free_port());
            let mut vars: BTreeMap<String, String> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            vars.insert("RAMPART_LISTEN".into(), format!("127.0.0.1:{port}"));
            vars.insert(
                "RAMPART_ADMIN_LISTEN".into(),
                format!("127.0.0.1:{admin_port}"),
            );
            let config = rampart::config::parse(path, &text, &vars)
                .unwrap_or_else(|e| panic!("{path}: {e}"));
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
            file: None,
        };
        rampart.wait_ready();
        rampart
    }

    /// The config file of a server from [`Rampart::start_reloadable`].
    pub fn file(&self) -> &ConfigFile {
        self.file.as_ref().expect("started with start_reloadable")
    }

    /// Replace the body of the config file (the `[server]` table stays).
    pub fn rewrite(&self, body: &str) {
        let f = self.file();
        std::fs::write(&f.path, format!("{}{body}", f.header)).expect("rewrite config");
    }

    /// Replace the whole config file.
    pub fn rewrite_raw(&self, text: &str) {
        std::fs::write(&self.file().path, text).expect("rewrite config");
    }

    /// Reload as SIGHUP does: the generation now current, or why it was refused.
    pub fn reload(&self) -> Result<u64, String> {
        self.running.as_ref().expect("running").reload()
    }

    /// One sample of the admin listener's `/metrics`, `name{labels}` as written there.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.admin_get("/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
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

    /// The admin listener's `/metrics` text.
    pub fn metrics(&self) -> String {
        self.admin_get("/metrics").text()
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

/// The real `rampart` binary (`rampart run --config FILE`) on free ports, with `RUST_LOG` as
/// given and its stderr collected; killed on drop. For what only the binary does: its logging.
pub struct RampartProcess {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    child: std::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    dir: std::path::PathBuf,
}

impl RampartProcess {
    /// `body` goes after a generated `[server]` table, as for [`Rampart::start`].
    pub fn start(body: &str, rust_log: &str) -> Self {
        use std::io::Read;
        use std::process::{Command, Stdio};
        for attempt in 0..5 {
            let (port, admin_port) = (free_port(), free_port());
            let dir = std::env::temp_dir().join(format!(
                "rampart-process-{}-{port}-{attempt}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("tmp dir");
            let file = dir.join("rampart.toml");
            std::fs::write(
                &file,
                format!(
                    "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\nthreads = 1\ngrace_period = \"0s\"\n{body}"
                ),
            )
            .expect("write config");
            let mut child = Command::new(env!("CARGO_BIN_EXE_rampart"))
                .args(["run", "--config"])
                .arg(&file)
                .env_remove("RAMPART_CONFIG")
                .env("RUST_LOG", rust_log)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start rampart");
            let mut pipe = child.stderr.take().expect("stderr");
            let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&chunk[..n]).into_owned();
                    sink.lock().expect("stderr lock").push_str(&text);
                }
            });
            let mut process = Self {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
                child,
                stderr,
                dir,
            };
            let deadline = Instant::now() + READY;
            loop {
                if try_request(process.admin, "GET", "/healthz", &[("Host", "a")], None)
                    .is_ok_and(|r| r.status == 200)
                    && TcpStream::connect(process.addr).is_ok()
                {
                    return process;
                }
                if let Ok(Some(status)) = process.child.try_wait() {
                    let log = process.stderr();
                    assert!(
                        log.contains("cannot listen"),
                        "rampart exited ({status}): {log}"
                    );
                    break; // a port was taken meanwhile: try others
                }
                assert!(Instant::now() < deadline, "rampart did not become ready");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("no free ports for the rampart binary after 5 tries")
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    pub fn get(&self, path: &str) -> Response {
        get(self.addr, path)
    }

    pub fn admin_get(&self, path: &str) -> Response {
        get(self.admin, path)
    }
}

impl Drop for RampartProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The real `rampart` binary on free ports with `server_extra` in its `[server]` table, its
/// stderr (log lines, access log) kept in a file; killed on drop. For the hardening tests:
/// timers, limits and what the log says about refusals.
pub struct LoggedBinary {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl LoggedBinary {
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

    /// SIGTERM (graceful shutdown), without waiting for the exit.
    pub fn begin_shutdown(&self) {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
    }

    /// SIGTERM (graceful shutdown), then wait for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.begin_shutdown();
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

impl Drop for LoggedBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of one sample line of a metrics text, `name{labels}`, if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}
