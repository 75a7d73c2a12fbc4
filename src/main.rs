//! `rampart`: parse the command line, set up logging, load the config, run.

use std::process::ExitCode;

use clap::Parser;
use rampart::cli::{Cli, Command};
use rampart::{app, config, demo};

fn main() -> ExitCode {
    let cli = Cli::parse();
    rampart::logging::init();

    match cli.command.unwrap_or(Command::Run) {
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
        Command::Run => match config::load(&cli.config) {
            Ok(c) => start(&c, Vec::new()),
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Demo => match demo::setup() {
            Ok((c, samples)) => {
                print!("{}", demo::instructions(&c));
                start(&c, samples)
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
    extra: Vec<Box<dyn pingora::services::ServiceWithDependents>>,
) -> ExitCode {
    match app::build(config, extra) {
        Ok(app) => {
            log::info!(
                "rampart {} starting: {}",
                env!("CARGO_PKG_VERSION"),
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
