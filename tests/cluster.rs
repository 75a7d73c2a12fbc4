//! Scale-out on a real Redis Cluster (three primaries, one replica each): three `rampart run`
//! processes with `store.cluster = true` and one seed node share one exact rate limit and one
//! cache, purges reach every primary, and a primary's failover degrades as configured and
//! recovers by itself.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

const TRUSTED: &str = "trusted_proxies = [\"127.0.0.0/8\"]";
const KPIS: &str = "/api/v1/kpis";
const REPORTS: &str = "/api/v1/reports";
/// Any request, while a primary is down included, is answered within this.
const BOUND: Duration = Duration::from_secs(3);

/// Routes `kpis` and `reports` (both cached 60 s) and `site` (/), the cluster store, `rest`.
fn config(up: &Upstream, cluster: &RedisCluster, store_extra: &str, rest: &str) -> String {
    format!(
        "{}read_timeout = \"2s\"\n\
         [[routes]]\nname = \"kpis\"\nprefix = \"{KPIS}\"\nupstream = \"u\"\ncache = \"c\"\n\
         [[routes]]\nname = \"reports\"\nprefix = \"{REPORTS}\"\nupstream = \"u\"\ncache = \"c\"\n\
         [[routes]]\nname = \"site\"\nprefix = \"/\"\nupstream = \"u\"\n\
         [store]\nredis_url = \"{}\"\ncluster = true\ntimeout = \"300ms\"\nhealth_interval = \"200ms\"\n{store_extra}\
         [cache.policies.c]\nttl = \"60s\"\n{rest}",
        upstream_toml("u", &[&up.addr]),
        cluster.seed_url(),
    )
}

/// An origin whose bodies name the path and how many requests it has seen.
fn origin() -> Upstream {
    let n = Arc::new(AtomicUsize::new(0));
    Upstream::start(move |req| {
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::json(format!(r#"{{"n":{i},"path":"{}"}}"#, req.target))
    })
}

fn three(config: &str) -> Vec<Process> {
    (0..3)
        .map(|_| Process::spawn(config, TRUSTED, None, &[]))
        .collect()
}

fn bucket_key(ip: &str, policy: &str) -> String {
    format!("rampart:rl:{{ip:{ip}}}:{policy}")
}

/// A client address whose bucket of `policy` lives on primary `port`; `tag` keeps addresses
/// of different calls apart.
fn ip_on(cluster: &RedisCluster, port: u16, policy: &str, tag: u8) -> String {
    (0..=255u8)
        .map(|i| format!("10.{tag}.{}.{i}", port % 250))
        .find(|ip| cluster.master_of_key(&bucket_key(ip, policy)) == port)
        .unwrap_or_else(|| panic!("no address hashes to the primary on {port}"))
}

fn purge(p: &Process, body: &str) -> Response {
    request(
        p.admin,
        "POST",
        "/cache/purge",
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    )
}

fn x_cache(resp: &Response) -> &str {
    resp.header("x-cache").unwrap_or("(none)")
}

#[test]
fn one_limit_is_exact_across_three_processes_and_every_primary() {
    let cluster = RedisCluster::start();
    let up = Upstream::named("ok");
    let procs = three(&config(
        &up,
        &cluster,
        "",
        "[ratelimit.policies.shared]\nrate = \"1/h\"\nburst = 10\n",
    ));
    let addrs: Vec<SocketAddr> = procs.iter().map(|p| p.addr).collect();
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "{:?}", cluster.topology());
    // One client per primary, so every node's script serialises a burst from three processes.
    for (i, &port) in masters.iter().enumerate() {
        let ip = ip_on(&cluster, port, "shared", 1);
        let statuses = burst(&addrs, "/x", &ip, 36);
        assert_eq!(
            count(&statuses, 200),
            10,
            "client {ip} (primary {port}), 36 requests over 3 processes: {statuses:?}"
        );
        assert_eq!(count(&statuses, 429), 26, "{statuses:?}");
        let key = bucket_key(&ip, "shared");
        assert_eq!(
            cluster.node_cmd::<i64>(port, &["EXISTS", &key]),
            1,
            "{key} lives on its primary {port}"
        );
        assert!(cluster.cmd::<i64>(&["PTTL", &key]) > 0, "{key} has a TTL");
        // Every process refuses the next one itself: the limit is shared, not per process.
        for addr in &addrs {
            assert_eq!(get_as(*addr, "/x", &ip).status, 429, "client {i}");
        }
    }
}

#[test]
fn cache_entries_are_shared_and_purges_reach_every_primary() {
    // With a password on every node: `store.redis_password` applies to the whole cluster.
    let cluster = RedisCluster::start_with(3, Some("cluster-secret"));
    let up = origin();
    let procs = three(&config(
        &up,
        &cluster,
        "redis_password = \"cluster-secret\"\n",
        "",
    ));
    let urls: Vec<String> = (0..24)
        .flat_map(|i| [format!("{KPIS}?q={i}"), format!("{REPORTS}?q={i}")])
        .collect();
    // Each URL is filled through one process and then a hit on the other two.
    for (i, url) in urls.iter().enumerate() {
        let first = get(procs[i % 3].addr, url);
        assert_eq!((first.status, x_cache(&first)), (200, "MISS"), "{url}");
        for other in 1..3 {
            let resp = get(procs[(i + other) % 3].addr, url);
            assert_eq!(
                x_cache(&resp),
                "HIT",
                "{url} through process {}",
                (i + other) % 3
            );
            assert_eq!(resp.body, first.body, "{url}");
        }
    }
    assert_eq!(up.count(), urls.len(), "one upstream fetch per URL");

    let entries = cluster.keys("rampart:cache:*");
    assert_eq!(entries.len(), urls.len(), "{entries:?}");
    let holders: BTreeSet<u16> = entries.values().copied().collect();
    assert_eq!(
        holders.len(),
        3,
        "entries spread over every primary: {entries:?}"
    );

    // A URL purge goes to its key's node.
    let resp = purge(
        &procs[0],
        &format!(r#"{{"url": "http://rampart.test{KPIS}?q=0"}}"#),
    );
    assert_eq!(
        (resp.status, resp.json()["purged"].as_u64()),
        (200, Some(1)),
        "{}",
        resp.text()
    );
    // procs[1]'s near tier learns of it at its next epoch poll (100 ms).
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(x_cache(&get(procs[1].addr, &format!("{KPIS}?q=0"))), "MISS");

    // A route purge through one process removes that route's entries on every primary, and
    // only those.
    let resp = purge(&procs[1], r#"{"route": "kpis"}"#);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["purged"], 24, "{}", resp.text());
    // The other processes' near tiers learn of it at their next epoch poll (100 ms).
    std::thread::sleep(std::time::Duration::from_millis(300));
    let left = cluster.keys("rampart:cache:*");
    assert!(
        left.keys()
            .all(|k| k.starts_with("rampart:cache:{reports:")),
        "{left:?}"
    );
    assert_eq!(left.len(), 24, "{left:?}");
    for (i, p) in procs.iter().enumerate() {
        assert_eq!(
            x_cache(&get(p.addr, &format!("{KPIS}?q={}", 10 + i))),
            "MISS"
        );
        assert_eq!(
            x_cache(&get(p.addr, &format!("{REPORTS}?q={}", 10 + i))),
            "HIT"
        );
    }

    // `all` through another process: nothing under the prefix is left on any primary.
    let before = cluster.keys("rampart:cache:*").len();
    let resp = purge(&procs[2], r#"{"all": true}"#);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json()["purged"].as_u64(),
        Some(before as u64),
        "{}",
        resp.text()
    );
    assert_eq!(cluster.keys("rampart:cache:*").len(), 0);
    for (i, p) in procs.iter().enumerate() {
        assert_eq!(
            x_cache(&get(p.addr, &format!("{REPORTS}?q={}", 20 + i))),
            "MISS"
        );
    }
}

#[test]
fn failover_of_a_primary_degrades_as_configured_and_recovers() {
    failover(false);
}

/// The primary Rampart was given as its seed: redis-rs alone would never reconnect.
#[test]
fn failover_of_the_seed_primary_degrades_as_configured_and_recovers() {
    failover(true);
}

/// Kill a primary (the seed, or another) by pid while three processes serve traffic: every
/// request is still answered within [`BOUND`], limits fall back to each process's own buckets,
/// the victim's cache entries come from the upstream; once the replica is promoted, limits and
/// cache are shared and exact again, and each process logged the outage once.
fn failover(victim_is_seed: bool) {
    let mut cluster = RedisCluster::start();
    let up = origin();
    let logs = TempDir::new("cluster-logs");
    let body = config(
        &up,
        &cluster,
        "",
        "[ratelimit]\non_store_error = \"local\"\n\
         [ratelimit.policies.shared]\nrate = \"1/h\"\nburst = 5\nroutes = [\"site\"]\n",
    );
    let log_files: Vec<_> = (0..3)
        .map(|i| logs.path().join(format!("{i}.log")))
        .collect();
    let procs: Vec<Process> = log_files
        .iter()
        .map(|log| Process::spawn(&body, TRUSTED, Some(log), &[]))
        .collect();
    let addrs: Vec<SocketAddr> = procs.iter().map(|p| p.addr).collect();
    let victim = *cluster
        .masters()
        .iter()
        .find(|&&p| (p == cluster.seed_port()) == victim_is_seed)
        .expect("a primary to kill");
    let replica = cluster.replica_of(victim);

    let ip = ip_on(&cluster, victim, "shared", 1);
    assert_eq!(
        count(&burst(&addrs, "/x", &ip, 15), 200),
        5,
        "shared before"
    );
    let urls: Vec<String> = (0..12).map(|i| format!("{KPIS}?f={i}")).collect();
    for url in &urls {
        assert_eq!(x_cache(&get(addrs[0], url)), "MISS");
    }
    let on_victim = cluster
        .keys("rampart:cache:*")
        .values()
        .filter(|&&p| p == victim)
        .count();
    assert!(on_victim > 0, "some entries live on the victim");

    cluster.kill(victim);
    // A purge cannot reach the victim's keys now: it fails, never a partial success.
    let resp = purge(&procs[1], r#"{"all": true}"#);
    assert_eq!(resp.status, 503, "{}", resp.text());
    // Until the replica has taken over: every request is answered, within the bound; limits
    // come from each process's local buckets; entries the victim held are fetched from the
    // upstream.
    let fetched = up.count();
    let during = ip_on(&cluster, victim, "shared", 2);
    let mut admitted = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    for round in 0.. {
        for addr in &addrs {
            let started = Instant::now();
            let status = get_as(*addr, "/x", &during).status;
            assert!(matches!(status, 200 | 429), "{status}");
            assert!(started.elapsed() < BOUND, "took {:?}", started.elapsed());
            admitted += usize::from(status == 200);
        }
        for (i, url) in urls.iter().enumerate() {
            let started = Instant::now();
            let resp = get(addrs[i % 3], url);
            assert_eq!(resp.status, 200, "round {round} {url}: {}", resp.text());
            assert!(
                started.elapsed() < BOUND,
                "{url} took {:?}",
                started.elapsed()
            );
        }
        if round >= 2 && cluster.promoted(replica) {
            break;
        }
        assert!(Instant::now() < deadline, "the replica was never promoted");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Each process's own bucket (5) while it falls back, plus the shared one (5) for those
    // that saw the promoted replica before the loop did.
    assert!(
        admitted <= 3 * 5 + 5,
        "limits held during the failover: {admitted}"
    );
    assert!(
        up.count() >= fetched + on_victim,
        "the victim's entries came from the upstream ({} -> {})",
        fetched,
        up.count()
    );
    let fallbacks: usize = procs
        .iter()
        .filter(|p| {
            p.admin_get("/metrics").text().contains(
                "rampart_ratelimit_decisions_total{outcome=\"fallback\",policy=\"shared\"}",
            )
        })
        .count();
    assert!(
        fallbacks > 0,
        "the limiter fell back locally during the failover"
    );

    // Shared limiting resumes by itself: a fresh client's bucket appears on the promoted node.
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in 0.. {
        let ip = ip_on(&cluster, replica, "shared", 3 + (n % 200) as u8);
        let _ = get_as(addrs[n % 3], "/x", &ip);
        if cluster
            .try_node_cmd::<i64>(replica, &["EXISTS", &bucket_key(&ip, "shared")])
            .is_ok_and(|e| e == 1)
        {
            break;
        }
        assert!(Instant::now() < deadline, "shared limiting never resumed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Exact again, on the promoted node, across the three processes (once each has seen
    // every primary answer).
    for p in &procs {
        eventually("every process sees the store up", || {
            p.admin_get("/metrics")
                .text()
                .contains("rampart_store_up{backend=\"redis\"} 1")
        });
    }
    let after = ip_on(&cluster, replica, "shared", 250);
    let statuses = burst(&addrs, "/x", &after, 15);
    assert_eq!(
        count(&statuses, 200),
        5,
        "shared after the failover: {statuses:?}"
    );
    // And caching: a fresh URL filled through one process is a hit on the others.
    let url = format!("{KPIS}?after=1");
    assert_eq!(x_cache(&get(addrs[0], &url)), "MISS");
    eventually("cache shared again", || {
        x_cache(&get(addrs[1], &url)) == "HIT" && x_cache(&get(addrs[2], &url)) == "HIT"
    });
    // And a purge reaches every primary again, the promoted one included.
    let resp = purge(&procs[1], r#"{"all": true}"#);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp.json()["purged"].as_u64() > Some(0), "{}", resp.text());
    assert_eq!(cluster.keys("rampart:cache:*").len(), 0);
    drop(procs);
    for log in &log_files {
        let text = std::fs::read_to_string(log).expect("log");
        let lines = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
        assert_eq!(lines("redis unavailable"), 1, "one outage: {text}");
        assert_eq!(lines("redis answers again"), 1, "one recovery: {text}");
    }
}
