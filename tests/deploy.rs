//! Deployment files agree with the config they run: the Kubernetes manifests' ports, probes,
//! config mount, Services and selectors match `config/proxy.toml` as the Deployment's
//! environment overrides it; the systemd unit's paths and timeouts fit it. (The schemas of the
//! manifests are checked in CI by kubernetes-validate, see .ci/run; this checks the wiring a
//! schema cannot see.)

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_yaml::Value;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every document of every manifest, keyed by `kind/name`.
fn manifests() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let dir = repo("deploy/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read manifest");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: a document without kind", file.display()));
            let name = doc["metadata"]["name"].as_str().unwrap_or("");
            out.insert(format!("{kind}/{name}"), doc);
        }
    }
    out
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v:?}"))
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

/// `labels` has every key/value of `selector`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(sel) = selector.as_mapping() else {
        return false;
    };
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn kubernetes_manifests_are_wired_to_the_shipped_config() {
    let m = manifests();
    let deployment = &m["Deployment/rampart"];
    let pod = &deployment["spec"]["template"];
    let pod_labels = &pod["metadata"]["labels"];
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    let container = pod["spec"]["containers"]
        .as_sequence()
        .and_then(|c| c.iter().find(|c| c["name"] == "rampart"))
        .expect("a container named rampart");

    // The config: the ConfigMap's file, mounted where RAMPART_CONFIG points.
    let env: BTreeMap<String, Value> = container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|e| (str_of(&e["name"], "env name").to_string(), e.clone()))
        .collect();
    let config_path = str_of(&env["RAMPART_CONFIG"]["value"], "RAMPART_CONFIG");
    let (dir, file) = config_path.rsplit_once('/').expect("an absolute path");
    let mount = container["volumeMounts"]
        .as_sequence()
        .and_then(|v| v.iter().find(|v| v["mountPath"] == dir))
        .unwrap_or_else(|| panic!("nothing mounted at {dir}"));
    assert_eq!(
        mount["readOnly"],
        Value::Bool(true),
        "config mounted read-only"
    );
    let volume = pod["spec"]["volumes"]
        .as_sequence()
        .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
        .expect("the mounted volume");
    let map_name = str_of(&volume["configMap"]["name"], "configMap volume");
    let text = str_of(
        &m[&format!("ConfigMap/{map_name}")]["data"][file],
        "the ConfigMap's config file",
    );

    // The config as the pod runs it: the Deployment's literal environment applied.
    let literal: BTreeMap<String, String> = env
        .iter()
        .filter_map(|(k, e)| e["value"].as_str().map(|v| (k.clone(), v.to_string())))
        .collect();
    let config = rampart::config::parse("configmap proxy.toml", text, &literal)
        .unwrap_or_else(|e| panic!("the pod's config is invalid: {e}"));

    // Container ports are the listeners' ports; the admin listener is reachable in the pod.
    let ports: BTreeMap<&str, u64> = container["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                str_of(&p["name"], "port name"),
                p["containerPort"].as_u64().expect("containerPort"),
            )
        })
        .collect();
    let listen = config.server.listen.to_string();
    let admin = config.server.admin_listen.to_string();
    assert_eq!(ports["http"], port_of(&listen), "http port vs {listen}");
    assert_eq!(ports["admin"], port_of(&admin), "admin port vs {admin}");
    assert!(
        config.server.admin_listen.0.ip().is_unspecified(),
        "kubelet and Prometheus reach the admin listener only if it binds all interfaces: {admin}"
    );
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(
        str_of(&annotations["prometheus.io/port"], "prometheus.io/port"),
        ports["admin"].to_string()
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    // Probes hit /healthz on the admin port (the public listener would proxy it upstream).
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{probe}");
        let port = &get["port"];
        let number = port
            .as_u64()
            .or_else(|| port.as_str().map(|name| ports[name]));
        assert_eq!(number, Some(ports["admin"]), "{probe} port");
    }

    // SIGTERM drains for grace_period, twice plus a second at most (app.rs).
    let grace = config.server.grace_period.0.as_secs();
    let termination = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        termination > 2 * grace + 1,
        "{termination}s vs grace {grace}s"
    );

    // Services reach the pods' named ports; the admin one is what the ServiceMonitor scrapes.
    let public = &m["Service/rampart"]["spec"];
    assert!(selects(&public["selector"], pod_labels));
    assert_eq!(public["ports"][0]["targetPort"], "http");
    let admin_service = &m["Service/rampart-admin"];
    assert!(selects(&admin_service["spec"]["selector"], pod_labels));
    assert_eq!(admin_service["spec"]["ports"][0]["targetPort"], "admin");
    assert_eq!(admin_service["spec"]["type"], "ClusterIP");
    let monitor = &m["ServiceMonitor/rampart"]["spec"];
    assert!(selects(
        &monitor["selector"]["matchLabels"],
        &admin_service["metadata"]["labels"]
    ));
    assert!(
        !selects(
            &monitor["selector"]["matchLabels"],
            &m["Service/rampart"]["metadata"]["labels"]
        ),
        "the ServiceMonitor must not scrape the public Service"
    );
    assert_eq!(
        monitor["endpoints"][0]["port"],
        admin_service["spec"]["ports"][0]["name"]
    );
    assert!(selects(
        &m["PodDisruptionBudget/rampart"]["spec"]["selector"]["matchLabels"],
        pod_labels
    ));

    // Redis: the URL names the redis Service, the password comes from the Secret Redis uses.
    let url = config
        .store
        .redis_url
        .as_ref()
        .expect("RAMPART_REDIS_URL set")
        .as_str();
    let redis = &m["Service/redis"];
    let host = format!(
        "{}.{}.svc.cluster.local:{}",
        str_of(&redis["metadata"]["name"], "redis name"),
        str_of(&redis["metadata"]["namespace"], "redis namespace"),
        redis["spec"]["ports"][0]["port"]
            .as_u64()
            .expect("redis port")
    );
    assert!(url.contains(&host), "{url} vs {host}");
    let secret = &env["RAMPART_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"];
    let redis_pod = &m["Deployment/redis"]["spec"]["template"]["spec"]["containers"][0];
    let redis_secret = redis_pod["env"]
        .as_sequence()
        .and_then(|e| e.iter().find(|e| e["name"] == "REDIS_PASSWORD"))
        .map(|e| &e["valueFrom"]["secretKeyRef"])
        .expect("redis's REDIS_PASSWORD");
    assert_eq!(secret, redis_secret);

    // kustomization.yaml lists every manifest but the optional ServiceMonitor.
    let kustomization = &m["Kustomization/"];
    let listed: Vec<&str> = kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| str_of(r, "resource"))
        .collect();
    for file in std::fs::read_dir(repo("deploy/kubernetes")).expect("dir") {
        let name = file
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name == "kustomization.yaml" || name == "servicemonitor.yaml" {
            continue;
        }
        assert!(
            listed.contains(&name.as_str()),
            "{name} not in kustomization.yaml"
        );
    }
    for name in &listed {
        assert!(
            repo("deploy/kubernetes").join(name).exists(),
            "{name} listed, missing"
        );
    }
}

/// `Key=value` lines of a unit file (a key may repeat).
fn unit_entries(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect()
}

#[test]
fn systemd_unit_fits_the_shipped_config() {
    let text = std::fs::read_to_string(repo("deploy/systemd/rampart.service")).expect("the unit");
    let entries = unit_entries(&text);
    let all = |key: &str| -> Vec<&str> {
        entries
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .collect()
    };
    let one = |key: &str| -> &str {
        let v = all(key);
        assert_eq!(v.len(), 1, "{key}: {v:?}");
        v[0]
    };
    let config = all("Environment")
        .into_iter()
        .find_map(|v| v.strip_prefix("RAMPART_CONFIG="))
        .expect("Environment=RAMPART_CONFIG=...");
    let dir = config.rsplit_once('/').expect("absolute").0;
    assert!(
        one("ReadOnlyPaths").split(' ').any(|p| p == dir),
        "config dir read-only"
    );
    assert_eq!(
        one("ExecReload"),
        "/usr/local/bin/rampart reload --pid $MAINPID"
    );
    assert!(one("ExecStart").ends_with("rampart run"));
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("Restart", "on-failure"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(one(key), value, "{key}");
    }
    assert!(one("LimitNOFILE").parse::<u64>().is_ok_and(|n| n >= 65536));

    // The shipped listeners are unprivileged ports, so no capability is needed; the stop
    // timeout covers the drain (grace period twice plus a second).
    let shipped = rampart::config::parse(
        "proxy.toml",
        &std::fs::read_to_string(repo("config/proxy.toml")).expect("proxy.toml"),
        &BTreeMap::new(),
    )
    .expect("valid");
    assert!(shipped.server.listen.0.port() >= 1024);
    assert!(shipped.server.admin_listen.0.port() >= 1024);
    let stop = humantime::parse_duration(one("TimeoutStopSec")).expect("TimeoutStopSec");
    assert!(stop > 2 * shipped.server.grace_period.0 + std::time::Duration::from_secs(1));
}
