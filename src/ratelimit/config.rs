//! `[ratelimit]`: the policies as written in the file (rates, bursts, keys, routes), parsed
//! into their types while the file is read, and the checks that span fields.
//!
//! Invariant: `burst * period` stays below 2^52 microseconds, so the Redis script's doubles
//! are exact.

use std::collections::BTreeMap;

use http::HeaderName;
use serde::{Deserialize, Deserializer, Serialize};

use crate::types::{serialize_display, Invalid, Name};

/// Largest `burst * period_in_microseconds`: Redis runs Lua on doubles, exact below 2^53.
const MAX_CAPACITY: u64 = 1 << 52;

/// `[ratelimit]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// What a request gets when the shared store (Redis) fails.
    pub on_store_error: OnStoreError,
    /// Also send `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    pub legacy_headers: bool,
    /// Buckets per policy in the in-process store (fixed: memory does not grow with clients).
    pub memory_slots: usize,
    /// Named policies; a request must pass every one that applies to its route.
    pub policies: BTreeMap<Name, PolicyConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            on_store_error: OnStoreError::Local,
            legacy_headers: true,
            memory_slots: 65536,
            policies: BTreeMap::new(),
        }
    }
}

/// `on_store_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Decide on this replica's in-process buckets until Redis answers again.
    Local,
    /// Let requests through unlimited.
    Allow,
    /// Answer 503.
    Deny,
}

/// `[ratelimit.policies.<name>]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `"100/60s"`, `"10/s"`, `"1000/h"`: tokens per period.
    pub rate: Rate,
    /// Bucket size (requests allowed at once); default: the rate's count.
    #[serde(default)]
    pub burst: Option<u64>,
    /// Whose bucket: `"ip"` (default), `"header:X-Api-Key"`, `"route"`.
    #[serde(default)]
    pub key: Key,
    /// Route names it applies to; empty: every route.
    #[serde(default)]
    pub routes: Vec<Name>,
    /// Count and report, never reject.
    #[serde(default)]
    pub report_only: bool,
    /// Tokens a replica may take from the shared bucket at once and spend locally (0: every
    /// request asks Redis). For high-rate policies only; see `ratelimit::lease`.
    #[serde(default)]
    pub lease: u64,
}

/// `count` tokens per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub period: std::time::Duration,
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let expected = || format!("a rate such as \"100/60s\" or \"10/s\", not \"{text}\"");
        let (count, per) = text.split_once('/').ok_or_else(expected)?;
        let count: u64 = count.trim().parse().map_err(|_| expected())?;
        let per = per.trim();
        let period = if per.starts_with(|c: char| c.is_ascii_digit()) {
            humantime::parse_duration(per)
        } else {
            humantime::parse_duration(&format!("1{per}"))
        }
        .map_err(|_| expected())?;
        if count == 0 || count > 1_000_000_000 {
            return Err(format!("a count from 1 to 1000000000, not {count}"));
        }
        if period < std::time::Duration::from_millis(1) || period.as_secs() > 86_400 * 366 {
            return Err("a period from 1ms to a year".into());
        }
        Ok(Self { count, period })
    }
}

/// `count/unit` for a period of one second, minute or hour (`"10/s"`), else `count/period`
/// as humantime writes it (`"100/1m 30s"`); both parse back.
impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.period.as_millis() {
            1_000 => Some("s"),
            60_000 => Some("m"),
            3_600_000 => Some("h"),
            _ => None,
        };
        match unit {
            Some(u) => write!(f, "{}/{u}", self.count),
            None => write!(
                f,
                "{}/{}",
                self.count,
                humantime::format_duration(self.period)
            ),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Ip => f.write_str("ip"),
            Key::Route => f.write_str("route"),
            Key::Header(name) => write!(f, "header:{name}"),
        }
    }
}

serialize_display!(Rate, Key);

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Whose bucket a request is charged to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Key {
    /// The client address (`ctx.client`: the peer, or behind a trusted proxy the right-most
    /// untrusted `X-Forwarded-For` entry).
    #[default]
    Ip,
    /// A request header's value (hashed, never stored in clear); requests without it are
    /// charged by client address instead.
    Header(HeaderName),
    /// One bucket for the whole route, whoever asks.
    Route,
}

impl std::str::FromStr for Key {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "ip" => Ok(Key::Ip),
            "route" => Ok(Key::Route),
            _ => match text.strip_prefix("header:") {
                Some(name) => HeaderName::from_bytes(name.trim().as_bytes())
                    .map(Key::Header)
                    .map_err(|_| format!("\"{name}\" is not a header name")),
                None => Err(format!(
                    "\"ip\", \"route\" or \"header:<Name>\", not \"{text}\""
                )),
            },
        }
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Config {
    pub(crate) fn validate(&self, route_names: &[&str]) -> Result<(), Invalid> {
        if self.memory_slots == 0 || self.memory_slots > 1 << 24 {
            return Err(Invalid::new("memory_slots", "a count from 1 to 16777216"));
        }
        for (name, p) in &self.policies {
            let at = format!("policies.{name}");
            if p.burst == Some(0) {
                return Err(Invalid::new(
                    format!("{at}.burst"),
                    "at least 1 (requests allowed at once)",
                ));
            }
            let burst = p.burst.unwrap_or(p.rate.count);
            let capacity = u128::from(burst) * p.rate.period.as_micros();
            if capacity > u128::from(MAX_CAPACITY) {
                return Err(Invalid::new(
                    format!("{at}.burst"),
                    "burst times the period (in microseconds) must stay below 2^52",
                ));
            }
            if p.lease == 1 || p.lease > burst / 4 || (p.lease > 0 && p.report_only) {
                return Err(Invalid::new(
                    format!("{at}.lease"),
                    format!(
                        "0 (off) or 2 to a quarter of the burst ({}) tokens, on a policy that \
                         is not report_only",
                        burst / 4
                    ),
                ));
            }
            for (i, route) in p.routes.iter().enumerate() {
                if !route_names.contains(&route.as_str()) {
                    return Err(Invalid::new(
                        format!("{at}.routes[{i}]"),
                        format!(
                            "unknown route \"{route}\"; expected one of: {}",
                            if route_names.is_empty() {
                                "(none defined)".to_string()
                            } else {
                                route_names.join(", ")
                            }
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        let r: Rate = "100/60s".parse().expect("rate");
        assert_eq!((r.count, r.period.as_secs()), (100, 60));
        let r: Rate = "10/s".parse().expect("rate");
        assert_eq!((r.count, r.period.as_secs()), (10, 1));
        let r: Rate = "5/m".parse().expect("rate");
        assert_eq!(r.period.as_secs(), 60);
        for bad in ["10", "0/s", "x/s", "10/parsec", "10/0s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    /// `lease`: off, or 2 tokens to a quarter of the burst, on an enforcing policy.
    #[test]
    fn leases_are_checked() {
        let config = |lease: u64, report_only: bool| Config {
            policies: [(
                Name::from_static("p"),
                PolicyConfig {
                    rate: "1000/s".parse().expect("rate"),
                    burst: Some(100),
                    key: Key::Ip,
                    routes: Vec::new(),
                    report_only,
                    lease,
                },
            )]
            .into_iter()
            .collect(),
            ..Config::default()
        };
        for ok in [0, 2, 25] {
            assert!(config(ok, false).validate(&[]).is_ok(), "lease {ok}");
        }
        for (lease, report_only) in [(1, false), (26, false), (10, true)] {
            let e = config(lease, report_only)
                .validate(&[])
                .expect_err("refused");
            assert_eq!(e.key, "policies.p.lease", "lease {lease}");
            assert!(
                e.message.contains("a quarter of the burst (25)"),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn keys_parse() {
        assert_eq!("ip".parse::<Key>(), Ok(Key::Ip));
        assert_eq!("route".parse::<Key>(), Ok(Key::Route));
        assert!(matches!(
            "header:X-Api-Key".parse::<Key>(),
            Ok(Key::Header(h)) if h == "x-api-key"
        ));
        assert!("header:bad name".parse::<Key>().is_err());
        assert!("client".parse::<Key>().is_err());
    }

    #[test]
    fn rates_and_keys_print_as_they_parse() {
        for (text, printed) in [
            ("100/60s", "100/m"),
            ("10/s", "10/s"),
            ("1000/h", "1000/h"),
            ("5/90s", "5/1m 30s"),
            ("3/250ms", "3/250ms"),
        ] {
            let rate: Rate = text.parse().expect("rate");
            assert_eq!(rate.to_string(), printed);
            assert_eq!(printed.parse::<Rate>(), Ok(rate));
        }
        for text in ["ip", "route", "header:x-api-key"] {
            assert_eq!(text.parse::<Key>().expect("key").to_string(), text);
        }
    }
}
