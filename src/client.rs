//! Who the client is: the address limits, logs and `X-Real-IP` are about.
//!
//! Phase: `request_filter` (computed once per request, kept in the context).
//!
//! Invariant: `X-Forwarded-For` and `X-Forwarded-Proto` are believed only when the TCP peer is
//! a configured trusted proxy; from anyone else they cannot change the client's identity.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::types::Cidr;

/// A set of networks (trusted proxies, who may read public metrics).
#[derive(Debug, Clone, Default)]
pub struct Cidrs {
    nets: Vec<IpNet>,
}

impl Cidrs {
    pub fn new(nets: &[Cidr]) -> Self {
        Self {
            nets: nets.iter().map(|c| c.0).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

/// The client as Rampart sees it.
#[derive(Debug, Clone)]
pub struct Client {
    /// The TCP peer (`None` only for non-IP transports).
    pub peer: Option<IpAddr>,
    /// The client's address: the peer, or when the peer is trusted, the right-most entry of
    /// `X-Forwarded-For` that is not itself a trusted proxy.
    pub ip: Option<IpAddr>,
    /// `https` when the connection to Rampart is TLS, or a trusted peer says so.
    pub scheme: &'static str,
}

impl Client {
    /// `forwarded`: the request's `X-Forwarded-For` and `X-Forwarded-Proto`, asked for only
    /// when the peer is a trusted proxy (two header lookups saved on every other request).
    pub fn identify<'h>(
        peer: Option<IpAddr>,
        forwarded: impl FnOnce() -> (Option<&'h [u8]>, Option<&'h [u8]>),
        tls: bool,
        trusted: &Cidrs,
    ) -> Self {
        let peer = peer.map(canonical);
        let via_trusted_proxy = peer.is_some_and(|p| trusted.contains(p));
        let mut ip = peer;
        let mut scheme = if tls { "https" } else { "http" };
        if via_trusted_proxy {
            let (forwarded_for, forwarded_proto) = forwarded();
            if let Some(xff) = forwarded_for.and_then(|v| std::str::from_utf8(v).ok()) {
                // Walk from the right: entries added by our own trusted proxies are skipped,
                // the first untrusted one is the client. Garbage stops the walk (keep what we
                // had) rather than letting a malformed entry pick the identity.
                for entry in xff.rsplit(',') {
                    match parse_entry(entry) {
                        Some(addr) => {
                            ip = Some(addr);
                            if !trusted.contains(addr) {
                                break;
                            }
                        }
                        None => break,
                    }
                }
            }
            match forwarded_proto.map(|v| v.eq_ignore_ascii_case(b"https")) {
                Some(true) => scheme = "https",
                Some(false) => scheme = "http",
                None => {}
            }
        }
        Self { peer, ip, scheme }
    }
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = e.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    None
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`, from dual-stack listeners) counts as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Append `ip` as `Display` writes it. IPv4 (nearly every client) digit by digit: the
/// formatting machinery cost about 1,200 instructions per address in callgrind, and a proxied
/// request writes two (`X-Forwarded-For`, `X-Real-IP`) beside its rate-limit key.
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(itoa::Buffer::new().format(octet));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// `ip` as text ([`push_ip`]).
pub fn ip_text(ip: IpAddr) -> String {
    let mut out = String::with_capacity(15);
    push_ip(&mut out, ip);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "192.168.100.255",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().expect("address");
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    fn trusted() -> Cidrs {
        let net = |t: &str| Cidr::try_from(t.to_string()).expect("net");
        Cidrs::new(&[net("10.0.0.0/8"), net("127.0.0.1")])
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[test]
    fn untrusted_peer_cannot_spoof() {
        let c = Client::identify(
            ip("203.0.113.9"),
            || (Some(b"1.1.1.1"), Some(b"https")),
            false,
            &trusted(),
        );
        assert_eq!(c.ip, ip("203.0.113.9"));
        assert_eq!(c.scheme, "http");
    }

    #[test]
    fn trusted_peer_right_most_untrusted() {
        let c = Client::identify(
            ip("10.0.0.2"),
            || (Some(b"6.6.6.6, 198.51.100.7, 10.0.0.9"), Some(b"https")),
            false,
            &trusted(),
        );
        assert_eq!(c.ip, ip("198.51.100.7"));
        assert_eq!(c.scheme, "https");
    }

    #[test]
    fn garbage_entry_stops() {
        let c = Client::identify(
            ip("10.0.0.2"),
            || (Some(b"6.6.6.6, nonsense"), None),
            false,
            &trusted(),
        );
        assert_eq!(c.ip, ip("10.0.0.2"));
    }
}
