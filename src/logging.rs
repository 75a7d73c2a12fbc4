//! The binary's logger: `RUST_LOG` through env_logger, one line per record, access lines bare.
//!
//! Not a phase: `main` installs it once. Two corrections to Pingora's own records, logged
//! from places no `ProxyHttp` hook reaches:
//! - a client that closes (or breaks) its connection while still sending the request head, or
//!   while a cache hit is written to it, makes Pingora log `Fail to proxy: Downstream ...` or
//!   `Fail to serve cache: Downstream ...` at ERROR. That is a client going away, as
//!   `proxy::suppress_error_log` treats the ones it can reach: demoted to DEBUG (the request is
//!   still counted);
//! - pingora-cache's one-time WARN that no header compression dictionary is loaded (Rampart
//!   does not use one; nothing to act on): demoted to INFO.
//!
//! Invariant: only those records are touched, and they are demoted, never dropped; every other
//! record passes unchanged, so at `RUST_LOG=warn` the log shows what an operator must act on.

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
    if log::set_boxed_logger(Box::new(PingoraDemoted(logger))).is_ok() {
        log::set_max_level(max);
    }
}

/// env_logger with some of Pingora's records demoted (see the module header).
struct PingoraDemoted(env_logger::Logger);

/// The level a record is logged at: its own, or the lower one it is demoted to.
fn level_for(record: &Record<'_>) -> Level {
    // Pingora's lines for a request head that could not be read (`handle_new_request`) and a
    // cache hit that could not be written (`proxy_cache`): the error's source comes first.
    const CLIENT_GONE: [&str; 2] = [
        "Fail to proxy: Downstream ",
        "Fail to serve cache: Downstream ",
    ];
    const NO_DICTIONARY: &str = "no header compression dictionary loaded";
    let target = record.target();
    match record.level() {
        Level::Error if target == "pingora_proxy" || target.starts_with("pingora_proxy::") => {
            let text = record.args().to_string();
            if CLIENT_GONE.iter().any(|prefix| text.starts_with(prefix)) {
                return Level::Debug;
            }
        }
        Level::Warn
            if target == "pingora_cache::meta"
                && record.args().to_string().starts_with(NO_DICTIONARY) =>
        {
            return Level::Info;
        }
        _ => {}
    }
    record.level()
}

impl Log for PingoraDemoted {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        let level = level_for(record);
        if level == record.level() {
            self.0.log(record);
            return;
        }
        self.0.log(
            &Record::builder()
                .args(*record.args())
                .level(level)
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

    fn level(level: Level, target: &str, text: &str) -> Level {
        level_for(
            &Record::builder()
                .args(format_args!("{text}"))
                .level(level)
                .target(target)
                .build(),
        )
    }

    #[test]
    fn only_pingoras_client_errors_and_dictionary_notice_are_demoted() {
        use Level::*;
        let gone = "Fail to proxy: Downstream ConnectionClosed context: while reading request headers, bytes already read: 26, downstream session type: h1";
        assert_eq!(level(Error, "pingora_proxy", gone), Debug);
        assert_eq!(level(Warn, "pingora_proxy", gone), Warn);
        assert_eq!(level(Error, "rampart", gone), Error);
        assert_eq!(level(Error, "pingora_proxy_other", gone), Error);
        let upstream = "Fail to proxy: Upstream ConnectRefused context: Peer: addr: 127.0.0.1:1";
        assert_eq!(level(Error, "pingora_proxy", upstream), Error);
        // Seen in the soak: a client leaving while a cache hit is written to it.
        let hit_gone = "Fail to serve cache: Downstream WriteError context: while writing body cause: Broken pipe (os error 32), GET /cached/kpis.json, Host: 127.0.0.1:49115";
        assert_eq!(level(Error, "pingora_proxy::proxy_cache", hit_gone), Debug);
        let storage = "Fail to serve cache: Internal StorageError context: redis down";
        assert_eq!(level(Error, "pingora_proxy::proxy_cache", storage), Error);
        let dictionary = "no header compression dictionary loaded - use set_compression_dict_content() or set_compression_dict_path() to set one";
        assert_eq!(level(Warn, "pingora_cache::meta", dictionary), Info);
        assert_eq!(level(Warn, "pingora_cache::meta", "other"), Warn);
    }
}
