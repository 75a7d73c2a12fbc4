//! Upstream HTTP servers on loopback that record what they receive and answer as told.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

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
        Self::serve(
            TcpListener::bind("127.0.0.1:0").expect("bind upstream"),
            handler,
        )
    }

    /// [`Upstream::start`] on 127.0.0.1:`port` (an address that was dead, coming back).
    pub fn start_at(
        port: u16,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::serve(
            TcpListener::bind(("127.0.0.1", port)).expect("bind upstream port"),
            handler,
        )
    }

    fn serve(
        listener: TcpListener,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
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
    let mut conn = HttpConn::new(stream);
    loop {
        let Ok(Some(req)) = conn.read_request() else {
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
        if conn.write_all(&out).is_err() || close {
            return;
        }
    }
}
