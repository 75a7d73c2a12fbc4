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

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the proxy (the default). SIGTERM drains gracefully; SIGINT stops at once.
    Run,
    /// Validate the configuration and print a one-line summary; exit 0 if valid, 1 if not
    /// (like `nginx -t`).
    Check {
        /// Print the configuration that would run instead, as TOML: every key, defaults
        /// filled in, environment overrides applied, secrets masked (like `nginx -T`).
        #[arg(long)]
        print: bool,
    },
    /// Start Rampart with a built-in demo config and two sample upstreams on loopback, and
    /// print curl commands to try. Needs nothing else installed.
    Demo,
}
