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
