//! `rampart`: parse the command line, set up logging, load the config, run.

use std::process::ExitCode;

use clap::Parser;
use rampart::app::Options;
use rampart::cli::{Cli, Command};
use rampart::signal::Reloaded;
use rampart::{app, config, demo, signal};

// mimalloc instead of glibc malloc: per-request allocations across worker threads made libc
// malloc/free about a fifth of the CPU profile; figures in BENCHMARKS.md.
#[global_allocator]
static GLOBAL: rampart::alloc::MiMalloc = rampart::alloc::MiMalloc;

fn main() -> ExitCode {
    rampart::alloc::init();
    let cli = Cli::parse();
    rampart::logging::init();

    match cli.command.unwrap_or(Command::Run { upgrade: false }) {
        Command::Check { print: false } => match config::load(&cli.config) {
            Ok(c) => {
                println!("{}: ok: {}", cli.config.display(), c.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { print: true } => match config::load(&cli.config) {
            Ok(c) => match c.effective_toml() {
                Ok(text) => {
                    eprintln!("{}: ok", cli.config.display());
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "{}: valid, but cannot be printed: {e}",
                        cli.config.display()
                    );
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { upgrade } => match config::load(&cli.config) {
            Ok(c) => {
                let options = Options {
                    config_path: Some(cli.config.clone()),
                    sighup: true,
                    upgrade,
                    pid_file: cli.pid_file.clone(),
                };
                start(&c, &options, Vec::new())
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Reload { pid } => {
            match signal::reload(&cli.config, cli.pid_file.as_deref(), pid) {
                Ok(Reloaded::Applied { pid, generation }) => {
                    println!(
                        "{}: reloaded by process {pid} (generation {generation})",
                        cli.config.display()
                    );
                    ExitCode::SUCCESS
                }
                Ok(Reloaded::Signalled { pid, why }) => {
                    println!("sent SIGHUP to process {pid}; outcome unknown: {why}; see its log");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rampart reload: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo => match demo::setup() {
            Ok((c, samples)) => {
                print!("{}", demo::instructions(&c));
                let options = Options {
                    sighup: true,
                    pid_file: cli.pid_file.clone(),
                    ..Options::default()
                };
                start(&c, &options, samples)
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn start(
    config: &config::Config,
    options: &Options,
    extra: Vec<Box<dyn pingora::services::ServiceWithDependents>>,
) -> ExitCode {
    match app::build_with(config, options, extra) {
        Ok(app) => {
            log::info!(
                "rampart {} starting{}: {}",
                env!("CARGO_PKG_VERSION"),
                if options.upgrade {
                    " (binary upgrade: listening sockets taken over)"
                } else {
                    ""
                },
                config.summary()
            );
            app.run_forever()
        }
        Err(e) => {
            eprintln!("rampart: {e}");
            ExitCode::FAILURE
        }
    }
}
