//! The real `rampart` binary in child processes: one with its config file, pid file, upgrade
//! socket and log in a private temporary directory ([`BinarySetup`]), or several replicas of
//! one deployment ([`Process`]), killed on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::*;

/// Where a binary Rampart listens and keeps its files.
pub struct BinarySetup {
    pub dir: TempDir,
    pub config: PathBuf,
    pub pid_file: PathBuf,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The `[server]` table (listeners, pid file, upgrade socket).
    pub header: String,
}

impl BinarySetup {
    /// Free ports and a directory; the config file is `header` + `body`. No shutdown grace
    /// period, so the tests that stop the process do not wait for one.
    pub fn new(body: &str) -> Self {
        Self::with_grace_period(body, "0s")
    }

    /// [`BinarySetup::new`] with `server.grace_period` set: how long a stopping process goes on
    /// serving the requests it has already accepted before they are cut.
    pub fn with_grace_period(body: &str, grace_period: &str) -> Self {
        let dir = TempDir::new("bin");
        let (port, admin) = (free_port(), free_port());
        let pid_file = dir.join("rampart.pid");
        let header = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nthreads = 1\ngrace_period = \"{grace_period}\"\npid_file = \"{}\"\nupgrade_sock = \"{}\"\n\n",
            pid_file.display(),
            dir.join("upgrade.sock").display()
        );
        let setup = Self {
            config: dir.join("rampart.toml"),
            dir,
            pid_file,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            header,
        };
        setup.write(body);
        setup
    }

    /// Replace the body of the config file (the `[server]` table stays).
    pub fn write(&self, body: &str) {
        std::fs::write(&self.config, format!("{}{body}", self.header)).expect("write config");
    }

    /// Replace the whole config file.
    pub fn write_raw(&self, text: &str) {
        std::fs::write(&self.config, text).expect("write config");
    }

    /// `rampart <args> --config <file>`, its stderr (info level) into `log` in the directory.
    pub fn spawn(&self, args: &[&str], log: &str) -> Binary {
        let log = self.dir.join(log);
        let child = self
            .command()
            .args(args)
            .env("RUST_LOG", "info,rampart::gate=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")))
            .spawn()
            .expect("spawn rampart");
        Binary { child, log }
    }

    /// Run `rampart <args> --config <file>` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run rampart")
    }

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rampart"));
        c.arg("--config").arg(&self.config);
        for var in [
            "RAMPART_CONFIG",
            "RAMPART_PID_FILE",
            "RAMPART_LISTEN",
            "RAMPART_ADMIN_LISTEN",
            "RAMPART_REDIS_URL",
        ] {
            c.env_remove(var);
        }
        c
    }

    /// Wait until the admin listener answers `/healthz` and the public one accepts.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + READY;
        loop {
            let admin_up = try_request(self.admin, "GET", "/healthz", &[], None)
                .is_ok_and(|r| r.status == 200);
            if admin_up && TcpStream::connect(self.addr).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "rampart process did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id in the pid file, if there is one.
    pub fn pid_in_file(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

/// A running `rampart` child; SIGKILLed on drop if still running.
pub struct Binary {
    pub child: Child,
    pub log: PathBuf,
}

impl Binary {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.pid()).expect("pid");
        kill(Pid::from_raw(pid), signal).expect("signal rampart");
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait (at most `within`) for the process to exit; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "rampart {} did not exit within {within:?}\n{}",
                self.pid(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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
