//! Command line (clap). `run` is the default when no subcommand is given.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Rampart: a hardening reverse proxy (routing, shared rate limits, caching, compression,
/// metrics) that takes nginx's place in front of a web stack. Configured in TOML.
#[derive(Debug, Parser)]
#[command(name = "rampart", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        short,
        long,
        global = true,
        env = "RAMPART_CONFIG",
        default_value = "config/proxy.toml"
    )]
    pub config: PathBuf,

    /// Pid file: `run` writes it, `reload` reads it (default: `server.pid_file` of the
    /// configuration file).
    #[arg(long, global = true, env = "RAMPART_PID_FILE")]
    pub pid_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the proxy (the default). SIGHUP reloads the configuration file; SIGTERM drains
    /// gracefully; SIGINT stops at once; SIGQUIT hands the listening sockets to a process
    /// started with `run --upgrade`, then drains.
    Run {
        /// Binary upgrade: take over the listening sockets of the Rampart running now
        /// (through `server.upgrade_sock`), instead of binding them. Send SIGQUIT to the old
        /// process within 5 seconds of starting this one.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate the configuration and print a one-line summary; exit 0 if valid, 1 if not
    /// (like `nginx -t`).
    Check {
        /// Print the configuration that would run instead, as TOML: every key, defaults
        /// filled in, environment overrides applied, secrets masked (like `nginx -T`).
        #[arg(long)]
        print: bool,
    },
    /// Validate the configuration file, send SIGHUP to the running Rampart (its pid file, or
    /// `--pid`) and report whether it applied the file; exit 0 if it did, 1 if not (like
    /// `nginx -s reload`, but it waits for the outcome).
    Reload {
        /// The process to reload, instead of the pid file's (systemd: `--pid $MAINPID`).
        #[arg(long)]
        pid: Option<i32>,
    },
    /// Start Rampart with a built-in demo config and two sample upstreams on loopback, and
    /// print curl commands to try. Needs nothing else installed.
    Demo,
}
