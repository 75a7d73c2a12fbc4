//! Real servers for the integration tests: upstream HTTP servers on 127.0.0.1:0 that record
//! what they receive, a real `redis-server` on a free port, Rampart itself started through the
//! library, and a plain HTTP/1.1 client over TCP. Everything waits with deadlines, never
//! forever, and everything stays on loopback.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
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
    use std::hash::{BuildHasher, Hasher};
    static HANDED_OUT: Mutex<std::collections::BTreeSet<u16>> =
        Mutex::new(std::collections::BTreeSet::new());
    let state = std::collections::hash_map::RandomState::new();
    let mut handed = HANDED_OUT.lock().expect("port lock");
    for attempt in 0..2000u32 {
        let mut h = state.build_hasher();
        h.write_u32(attempt);
        h.write_u32(std::process::id());
        let port = 20000 + (h.finish() % 12000) as u16;
        if handed.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed.insert(port);
            return port;
        }
    }
    panic!("no free loopback port between 20000 and 32000")
}

// ---------------------------------------------------------------------------------------------
// Upstream

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query exactly as received.
    pub target: String,
    /// Header names lower-cased, in arrival order (repeated headers appear repeatedly).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the upstream answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Wait this long before answering (a slow upstream).
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
    pub fn json(body: impl Into<Vec<u8>>) -> Self {
        Self::ok(body).header("content-type", "application/json")
    }
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
    /// Set a header, replacing one of the same name.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A real HTTP/1.1 server on 127.0.0.1:0 (a thread per connection, keep-alive supported).
pub struct Upstream {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Upstream {
    /// Answers every request with `handler(request)`.
    pub fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let recorded = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let handler = handler.clone();
                let recorded = recorded.clone();
                std::thread::spawn(move || serve(stream, handler, recorded));
            }
        });
        Self { addr, requests }
    }

    /// Answers `200 <name>` to everything, so tests can tell upstreams apart.
    pub fn named(name: &'static str) -> Self {
        Self::start(move |_| Reply::ok(name))
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().expect("lock").len()
    }

    pub fn last(&self) -> Recorded {
        self.requests()
            .pop()
            .expect("the upstream received a request")
    }
}

fn serve(stream: TcpStream, handler: Handler, recorded: Arc<Mutex<Vec<Recorded>>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let Some(req) = read_request(&mut reader) else {
            return;
        };
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        recorded.lock().expect("lock").push(req.clone());
        let reply = handler(&req);
        if !reply.delay.is_zero() {
            std::thread::sleep(reply.delay);
        }
        let mut out = format!("HTTP/1.1 {} X\r\n", reply.status).into_bytes();
        for (k, v) in &reply.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        let has_len = reply
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
        let no_body = req.method == "HEAD" || reply.status == 204 || reply.status == 304;
        if !has_len && reply.status != 204 && reply.status != 304 {
            out.extend_from_slice(format!("content-length: {}\r\n", reply.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if !no_body {
            out.extend_from_slice(&reply.body);
        }
        if writer.write_all(&out).is_err() || close {
            return;
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Recorded> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let headers = read_headers(reader)?;
    let rec = Recorded {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    let body = read_body(reader, &rec.headers, false)?;
    Some(Recorded { body, ..rec })
}

fn read_headers(reader: &mut impl BufRead) -> Option<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Some(headers);
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
}

/// Body by `Content-Length`, chunked encoding, or (responses only) until the peer closes.
fn read_body(
    reader: &mut impl BufRead,
    headers: &[(String, String)],
    until_close: bool,
) -> Option<Vec<u8>> {
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            if size == 0 {
                let mut trailer = String::new();
                loop {
                    trailer.clear();
                    reader.read_line(&mut trailer).ok()?;
                    if trailer.trim().is_empty() {
                        return Some(body);
                    }
                }
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            body.extend_from_slice(&chunk[..size]);
        }
    }
    if let Some(len) = get("content-length") {
        let mut body = vec![0; len.trim().parse().ok()?];
        reader.read_exact(&mut body).ok()?;
        return Some(body);
    }
    let mut body = Vec::new();
    if until_close {
        reader.read_to_end(&mut body).ok()?;
    }
    Some(body)
}

// ---------------------------------------------------------------------------------------------
// Client

/// A response as a client sees it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// Send raw bytes, read one response (the request should say `Connection: close` or carry a
/// length; the read gives up after 10 s).
pub fn send_raw(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(raw)?;
    let head_only = raw.starts_with(b"HEAD ");
    read_response(&mut BufReader::new(stream), head_only)
}

fn read_response(reader: &mut BufReader<TcpStream>, head_only: bool) -> std::io::Result<Response> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("status line: {line:?}")))?;
    let headers = read_headers(reader).ok_or_else(|| bad("headers"))?;
    let body = if head_only || status == 204 || status == 304 {
        Vec::new()
    } else {
        read_body(reader, &headers, true).ok_or_else(|| bad("body"))?
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// `METHOD path` with extra headers and an optional body; `Connection: close`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    let mut raw = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        raw.push_str("Host: rampart.test\r\n");
    }
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        raw.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    raw.push_str("Connection: close\r\n\r\n");
    let mut bytes = raw.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    send_raw(addr, &bytes).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], None)
}

// ---------------------------------------------------------------------------------------------
// Redis

/// A private `redis-server` on a free port; killed on drop (or by [`Redis::kill`]).
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Start on a given port (to restart a killed one where Rampart expects it).
    pub fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): the tests need it on PATH (apt-get install redis-server)")
            });
        let redis = Self {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + READY;
        while !redis
            .try_cmd(&["PING"])
            .is_ok_and(|reply: String| reply == "PONG")
        {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A new connection (the `redis` crate's synchronous client); connecting, reads and writes
    /// give up after 2 s.
    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let timeout = Duration::from_secs(2);
        let con = redis::Client::open(self.url())?.get_connection_with_timeout(timeout)?;
        con.set_read_timeout(Some(timeout))?;
        con.set_write_timeout(Some(timeout))?;
        Ok(con)
    }

    /// Run one command on a new connection, its reply converted to `T` (`i64` for `EXISTS`
    /// and `TTL`, `String` for `PING`, `Option<Vec<u8>>` for `GET`, `(u64, Vec<String>)` for
    /// `SCAN`...).
    pub fn try_cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let (name, rest) = args.split_first().expect("a command");
        let mut cmd = redis::cmd(name);
        for arg in rest {
            cmd.arg(*arg);
        }
        cmd.query(&mut self.connection()?)
    }

    /// [`Redis::try_cmd`], panicking on a connection, server or conversion error.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis {args:?} on port {}: {e}", self.port))
    }

    /// `INFO <section>` as text (empty when Redis cannot be reached).
    pub fn info(&self, section: &str) -> String {
        self.try_cmd(&["INFO", section]).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Rampart

/// Rampart started through the library on free ports; stopped on drop.
pub struct Rampart {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: rampart::config::Config,
    running: Option<rampart::app::Running>,
}

impl Rampart {
    /// Start with `body` as the config file after a generated `[server]` table (free ports, one
    /// thread). `server_extra` lines go into that table.
    pub fn start(body: &str) -> Self {
        Self::start_with(body, "")
    }

    pub fn start_with(body: &str, server_extra: &str) -> Self {
        // A port can still be taken between choosing and binding (another process): try again
        // with fresh ports, a bounded number of times.
        for _ in 0..5 {
            let (port, admin_port) = (free_port(), free_port());
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\nthreads = 1\ngrace_period = \"0s\"\n{server_extra}\n{body}"
            );
            let config = rampart::config::parse("test.toml", &text, &BTreeMap::new())
                .unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
            match rampart::app::build(&config, Vec::new()) {
                Ok(app) => return Self::started(app, config, port, admin_port),
                Err(rampart::app::Error::Listen { .. }) => continue,
                Err(e) => panic!("build rampart: {e}"),
            }
        }
        panic!("no free ports for rampart after 5 tries")
    }

    fn started(
        app: rampart::app::App,
        config: rampart::config::Config,
        port: u16,
        admin_port: u16,
    ) -> Self {
        let running = app.spawn();
        let rampart = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            config,
            running: Some(running),
        };
        rampart.wait_ready();
        rampart
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + READY;
        loop {
            let admin_up = send_raw(
                self.admin,
                b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .is_ok_and(|r| r.status == 200);
            if admin_up && TcpStream::connect(self.addr).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "rampart did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn get(&self, path: &str) -> Response {
        get(self.addr, path)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        request(self.addr, method, path, headers, body)
    }

    pub fn admin_get(&self, path: &str) -> Response {
        get(self.admin, path)
    }
}

impl Drop for Rampart {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop();
        }
    }
}

/// The TOML for an upstream group pointing at `upstreams`.
pub fn upstream_toml(name: &str, upstreams: &[&SocketAddr]) -> String {
    let addrs: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[upstreams.{name}]\naddrs = [{}]\n", addrs.join(", "))
}

/// One keep-alive connection for many requests (responses must carry a length or be chunked).
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl KeepAlive {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let writer = stream.try_clone().expect("clone");
        Self {
            reader: BufReader::new(stream),
            writer,
        }
    }

    pub fn get(&mut self, path: &str) -> Response {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: rampart.test\r\n\r\n");
        self.writer.write_all(raw.as_bytes()).expect("write");
        read_response(&mut self.reader, false).expect("response")
    }
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
