//! The real `rampart` binary as a separate process (several replicas of one deployment), and
//! temporary directories removed on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// A directory under the system temp dir, removed (with its contents) on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh, empty directory named after `tag`, this test process and a free port (unique).
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rampart-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("temp dir {}: {e}", dir.display()));
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The real binary, `rampart run` on free ports, killed on drop (also when the test panics).
pub struct Process {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    _dir: TempDir,
}

impl Process {
    /// Start `rampart run` with `body` after a generated `[server]` table (free ports, two
    /// threads; `server_extra` lines go into it). Its log (`RUST_LOG=warn`) goes to `log`, if
    /// given; `env` is added to a clean environment (no `RAMPART_*` from the caller).
    pub fn spawn(body: &str, server_extra: &str, log: Option<&Path>, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let admin_port = free_port();
        let dir = TempDir::new("proc");
        let file = dir.0.join("rampart.toml");
        std::fs::write(
            &file,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\nthreads = 2\ngrace_period = \"0s\"\n{server_extra}\n{body}"
            ),
        )
        .expect("write config");
        let mut command = Command::new(env!("CARGO_BIN_EXE_rampart"));
        command
            .arg("run")
            .arg("--config")
            .arg(&file)
            .env_remove("RAMPART_CONFIG")
            .env_remove("RAMPART_REDIS_URL")
            .env_remove("RAMPART_REDIS_PASSWORD")
            .env_remove("RAMPART_LISTEN")
            .env_remove("RAMPART_ADMIN_LISTEN")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(match log {
                Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
                None => Stdio::null(),
            });
        let child = command.spawn().expect("spawn rampart");
        let process = Process {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            _dir: dir,
        };
        let deadline = Instant::now() + READY;
        loop {
            let up = try_request(process.admin, "GET", "/healthz", &[("Host", "a")], None)
                .is_ok_and(|r| r.status == 200);
            if up && TcpStream::connect(process.addr).is_ok() {
                return process;
            }
            assert!(Instant::now() < deadline, "rampart process did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn admin_get(&self, path: &str) -> Response {
        get(self.admin, path)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
