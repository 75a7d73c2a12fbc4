//! The names a fresh-hit lookup needs (the URL's tag and the entry's name), remembered per
//! request target, so a repeated hit does not frame and hash its key again.
//!
//! Phase: `request_filter` ([`super::Cache::held_hit`], from the gate and `request_filter`). Framing the key and its two blake2b
//! hashes (`UrlKey::new`, `entry_name`) were about a tenth of a cache hit's instructions under
//! callgrind. The names are a pure function of route, host, path and query when the route's
//! policy frames no request headers (`vary` empty), so a remembered pair is always the pair the
//! key would give. The table lives in `Cache`, which a reload rebuilds, so a changed policy
//! never reads names made under the old one.
//!
//! Invariants: only requests of a policy without `vary` headers are remembered; at most
//! [`MAX_TARGETS`] targets of at most [`MAX_TARGET_BYTES`] each are held; a full table is
//! emptied at once (a hot target costs one key again to come back, no LRU is kept per hit).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pingora::cache::CacheKey;
use pingora::http::RequestHeader;

use super::key::{entry_name, frame, raw_host};
use super::policy::Policy;

/// Request targets remembered (about 3 MiB at most, with [`MAX_TARGET_BYTES`]).
const MAX_TARGETS: usize = 4096;
/// A longer target (a long query, say) is looked up the long way every time.
const MAX_TARGET_BYTES: usize = 512;

/// Where a request's entry is: its URL's group and its name within it.
#[derive(Debug, PartialEq)]
pub(super) struct EntryNames {
    pub(super) tag: String,
    pub(super) entry: String,
}

impl EntryNames {
    /// The names `key` gives.
    pub(super) fn of(key: &CacheKey) -> Self {
        Self {
            tag: key.user_tag.clone(),
            entry: entry_name(key),
        }
    }
}

/// Request target -> the names of its entry, for one configuration generation.
#[derive(Default)]
pub(super) struct Names {
    table: Mutex<HashMap<Vec<u8>, Arc<EntryNames>>>,
}

impl Names {
    /// The names remembered for `req` on `route` under `policy`, if any.
    pub(super) fn get(
        &self,
        route: &str,
        req: &RequestHeader,
        policy: &Policy,
    ) -> Option<Arc<EntryNames>> {
        let target = target(route, req, policy)?;
        self.table.lock().ok()?.get(&target).cloned()
    }

    /// Remember `names` for `req` on `route` under `policy` (nothing if its keys frame headers).
    pub(super) fn remember(
        &self,
        route: &str,
        req: &RequestHeader,
        policy: &Policy,
        names: Arc<EntryNames>,
    ) {
        let Some(target) = target(route, req, policy) else {
            return;
        };
        let Ok(mut table) = self.table.lock() else {
            return;
        };
        if table.len() >= MAX_TARGETS {
            table.clear();
        }
        table.insert(target, names);
    }
}

/// Route, host (as sent), path and query, length-prefixed like a key's parts; `None` when
/// `policy` frames request headers into its keys, or when longer than [`MAX_TARGET_BYTES`].
fn target(route: &str, req: &RequestHeader, policy: &Policy) -> Option<Vec<u8>> {
    if !policy.vary.is_empty() {
        return None;
    }
    let host = raw_host(req);
    let path = req.uri.path().as_bytes();
    let query = req.uri.query().unwrap_or("").as_bytes();
    let len = route.len() + host.len() + path.len() + query.len();
    if len > MAX_TARGET_BYTES {
        return None;
    }
    let mut out = Vec::with_capacity(len + 24);
    for part in [route.as_bytes(), host, path, query] {
        frame(&mut out, part);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::PolicyConfig;
    use crate::types::HeaderNameText;

    fn plain() -> Policy {
        Policy::new("p", &PolicyConfig::default())
    }

    fn req(target: &str, host: &str) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).expect("request");
        r.insert_header("host", host).expect("host");
        r
    }

    fn names(tag: &str) -> Arc<EntryNames> {
        Arc::new(EntryNames {
            tag: tag.into(),
            entry: "e".into(),
        })
    }

    #[test]
    fn names_are_found_for_the_same_route_host_path_and_query_only() {
        let table = Names::default();
        table.remember("r", &req("/a?x=1", "h"), &plain(), names("t1"));
        assert_eq!(
            table.get("r", &req("/a?x=1", "h"), &plain()),
            Some(names("t1"))
        );
        for (route, target, host) in [
            ("r2", "/a?x=1", "h"),
            ("r", "/a?x=2", "h"),
            ("r", "/a", "h"),
            ("r", "/a?x=1", "h2"),
            ("r", "/b?x=1", "h"),
        ] {
            assert_eq!(
                table.get(route, &req(target, host), &plain()),
                None,
                "{route} {host}{target}"
            );
        }
        // Parts are framed: moving a byte from one part to the next is another target.
        table.remember("r", &req("/ab", "h"), &plain(), names("t2"));
        assert_eq!(
            table.get("r", &req("/ab", "h"), &plain()),
            Some(names("t2"))
        );
        assert_eq!(table.get("r", &req("/b", "ha"), &plain()), None);
    }

    #[test]
    fn the_table_stays_bounded() {
        let table = Names::default();
        for i in 0..=MAX_TARGETS {
            table.remember("r", &req(&format!("/{i}"), "h"), &plain(), names("t"));
        }
        let held = table.table.lock().map(|t| t.len()).unwrap_or(usize::MAX);
        assert!(held <= MAX_TARGETS, "{held}");
        let long = format!("/{}", "x".repeat(MAX_TARGET_BYTES));
        table.remember("r", &req(&long, "h"), &plain(), names("t"));
        assert_eq!(table.get("r", &req(&long, "h"), &plain()), None);
    }

    /// A policy that frames request headers into its keys: nothing is remembered for it.
    #[test]
    fn a_policy_with_vary_headers_is_never_remembered() {
        let config = PolicyConfig {
            vary: vec![HeaderNameText::from_static("x-tenant")],
            ..PolicyConfig::default()
        };
        let varying = Policy::new("p", &config);
        let table = Names::default();
        table.remember("r", &req("/a", "h"), &varying, names("t"));
        assert_eq!(table.get("r", &req("/a", "h"), &varying), None);
        assert_eq!(table.get("r", &req("/a", "h"), &plain()), None);
    }
}
