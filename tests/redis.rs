//! The shared Redis connection: calls are bounded by the store timeout, an outage is counted
//! and the connection comes back by itself when Redis does.

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
