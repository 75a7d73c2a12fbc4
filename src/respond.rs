//! Responses Rampart writes itself (308, 400, 403, 404, 429, 503, 5xx, preflight, public metrics) as
//! values, and the one place that sends them.
//!
//! Phases: the steps of `request_filter` return a [`LocalResponse`] instead of writing one, so
//! each step is a plain function that can be unit-tested without a session; `proxy.rs` hands
//! the value to [`send`], as does `fail_to_proxy`. Such responses skip Pingora's
//! `response_filter`, so [`finish_headers`] runs here and from `response_filter` alike: the one
//! place that decides what every response carries. Bodies go through the same compression
//! policy as proxied ones (`compress::RequestState::encode_local`), so `Vary` and encoding
//! agree.
//!
//! Invariants: a self-made error is `application/problem+json` (RFC 9457) naming the request
//! id, and carries the same security, CORS and request-id headers as a proxied response; a
//! request whose body was not read is answered with `Connection: close`, so its unread body is
//! never parsed as the next request.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::Session;

use crate::ctx::Ctx;
use crate::fields::{Fields, Response};
use crate::headers::Headers;

/// A whole response, decided but not yet sent.
#[derive(Debug)]
pub struct LocalResponse {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl LocalResponse {
    /// An RFC 9457 problem: `status`, the sentence explaining it, the request id.
    pub fn problem(status: u16, detail: &str, request_id: &str) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // The object written directly, serde_json escaping the strings: serializing a struct
        // (its keys included) was a tenth of a 429's cost in callgrind.
        let string = |body: &mut Vec<u8>, s: &str| {
            // Writing to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *body, s);
        };
        let mut body = Vec::with_capacity(128 + detail.len() + request_id.len());
        body.extend_from_slice(br#"{"type":"about:blank","title":"#);
        string(&mut body, status.canonical_reason().unwrap_or("Error"));
        body.extend_from_slice(br#","status":"#);
        body.extend_from_slice(status.as_str().as_bytes());
        body.extend_from_slice(br#","detail":"#);
        string(&mut body, detail);
        body.extend_from_slice(br#","request_id":"#);
        string(&mut body, request_id);
        body.push(b'}');
        Self::content(status, "application/problem+json", body)
    }

    /// A body Rampart serves itself, never to be stored by a cache.
    pub fn content(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Self {
        Self {
            status,
            headers: vec![
                (
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static(content_type),
                ),
                (
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                ),
            ],
            body: Bytes::from(body),
        }
    }

    /// `308 Permanent Redirect` to `location` (the method and body are kept by the client).
    pub fn redirect(location: HeaderValue) -> Self {
        Self {
            status: StatusCode::PERMANENT_REDIRECT,
            headers: vec![(http::header::LOCATION, location)],
            body: Bytes::new(),
        }
    }

    /// `204` with the headers of an allowed CORS preflight.
    pub fn preflight(headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>) -> Self {
        Self {
            status: StatusCode::NO_CONTENT,
            headers: headers.into_iter().collect(),
            body: Bytes::new(),
        }
    }

    /// One more header (`Retry-After` on a 429).
    pub fn with_header(mut self, header: (HeaderName, HeaderValue)) -> Self {
        self.headers.push(header);
        self
    }

    /// More headers (an optional `Retry-After`).
    pub fn with_headers(
        mut self,
        headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
    ) -> Self {
        self.headers.extend(headers);
        self
    }
}

/// Headers every response gets, whoever made it.
pub fn finish_headers(headers: &Headers, req: &RequestHeader, ctx: &Ctx, resp: &mut impl Fields) {
    headers.downstream(resp, &ctx.downstream());
    if let Some(cors) = ctx.route.as_ref().and_then(|r| r.cors.as_ref()) {
        cors.response_headers(req, resp);
    }
    // From response_filter this runs after the cache stored the response: limit headers
    // describe this request only and are never cached.
    if let Some(limits) = &ctx.ratelimit {
        limits.write_headers(resp);
    }
}

/// Send `local` and end the exchange; nothing when a response already went out (an error
/// mid-body: nothing sane can follow its header).
pub async fn send(
    session: &mut Session,
    headers: &Headers,
    ctx: &Ctx,
    local: LocalResponse,
) -> pingora::Result<()> {
    if session.response_written().is_some() {
        return Ok(());
    }
    let (resp, body) = prepare(headers, session.req_header(), ctx, local);
    let body_done = session.is_body_done();
    if must_close(session.req_header(), body_done) {
        session.set_keepalive(None);
    }
    send_whole(session, resp.into_pingora(), body).await
}

/// `local` as it is sent: its header with what every response carries ([`finish_headers`])
/// and its body as the client accepts it, `Content-Length` set. A [`Response`] (see
/// `fields`): the gate writes it as it is, Pingora gets it as its own header.
pub fn prepare(
    headers: &Headers,
    req: &RequestHeader,
    ctx: &Ctx,
    local: LocalResponse,
) -> (Response, Bytes) {
    let mut resp = Response::new(local.status, local.headers.len() + 14);
    for (name, value) in local.headers {
        resp.set(name, value);
    }
    finish_headers(headers, req, ctx, &mut resp);
    // Framed there too: `Content-Length` of the body as sent.
    let body = ctx.compress.encode_local(&mut resp, local.body);
    (resp, body)
}

/// A response as HTTP/1.1 bytes, written the way Pingora writes one: the `Date` and
/// `Connection` fields it adds to every response, the status line, the fields (standard ones
/// titled, ours as given, as Pingora writes a header without a case map), the empty line,
/// then `body`. For the answers the connection gate sends on the socket itself; `keep_alive`:
/// the connection stays open after it.
pub fn to_h1(mut resp: impl Fields, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let date = pingora::protocols::http::date::get_cached_date();
    let connection = if keep_alive { "keep-alive" } else { "close" };
    resp.set(http::header::DATE, date);
    resp.set(
        http::header::CONNECTION,
        HeaderValue::from_static(connection),
    );
    let mut out = Vec::with_capacity(768 + body.len());
    resp.head_to_h1(&mut out);
    out.extend_from_slice(body);
    out
}

/// Write a whole response: its header, then its body (none for HEAD or an empty body). Used
/// by [`send`] and for a fresh cache hit answered in `request_filter`. A failed write is the
/// client's side (it went away, or stopped reading): logged as such, not as Rampart's error.
pub async fn send_whole(
    session: &mut Session,
    header: ResponseHeader,
    body: Bytes,
) -> pingora::Result<()> {
    let head = session.req_header().method == Method::HEAD || body.is_empty();
    session
        .write_response_header(Box::new(header), head)
        .await
        .map_err(|e| e.into_down())?;
    if !head {
        session
            .write_response_body(Some(body), true)
            .await
            .map_err(|e| e.into_down())?;
    }
    Ok(())
}

/// Whether the connection must close after a local response: the request announced a body
/// that has not been read, and its bytes would be mistaken for the next request.
pub fn must_close(req: &RequestHeader, body_done: bool) -> bool {
    let has_body = req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    has_body && !body_done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/x", None).expect("request");
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).expect("header");
        }
        r
    }

    #[test]
    fn problem_names_status_and_request_id() {
        let quoted = LocalResponse::problem(400, "a \"quoted\"\nline", "abc");
        let body: serde_json::Value = serde_json::from_slice(&quoted.body).expect("json");
        assert_eq!(body["detail"], "a \"quoted\"\nline");
        let p = LocalResponse::problem(429, "slow down", "abc");
        assert_eq!(p.status, StatusCode::TOO_MANY_REQUESTS);
        let body: serde_json::Value = serde_json::from_slice(&p.body).expect("json");
        assert_eq!(body["status"], 429);
        assert_eq!(body["title"], "Too Many Requests");
        assert_eq!(body["detail"], "slow down");
        assert_eq!(body["request_id"], "abc");
        let ctype = p
            .headers
            .iter()
            .find(|(n, _)| n == http::header::CONTENT_TYPE);
        assert_eq!(
            ctype.map(|(_, v)| v.as_bytes()),
            Some(&b"application/problem+json"[..])
        );
        let cc = p
            .headers
            .iter()
            .find(|(n, _)| n == http::header::CACHE_CONTROL);
        assert_eq!(cc.map(|(_, v)| v.as_bytes()), Some(&b"no-store"[..]));
    }

    #[test]
    fn out_of_range_status_is_an_internal_error() {
        assert_eq!(LocalResponse::problem(1000, "x", "").status, 500);
    }

    #[test]
    fn unread_body_closes_the_connection() {
        assert!(must_close(&req(&[("content-length", "5")]), false));
        assert!(must_close(&req(&[("transfer-encoding", "chunked")]), false));
        assert!(!must_close(&req(&[("content-length", "5")]), true));
        assert!(!must_close(&req(&[("content-length", "0")]), false));
        assert!(!must_close(&req(&[]), false));
    }
}
