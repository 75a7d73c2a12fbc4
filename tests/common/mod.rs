//! Real servers for the integration tests: upstream HTTP servers on 127.0.0.1:0 that record
//! what they receive, a real `redis-server` on a free port (queried with the `redis` crate),
//! Rampart itself started through the library, and an HTTP/1.1 client over plain TCP whose
//! messages are parsed with `httparse`. Everything waits with deadlines, never forever, and
//! everything stays on loopback.

#![allow(dead_code)]

mod http;
mod process;
mod rampart_server;
mod redis_cluster;
mod redis_server;
mod tls;
mod upstream;

pub use self::http::*;
pub use self::process::*;
pub use self::rampart_server::*;
pub use self::redis_cluster::*;
pub use self::redis_server::*;
pub use self::tls::*;
pub use self::upstream::*;

use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long anything may take to become ready.
pub const READY: Duration = Duration::from_secs(20);

/// A loopback port nobody listens on right now, for a server a test starts.
///
/// Taken below Linux's ephemeral range (32768+), so outgoing connections (clients, pooled
/// upstream connections, Redis connections) can never be sitting on it, and never handed out
/// twice in one test process. Binding port 0 instead would pick from the ephemeral range and
/// race with those.
pub fn free_port() -> u16 {
    free_ports(&[0], 20000..32000)
}

/// A port `p` from `range` such that `p + o` is free for every offset `o` in `offsets` (all of
/// them reserved), e.g. a Redis Cluster node's port and its bus port (`p + 10000`).
pub fn free_ports(offsets: &[u16], range: std::ops::Range<u16>) -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static HANDED_OUT: Mutex<std::collections::BTreeSet<u16>> =
        Mutex::new(std::collections::BTreeSet::new());
    let state = std::collections::hash_map::RandomState::new();
    let mut handed = HANDED_OUT.lock().expect("port lock");
    let span = u64::from(range.end - range.start);
    for attempt in 0..2000u32 {
        let mut h = state.build_hasher();
        h.write_u32(attempt);
        h.write_u32(std::process::id());
        let port = range.start + (h.finish() % span) as u16;
        let ports: Vec<u16> = offsets.iter().map(|o| port + o).collect();
        if ports.iter().any(|p| handed.contains(p)) {
            continue;
        }
        if ports
            .iter()
            .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        {
            handed.extend(ports);
            return port;
        }
    }
    panic!("no free loopback ports in {range:?} (offsets {offsets:?})")
}

/// Poll `f` until it returns true or `READY` passes (metrics are recorded after the response
/// is sent, so a scrape right after a response may not include it yet).
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY;
    while !f() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
