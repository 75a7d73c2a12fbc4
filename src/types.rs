//! Config value types every section shares, each parsed once, when the file is read.
//!
//! A leaf: it imports nothing from the crate, so a feature can use these types (and be read
//! and unit-tested) without the root `config` module. Every type here is deserialized straight
//! from its text (`#[serde(try_from = "String")]`): a value that does not have its shape is a
//! located error while the file is parsed (`file:line:col: key: what was expected`), and a
//! value that exists has been checked. Nothing downstream parses these strings again.
//!
//! Each serializes back to the text it was parsed from (`rampart check --print`), so printed
//! output reads back as the same value.
//!
//! [`Invalid`] is what a section's own cross-field check returns: the key below the section
//! and why; `config` turns it into a located error.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `impl Serialize` as the type's `Display` text: for config values parsed from text, which
/// must print as text that parses back.
macro_rules! serialize_display {
    ($($t:ty),+ $(,)?) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )+};
}
pub(crate) use serialize_display;

/// A problem found by a section's own validation: the key path below its section and why.
#[derive(Debug)]
pub struct Invalid {
    pub key: String,
    pub message: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Prefix the key with the section it was found in (`routes[2]` + `upstream`).
    pub fn within(mut self, parent: &str) -> Self {
        self.key = if self.key.is_empty() {
            parent.to_string()
        } else if self.key.starts_with('[') {
            format!("{parent}{}", self.key)
        } else {
            format!("{parent}.{}", self.key)
        };
        self
    }
}

/// A duration written as text: `"250ms"`, `"5s"`, `"2m"`, `"1h 30m"` (humantime syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
}

/// As humantime writes it (`"5s"`, `"250ms"`, `"1h 30m"`), which parses back.
impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

serialize_display!(Duration, ListenAddr, Cidr, HeaderNameText, HeaderValueText);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Duration).map_err(|e| {
            serde::de::Error::custom(format!("a duration like \"5s\" or \"250ms\" ({e})"))
        })
    }
}

/// A size in bytes, written as a number of bytes or as text with a binary suffix, as nginx
/// writes them: `1048576`, `"512"`, `"8k"`, `"1m"`, `"1g"` (`kb`/`kib`, `mb`/`mib`, `gb`/`gib`
/// too, any case; every multiple is a power of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }
}

impl TryFrom<&str> for ByteSize {
    type Error = String;
    fn try_from(text: &str) -> Result<Self, String> {
        let bad = || format!("a size such as \"8k\", \"1m\" or a number of bytes, not \"{text}\"");
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, suffix) = t.split_at(split);
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let shift = match suffix.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            _ => return Err(bad()),
        };
        n.checked_mul(1 << shift).map(Self).ok_or_else(bad)
    }
}

/// Printed (`rampart check --print`) as its number of bytes, which reads back as the same size.
impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"8k\", \"1m\" or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size of zero or more bytes"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::try_from(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        match n {
            0 => f.write_str("0"),
            n if n % (1 << 30) == 0 => write!(f, "{}g", n >> 30),
            n if n % (1 << 20) == 0 => write!(f, "{}m", n >> 20),
            n if n % (1 << 10) == 0 => write!(f, "{}k", n >> 10),
            n => write!(f, "{n}"),
        }
    }
}

/// Declares a newtype over `String` that exists only once `check` accepted the text.
macro_rules! checked_text {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(text: String) -> Result<Self, String> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(&text).map(|()| Self(text))
            }
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// A value written in the code (a default), checked in debug builds and tests.
            pub fn from_static(text: &'static str) -> Self {
                let check: fn(&str) -> Result<(), String> = $check;
                debug_assert!(check(text).is_ok(), "{text}");
                Self(text.to_string())
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

checked_text!(
    /// The name of an upstream, route or policy: it appears in metrics labels and Redis keys,
    /// so 1 to 64 characters from `[A-Za-z0-9_-]`.
    Name,
    |name| {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok {
            Ok(())
        } else {
            Err("a name of 1 to 64 characters from [A-Za-z0-9_-]".into())
        }
    }
);

checked_text!(
    /// `host:port` of an upstream: a port from 1 to 65535 and a non-empty host (a name is
    /// resolved later, and again every `resolve_interval`).
    HostPort,
    |addr| {
        let bad = || format!("a \"host:port\" address such as \"backend:8000\", not \"{addr}\"");
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 || host.contains('/') || host.contains(' ') {
            return Err(bad());
        }
        Ok(())
    }
);

checked_text!(
    /// A URL path (or path prefix) as written in the file: starts with `/`.
    UrlPath,
    |path| {
        if path.starts_with('/') {
            Ok(())
        } else {
            Err(format!("a path starting with \"/\", not \"{path}\""))
        }
    }
);

/// An `IP:port` a listener binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ListenAddr(pub SocketAddr);

impl TryFrom<String> for ListenAddr {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse::<SocketAddr>()
            .map(Self)
            .map_err(|_| format!("an IP:port address such as \"0.0.0.0:8080\", not \"{text}\""))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A network: `10.0.0.0/8`, `::1/128`, or a bare address meaning that one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr(pub ipnet::IpNet);

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        if let Ok(net) = text.parse::<ipnet::IpNet>() {
            return Ok(Self(net));
        }
        text.parse::<IpAddr>()
            .map(|ip| Self(ipnet::IpNet::from(ip)))
            .map_err(|_| format!("a CIDR such as \"10.0.0.0/8\" or an address, not \"{text}\""))
    }
}

/// A header name, checked, kept both as `http` uses it (lower-cased) and as written (so a
/// list echoed to clients, such as CORS's, reads as the operator wrote it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct HeaderNameText {
    pub name: HeaderName,
    pub written: String,
}

impl TryFrom<String> for HeaderNameText {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match HeaderName::from_bytes(text.as_bytes()) {
            Ok(name) => Ok(Self {
                name,
                written: text,
            }),
            Err(_) => Err(format!("a header name, not \"{text}\"")),
        }
    }
}

impl fmt::Display for HeaderNameText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl HeaderNameText {
    /// A name written in the code (a default), checked in debug builds and tests.
    pub fn from_static(text: &'static str) -> Self {
        let name = HeaderName::from_bytes(text.as_bytes());
        debug_assert!(name.is_ok(), "{text}");
        Self {
            name: name.unwrap_or(HeaderName::from_static("x-invalid")),
            written: text.to_string(),
        }
    }
}

// `HeaderName` has no order; by its text, so it can key the config's sorted tables.
impl Ord for HeaderNameText {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name.as_str().cmp(other.name.as_str())
    }
}

impl PartialOrd for HeaderNameText {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A header value of visible ASCII (an empty one is allowed: some keys mean "off" by it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HeaderValueText(pub HeaderValue);

impl TryFrom<String> for HeaderValueText {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        HeaderValue::from_str(&text)
            .map(Self)
            .map_err(|_| "a header value of visible ASCII".to_string())
    }
}

/// Always visible ASCII (checked when parsed), so the text is exact.
impl fmt::Display for HeaderValueText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.0.as_bytes()))
    }
}

impl HeaderValueText {
    pub fn from_static(text: &'static str) -> Self {
        Self(HeaderValue::from_static(text))
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(Name::try_from("api-v1_2".to_string()).is_ok());
        assert!(Name::try_from(String::new()).is_err());
        assert!(Name::try_from("a b".to_string()).is_err());
        assert!(Name::try_from("x".repeat(65)).is_err());
    }

    #[test]
    fn addresses() {
        let ok = |a: &str| HostPort::try_from(a.to_string()).is_ok();
        assert!(ok("backend:8000"));
        assert!(ok("[::1]:80"));
        assert!(!ok("backend"));
        assert!(!ok("backend:0"));
        assert!(!ok(":80"));
        assert!(ListenAddr::try_from("0.0.0.0:8080".to_string()).is_ok());
        assert!(ListenAddr::try_from("localhost:8080".to_string()).is_err());
    }

    #[test]
    fn cidrs() {
        let net = |t: &str| Cidr::try_from(t.to_string()).map(|c| c.0.to_string());
        assert_eq!(net("10.0.0.0/8").as_deref(), Ok("10.0.0.0/8"));
        assert_eq!(net("127.0.0.1").as_deref(), Ok("127.0.0.1/32"));
        assert!(net("10.0.0.0/33").is_err());
    }

    /// Each type prints as text that parses back to the same value (`rampart check --print`).
    #[test]
    fn values_print_as_they_parse() {
        fn round_trip<T>(text: &str, printed: &str)
        where
            T: TryFrom<String, Error = String> + fmt::Display + PartialEq + fmt::Debug,
        {
            let value = T::try_from(text.to_string()).expect(text);
            assert_eq!(value.to_string(), printed);
            assert_eq!(T::try_from(printed.to_string()).expect(printed), value);
        }
        round_trip::<Name>("api-v1", "api-v1");
        round_trip::<HostPort>("backend:8000", "backend:8000");
        round_trip::<UrlPath>("/api/", "/api/");
        round_trip::<ListenAddr>("[::1]:8080", "[::1]:8080");
        round_trip::<Cidr>("10.0.0.0/8", "10.0.0.0/8");
        round_trip::<Cidr>("127.0.0.1", "127.0.0.1/32");
        round_trip::<HeaderNameText>("X-Api-Key", "X-Api-Key");
        round_trip::<HeaderValueText>("1; mode=block", "1; mode=block");
        for (text, printed) in [("90s", "1m 30s"), ("250ms", "250ms"), ("0s", "0s")] {
            let d: Duration = serde_json::from_value(serde_json::json!(text)).expect(text);
            assert_eq!(d.to_string(), printed);
            assert_eq!(
                serde_json::to_value(d).expect("ser"),
                serde_json::json!(printed)
            );
            let back: Duration = serde_json::from_value(serde_json::json!(printed)).expect("back");
            assert_eq!(back, d);
        }
    }

    #[test]
    fn byte_sizes() {
        let size = |t: &str| ByteSize::try_from(t).map(|b| b.0);
        assert_eq!(size("512"), Ok(512));
        assert_eq!(size("8k"), Ok(8192));
        assert_eq!(size("8 KiB"), Ok(8192));
        assert_eq!(size("1m"), Ok(1 << 20));
        assert_eq!(size("1MB"), Ok(1 << 20));
        assert_eq!(size("2g"), Ok(2 << 30));
        assert!(size("").is_err());
        assert!(size("k").is_err());
        assert!(size("1t").is_err());
        assert!(size("-1").is_err());
        assert!(size("99999999999999999g").is_err());
        assert_eq!(ByteSize::mib(1).to_string(), "1m");
        assert_eq!(ByteSize(1500).to_string(), "1500");
    }

    #[test]
    fn within_prefixes_keys() {
        assert_eq!(Invalid::new("a", "m").within("s").key, "s.a");
        assert_eq!(Invalid::new("[2]", "m").within("s").key, "s[2]");
        assert_eq!(Invalid::new("", "m").within("s").key, "s");
    }
}
