//! The real `rampart` binary in a child process, with its config file, pid file, upgrade
//! socket and log in a private temporary directory.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
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
    /// Free ports and a directory; the config file is `header` + `body`.
    pub fn new(body: &str) -> Self {
        let dir = TempDir::new("bin");
        let (port, admin) = (free_port(), free_port());
        let pid_file = dir.join("rampart.pid");
        let header = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nthreads = 1\ngrace_period = \"0s\"\npid_file = \"{}\"\nupgrade_sock = \"{}\"\n\n",
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
            .env("RUST_LOG", "info")
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
