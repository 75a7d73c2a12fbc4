//! A real Redis Cluster on loopback: three primaries with one replica each, made by
//! `redis-cli --cluster create`, in a temp dir; every node killed by pid and the dir removed on
//! drop. Nodes can be killed one by one to watch a failover.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// `cluster-node-timeout`: how long a primary may be silent before its replica takes over.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// One `redis-server --cluster-enabled yes`.
pub struct ClusterNode {
    pub port: u16,
    child: Option<Child>,
}

/// A running cluster; see the module header.
pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
    password: Option<String>,
    dir: TempDir,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct NodeLine {
    pub id: String,
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    /// The primary's id, for a replica.
    pub master_id: Option<String>,
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Three primaries, one replica each, no password.
    pub fn start() -> Self {
        Self::start_with(3, None)
    }

    /// `masters` primaries with one replica each; `password` as `requirepass` and
    /// `masterauth` on every node.
    pub fn start_with(masters: usize, password: Option<&str>) -> Self {
        let dir = TempDir::new("cluster");
        let mut cluster = Self {
            nodes: Vec::new(),
            password: password.map(str::to_string),
            dir,
        };
        for _ in 0..masters * 2 {
            // The bus port is port + 10000: both below the ephemeral range.
            let port = free_ports(&[0, 10000], 20000..22700);
            let node = cluster.spawn_node(port);
            cluster.nodes.push(node);
        }
        for node in &cluster.nodes {
            cluster.wait_for(&format!("node {} answers PING", node.port), || {
                cluster
                    .try_node_cmd::<String>(node.port, &["PING"])
                    .is_ok_and(|r| r == "PONG")
            });
        }
        cluster.create();
        cluster.wait_healthy();
        cluster
    }

    fn spawn_node(&self, port: u16) -> ClusterNode {
        let dir = self.dir.path().display().to_string();
        let conf = format!("{dir}/nodes-{port}.conf");
        let mut args: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &conf,
            "--cluster-node-timeout",
            &NODE_TIMEOUT_MS.to_string(),
            "--dir",
            &dir,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        if let Some(pw) = &self.password {
            args.extend([
                "--requirepass".into(),
                pw.clone(),
                "--masterauth".into(),
                pw.clone(),
            ]);
        }
        let child = super::redis_server::spawn_redis_server(port, &args);
        ClusterNode {
            port,
            child: Some(child),
        }
    }

    /// `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`, bounded in time.
    fn create(&self) {
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend([
            "--cluster-replicas".into(),
            "1".into(),
            "--cluster-yes".into(),
        ]);
        let mut command = Command::new("redis-cli");
        command
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(pw) = &self.password {
            // Through the environment, not argv (redis-cli warns about -a).
            command.env("REDISCLI_AUTH", pw);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): apt-get install redis-tools"));
        let deadline = Instant::now() + READY;
        loop {
            match child.try_wait().expect("redis-cli status") {
                Some(status) => {
                    let out = child.wait_with_output().expect("redis-cli output");
                    assert!(
                        status.success(),
                        "redis-cli --cluster create: {}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                    return;
                }
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("redis-cli --cluster create did not finish within {READY:?}");
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn wait_for(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + READY;
        while !f() {
            assert!(
                Instant::now() < deadline,
                "redis cluster: never happened: {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every live node says `cluster_state:ok` and knows every live node as healthy, and every
    /// replica's link to its primary is up (so a failover can happen).
    pub fn wait_healthy(&self) {
        let live: Vec<u16> = self.live_ports();
        self.wait_for("cluster_state:ok on every node, replicas in sync", || {
            live.iter().all(|&port| {
                let info: String = self
                    .try_node_cmd(port, &["CLUSTER", "INFO"])
                    .unwrap_or_default();
                if !info.contains("cluster_state:ok") {
                    return false;
                }
                let Ok(lines) = self.try_nodes_seen_by(port) else {
                    return false;
                };
                let healthy = lines
                    .iter()
                    .filter(|l| live.contains(&l.port) && !l.failed)
                    .count();
                if healthy != live.len() {
                    return false;
                }
                let me = lines.iter().find(|l| l.port == port);
                match me {
                    Some(l) if !l.master => {
                        let repl: String = self
                            .try_node_cmd(port, &["INFO", "replication"])
                            .unwrap_or_default();
                        repl.contains("master_link_status:up")
                    }
                    Some(_) => true,
                    None => false,
                }
            })
        });
    }

    /// The seed URL Rampart gets (the first node), without the password.
    pub fn seed_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[0].port)
    }

    pub fn seed_port(&self) -> u16 {
        self.nodes[0].port
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// A plain (non-cluster) connection to one node; 2 s bounds.
    pub fn node_connection(&self, port: u16) -> redis::RedisResult<redis::Connection> {
        let timeout = Duration::from_secs(2);
        let url = match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{port}"),
            None => format!("redis://127.0.0.1:{port}"),
        };
        let con = redis::Client::open(url)?.get_connection_with_timeout(timeout)?;
        con.set_read_timeout(Some(timeout))?;
        con.set_write_timeout(Some(timeout))?;
        Ok(con)
    }

    /// One command on one node (no redirection).
    pub fn try_node_cmd<T: redis::FromRedisValue>(
        &self,
        port: u16,
        args: &[&str],
    ) -> redis::RedisResult<T> {
        let (name, rest) = args.split_first().expect("a command");
        let mut cmd = redis::cmd(name);
        for arg in rest {
            cmd.arg(*arg);
        }
        cmd.query(&mut self.node_connection(port)?)
    }

    pub fn node_cmd<T: redis::FromRedisValue>(&self, port: u16, args: &[&str]) -> T {
        self.try_node_cmd(port, args)
            .unwrap_or_else(|e| panic!("redis node {port} {args:?}: {e}"))
    }

    /// One keyed command through the `redis` crate's cluster client (follows the slot map).
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let timeout = Duration::from_secs(2);
        let mut builder = redis::cluster::ClusterClient::builder(vec![self.seed_url()])
            .connection_timeout(timeout)
            .response_timeout(timeout);
        if let Some(pw) = &self.password {
            builder = builder.password(pw.clone());
        }
        let mut con = builder
            .build()
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|e| panic!("cluster client: {e}"));
        let (name, rest) = args.split_first().expect("a command");
        let mut cmd = redis::cmd(name);
        for arg in rest {
            cmd.arg(*arg);
        }
        cmd.query(&mut con)
            .unwrap_or_else(|e| panic!("cluster {args:?}: {e}"))
    }

    /// `CLUSTER NODES` as one live node sees it.
    fn try_nodes_seen_by(&self, port: u16) -> redis::RedisResult<Vec<NodeLine>> {
        let text: String = self.try_node_cmd(port, &["CLUSTER", "NODES"])?;
        Ok(text.lines().filter_map(parse_node_line).collect())
    }

    /// `CLUSTER NODES` as the first live node sees it.
    pub fn topology(&self) -> Vec<NodeLine> {
        let port = *self.live_ports().first().expect("a live node");
        self.try_nodes_seen_by(port)
            .unwrap_or_else(|e| panic!("CLUSTER NODES on {port}: {e}"))
    }

    /// The ports of the primaries that serve slots (as the first live node sees them).
    pub fn masters(&self) -> Vec<u16> {
        self.topology()
            .into_iter()
            .filter(|l| l.master && !l.failed && !l.slots.is_empty())
            .map(|l| l.port)
            .collect()
    }

    /// The port of `master`'s replica.
    pub fn replica_of(&self, master: u16) -> u16 {
        let lines = self.topology();
        let id = lines
            .iter()
            .find(|l| l.port == master)
            .map(|l| l.id.clone())
            .unwrap_or_else(|| panic!("{master} is not in the cluster: {lines:?}"));
        lines
            .iter()
            .find(|l| l.master_id.as_deref() == Some(id.as_str()))
            .map(|l| l.port)
            .unwrap_or_else(|| panic!("{master} has no replica: {lines:?}"))
    }

    /// The primary that serves `key`'s slot.
    pub fn master_of_key(&self, key: &str) -> u16 {
        let port = *self.live_ports().first().expect("a live node");
        let slot: i64 = self.node_cmd(port, &["CLUSTER", "KEYSLOT", key]);
        let slot = u16::try_from(slot).expect("slot");
        self.topology()
            .into_iter()
            .find(|l| {
                l.master && !l.failed && l.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .map(|l| l.port)
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
    }

    /// Every key matching `pattern` on every primary (each scanned on its own: a node's
    /// `SCAN` sees only its own keys), with the primary that holds it.
    pub fn keys(&self, pattern: &str) -> BTreeMap<String, u16> {
        let mut out = BTreeMap::new();
        for port in self.masters() {
            let mut cursor = "0".to_string();
            for _ in 0..10_000 {
                let (next, keys): (String, Vec<String>) =
                    self.node_cmd(port, &["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"]);
                out.extend(keys.into_iter().map(|k| (k, port)));
                cursor = next;
                if cursor == "0" {
                    break;
                }
            }
        }
        out
    }

    /// Kill one node by its pid (SIGKILL: no goodbye to the cluster).
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on {port}"));
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether `replica` serves as a primary and every surviving node says the cluster is ok.
    pub fn promoted(&self, replica: u16) -> bool {
        self.live_ports().iter().all(|&port| {
            let info: String = self
                .try_node_cmd(port, &["CLUSTER", "INFO"])
                .unwrap_or_default();
            info.contains("cluster_state:ok")
                && self.try_nodes_seen_by(port).is_ok_and(|lines| {
                    lines
                        .iter()
                        .any(|l| l.port == replica && l.master && !l.slots.is_empty())
                })
        })
    }

    /// Wait until [`RedisCluster::promoted`].
    pub fn wait_promoted(&self, replica: u16) {
        self.wait_for(&format!("{replica} promoted to primary"), || {
            self.promoted(replica)
        });
    }
}

/// `<id> <ip:port@cport[,host]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`
fn parse_node_line(line: &str) -> Option<NodeLine> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 8 {
        return None;
    }
    let port = fields[1]
        .split('@')
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()?;
    let flags: Vec<&str> = fields[2].split(',').collect();
    let slots = fields[8..]
        .iter()
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => {
                let n = s.parse().ok()?;
                Some((n, n))
            }
        })
        .collect();
    Some(NodeLine {
        id: fields[0].to_string(),
        port,
        master: flags.contains(&"master"),
        failed: flags
            .iter()
            .any(|f| *f == "fail" || *f == "fail?" || *f == "noaddr"),
        master_id: (fields[3] != "-").then(|| fields[3].to_string()),
        slots,
    })
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
