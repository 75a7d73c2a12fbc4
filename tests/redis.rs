//! The shared Redis connection: calls are bounded by the store timeout, an outage is counted
//! and the connection comes back by itself when Redis does; limits and cache through a Redis
//! with a password and through TLS (a test CA, a client certificate), and a refused password
//! or certificate is one clear log line and the configured fallback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart::metrics::Metrics;
use rampart::redis::Redis as Store;

use crate::common::*;

fn store_for(redis: &Redis, timeout_ms: u64) -> (Arc<Store>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new(&Default::default()).expect("metrics"));
    let config = rampart::redis::Config {
        redis_url: Some(redis.url().try_into().expect("url")),
        timeout: rampart::types::Duration::millis(timeout_ms),
        ..Default::default()
    };
    let store = Store::from_config(&config, metrics.clone())
        .expect("valid url")
        .expect("configured");
    (store, metrics)
}

async fn ping(store: &Store) -> Result<String, rampart::redis::Error> {
    store
        .call("ping", |mut c| async move {
            redis::cmd("PING").query_async(&mut c).await
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_bounded_counted_and_recovered() {
    let mut redis = Redis::start();
    let port = redis.port;
    let (store, metrics) = store_for(&redis, 200);
    assert_eq!(ping(&store).await.expect("ping"), "PONG");
    assert_eq!(store.key("rl:x"), "rampart:rl:x");

    redis.kill();
    for _ in 0..5 {
        let started = Instant::now();
        assert!(ping(&store).await.is_err(), "redis is down");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "bounded by the timeout"
        );
    }
    assert!(store.is_down());
    let text = String::from_utf8(metrics.render()).expect("utf8");
    assert!(
        text.contains("rampart_store_up{backend=\"redis\"} 0"),
        "{text}"
    );
    assert!(text.contains("rampart_store_errors_total{backend=\"redis\",op=\"ping\"}"));

    let _redis = Redis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    while ping(&store).await.is_err() {
        assert!(Instant::now() < deadline, "the connection never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!store.is_down());
    let text = String::from_utf8(metrics.render()).expect("utf8");
    assert!(
        text.contains("rampart_store_up{backend=\"redis\"} 1"),
        "{text}"
    );
}

/// One slow answer falls back alone: a Redis that stalls through one call (frozen, as one
/// starved of CPU) fails that call at the deadline but starts no outage; stalled through
/// [`rampart::redis::TIMEOUTS_FOR_OUTAGE`] calls in a row, it is down until it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_answer_is_no_outage_but_a_stalled_redis_is() {
    let redis = Redis::start();
    let (store, metrics) = store_for(&redis, 150);
    assert_eq!(ping(&store).await.expect("ping"), "PONG");

    // Several times: which of the two equal deadlines (Rampart's, redis-rs's response
    // timeout) fires first varies from call to call, and either must count as a timeout.
    for round in 0..6 {
        redis.pause();
        let started = Instant::now();
        let slow = ping(&store).await;
        let waited = started.elapsed();
        redis.resume();
        assert!(
            matches!(slow, Err(rampart::redis::Error::Timeout(_))),
            "round {round}: {slow:?}"
        );
        assert!(waited < Duration::from_secs(1), "bounded: {waited:?}");
        assert!(
            !store.is_down(),
            "round {round}: one slow answer is no outage"
        );
        assert_eq!(ping(&store).await.expect("ping"), "PONG");
    }

    redis.pause();
    for _ in 0..rampart::redis::TIMEOUTS_FOR_OUTAGE {
        assert!(ping(&store).await.is_err(), "redis is frozen");
    }
    assert!(
        store.is_down(),
        "a Redis that stalls call after call is down"
    );
    let text = String::from_utf8(metrics.render()).expect("utf8");
    assert!(
        text.contains("rampart_store_up{backend=\"redis\"} 0"),
        "{text}"
    );
    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ping(&store).await.is_err() {
        assert!(Instant::now() < deadline, "it never answered again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!store.is_down());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_is_not_fatal() {
    let port = free_port();
    let config = rampart::redis::Config {
        redis_url: Some(format!("redis://127.0.0.1:{port}").try_into().expect("url")),
        timeout: rampart::types::Duration::millis(100),
        ..Default::default()
    };
    let metrics = Arc::new(Metrics::new(&Default::default()).expect("metrics"));
    let store = Store::from_config(&config, metrics)
        .expect("url")
        .expect("configured");
    assert!(ping(&store).await.is_err());
    let _redis = Redis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    while ping(&store).await.is_err() {
        assert!(Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With no traffic at all, the background PING notices an outage and the recovery.
#[test]
fn store_health_is_exported_without_traffic() {
    let mut redis = Redis::start();
    let port = redis.port;
    let r = Rampart::start(&format!(
        "[store]\nredis_url = \"{}\"\nhealth_interval = \"200ms\"\ntimeout = \"100ms\"\n",
        redis.url()
    ));
    let up = |v: u8| {
        let line = format!("rampart_store_up{{backend=\"redis\"}} {v}");
        r.admin_get("/metrics").text().contains(&line)
    };
    eventually("store up", || up(1));
    redis.kill();
    eventually("store down noticed", || up(0));
    let _redis = Redis::start_on(port);
    eventually("store back", || up(1));
}

/// Upstream `u` with a cached route `kpis` (/kpis) and a limited one, `site` (/): the
/// limit is `burst = 3` per client an hour. `store` is the `[store]` table's body.
fn store_body(up: &Upstream, store: &str) -> String {
    format!(
        "{}[[routes]]\nname = \"kpis\"\nprefix = \"/kpis\"\nupstream = \"u\"\ncache = \"c\"\n\
         [[routes]]\nname = \"site\"\nprefix = \"/\"\nupstream = \"u\"\n\
         [store]\ntimeout = \"500ms\"\nhealth_interval = \"200ms\"\n{store}\n\
         [cache.policies.c]\nttl = \"60s\"\n\
         [ratelimit.policies.p]\nrate = \"1/h\"\nburst = 3\nroutes = [\"site\"]\n",
        upstream_toml("u", &[&up.addr])
    )
}

fn json_origin() -> Upstream {
    Upstream::start(|_| Reply::json("{\"ok\":true}"))
}

/// Limits and cache work through `addr` (a Rampart on `store_body`) and land in `redis`.
fn limits_and_cache_are_shared(addr: std::net::SocketAddr, up: &Upstream, redis: &Redis) {
    let statuses: Vec<u16> = (0..4).map(|_| get(addr, "/x").status).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(
        redis.cmd::<i64>(&["EXISTS", "rampart:rl:{ip:127.0.0.1}:p"]),
        1,
        "the bucket is in Redis"
    );
    let before = up.count();
    let first = get(addr, "/kpis");
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(get(addr, "/kpis").header("x-cache"), Some("HIT"));
    assert_eq!(up.count(), before + 1);
    let (_, keys): (u64, Vec<String>) =
        redis.cmd(&["SCAN", "0", "MATCH", "rampart:cache:*", "COUNT", "1000"]);
    assert_eq!(keys.len(), 1, "the entry is in Redis: {keys:?}");
}

#[test]
fn password_protected_redis_serves_limits_and_cache() {
    let redis = Redis::start_options(RedisOptions {
        password: Some("s3cret-pw".into()),
        ..Default::default()
    });
    assert!(
        redis::Client::open(redis.url())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("GET").arg("k").query::<Option<String>>(&mut c))
            .is_err(),
        "the server refuses clients without the password"
    );
    let up = json_origin();
    // From the file...
    let r = Rampart::start(&store_body(
        &up,
        &format!(
            "redis_url = \"{}\"\nredis_password = \"s3cret-pw\"\n",
            redis.url()
        ),
    ));
    limits_and_cache_are_shared(r.addr, &up, &redis);
    drop(r);
    redis.cmd::<()>(&["FLUSHALL"]);
    // ...and from the environment, in the real binary.
    let p = Process::spawn(
        &store_body(&up, &format!("redis_url = \"{}\"\n", redis.url())),
        "",
        None,
        &[("RAMPART_REDIS_PASSWORD", "s3cret-pw")],
    );
    limits_and_cache_are_shared(p.addr, &up, &redis);
}

#[test]
fn a_wrong_or_missing_password_is_logged_once_and_falls_back() {
    let redis = Redis::start_options(RedisOptions {
        password: Some("right-pw".into()),
        ..Default::default()
    });
    let up = json_origin();
    let logs = TempDir::new("redis-auth-logs");
    for (case, password) in [("wrong", Some("wrong-pw")), ("missing", None)] {
        let log = logs.path().join(format!("{case}.log"));
        let store = match password {
            Some(pw) => format!(
                "redis_url = \"{}\"\nredis_password = \"{pw}\"\n",
                redis.url()
            ),
            None => format!("redis_url = \"{}\"\n", redis.url()),
        };
        let p = Process::spawn(&store_body(&up, &store), "", Some(&log), &[]);
        // on_store_error = "local" (the default): this process's own buckets limit.
        let statuses: Vec<u16> = (0..4)
            .map(|_| {
                let started = Instant::now();
                let status = get(p.addr, "/x").status;
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "{case}: bounded"
                );
                status
            })
            .collect();
        assert_eq!(statuses, [200, 200, 200, 429], "{case}");
        // The cache is skipped: every request goes upstream.
        let before = up.count();
        for _ in 0..3 {
            assert_eq!(get(p.addr, "/kpis").status, 200, "{case}");
        }
        assert_eq!(up.count(), before + 3, "{case}: no cache without the store");
        eventually("store_up 0", || {
            p.admin_get("/metrics")
                .text()
                .contains("rampart_store_up{backend=\"redis\"} 0")
        });
        drop(p);
        let text = std::fs::read_to_string(&log).expect("log");
        let outage: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("redis unavailable"))
            .collect();
        assert_eq!(outage.len(), 1, "{case}: logged once: {text}");
        assert!(
            outage[0].contains("authentication")
                && outage[0].contains("store.redis_password / RAMPART_REDIS_PASSWORD"),
            "{case}: the log names the cause: {text}"
        );
        assert!(
            !text.contains("wrong-pw") && !text.contains("right-pw"),
            "{text}"
        );
        assert_eq!(redis.cmd::<i64>(&["DBSIZE"]), 0, "{case}: nothing written");
    }
}

/// Certificates for 127.0.0.1 from a test CA; Redis on a TLS port (and a plain one, for the
/// test's own look at the keys).
fn tls_redis(certs: &TestCerts, auth_clients: bool, password: Option<&str>) -> Redis {
    Redis::start_options(RedisOptions {
        password: password.map(str::to_string),
        tls: Some(TlsServer::from(certs, auth_clients)),
    })
}

#[test]
fn tls_redis_serves_limits_and_cache() {
    let certs = TestCerts::generate();
    let redis = tls_redis(&certs, false, None);
    let up = json_origin();
    let r = Rampart::start(&store_body(
        &up,
        &format!(
            "redis_url = \"{}\"\ntls_ca_file = \"{}\"\n",
            redis.tls_url(),
            certs.ca.display()
        ),
    ));
    limits_and_cache_are_shared(r.addr, &up, &redis);
}

#[test]
fn tls_with_a_client_certificate_and_a_password() {
    let certs = TestCerts::generate();
    let redis = tls_redis(&certs, true, Some("tls-pw"));
    let up = json_origin();
    let store = |ca: &std::path::Path| {
        format!(
            "redis_url = \"{}\"\nredis_password = \"tls-pw\"\ntls_ca_file = \"{}\"\n\
             tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            redis.tls_url(),
            ca.display(),
            certs.client_cert.display(),
            certs.client_key.display()
        )
    };
    let r = Rampart::start(&store_body(&up, &store(&certs.ca)));
    limits_and_cache_are_shared(r.addr, &up, &redis);
    drop(r);

    // A CA that did not sign Redis's certificate: the handshake fails, logged once, and the
    // limiter falls back.
    let logs = TempDir::new("redis-tls-logs");
    let log = logs.path().join("unknown-ca.log");
    let p = Process::spawn(
        &store_body(&up, &store(&certs.other_ca)),
        "",
        Some(&log),
        &[],
    );
    let statuses: Vec<u16> = (0..4).map(|_| get(p.addr, "/y").status).collect();
    assert_eq!(statuses, [200, 200, 200, 429], "local buckets");
    drop(p);
    let text = std::fs::read_to_string(&log).expect("log");
    let outage: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("redis unavailable"))
        .collect();
    assert_eq!(outage.len(), 1, "{text}");
    assert!(outage[0].contains("certificate"), "names the cause: {text}");
}

#[test]
fn tls_files_are_checked_before_listening() {
    let certs = TestCerts::generate();
    let not_pem = certs.dir().join("not-pem.txt");
    std::fs::write(&not_pem, "hello").expect("write");
    let missing = certs.dir().join("missing.pem");
    for (extra, expect) in [
        (
            format!("tls_ca_file = \"{}\"\n", missing.display()),
            "store.tls_ca_file: cannot read",
        ),
        (
            format!("tls_ca_file = \"{}\"\n", not_pem.display()),
            "store.tls_ca_file: ",
        ),
        (
            format!(
                "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
                certs.client_cert.display(),
                certs.client_cert.display()
            ),
            "store.tls_key_file: ",
        ),
    ] {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\n\
             [[routes]]\nname = \"site\"\nprefix = \"/\"\nupstream = \"u\"\n\
             [upstreams.u]\naddrs = [\"127.0.0.1:9\"]\n\
             [store]\nredis_url = \"rediss://127.0.0.1:6380\"\n{extra}",
            free_port(),
            free_port()
        );
        let config = rampart::config::parse("t.toml", &text, &Default::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let err = match rampart::app::build(&config, Vec::new()) {
            Ok(_) => panic!("{extra}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.starts_with(expect), "{extra}: {err}");
    }
}
