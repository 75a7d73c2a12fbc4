//! Observability: exact Prometheus figures after known traffic, bounded cardinality,
//! `X-Process-Time`, `Server-Timing`, the admin/public split and the JSON access log.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

fn dashboard(up: &Upstream) -> String {
    format!(
        "{}[[routes]]\nname = \"api\"\nprefix = \"/api/\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&up.addr])
    )
}

fn scrape(r: &Rampart) -> String {
    let resp = r.admin_get("/metrics");
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    resp.text()
}

#[test]
fn counters_and_histograms_match_known_traffic() {
    let up = Upstream::start(|req| match req.target.as_str() {
        "/api/fail" => Reply::ok("no").status(500),
        _ => Reply::json("{}"),
    });
    let r = Rampart::start(&dashboard(&up));
    for _ in 0..3 {
        assert_eq!(r.get("/api/x").status, 200);
    }
    for _ in 0..2 {
        assert_eq!(r.get("/nowhere").status, 404);
    }
    assert_eq!(r.request("POST", "/api/fail", &[], Some(b"{}")).status, 500);
    r.request("BREW", "/api/x", &[], None);

    let expect = [
        (
            "http_requests_total{method=\"GET\",route=\"api\",status=\"200\"}",
            3.0,
        ),
        (
            "http_requests_total{method=\"GET\",route=\"(unmatched)\",status=\"404\"}",
            2.0,
        ),
        (
            "http_requests_total{method=\"POST\",route=\"api\",status=\"500\"}",
            1.0,
        ),
        (
            "http_requests_total{method=\"OTHER\",route=\"api\",status=\"200\"}",
            1.0,
        ),
        (
            "http_request_duration_seconds_count{method=\"GET\",route=\"api\"}",
            3.0,
        ),
        (
            "http_request_duration_seconds_count{method=\"GET\",route=\"(unmatched)\"}",
            2.0,
        ),
        (
            "http_request_duration_seconds_count{method=\"POST\",route=\"api\"}",
            1.0,
        ),
        (
            "rampart_upstream_errors_total{kind=\"5xx\",upstream=\"u\"}",
            1.0,
        ),
        (
            "rampart_upstream_request_duration_seconds_count{upstream=\"u\"}",
            5.0,
        ),
        ("rampart_requests_in_flight", 0.0),
    ];
    eventually("every request counted", || {
        let text = scrape(&r);
        expect.iter().all(|(s, v)| sample(&text, s) == Some(*v))
    });
    let text = scrape(&r);
    assert!(text.contains(&format!(
        "rampart_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    assert_eq!(sample(&text, "rampart_config_load_success"), Some(1.0));
    // The +Inf bucket equals the count: every observation landed in a bucket.
    assert_eq!(
        sample(
            &text,
            "http_request_duration_seconds_bucket{method=\"GET\",route=\"api\",le=\"+Inf\"}"
        ),
        Some(3.0)
    );
}

#[test]
fn upstream_connect_failures_are_counted() {
    let dead = free_port();
    let r = Rampart::start(&format!(
        "[upstreams.gone]\naddrs = [\"127.0.0.1:{dead}\"]\nconnect_retries = 0\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"gone\"\n"
    ));
    assert_eq!(r.get("/").status, 502);
    eventually("connect error counted", || {
        sample(
            &scrape(&r),
            "rampart_upstream_errors_total{kind=\"connect\",upstream=\"gone\"}",
        ) == Some(1.0)
    });
}

#[test]
fn ten_thousand_distinct_paths_add_no_series() {
    let up = Upstream::named("ok");
    let r = Rampart::start(&dashboard(&up));
    let mut conn = KeepAlive::connect(r.addr);
    // Warm up every series the loop can touch.
    assert_eq!(conn.get("/warmup").status, 404);
    assert_eq!(conn.get("/api/warmup").status, 200);
    eventually("warm-up counted", || {
        sample(
            &scrape(&r),
            "http_requests_total{method=\"GET\",route=\"api\",status=\"200\"}",
        ) == Some(1.0)
    });
    let before = scrape(&r).lines().filter(|l| !l.starts_with('#')).count();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..10_000u32 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let path = if i % 2 == 0 {
            format!("/scan/{seed:x}?q={i}")
        } else {
            format!("/api/{seed:x}/{i}")
        };
        assert!(conn.get(&path).status < 500);
    }
    eventually("all 10,001 counted", || {
        sample(
            &scrape(&r),
            "http_requests_total{method=\"GET\",route=\"(unmatched)\",status=\"404\"}",
        ) == Some(5001.0)
    });
    let text = scrape(&r);
    let after = text.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(before, after, "no new series");
    assert!(!text.contains("/scan/"), "no raw path in any label");
}

#[test]
fn metrics_stay_off_the_public_listener_unless_configured() {
    let up = Upstream::named("upstream");
    let r = Rampart::start(&dashboard(&up));
    assert_eq!(
        r.get("/metrics").status,
        404,
        "no route, and no metrics either"
    );

    let open = Rampart::start(&format!(
        "{}[metrics]\npublic_path = \"/metrics\"\npublic_allow = [\"127.0.0.0/8\"]\n",
        dashboard(&up)
    ));
    let resp = open.get("/metrics");
    assert_eq!(resp.status, 200);
    assert!(resp.text().contains("# TYPE rampart_build_info gauge"));
    assert_eq!(resp.header("x-frame-options"), Some("SAMEORIGIN"));

    let closed = Rampart::start(&format!(
        "{}[metrics]\npublic_path = \"/metrics\"\npublic_allow = [\"10.0.0.0/8\"]\n",
        dashboard(&up)
    ));
    assert_eq!(closed.get("/metrics").status, 403);
    assert_eq!(up.count(), 0);
}

#[test]
fn exposition_format_is_valid() {
    let up = Upstream::named("ok");
    let r = Rampart::start(&dashboard(&up));
    r.get("/api/x");
    r.get("/nope");
    eventually("requests counted", || {
        scrape(&r).contains("route=\"(unmatched)\"")
    });
    let text = scrape(&r);
    // Our own structural check: every sample line belongs to a family with HELP and TYPE.
    let mut families = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(rest.split(' ').next().expect("name").to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().expect("name");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(*f)))
                .unwrap_or(name);
            assert!(families.contains(family), "sample without TYPE: {line}");
            let value = line.rsplit(' ').next().expect("value");
            assert!(value.parse::<f64>().is_ok(), "bad value: {line}");
        }
    }
    for family in [
        "http_requests_total",
        "http_request_duration_seconds",
        "rampart_build_info",
    ] {
        assert!(families.contains(family), "{family} missing: {families:?}");
    }
    // promtool, when installed (.ci/run installs it), is the reference check.
    let path = std::env::temp_dir().join(format!("rampart-metrics-{}.txt", std::process::id()));
    std::fs::write(&path, &text).expect("write metrics");
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).expect("open"))
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            assert!(std::env::var("CI").is_err(), "CI must have promtool: {e}");
            eprintln!("promtool not installed ({e}); structural check only");
        }
    }
    let _ = std::fs::remove_file(path);
}

#[test]
fn process_time_and_server_timing_on_every_response() {
    let up = Upstream::start(|_| Reply::ok("x").delay(Duration::from_millis(30)));
    let r = Rampart::start(&format!(
        "{}[metrics]\nserver_timing = true\n",
        dashboard(&up)
    ));
    for (path, status) in [("/api/x", 200), ("/nowhere", 404)] {
        let resp = r.get(path);
        assert_eq!(resp.status, status);
        let t: f64 = resp
            .header("x-process-time")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{path}: X-Process-Time in seconds"));
        assert!((0.0..10.0).contains(&t), "{path}: {t}");
        let timing = resp.header("server-timing").expect("server-timing");
        assert!(timing.contains("total;dur="), "{timing}");
        if status == 200 {
            assert!(timing.starts_with("upstream;dur="), "{timing}");
            assert!(t >= 0.03, "includes the upstream's 30 ms: {t}");
        }
    }
    let off = Rampart::start(&format!(
        "{}[metrics]\nprocess_time_header = false\n",
        dashboard(&up)
    ));
    let resp = off.get("/api/x");
    assert_eq!(resp.header("x-process-time"), None);
    assert_eq!(resp.header("server-timing"), None);
}

#[test]
fn json_access_log_lines_parse() {
    let up = Upstream::named("ok");
    let (port, admin) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("rampart-accesslog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("access.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nthreads = 1\n{}[[routes]]\nname = \"health\"\nprefix = \"/health\"\nupstream = \"u\"\n[access_log]\nformat = \"json\"\n",
            dashboard(&up)
        ),
    )
    .expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["run", "--config"])
        .arg(&file)
        .env("RUST_LOG", "warn,rampart::access=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rampart");
    let base = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    eventually("rampart listens", || {
        std::net::TcpStream::connect(base).is_ok()
    });
    let ids: Vec<String> = (0..3)
        .map(|i| {
            let resp = request(base, "GET", &format!("/api/item/{i}?secret=1"), &[], None);
            resp.header("x-request-id").expect("id").to_string()
        })
        .collect();
    get(base, "/health");
    get(base, "/missing");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut entries = Vec::new();
    while entries.len() < 4 {
        let line = lines.next().expect("a log line").expect("utf8");
        if line.starts_with('{') {
            entries.push(serde_json::from_str::<serde_json::Value>(&line).expect("JSON line"));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    for (entry, id) in entries.iter().zip(&ids) {
        assert_eq!(entry["request_id"], id.as_str());
        assert_eq!(entry["method"], "GET");
        assert_eq!(entry["status"], 200);
        assert_eq!(entry["route"], "api");
        assert_eq!(entry["client"], "127.0.0.1");
        assert_eq!(entry["upstream"], up.addr.to_string());
        assert!(entry["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/api/item/") && !p.contains("secret")));
        assert!(entry["duration_ms"].as_f64().is_some());
        assert!(entry["bytes"].as_u64().is_some());
        assert!(entry["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    // /health is skipped (nginx's access_log off); the 404 is the fourth line.
    assert_eq!(entries[3]["status"], 404);
    assert_eq!(entries[3]["path"], "/missing");
    assert!(entries[3]["route"].is_null());
}

#[test]
fn histogram_buckets_are_configurable() {
    let up = Upstream::named("ok");
    let r = Rampart::start(&format!(
        "{}[metrics]\nbuckets = [0.25, 2.5]\n",
        dashboard(&up)
    ));
    r.get("/api/x");
    eventually("request counted", || scrape(&r).contains("route=\"api\""));
    let text = scrape(&r);
    assert!(
        text.contains(
            "http_request_duration_seconds_bucket{method=\"GET\",route=\"api\",le=\"0.25\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("le=\"2.5\""));
    assert!(
        !text.contains("route=\"api\",le=\"0.005\""),
        "only the configured bounds"
    );
}

#[test]
fn per_request_metrics_can_be_switched_off() {
    let up = Upstream::named("ok");
    let r = Rampart::start(&format!("{}[metrics]\nenabled = false\n", dashboard(&up)));
    assert_eq!(r.get("/api/x").status, 200);
    assert_eq!(r.get("/nowhere").status, 404);
    let text = scrape(&r);
    assert!(!text.contains("http_requests_total{"), "{text}");
    assert!(text.contains("rampart_build_info"));
    // The header is a separate switch.
    assert!(r.get("/api/x").header("x-process-time").is_some());
}
