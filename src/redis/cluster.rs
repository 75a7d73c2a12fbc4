//! Redis Cluster specifics: which nodes hold the keys (for walks of the whole keyspace and the
//! health check), commands pinned to one node, and new cluster connections seeded with every
//! node seen so far.
//!
//! Why the last one: redis-rs 0.32 falls back to its *initial* nodes when it has lost every
//! connection, and never learns other seeds. With the one `store.redis_url` node as the only
//! seed, losing that node (say it is the primary that just failed over) would leave the
//! connection stuck for good; a new connection seeded from the last topology recovers.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult,
    TlsCertificates, Value,
};

use super::Conn;

/// One node that holds a share of the keys: the server itself, or one cluster primary by the
/// address the cluster announces for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node(pub(super) Option<(String, u16)>);

impl Conn {
    /// This connection with every command and pipeline sent to `node` (on a single node: the
    /// connection itself).
    ///
    /// By address, not by slot: redis-rs sends a command for a slot whose node it cannot reach
    /// to a random node instead, where a `SCAN` or `PING` would answer for the wrong node; by
    /// address it fails instead. (redis-rs holds connections to replicas too, so a promoted
    /// one is reachable at once.)
    pub fn on(self, node: &Node) -> OnNode {
        OnNode {
            conn: self,
            node: node.clone(),
        }
    }
}

/// A connection pinned to one [`Node`]; see [`Conn::on`].
pub struct OnNode {
    conn: Conn,
    node: Node,
}

impl OnNode {
    fn route(&self) -> Option<SingleNodeRoutingInfo> {
        self.node
            .0
            .as_ref()
            .map(|(host, port)| SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            })
    }
}

impl ConnectionLike for OnNode {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let route = self.route();
        match (&mut self.conn, route) {
            (Conn::Cluster(c), Some(route)) => {
                Box::pin(c.route_command(cmd, RoutingInfo::SingleNode(route)))
            }
            (conn, _) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let route = self.route();
        match (&mut self.conn, route) {
            (Conn::Cluster(c), Some(route)) => {
                Box::pin(c.route_pipeline(cmd, offset, count, route))
            }
            (conn, _) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// What `CLUSTER SLOTS` says: the primaries, and every node it names (replicas included).
pub(super) struct Topology {
    pub primaries: Vec<Node>,
    pub all: Vec<(String, u16)>,
}

/// Parse a `CLUSTER SLOTS` reply: per slot range `[start, end, [host, port, id, ...],
/// replicas...]`; a primary with several ranges appears once per range.
pub(super) fn topology(reply: &Value) -> RedisResult<Topology> {
    let shape = || RedisError::from((ErrorKind::TypeError, "unexpected CLUSTER SLOTS reply"));
    let Value::Array(ranges) = reply else {
        return Err(shape());
    };
    let mut out = Topology {
        primaries: Vec::new(),
        all: Vec::new(),
    };
    for range in ranges {
        let Value::Array(fields) = range else {
            return Err(shape());
        };
        for (i, node) in fields.iter().skip(2).enumerate() {
            let Value::Array(node) = node else {
                return Err(shape());
            };
            let host: String = match node.first() {
                Some(Value::Nil) | None => String::new(),
                Some(v) => redis::from_redis_value(v)?,
            };
            let port: u16 = redis::from_redis_value(node.get(1).ok_or_else(shape)?)?;
            // An empty or "?" host means "the node you asked" or "unknown". A walk of the
            // keyspace cannot name that primary, so it fails rather than skip it; a replica
            // without an address is just not a seed.
            let known = !host.is_empty() && host != "?";
            if i == 0 {
                if !known {
                    return Err(RedisError::from((
                        ErrorKind::ClientError,
                        "CLUSTER SLOTS gives no address for a primary",
                        format!("slots from {:?}", fields.first()),
                    )));
                }
                let primary = Node(Some((host.clone(), port)));
                if !out.primaries.contains(&primary) {
                    out.primaries.push(primary);
                }
            }
            if known && !out.all.contains(&(host.clone(), port)) {
                out.all.push((host, port));
            }
        }
    }
    Ok(out)
}

/// Makes cluster connections: from the configured seed and every node the last topology
/// named.
pub(super) struct Seeds {
    seed: ConnectionInfo,
    certs: Option<TlsCertificates>,
    connection_timeout: Duration,
    response_timeout: Duration,
    known: Mutex<Vec<(String, u16)>>,
}

impl Seeds {
    /// Fails on a seed redis-rs cannot use (checked by building a client once).
    pub fn new(
        seed: ConnectionInfo,
        certs: Option<TlsCertificates>,
        connection_timeout: Duration,
        response_timeout: Duration,
    ) -> RedisResult<Self> {
        let seeds = Self {
            seed,
            certs,
            connection_timeout,
            response_timeout,
            known: Mutex::new(Vec::new()),
        };
        seeds.client()?;
        Ok(seeds)
    }

    /// Remember the nodes of a topology just read, as seeds for the next connection.
    pub fn learn(&self, nodes: Vec<(String, u16)>) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if !nodes.is_empty() && *known != nodes {
            log::debug!("redis cluster nodes: {nodes:?}");
            *known = nodes;
        }
    }

    fn client(&self) -> RedisResult<ClusterClient> {
        let mut nodes = vec![self.seed.clone()];
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (host, port) in known {
            // Same password, TLS mode and certificates as the seed; another address.
            let mut info = self.seed.clone();
            info.addr = match info.addr {
                ConnectionAddr::Tcp(..) => ConnectionAddr::Tcp(host, port),
                ConnectionAddr::TcpTls {
                    insecure,
                    tls_params,
                    ..
                } => ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure,
                    tls_params,
                },
                other => other,
            };
            if !nodes.iter().any(|n| n.addr == info.addr) {
                nodes.push(info);
            }
        }
        let mut builder = ClusterClient::builder(nodes)
            .connection_timeout(self.connection_timeout)
            .response_timeout(self.response_timeout);
        if let Some(certs) = &self.certs {
            builder = builder.certs(certs.clone());
        }
        builder.build()
    }

    /// A new connection; the topology it starts from is learned at once, so even an outage
    /// before the first health check finds seeds besides the configured one.
    pub async fn connect(&self) -> RedisResult<ClusterConnection> {
        let mut conn = self.client()?.get_async_connection().await?;
        let slots = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Value>(&mut conn)
            .await;
        if let Ok(topology) = slots.and_then(|reply| topology(&reply)) {
            self.learn(topology.all);
        }
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    fn range(start: i64, end: i64, nodes: Vec<Value>) -> Value {
        let mut v = vec![Value::Int(start), Value::Int(end)];
        v.extend(nodes);
        Value::Array(v)
    }

    #[test]
    fn topology_lists_each_primary_once_and_every_node() {
        let reply = Value::Array(vec![
            range(0, 100, vec![node("10.0.0.1", 7000), node("10.0.0.4", 7003)]),
            range(101, 200, vec![node("10.0.0.2", 7001)]),
            range(201, 300, vec![node("10.0.0.1", 7000), node("?", 7009)]),
        ]);
        let t = topology(&reply).expect("parses");
        assert_eq!(
            t.primaries,
            vec![
                Node(Some(("10.0.0.1".into(), 7000))),
                Node(Some(("10.0.0.2".into(), 7001)))
            ]
        );
        assert_eq!(
            t.all,
            vec![
                ("10.0.0.1".to_string(), 7000),
                ("10.0.0.4".to_string(), 7003),
                ("10.0.0.2".to_string(), 7001)
            ]
        );
    }

    #[test]
    fn a_primary_without_an_address_is_an_error_not_a_skip() {
        let reply = Value::Array(vec![range(0, 100, vec![node("", 7000)])]);
        assert!(topology(&reply).is_err());
        assert!(topology(&Value::Int(1)).is_err());
    }
}
