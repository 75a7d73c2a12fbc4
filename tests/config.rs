//! The config file and the CLI: shipped configs pass `rampart check`, every broken fixture is
//! rejected with its line and key, `run` refuses a broken file, the demo answers its curl lines.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn rampart() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rampart"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c.env_remove("RAMPART_CONFIG");
    c
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn shipped_configs_pass_check() {
    for file in ["config/proxy.toml", "config/demo.toml", "config/bench.toml"] {
        let out = rampart()
            .args(["check", "--config", file])
            .output()
            .expect("run rampart check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.starts_with(&format!("{file}: ok: ")), "{stdout}");
        assert!(stdout.contains("route(s)"), "{stdout}");
    }
}

/// Each fixture's first line says where the error is: `# expect: LINE KEY`.
#[test]
fn every_broken_fixture_is_rejected_with_its_line_and_key() {
    let dir = repo("tests/fixtures/broken");
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 10, "fixtures: {fixtures:?}");
    for fixture in fixtures {
        let text = std::fs::read_to_string(&fixture).expect("read fixture");
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| {
                panic!(
                    "{}: first line must be '# expect: LINE KEY'",
                    fixture.display()
                )
            });
        let (line, key) = expect.split_once(' ').expect("LINE KEY");
        let rel = fixture
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .expect("inside the repo")
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string();
        let out = rampart()
            .args(["check", "--config", &rel])
            .output()
            .expect("run rampart check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{rel} must be rejected: {stderr}"
        );
        let located = format!("{rel}:{line}:");
        assert!(
            stderr.starts_with(&located),
            "{rel}: expected the error at line {line}, got: {stderr}"
        );
        assert!(
            stderr.contains(&format!(": {key}")),
            "{rel}: expected key {key} in: {stderr}"
        );
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{rel}: one line: {stderr}"
        );
    }
}

#[test]
fn run_refuses_a_broken_config_and_starts_nothing() {
    let port = free_port();
    let out = rampart()
        .args([
            "run",
            "--config",
            "tests/fixtures/broken/unknown_upstream.toml",
        ])
        .env("RAMPART_LISTEN", format!("127.0.0.1:{port}"))
        .output()
        .expect("run rampart");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("routes[0].upstream"));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = rampart()
        .args(["check", "--config", "config/nope.toml"])
        .output()
        .expect("run rampart check");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("config/nope.toml: cannot read"),
        "{stderr}"
    );
}

#[test]
fn environment_overrides_upstream_addresses() {
    let out = rampart()
        .args(["check", "--config", "config/proxy.toml"])
        .env("RAMPART_UPSTREAM_BACKEND", "not an address")
        .output()
        .expect("run rampart check");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("RAMPART_UPSTREAM_BACKEND"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn help_and_version() {
    let out = rampart().arg("--help").output().expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for word in ["run", "check", "demo", "--config"] {
        assert!(help.contains(word), "{word} missing from --help: {help}");
    }
    let out = rampart().arg("--version").output().expect("version");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("rampart {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn admin_healthz_answers() {
    let up = Upstream::named("x");
    let r = Rampart::start(&format!(
        "{}[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&up.addr])
    ));
    let h = r.admin_get("/healthz");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    assert_eq!(h.json()["routes"], 1);
    // The public listener does not serve admin endpoints: this goes to the upstream.
    assert_eq!(r.get("/healthz").text(), "x");
    assert_eq!(r.get("/metrics").text(), "x");
    let line = "http_requests_total{method=\"GET\",route=\"all\",status=\"200\"} 2";
    let deadline = Instant::now() + READY;
    while !r.admin_get("/metrics").text().contains(line) {
        assert!(Instant::now() < deadline, "{line} never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `rampart demo` (the README's first command) answers the curl lines it prints.
#[test]
fn demo_answers_its_curl_lines() {
    let (port, admin, api, page) = (free_port(), free_port(), free_port(), free_port());
    let mut child = rampart()
        .arg("demo")
        .env("RAMPART_LISTEN", format!("127.0.0.1:{port}"))
        .env("RAMPART_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("RAMPART_UPSTREAM_BACKEND", format!("127.0.0.1:{api}"))
        .env("RAMPART_UPSTREAM_FRONTEND", format!("127.0.0.1:{page}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        let done = line.contains("Ctrl-C");
        lines.push(line);
        if done {
            break;
        }
    }
    let curls: Vec<&String> = lines
        .iter()
        .filter(|l| l.trim_start().starts_with("curl "))
        .collect();
    assert!(curls.len() >= 5, "{lines:?}");

    let base = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + READY;
    while try_request(base, "GET", "/health", &[("Host", "d")], None)
        .map_or(true, |r| r.status != 200)
    {
        assert!(Instant::now() < deadline, "demo did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let kpis = get(base, "/api/v1/dashboard/kpis");
    assert_eq!(kpis.status, 200);
    assert_eq!(kpis.json()["kpis"].as_array().map(Vec::len), Some(12));
    let echo = get(base, "/api/v1/echo");
    assert_eq!(echo.json()["headers"]["x-real-ip"], "127.0.0.1");
    let page = get(base, "/");
    assert!(page.text().contains("KPI dashboard"));
    let pre = request(
        base,
        "OPTIONS",
        "/api/v1/dashboard/kpis",
        &[
            ("Origin", "https://dash.example.com"),
            ("Access-Control-Request-Method", "GET"),
        ],
        None,
    );
    assert_eq!(pre.status, 204);
    let health = get(
        std::net::SocketAddr::from(([127, 0, 0, 1], admin)),
        "/healthz",
    );
    assert_eq!(health.status, 200);
    let _ = child.kill();
    let _ = child.wait();
}

/// deploy/kubernetes/configmap.yaml carries config/proxy.toml verbatim: a drift fails here.
#[test]
fn kubernetes_configmap_is_the_shipped_config() {
    let map: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo("deploy/kubernetes/configmap.yaml")).expect("configmap"),
    )
    .expect("valid YAML");
    let shipped = std::fs::read_to_string(repo("config/proxy.toml")).expect("proxy.toml");
    assert_eq!(
        map["data"]["proxy.toml"].as_str(),
        Some(shipped.as_str()),
        "regenerate deploy/kubernetes/configmap.yaml (command in its header)"
    );
}

/// `rampart check --print` (nginx's `-T`): the configuration that would run, environment
/// overrides applied and defaults filled in, secrets masked, as TOML that reads back.
#[test]
fn check_print_shows_the_effective_config_with_secrets_masked() {
    let out = rampart()
        .args(["check", "--print", "--config", "config/proxy.toml"])
        .env("RAMPART_UPSTREAM_BACKEND", "10.1.1.1:8000, 10.1.1.2:8000")
        .env("RAMPART_REDIS_URL", "redis://app:url-s3cret@redis:6379/0")
        .env("RAMPART_REDIS_PASSWORD", "env-s3cret")
        .output()
        .expect("run rampart check --print");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.trim(), "config/proxy.toml: ok");
    assert!(!stdout.contains("s3cret"), "a secret leaked:\n{stdout}");
    for line in [
        // the environment's addresses, not the file's
        "addrs = [\"10.1.1.1:8000\", \"10.1.1.2:8000\"]",
        "redis_url = \"redis://app:********@redis:6379/0\"",
        "redis_password = \"********\"",
        // defaults of keys the file does not write (frontend's health check, [store] cluster)
        "[upstreams.frontend]",
        "health_check_fails = 2",
        "max_fails = 3",
        "cluster = false",
    ] {
        assert!(stdout.contains(line), "{line} missing from:\n{stdout}");
    }

    // It parses back as a valid config: the same one, printed the same.
    let back = rampart::config::parse("printed.toml", &stdout, &Default::default())
        .unwrap_or_else(|e| panic!("the printed config does not read back: {e}\n{stdout}"));
    let addrs: Vec<&str> = back.upstreams["backend"]
        .addrs
        .iter()
        .map(|a| a.as_str())
        .collect();
    assert_eq!(addrs, ["10.1.1.1:8000", "10.1.1.2:8000"]);
    assert_eq!(back.effective_toml().expect("print"), stdout);
    let file = std::env::temp_dir().join(format!("rampart-printed-{}.toml", std::process::id()));
    std::fs::write(&file, stdout.as_bytes()).expect("write");
    let check = rampart()
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .expect("run rampart check");
    let _ = std::fs::remove_file(&file);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// Every shipped file prints and reads back unchanged.
#[test]
fn shipped_configs_print_and_read_back() {
    for file in [
        "config/proxy.toml",
        "config/demo.toml",
        "config/bench.toml",
        "config/bench-ratelimit.toml",
    ] {
        let out = rampart()
            .args(["check", "--print", "--config", file])
            .output()
            .expect("run rampart check --print");
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout);
        let back = rampart::config::parse(file, &printed, &Default::default())
            .unwrap_or_else(|e| panic!("{file}: {e}\n{printed}"));
        assert_eq!(back.effective_toml().expect("print"), printed, "{file}");
    }
}
