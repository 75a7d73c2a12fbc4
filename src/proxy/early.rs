//! Requests answered in the connection gate, before Pingora parses them: a fresh cache hit
//! held in this process, and a client known to be over every rate limit of its route.
//!
//! Phase: before any of Pingora's; the gate (`gate::Early`) offers each checked head of a
//! request without a body. For a hit or a 429, Pingora's session (its parse, its header map,
//! its response writer, its reuse of the connection) costs more than deciding the answer
//! itself. A head is parsed here only when it may be one: a GET whose path (as sent) routes
//! to a cached route ([`may_hit`], a test on the bytes), or while the limiter knows some
//! client refusing (`Limiter::refuses_any`, an atomic load). Anything else goes to Pingora
//! untouched.
//!
//! Invariant: an early answer is the answer `request_filter` would give, field for field but
//! for the request id, the date and the timings, and it is counted the same. It runs the
//! same steps in the same order (`steps::identify`, the canonical path, `before_limits`,
//! the rate limits, the fresh hit), builds the response with the same calls
//! (`respond::prepare`, `steps::serve_hit`) and records it like `logging` does; for the
//! connection's kept head again (`repeat`), the steps whose outcome follows from the head, the
//! peer and the generation alone are not run again but taken from its first sight. A step that
//! cannot decide without waiting (the limiter needs Redis: `Here::AskStore`) or that would
//! answer otherwise (404, 400, a preflight, a miss) leaves the request to Pingora, which
//! decides it from the start: nothing was charged or counted here.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::{HeaderValue, CONNECTION};
use http::{Method, Version};
use pingora::http::RequestHeader;

use crate::ctx::Ctx;
use crate::fields::Fields;
use crate::gate::{Answer, Early};
use crate::limits::head;
use crate::path;
use crate::ratelimit::Here;
use crate::respond;
use crate::runtime::Runtime;

use super::repeat::{Known, Repeat, Sent, Template};
use super::steps::{held_hit, identify, identify_request, limited, serve_hit};
use super::Proxy;

impl Early for Proxy {
    type Memo = Repeat;

    fn answer<'m>(
        &self,
        repeat: &'m mut Repeat,
        head: &[u8],
        peer: Option<IpAddr>,
        tls: bool,
        last: bool,
    ) -> Option<Answer<'m>> {
        let current = self.live.peek();
        let refusing = current.ratelimit.refuses_any();
        if !refusing && !may_hit(&current, head) {
            return None;
        }
        let runtime = arc_swap::Guard::into_inner(current);
        let mut parsed = None;
        let (req, seen) = match repeat.same(head, &runtime, last) {
            Some(again) => (again.req, Seen::Again(again.known, again.refusal)),
            None => (parsed.insert(request_header(head)?), Seen::First(peer)),
        };
        let mut ctx = Ctx::new(runtime);
        let reply = self.early(req, tls, &mut ctx, refusing, last, seen);
        if let Some((reply, _)) = &reply {
            let (status, body_len) = reply.recorded();
            self.metrics.request_started();
            self.record(req, &ctx, status, body_len, None);
        }
        ctx.unfinished.finish();
        let (reply, known) = reply?;
        match reply {
            Reply::Hit(sent) => Some(sent.owned()),
            // `limited` left the decision in `ctx`; the answer is kept with it, and lent.
            Reply::Refused(sent) => match ctx.ratelimit.take() {
                Some(decision) => {
                    let refusal = Template::new(sent, decision, &ctx);
                    repeat.keep(head, &ctx.runtime, last, parsed.zip(known), refusal);
                    repeat.answer().map(Sent::lent)
                }
                None => Some(sent.owned()),
            },
            Reply::Again { .. } => repeat.answer().map(Sent::lent),
        }
    }
}

/// The head being answered: seen for the first time on this connection (from this peer), or
/// the kept refusal's head again (`repeat`).
enum Seen<'k> {
    First(Option<IpAddr>),
    Again(&'k Known, &'k mut Template),
}

impl Sent {
    /// The answer the gate writes.
    fn owned(self) -> Answer<'static> {
        Answer {
            bytes: Cow::Owned(self.bytes),
            keep_alive: self.keep_alive,
        }
    }

    /// The answer the gate writes, lent.
    fn lent(&self) -> Answer<'_> {
        Answer {
            bytes: Cow::Borrowed(&self.bytes),
            keep_alive: self.keep_alive,
        }
    }

    /// `resp` and `body` as the client gets them (no body for HEAD), with `Date` and
    /// `Connection`.
    fn of(resp: impl Fields, body: &[u8], req: &RequestHeader, last: bool) -> Self {
        let keep_alive = !last && keeps_alive(req);
        let body = if req.method == Method::HEAD {
            b""
        } else {
            body
        };
        Sent {
            status: resp.status().as_u16(),
            body_len: body.len(),
            bytes: respond::to_h1(resp, body, keep_alive),
            keep_alive,
        }
    }
}

/// How an early answer was made.
enum Reply {
    /// A fresh hit held here.
    Hit(Sent),
    /// A refusal, built.
    Refused(Sent),
    /// The connection's kept refusal, patched to be sent again (`repeat`).
    Again { status: u16, body_len: usize },
}

impl Reply {
    /// Its status and body length, for the record.
    fn recorded(&self) -> (u16, usize) {
        match self {
            Reply::Hit(sent) | Reply::Refused(sent) => (sent.status, sent.body_len),
            Reply::Again { status, body_len } => (*status, *body_len),
        }
    }
}

impl Proxy {
    /// `request_filter`'s steps up to the rate limits; then, for a fresh hit held here, the
    /// limiter's decision when it needs no store and the hit or the refusal; otherwise only a
    /// known refusal. A step that answers itself (400, 404, the public metrics, a preflight,
    /// 503) leaves the request to Pingora, which takes it again from the start. For a head
    /// seen for the first time, what it was found to be comes back with the reply, to be kept
    /// with a refusal; the kept head again (`req` is its parse, already canonical) uses what
    /// was found then, and runs only the steps that depend on the moment.
    fn early(
        &self,
        req: &mut RequestHeader,
        tls: bool,
        ctx: &mut Ctx,
        refusing: bool,
        last: bool,
        seen: Seen<'_>,
    ) -> Option<(Reply, Option<Known>)> {
        // `known`: Ok, what the kept head was found to be; Err, a first sight's route, what
        // it is found to be made below once needed (and returned in `first`).
        let mut first = None;
        let (known, kept) = match seen {
            Seen::First(peer) => {
                identify(req, peer, tls, ctx);
                path::canonicalize(req).ok()?;
                let route = self.before_limits(req, ctx).ok()?;
                (Err(route), None)
            }
            Seen::Again(known, refusal) => {
                identify_request(req, tls, ctx);
                ctx.client = known.client.clone();
                // The other steps of `before_limits` passed this head under this generation
                // from this client, and depend on nothing else.
                self.limits_on_route(req, ctx, &known.route).ok()?;
                (Ok(known), Some(refusal))
            }
        };
        let held = held_hit(req, ctx);
        if held.is_none() && !refusing {
            return None;
        }
        let known: &Known = match known {
            Ok(known) => known,
            Err(route) => {
                let limiter = &ctx.runtime.ratelimit;
                let charges = limiter.charges(req, &route.name, ctx.client.as_ref());
                first.insert(Known {
                    client: ctx.client.clone(),
                    route,
                    charges,
                })
            }
        };
        let limiter = &ctx.runtime.ratelimit;
        let decision = if let Some(held) = held {
            let Here::Decided(decision) = limiter.check_here(&known.charges) else {
                return None;
            };
            match decision {
                Some(decision) if decision.refusal.is_some() => decision,
                decision => {
                    ctx.ratelimit = decision;
                    let hit = serve_hit(req, held, ctx);
                    let sent = Sent::of(hit.header, &hit.body, req, last);
                    return Some((Reply::Hit(sent), None));
                }
            }
        } else {
            limiter.known_refusal(&known.charges)?
        };
        if let Some(sent) = kept.and_then(|kept| kept.again(&decision, ctx)) {
            let again = Reply::Again {
                status: sent.status,
                body_len: sent.body_len,
            };
            ctx.ratelimit = Some(decision);
            return Some((again, None));
        }
        let refusal = limited(decision, ctx)?;
        let (resp, body) = respond::prepare(&ctx.runtime.headers, req, ctx, refusal);
        let sent = Sent::of(resp, &body, req, last);
        Some((Reply::Refused(sent), first))
    }
}

/// Whether `head` may be a fresh hit held here: a GET whose path, as sent, routes to a route
/// with a cache policy. A test on the bytes, so that other requests are not parsed twice; a
/// request it passes over is answered by Pingora, just as correctly.
fn may_hit(rt: &Runtime, head: &[u8]) -> bool {
    let Some(rest) = head.strip_prefix(b"GET ") else {
        return false;
    };
    let end = rest
        .iter()
        .position(|&b| b == b' ' || b == b'?')
        .unwrap_or(rest.len());
    let Ok(path) = std::str::from_utf8(&rest[..end]) else {
        return false;
    };
    rt.router
        .route(path)
        .is_some_and(|route| rt.cache.caches(&route.name))
}

/// The head as Pingora would parse it (the gate checked it already: `limits::head::check`).
/// Names keep no case: nothing here forwards them. Fields go straight into `http`'s map: each
/// `append_header` would copy the name twice and parse it back (`fields::Bare` says why).
fn request_header(head: &[u8]) -> Option<RequestHeader> {
    // More fields than this (rare) and Pingora parses the head instead.
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut fields);
    let httparse::Status::Complete(_) = parsed.parse(head).ok()? else {
        return None;
    };
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    parts.version = match parsed.version? {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    parts.headers.reserve(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = http::HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(field.value).ok()?;
        parts.headers.try_append(name, value).ok()?;
    }
    let mut req = RequestHeader::from(parts);
    req.set_raw_path(parsed.path?.as_bytes()).ok()?;
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
name = "kpis"
prefix = "/api/kpis"
upstream = "u"
cache = "c"

[[routes]]
name = "api"
prefix = "/api/"
upstream = "u"

[cache.policies.c]
ttl = "60s"

[ratelimit.policies.p]
rate = "1/h"
burst = 2
routes = ["api"]
"#;

    fn proxy() -> Proxy {
        proxy_of(CONFIG)
    }

    fn proxy_of(text: &str) -> Proxy {
        let config = crate::config::parse("test.toml", text, &BTreeMap::new()).expect("config");
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

    /// Only a GET routed (as sent) to a cached route is parsed for a hit.
    #[test]
    fn heads_that_may_be_hits() {
        let rt = proxy().live.current();
        let may = |head: &str| may_hit(&rt, head.as_bytes());
        assert!(may("GET /api/kpis HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(may("GET /api/kpis?q=1 HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(may("GET /api/kpis/x HTTP/1.1\r\n\r\n"));
        assert!(!may("GET /api/x HTTP/1.1\r\n\r\n"), "an uncached route");
        assert!(!may("HEAD /api/kpis HTTP/1.1\r\n\r\n"));
        assert!(!may("POST /api/kpis HTTP/1.1\r\n\r\n"));
        assert!(!may("GET /other HTTP/1.1\r\n\r\n"), "no route");
        assert!(!may_hit(&rt, b"GET /api/kpis\xff HTTP/1.1\r\n\r\n"));
    }

    /// The gate's question: answered only for a client the limiter refused, on a route that
    /// limits it, as `request_filter` would answer it.
    #[tokio::test]
    async fn only_a_client_known_refusing_is_answered_early() {
        let proxy = proxy();
        let client = Some(IpAddr::from([192, 0, 2, 1]));
        let get = "GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n";
        assert!(
            answer_once(&proxy, get.as_bytes(), client, false).is_none(),
            "nothing refused yet"
        );
        assert_eq!(checked(&proxy, get).await, 200);
        assert_eq!(checked(&proxy, get).await, 200);
        assert!(
            answer_once(&proxy, get.as_bytes(), client, false).is_none(),
            "not refused yet"
        );
        assert_eq!(
            checked(&proxy, get).await,
            429,
            "the limiter refuses and learns it"
        );

        let answer = answer_once(&proxy, get.as_bytes(), client, false).expect("known refusing");
        assert!(answer.keep_alive);
        // Field names as Pingora writes them; compared without case.
        let text = String::from_utf8(answer.bytes.into_owned())
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
        let last = answer_once(&proxy, get.as_bytes(), client, true).expect("refused");
        assert!(!last.keep_alive);
        let last = String::from_utf8_lossy(&last.bytes).to_ascii_lowercase();
        assert!(last.contains("\r\nconnection: close\r\n"), "{last}");
        let head = answer_once(
            &proxy,
            b"HEAD /api/x HTTP/1.1\r\nHost: h\r\n\r\n",
            client,
            false,
        )
        .expect("refused");
        assert!(
            head.bytes.ends_with(b"\r\n\r\n"),
            "no body after a HEAD's header"
        );
        let close = "GET /api/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
        assert!(
            !answer_once(&proxy, close.as_bytes(), client, false)
                .expect("refused")
                .keep_alive
        );

        // Another client, another route, no route: Pingora's to decide.
        let other = Some(IpAddr::from([192, 0, 2, 2]));
        assert!(answer_once(&proxy, get.as_bytes(), other, false).is_none());
        let unlimited = "GET /site HTTP/1.1\r\nHost: h\r\n\r\n";
        assert!(answer_once(&proxy, unlimited.as_bytes(), client, false).is_none());

        // Counted as the limiter counts a refusal, and as a request.
        assert_counted(&proxy, 5, 3);
    }

    /// `bytes` as text, with the values that differ per request (the request id, wherever
    /// it occurs, `X-Process-Time` and `Date`) blanked.
    fn without_per_request(bytes: &[u8]) -> (String, String) {
        let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
        let value = |name: &str| {
            let start = text.find(&format!("\r\n{name}: ")).expect(name) + name.len() + 4;
            let end = start + text[start..].find("\r\n").expect("line end");
            text[start..end].to_string()
        };
        let id = value("x-request-id");
        let mut blank = text.replace(&id, "<id>");
        for name in ["x-process-time", "Date"] {
            blank = blank.replace(&format!("{name}: {}\r\n", value(name)), "");
        }
        (blank, id)
    }

    /// A refused head sent again on the connection gets the kept answer with its own request
    /// id and timing; whatever changes the answer builds it again.
    #[tokio::test]
    async fn a_repeated_refusal_is_the_kept_answer_with_its_own_id() {
        let proxy = proxy();
        let client = Some(IpAddr::from([192, 0, 2, 1]));
        let get = "GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n";
        for _ in 0..3 {
            checked(&proxy, get).await;
        }
        let mut repeat = Repeat::default();
        let answer = |repeat: &mut Repeat, head: &str, last: bool| {
            let lent = proxy
                .answer(repeat, head.as_bytes(), client, false, last)
                .expect("refused");
            Answer {
                bytes: Cow::Owned(lent.bytes.into_owned()),
                keep_alive: lent.keep_alive,
            }
        };
        let first = answer(&mut repeat, get, false);
        assert_eq!(repeat.kept_head(), Some(get.as_bytes()), "kept");
        let (built, first_id) = without_per_request(&first.bytes);
        for _ in 0..3 {
            let again = answer(&mut repeat, get, false);
            assert_eq!(repeat.kept_head(), Some(get.as_bytes()), "still kept");
            assert!(again.keep_alive);
            let (kept, id) = without_per_request(&again.bytes);
            assert_eq!(kept, built, "the same answer");
            assert_ne!(id, first_id, "each with an id of its own");
            assert_eq!(kept.matches("<id>").count(), 2, "in its field and its body");
        }
        // The connection's last request: `Connection: close`, built again.
        let last = answer(&mut repeat, get, true);
        assert!(!last.keep_alive);
        assert!(String::from_utf8_lossy(&last.bytes).contains("\r\nConnection: close\r\n"));
        // The client's own id is kept as it is, request after request.
        let with_id = "GET /api/x HTTP/1.1\r\nHost: h\r\nX-Request-Id: abc-1\r\n\r\n";
        for _ in 0..2 {
            let (text, id) = without_per_request(&answer(&mut repeat, with_id, false).bytes);
            assert_eq!(id, "abc-1");
            assert_eq!(text.matches("<id>").count(), 2, "{text}");
        }
        // A head with another method is another answer: no body after a HEAD's header.
        let head_req = answer(
            &mut repeat,
            "HEAD /api/x HTTP/1.1\r\nHost: h\r\n\r\n",
            false,
        );
        assert!(head_req.bytes.ends_with(b"\r\n\r\n"));

        // The check's refusal and every answer's; the GETs the gate answered.
        assert_counted(&proxy, 9, 7);
    }

    /// The kept head again skips the steps its first sight passed, not the limits that depend
    /// on the moment: with its client's requests in flight at their limit, it is left to
    /// Pingora (which answers 503), and answered again once a slot is free.
    #[tokio::test]
    async fn a_kept_head_is_held_to_the_in_flight_limit_again() {
        let proxy = proxy_of(&format!(
            "{CONFIG}\n[limits]\nmax_inflight_per_client = 1\n"
        ));
        let peer = IpAddr::from([192, 0, 2, 1]);
        let get = "GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n";
        for _ in 0..3 {
            checked(&proxy, get).await;
        }
        let mut repeat = Repeat::default();
        let answered = |repeat: &mut Repeat| {
            proxy
                .answer(repeat, get.as_bytes(), Some(peer), false, false)
                .is_some()
        };
        assert!(answered(&mut repeat), "refused, and kept");
        assert!(answered(&mut repeat), "the kept head again");
        let runtime = proxy.live.current();
        let mut in_flight = crate::limits::RequestState::default();
        assert!(runtime
            .limits
            .admit(None, None, Some(peer), &mut in_flight)
            .is_ok());
        assert!(!answered(&mut repeat), "the client's one slot is taken");
        drop(in_flight);
        assert!(answered(&mut repeat), "free again");
    }

    /// The policy's refusals so far, and the 429s to a GET on the route.
    fn assert_counted(proxy: &Proxy, limited: u32, gets: u32) {
        let metrics = proxy.metrics.render();
        let metrics = String::from_utf8_lossy(&metrics);
        let refusals = format!(
            "rampart_ratelimit_decisions_total{{outcome=\"limited\",policy=\"p\"}} {limited}\n"
        );
        assert!(metrics.contains(&refusals), "{refusals}: {metrics}");
        let answered =
            format!("http_requests_total{{method=\"GET\",route=\"api\",status=\"429\"}} {gets}\n");
        assert!(metrics.contains(&answered), "{answered}: {metrics}");
    }

    /// `answer` on a connection of its own, the answer owned.
    fn answer_once(
        proxy: &Proxy,
        head: &[u8],
        client: Option<IpAddr>,
        last: bool,
    ) -> Option<Answer<'static>> {
        let mut repeat = Repeat::default();
        let lent = proxy.answer(&mut repeat, head, client, false, last)?;
        Some(Answer {
            bytes: Cow::Owned(lent.bytes.into_owned()),
            keep_alive: lent.keep_alive,
        })
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
