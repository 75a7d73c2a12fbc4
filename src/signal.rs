//! `rampart reload`: check the config file, send `SIGHUP` to the running Rampart named by the
//! pid file, and report what it did with the file.
//!
//! Not part of the server: a client of it. The outcome is read from the running process's
//! `/healthz` (`config.reloads_applied` / `reloads_refused` / `last_error`) on its admin
//! listener, so an operator (or `systemctl reload`, through `ExecReload`) sees a refused
//! reload as a failure with its reason instead of a silent "signal sent".
//!
//! Invariants: nothing is signalled when the file does not pass `rampart check`, when the pid
//! file names no process or one that is not a Rampart (a stale pid reused by another program
//! would be killed by SIGHUP's default action), nor before the process reports on its admin
//! listener that it handles SIGHUP (one still starting would be killed the same way); every
//! wait is bounded.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config;

/// How long `rampart reload` waits for the running process to report the reload.
const WAIT: Duration = Duration::from_secs(20);

/// What `rampart reload` found out.
#[derive(Debug)]
pub enum Reloaded {
    /// The file is running: the generation it is now.
    Applied { pid: i32, generation: u64 },
    /// SIGHUP went out but no outcome was reported in time.
    Signalled { pid: i32, why: String },
}

/// Validate `config_path`, signal process `pid` (else the one in the pid file: `pid_file`,
/// else the file's `server.pid_file`) and wait for its verdict. `Err`: why nothing was
/// applied.
pub fn reload(
    config_path: &Path,
    pid_file: Option<&Path>,
    pid: Option<i32>,
) -> Result<Reloaded, String> {
    let config = config::load(config_path)
        .map_err(|e| format!("{e}\nnot reloaded: the running configuration stays"))?;
    let (pid, source) = match pid {
        Some(pid) => (pid, "--pid".to_string()),
        None => {
            let pid_file: PathBuf = pid_file
                .map(Path::to_path_buf)
                .or_else(|| config.server.pid_file.as_ref().map(PathBuf::from))
                .ok_or_else(|| {
                    "no pid file: set server.pid_file, or pass --pid-file or --pid (or send SIGHUP yourself: kill -HUP <pid>)".to_string()
                })?;
            (
                read_pid(&pid_file)?,
                format!("pid file {}", pid_file.display()),
            )
        }
    };
    check_is_rampart(pid, &source)?;
    let admin = loopback(config.server.admin_listen.0);
    let before = ready(admin, pid)?;
    kill(Pid::from_raw(pid), Signal::SIGHUP)
        .map_err(|e| format!("cannot signal process {pid} ({source}): {e}"))?;
    let deadline = Instant::now() + WAIT;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        match health(admin) {
            Ok(now) if now.applied > before.applied => {
                return Ok(Reloaded::Applied {
                    pid,
                    generation: now.generation,
                })
            }
            Ok(now) if now.refused > before.refused => {
                return Err(format!(
                    "process {pid} refused the reload and keeps generation {}: {}",
                    now.generation,
                    now.last_error.unwrap_or_default()
                ))
            }
            Ok(_) | Err(_) if Instant::now() < deadline => {}
            Ok(_) => {
                return Ok(Reloaded::Signalled {
                    pid,
                    why: format!("no outcome within {WAIT:?}"),
                })
            }
            Err(why) => return Ok(Reloaded::Signalled { pid, why }),
        }
    }
}

/// The running process's reload counters, once its admin listener says it handles SIGHUP.
fn ready(admin: SocketAddr, pid: i32) -> Result<Health, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let last = match health(admin) {
            Ok(h) if h.sighup => return Ok(h),
            Ok(_) => "it does not handle SIGHUP (yet)".to_string(),
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "process {pid}: its admin listener {admin} did not confirm it reloads on SIGHUP within {WAIT:?} ({last}); nothing signalled (a server.admin_listen change needs a restart)"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_pid(path: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "pid file {}: {e} (is Rampart running with this pid file?)",
            path.display()
        )
    })?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("pid file {}: no process id in it", path.display()))
}

/// On Linux, the process must exist and be a `rampart` (`/proc/PID/comm`); elsewhere only
/// its existence is checked (signal 0). `source`: where the pid came from, for messages.
fn check_is_rampart(pid: i32, source: &str) -> Result<(), String> {
    if pid <= 0 {
        // 0 and negative numbers name process groups to kill(2).
        return Err(format!("{pid} ({source}) is not a process id"));
    }
    if Path::new("/proc/self/comm").exists() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map_err(|_| format!("no process {pid} ({source}): Rampart is not running there"))?;
        if !comm.trim().starts_with("rampart") {
            return Err(format!(
                "process {pid} ({source}) is \"{}\", not rampart: nothing signalled",
                comm.trim()
            ));
        }
        return Ok(());
    }
    kill(Pid::from_raw(pid), None).map_err(|e| format!("no process {pid} ({source}): {e}"))
}

/// Where to reach a listener bound to `addr` from this host (the unspecified address is
/// reached on loopback).
fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// The `config` part of `/healthz`.
struct Health {
    sighup: bool,
    generation: u64,
    applied: u64,
    refused: u64,
    last_error: Option<String>,
}

/// `GET /healthz` on the admin listener, over a plain socket (one request, `Connection:
/// close`, a few KiB at most).
fn health(admin: SocketAddr) -> Result<Health, String> {
    let timeout = Duration::from_secs(2);
    let mut conn = TcpStream::connect_timeout(&admin, timeout).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    conn.take(64 * 1024)
        .read_to_end(&mut raw)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("no HTTP response from the admin listener")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "/healthz answered {}",
            head.lines().next().unwrap_or("")
        ));
    }
    let v: serde_json::Value =
        serde_json::from_str(body.trim()).map_err(|e| format!("/healthz: {e}"))?;
    let c = &v["config"];
    let num = |k: &str| c[k].as_u64().ok_or(format!("/healthz has no config.{k}"));
    Ok(Health {
        sighup: c["sighup"].as_bool().unwrap_or(false),
        generation: num("generation")?,
        applied: num("reloads_applied")?,
        refused: num("reloads_refused")?,
        last_error: c["last_error"].as_str().map(str::to_string),
    })
}
