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
