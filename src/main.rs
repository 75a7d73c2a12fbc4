//! `rampart`: parse the command line, set up logging, load the config, run.

use std::process::ExitCode;

use clap::Parser;
use rampart::cli::{Cli, Command};
use rampart::{app, config, demo};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();

    match cli.command.unwrap_or(Command::Run) {
        Command::Check => match config::load(&cli.config) {
            Ok(c) => {
                println!("{}: ok: {}", cli.config.display(), c.summary());
                ExitCode::SUCCESS
            }
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

/// `RUST_LOG` as Rust users expect (default `info`). Access lines are printed bare, so a JSON
/// access log is one JSON object per line on stderr.
fn init_logging() {
    use std::io::Write;
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info,redis=error"))
        .format(|buf, record| {
            if record.target() == rampart::accesslog::TARGET {
                writeln!(buf, "{}", record.args())
            } else {
                writeln!(
                    buf,
                    "{} {:<5} {}: {}",
                    buf.timestamp_millis(),
                    record.level(),
                    record.target(),
                    record.args()
                )
            }
        })
        .init();
}
