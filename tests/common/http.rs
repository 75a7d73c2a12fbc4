//! HTTP/1.x on plain TCP: framing parsed with `httparse`, and the client the tests use.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use super::*;

/// Room for this many header fields in one message head (httparse fills a fixed array).
const MAX_HEADERS: usize = 128;

/// One TCP connection and the bytes received on it but not parsed yet. Message heads, chunk
/// sizes and trailers are parsed by `httparse`; bodies are delimited by `Content-Length`,
/// chunked encoding, or (responses only) the peer's close.
pub struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

fn closed(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("connection closed before the {what}"),
    )
}

/// Header fields with lower-cased names and trimmed values.
fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).trim().to_string();
            (h.name.to_ascii_lowercase(), value)
        })
        .collect()
}

impl HttpConn {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connect within 5 s; reads give up after 10 s.
    pub fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self::new(stream))
    }

    pub fn write_all(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(raw)
    }

    /// Wait up to `within` for the peer to close the connection (end of stream or reset),
    /// reading and dropping whatever else arrives: how long that took, `None` if it is still
    /// open. The bytes that arrived are kept in the buffer (a response before the close).
    pub fn closed_within(&mut self, within: Duration) -> Option<Duration> {
        let started = std::time::Instant::now();
        let _ = self
            .stream
            .set_read_timeout(Some(Duration::from_millis(50)));
        let closed = loop {
            match self.fill() {
                Ok(0) => break true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break true,
            }
            if started.elapsed() > within {
                break false;
            }
        };
        let _ = self.stream.set_read_timeout(Some(Duration::from_secs(10)));
        closed.then(|| started.elapsed())
    }

    /// The bytes received and not parsed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Send `METHOD path HTTP/1.1` with `headers` (plus `Host: rampart.test` when they have
    /// none), `body` with its `Content-Length`, and `Connection: close` when `close`.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        close: bool,
    ) -> std::io::Result<()> {
        let body = body.map_or(Body::None, Body::Length);
        self.write_all(&encode_request(method, path, headers, body, close))
    }

    /// Read once from the socket into the buffer; 0 when the peer has closed.
    fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0; 16 * 1024];
        let n = loop {
            match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Run `parse` on the buffered bytes, reading more while it needs more (`Ok(None)`), and
    /// drop the bytes it used. `Ok(None)` when the peer closed before sending anything.
    fn parse<T>(
        &mut self,
        what: &str,
        mut parse: impl FnMut(&[u8]) -> Result<Option<(usize, T)>, String>,
    ) -> std::io::Result<Option<T>> {
        loop {
            if !self.buf.is_empty() {
                let parsed = parse(&self.buf).map_err(|e| invalid(format!("{what}: {e}")))?;
                if let Some((used, value)) = parsed {
                    self.buf.drain(..used);
                    return Ok(Some(value));
                }
            }
            if self.fill()? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(closed(&format!("end of the {what}")))
                };
            }
        }
    }

    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(closed("end of the body"));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// The next request with its body; `Ok(None)` when the peer closed between requests.
    pub fn read_request(&mut self) -> std::io::Result<Option<Recorded>> {
        let head = self.parse("request head", |buf| {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            Ok(match req.parse(buf).map_err(|e| e.to_string())? {
                httparse::Status::Partial => None,
                httparse::Status::Complete(used) => Some((
                    used,
                    (
                        req.method.unwrap_or_default().to_string(),
                        req.path.unwrap_or_default().to_string(),
                        owned_headers(req.headers),
                    ),
                )),
            })
        })?;
        let Some((method, target, headers)) = head else {
            return Ok(None);
        };
        let body = self.read_body(&headers, false)?;
        Ok(Some(Recorded {
            method,
            target,
            headers,
            body,
        }))
    }

    /// The status line and header fields of the next response; the body stays unread (see
    /// [`HttpConn::read_chunk`]) and `body` is empty.
    pub fn read_head(&mut self) -> std::io::Result<Response> {
        self.parse("response head", |buf| {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut res = httparse::Response::new(&mut headers);
            Ok(match res.parse(buf).map_err(|e| e.to_string())? {
                httparse::Status::Partial => None,
                httparse::Status::Complete(used) => Some((
                    used,
                    Response {
                        status: res.code.unwrap_or_default(),
                        headers: owned_headers(res.headers),
                        body: Vec::new(),
                    },
                )),
            })
        })?
        .ok_or_else(|| closed("response"))
    }

    /// The next response with its body (none after `HEAD`, `204` or `304`; a body without
    /// `Content-Length` or chunked encoding runs until the server closes, as for HTTP/1.0).
    pub fn read_response(&mut self, head_only: bool) -> std::io::Result<Response> {
        let mut resp = self.read_head()?;
        if !(head_only || resp.status == 204 || resp.status == 304) {
            resp.body = self.read_body(&resp.headers, true)?;
        }
        Ok(resp)
    }

    /// The data of the next chunk of a chunked body; empty for the last chunk, whose trailer
    /// section is read too.
    pub fn read_chunk(&mut self) -> std::io::Result<Vec<u8>> {
        let size = self
            .parse("chunk size", |buf| match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete(found)) => Ok(Some(found)),
                Ok(httparse::Status::Partial) => Ok(None),
                Err(httparse::InvalidChunkSize) => Err("invalid chunk size".to_string()),
            })?
            .ok_or_else(|| closed("chunk size"))?;
        if size == 0 {
            self.parse("trailer section", |buf| {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                Ok(match httparse::parse_headers(buf, &mut headers) {
                    Ok(httparse::Status::Complete((used, _))) => Some((used, ())),
                    Ok(httparse::Status::Partial) => None,
                    Err(e) => return Err(e.to_string()),
                })
            })?
            .ok_or_else(|| closed("end of the trailer section"))?;
            return Ok(Vec::new());
        }
        let size = usize::try_from(size).map_err(|_| invalid(format!("chunk of {size} bytes")))?;
        let data = self.take(size)?;
        if self.take(2)? != b"\r\n" {
            return Err(invalid("chunk data not followed by CRLF".to_string()));
        }
        Ok(data)
    }

    /// A body by `Transfer-Encoding: chunked`, `Content-Length`, or (when `until_close`) the
    /// peer's close; otherwise empty.
    fn read_body(
        &mut self,
        headers: &[(String, String)],
        until_close: bool,
    ) -> std::io::Result<Vec<u8>> {
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_ascii_lowercase())
        };
        if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let chunk = self.read_chunk()?;
                if chunk.is_empty() {
                    return Ok(body);
                }
                body.extend_from_slice(&chunk);
            }
        }
        if let Some(len) = get("content-length") {
            let len = len
                .parse()
                .map_err(|_| invalid(format!("content-length: {len}")))?;
            return self.take(len);
        }
        if until_close {
            while self.fill()? > 0 {}
            return Ok(std::mem::take(&mut self.buf));
        }
        Ok(Vec::new())
    }
}

/// How a request body is framed.
enum Body<'a> {
    None,
    Length(&'a [u8]),
    Chunked(&'a [&'a [u8]]),
}

/// `METHOD path HTTP/1.1`, `Host: rampart.test` unless `headers` has a host, `headers`, the
/// body's framing header, `Connection: close` when `close`, then the body.
fn encode_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Body<'_>,
    close: bool,
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str("Host: rampart.test\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match body {
        Body::None => {}
        Body::Length(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
        Body::Chunked(_) => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    match body {
        Body::None => {}
        Body::Length(b) => bytes.extend_from_slice(b),
        Body::Chunked(chunks) => {
            for chunk in chunks.iter().filter(|c| !c.is_empty()) {
                bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                bytes.extend_from_slice(chunk);
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(b"0\r\n\r\n");
        }
    }
    bytes
}

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

/// Send raw bytes (a malformed or HTTP/1.0 request), read one response (the request should
/// say `Connection: close` or carry a length; the read gives up after 10 s).
pub fn send_raw(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    exchange(addr, raw, raw.starts_with(b"HEAD "))
}

fn exchange(addr: SocketAddr, raw: &[u8], head_only: bool) -> std::io::Result<Response> {
    let mut conn = HttpConn::connect(addr)?;
    conn.write_all(raw)?;
    conn.read_response(head_only)
}

/// `METHOD path` with extra headers and an optional body; `Connection: close`. An error when
/// the connection fails or the response cannot be parsed.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Response> {
    let body = body.map_or(Body::None, Body::Length);
    let raw = encode_request(method, path, headers, body, true);
    exchange(addr, &raw, method == "HEAD")
}

/// [`try_request`], panicking on an error.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// `METHOD path` with `chunks` as a chunked body (no `Content-Length`); `Connection: close`.
pub fn request_chunked(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    chunks: &[&[u8]],
) -> Response {
    let raw = encode_request(method, path, headers, Body::Chunked(chunks), true);
    exchange(addr, &raw, method == "HEAD").unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], None)
}

/// One keep-alive connection for many requests (responses must carry a length or be chunked).
/// Like a browser, it opens a new connection after a response that said `Connection: close`
/// (Rampart closes after `[limits] max_requests_per_connection` requests).
pub struct KeepAlive {
    addr: SocketAddr,
    conn: HttpConn,
    /// Connections opened so far.
    pub connections: usize,
    closed: bool,
}

impl KeepAlive {
    pub fn connect(addr: SocketAddr) -> Self {
        Self {
            addr,
            conn: HttpConn::connect(addr).expect("connect"),
            connections: 1,
            closed: false,
        }
    }

    pub fn get(&mut self, path: &str) -> Response {
        if self.closed {
            self.conn = HttpConn::connect(self.addr).expect("reconnect");
            self.connections += 1;
        }
        self.conn
            .send("GET", path, &[], None, false)
            .expect("write");
        let resp = self.conn.read_response(false).expect("response");
        self.closed = resp
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        resp
    }
}

/// The client's framing against a server that sends byte by byte: chunk extensions and a
/// trailer, `Content-Length` on the same connection, then a body delimited by close.
#[test]
fn http_conn_parses_split_messages() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let raw: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A:  spaced \r\n\r\n\
            5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n\
            HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabc\
            HTTP/1.0 200 OK\r\n\r\nuntil close";
        for byte in raw {
            stream.write_all(&[*byte]).expect("write");
        }
    });
    let mut conn = HttpConn::connect(addr).expect("connect");
    let chunked = conn.read_response(false).expect("chunked");
    assert_eq!(
        (chunked.status, chunked.text().as_str()),
        (200, "hello world")
    );
    assert_eq!(chunked.header("x-a"), Some("spaced"));
    let sized = conn.read_response(false).expect("sized");
    assert_eq!((sized.status, sized.text().as_str()), (201, "abc"));
    server.join().expect("server");
    let rest = conn.read_response(false).expect("close-delimited");
    assert_eq!((rest.status, rest.text().as_str()), (200, "until close"));
}

/// GET `path` as client `ip` (through `X-Forwarded-For`, for a proxy that trusts the caller).
pub fn get_as(addr: SocketAddr, path: &str, ip: &str) -> Response {
    request(addr, "GET", path, &[("X-Forwarded-For", ip)], None)
}

/// `n` requests at once, one thread each, spread round-robin over `addrs`; their statuses.
pub fn burst(addrs: &[SocketAddr], path: &str, ip: &str, n: usize) -> Vec<u16> {
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let addr = addrs[i % addrs.len()];
            let (path, ip) = (path.to_string(), ip.to_string());
            std::thread::spawn(move || get_as(addr, &path, &ip).status)
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("request thread"))
        .collect()
}

/// How many of `statuses` are `status`.
pub fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}
