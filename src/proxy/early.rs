//! Requests answered in the connection gate, before Pingora parses them: a client known to be
//! over every rate limit of its route gets its 429 there.
//!
//! Phase: before any of Pingora's; the gate (`gate::Early`) offers each checked head of a
//! request without a body. Under a flood the 429 is most of the traffic, and Pingora's session
//! (its parse, its header map, its response writer, its reuse of the connection) costs more
//! than deciding the 429 itself. Only when the limiter knows some client refusing now
//! (`Limiter::refuses_any`: an atomic load, after the generation's) is the head parsed here;
//! otherwise the request goes to Pingora untouched.
//!
//! Invariant: an early answer is the answer `request_filter` would give, byte for byte but for
//! the request id, the date and the timings. It runs the same steps (`steps::identify`, the
//! canonical path, `before_limits`), asks the limiter the same question without charging
//! (`Limiter::known_refusal`: a refused request charges nothing, so nothing shared changes),
//! builds the response with `respond::prepare`, and records it like `logging` does. Any step
//! that would answer otherwise (404, 400, a preflight, a limit not known refusing) hands the
//! request to Pingora, which decides it from the start.

use std::net::IpAddr;

use http::header::{HeaderValue, CONNECTION};
use http::{Method, Version};
use pingora::http::RequestHeader;

use crate::ctx::Ctx;
use crate::gate::{Answer, Early};
use crate::limits::head;
use crate::path;
use crate::respond;

use super::steps::{identify, limited};
use super::Proxy;

impl Early for Proxy {
    fn answer(&self, head: &[u8], peer: Option<IpAddr>, tls: bool, last: bool) -> Option<Answer> {
        let runtime = self.live.current();
        if !runtime.ratelimit.refuses_any() {
            return None;
        }
        let mut req = request_header(head)?;
        let mut ctx = Ctx::new(runtime);
        identify(&req, peer, tls, &mut ctx);
        let answer = self.known_refusal(&mut req, &mut ctx, last);
        if let Some(answer) = &answer {
            self.metrics.request_started();
            self.record(&req, &ctx, answer.status, answer.body_len, None);
        }
        ctx.unfinished.finish();
        answer.map(|a| Answer {
            bytes: a.bytes,
            keep_alive: a.keep_alive,
        })
    }
}

/// The 429 as it is written, with what the access log needs of it.
struct Sent {
    status: u16,
    body_len: usize,
    bytes: Vec<u8>,
    keep_alive: bool,
}

impl Proxy {
    /// `request_filter`'s steps up to the rate limits, then the limiter's known refusal. A step
    /// that answers itself (400, 404, the public metrics, a preflight, 503) leaves the request
    /// to Pingora, which takes it again from the start.
    fn known_refusal(&self, req: &mut RequestHeader, ctx: &mut Ctx, last: bool) -> Option<Sent> {
        path::canonicalize(req).ok()?;
        let route = self.before_limits(req, ctx).ok()?;
        let client = ctx.client.as_ref();
        let decision = ctx
            .runtime
            .ratelimit
            .known_refusal(req, &route.name, client)?;
        let local = limited(decision, ctx)?;
        let (resp, body) = respond::prepare(&ctx.runtime.headers, req, ctx, local).ok()?;
        let keep_alive = !last && keeps_alive(req);
        let sent: &[u8] = if req.method == Method::HEAD {
            b""
        } else {
            &body
        };
        Some(Sent {
            status: resp.status.as_u16(),
            body_len: sent.len(),
            bytes: respond::to_h1(resp, sent, keep_alive),
            keep_alive,
        })
    }
}

/// The head as Pingora would parse it (the gate checked it already: `limits::head::check`).
/// Names keep no case: nothing here forwards them.
fn request_header(head: &[u8]) -> Option<RequestHeader> {
    // More fields than this (rare) and Pingora parses the head instead.
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut fields);
    let httparse::Status::Complete(_) = parsed.parse(head).ok()? else {
        return None;
    };
    let method = parsed.method?;
    let target = parsed.path?;
    let mut req =
        RequestHeader::build_no_case(method, target.as_bytes(), Some(parsed.headers.len())).ok()?;
    req.set_version(match parsed.version? {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    });
    for field in parsed.headers.iter() {
        let value = HeaderValue::from_bytes(field.value).ok()?;
        req.append_header(field.name.to_string(), value).ok()?;
    }
    Some(req)
}

/// Whether the client keeps the connection open after this request (RFC 9112 section 9.3):
/// HTTP/1.1 unless it says `close`, HTTP/1.0 only if it says `keep-alive`.
fn keeps_alive(req: &RequestHeader) -> bool {
    let says = |token: &[u8]| {
        req.headers
            .get_all(CONNECTION)
            .iter()
            .any(|v| head::list(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(token)))
    };
    match req.version {
        Version::HTTP_10 => says(b"keep-alive"),
        _ => !says(b"close"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::metrics::Metrics;
    use crate::runtime::{Live, Runtime};

    const CONFIG: &str = r#"
[upstreams.u]
addrs = ["127.0.0.1:9"]

[[routes]]
name = "api"
prefix = "/api/"
upstream = "u"

[ratelimit.policies.p]
rate = "1/h"
burst = 2
routes = ["api"]
"#;

    fn proxy() -> Proxy {
        let config = crate::config::parse("test.toml", CONFIG, &BTreeMap::new()).expect("config");
        let metrics = Arc::new(Metrics::new(&config.metrics).expect("metrics"));
        let first = Runtime::build(config, 1, &metrics, None).expect("runtime");
        Proxy {
            live: Arc::new(Live::new(first, metrics.clone())),
            metrics,
        }
    }

    /// What `request_filter` does with the request: the limiter's check, charged.
    async fn checked(proxy: &Proxy, head: &str) -> u16 {
        let mut req = request_header(head.as_bytes()).expect("head");
        let mut ctx = Ctx::new(proxy.live.current());
        identify(&req, Some([192, 0, 2, 1].into()), false, &mut ctx);
        match proxy.local_response(&req, &mut ctx).await {
            Some(local) => local.status.as_u16(),
            None => {
                path::canonicalize(&mut req).expect("path");
                200
            }
        }
    }

    /// The gate's question: answered only for a client the limiter refused, on a route that
    /// limits it, as `request_filter` would answer it.
    #[tokio::test]
    async fn only_a_client_known_refusing_is_answered_early() {
        let proxy = proxy();
        let client = Some(IpAddr::from([192, 0, 2, 1]));
        let get = "GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n";
        assert!(
            proxy.answer(get.as_bytes(), client, false, false).is_none(),
            "nothing refused yet"
        );
        assert_eq!(checked(&proxy, get).await, 200);
        assert_eq!(checked(&proxy, get).await, 200);
        assert!(
            proxy.answer(get.as_bytes(), client, false, false).is_none(),
            "not refused yet"
        );
        assert_eq!(
            checked(&proxy, get).await,
            429,
            "the limiter refuses and learns it"
        );

        let answer = proxy
            .answer(get.as_bytes(), client, false, false)
            .expect("known refusing");
        assert!(answer.keep_alive);
        // Field names as Pingora writes them; compared without case.
        let text = String::from_utf8(answer.bytes)
            .expect("utf-8")
            .to_ascii_lowercase();
        assert!(
            text.starts_with("http/1.1 429 too many requests\r\n"),
            "{text}"
        );
        for line in [
            "content-type: application/problem+json",
            "retry-after: ",
            "ratelimit: \"p\";r=0;",
            "x-content-type-options: nosniff",
            "content-length: ",
            "date: ",
            "connection: keep-alive",
        ] {
            assert!(text.contains(&format!("\r\n{line}")), "{line} in {text}");
        }
        assert!(text.ends_with('}'), "the problem body follows: {text}");

        // The connection's last request says so; HEAD has no body; the client may close.
        let last = proxy
            .answer(get.as_bytes(), client, false, true)
            .expect("refused");
        assert!(!last.keep_alive);
        let last = String::from_utf8_lossy(&last.bytes).to_ascii_lowercase();
        assert!(last.contains("\r\nconnection: close\r\n"), "{last}");
        let head = proxy
            .answer(
                b"HEAD /api/x HTTP/1.1\r\nHost: h\r\n\r\n",
                client,
                false,
                false,
            )
            .expect("refused");
        assert!(
            head.bytes.ends_with(b"\r\n\r\n"),
            "no body after a HEAD's header"
        );
        let close = "GET /api/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
        assert!(
            !proxy
                .answer(close.as_bytes(), client, false, false)
                .expect("refused")
                .keep_alive
        );

        // Another client, another route, no route: Pingora's to decide.
        let other = Some(IpAddr::from([192, 0, 2, 2]));
        assert!(proxy.answer(get.as_bytes(), other, false, false).is_none());
        let unlimited = "GET /site HTTP/1.1\r\nHost: h\r\n\r\n";
        assert!(proxy
            .answer(unlimited.as_bytes(), client, false, false)
            .is_none());

        // Counted as the limiter counts a refusal, and as a request.
        let metrics = proxy.metrics.render();
        let metrics = String::from_utf8_lossy(&metrics);
        assert!(
            metrics
                .contains("rampart_ratelimit_decisions_total{outcome=\"limited\",policy=\"p\"} 5"),
            "{metrics}"
        );
        assert!(
            metrics.contains("http_requests_total{method=\"GET\",route=\"api\",status=\"429\"} 3"),
            "the gate's GETs: {metrics}"
        );
    }

    fn head(text: &str) -> RequestHeader {
        request_header(text.as_bytes()).expect("a head")
    }

    #[test]
    fn heads_parse_as_pingora_reads_them() {
        let req = head("GET /api/v1/x?a=1 HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n");
        assert_eq!(req.method, Method::GET);
        assert_eq!(req.uri.path(), "/api/v1/x");
        assert_eq!(req.uri.query(), Some("a=1"));
        assert_eq!(req.version, Version::HTTP_11);
        assert_eq!(
            req.headers.get("x-forwarded-for").map(|v| v.as_bytes()),
            Some(&b"1.2.3.4"[..])
        );
        assert!(
            request_header(b"GET / HTTP/1.1\r\nHost: h\r\n").is_none(),
            "unfinished"
        );
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        assert!(keeps_alive(&head("GET / HTTP/1.1\r\nHost: h\r\n\r\n")));
        assert!(!keeps_alive(&head(
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, Close\r\n\r\n"
        )));
        assert!(!keeps_alive(&head("GET / HTTP/1.0\r\n\r\n")));
        assert!(keeps_alive(&head(
            "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
        )));
    }
}
