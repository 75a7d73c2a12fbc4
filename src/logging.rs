//! The binary's logger: `RUST_LOG` through env_logger, one line per record, access lines bare.
//!
//! Not a phase: `main` installs it once. One correction to Pingora's own records: when a client
//! closes its connection (or breaks it) while still sending the request head, Pingora logs
//! `Fail to proxy: Downstream ...` at ERROR from a place no `ProxyHttp` hook reaches. That is
//! a client going away, as `proxy::suppress_error_log` treats the ones it can reach: the record
//! is demoted to DEBUG here. Every other record passes unchanged.
//!
//! Invariant: only records of target `pingora_proxy` at ERROR whose error is the client's
//! (`Downstream`) are touched, and they are demoted, never dropped.

use std::io::Write;

use log::{Level, Log, Metadata, Record};

/// Install the logger: `RUST_LOG` as Rust users expect (default `info`). Access lines (target
/// [`crate::accesslog::TARGET`]) are printed bare, so a JSON access log is one JSON object per
/// line on stderr.
pub fn init() {
    let logger = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,redis=error"),
    )
    .format(|buf, record| {
        if record.target() == crate::accesslog::TARGET {
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
    .build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(ClientErrorsDemoted(logger))).is_ok() {
        log::set_max_level(max);
    }
}

/// env_logger with Pingora's client-disconnect errors demoted (see the module header).
struct ClientErrorsDemoted(env_logger::Logger);

/// Pingora's line for a request head that could not be read (`pingora_proxy`'s
/// `handle_new_request`): the error's source comes first in its text.
fn is_client_error(record: &Record<'_>) -> bool {
    record.level() == Level::Error
        && record.target() == "pingora_proxy"
        && record
            .args()
            .to_string()
            .starts_with("Fail to proxy: Downstream ")
}

impl Log for ClientErrorsDemoted {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !is_client_error(record) {
            self.0.log(record);
            return;
        }
        self.0.log(
            &Record::builder()
                .args(*record.args())
                .level(Level::Debug)
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.0.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_is_client_error(level: Level, target: &str, text: &str) -> bool {
        is_client_error(
            &Record::builder()
                .args(format_args!("{text}"))
                .level(level)
                .target(target)
                .build(),
        )
    }

    #[test]
    fn only_pingoras_downstream_errors_are_demoted() {
        let gone = "Fail to proxy: Downstream ConnectionClosed context: while reading request headers, bytes already read: 26, downstream session type: h1";
        assert!(record_is_client_error(Level::Error, "pingora_proxy", gone));
        assert!(!record_is_client_error(Level::Warn, "pingora_proxy", gone));
        assert!(!record_is_client_error(Level::Error, "rampart", gone));
        let upstream = "Fail to proxy: Upstream ConnectRefused context: Peer: addr: 127.0.0.1:1";
        assert!(!record_is_client_error(
            Level::Error,
            "pingora_proxy",
            upstream
        ));
    }
}
