//! The single exit for responses Rampart writes itself (400, 403, 404, 429, 5xx, preflight).
//!
//! Phases: `request_filter` and `fail_to_proxy`. Such responses skip Pingora's
//! `response_filter`, so [`finish_headers`] is called here and from `response_filter` alike:
//! the one place that decides what every response carries. Bodies go through the same
//! compression policy as proxied ones (`compress::State::whole`), so `Vary` and encoding agree.
//!
//! Invariant: a self-made error is `application/problem+json` (RFC 9457) naming the request id,
//! and carries the same security, CORS and request-id headers as a proxied response.

use bytes::Bytes;
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::Session;
use serde::Serialize;

use crate::ctx::Ctx;
use crate::headers::Headers;

/// Headers every response gets, whoever made it.
pub fn finish_headers(
    headers: &Headers,
    req: &RequestHeader,
    ctx: &Ctx,
    resp: &mut ResponseHeader,
) {
    headers.downstream(resp, ctx);
    if let Some(cors) = ctx.route.as_ref().and_then(|r| r.cors.as_ref()) {
        cors.response_headers(req, resp);
    }
    // From response_filter this runs after the cache stored the response: limit headers
    // describe this request only and are never cached.
    if let Some(limits) = &ctx.ratelimit {
        limits.write_headers(resp);
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    request_id: &'a str,
}

/// Write an RFC 9457 problem response and end the exchange.
pub async fn problem(
    session: &mut Session,
    headers: &Headers,
    ctx: &Ctx,
    status: u16,
    detail: &str,
) -> pingora::Result<()> {
    problem_with(session, headers, ctx, status, detail, &[]).await
}

/// [`problem`] with extra headers (`Retry-After` on a 429).
pub async fn problem_with(
    session: &mut Session,
    headers: &Headers,
    ctx: &Ctx,
    status: u16,
    detail: &str,
    extra: &[(http::HeaderName, String)],
) -> pingora::Result<()> {
    let code =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&Problem {
        kind: "about:blank",
        title: code.canonical_reason().unwrap_or("Error"),
        status: code.as_u16(),
        detail,
        request_id: &ctx.request_id,
    })
    .unwrap_or_default();
    let mut resp = ResponseHeader::build(code, Some(8))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/problem+json")?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    for (name, value) in extra {
        resp.insert_header(name.clone(), value.as_str())?;
    }
    write(session, headers, ctx, resp, Bytes::from(body)).await
}

/// A body Rampart serves itself (metrics on the public listener).
pub async fn content(
    session: &mut Session,
    headers: &Headers,
    ctx: &Ctx,
    status: u16,
    content_type: &str,
    body: Vec<u8>,
) -> pingora::Result<()> {
    let code = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    let mut resp = ResponseHeader::build(code, Some(8))?;
    resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    write(session, headers, ctx, resp, Bytes::from(body)).await
}

/// `204` answer to an allowed CORS preflight.
pub async fn preflight(session: &mut Session, headers: &Headers, ctx: &Ctx) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(http::StatusCode::NO_CONTENT, Some(8))?;
    if let Some(cors) = ctx.route.as_ref().and_then(|r| r.cors.as_ref()) {
        cors.preflight_headers(&mut resp);
    }
    write(session, headers, ctx, resp, Bytes::new()).await
}

async fn write(
    session: &mut Session,
    headers: &Headers,
    ctx: &Ctx,
    mut resp: ResponseHeader,
    body: Bytes,
) -> pingora::Result<()> {
    if session.response_written().is_some() {
        // Headers already went out (an error mid-body): nothing sane can follow.
        return Ok(());
    }
    finish_headers(headers, session.req_header(), ctx, &mut resp);
    let body = ctx.compress.whole(&mut resp, body);
    resp.set_content_length(body.len())?;
    let req = session.req_header();
    // An unread request body would be mistaken for the next request: close instead.
    let has_body = req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let head = req.method == Method::HEAD || body.is_empty();
    if has_body && !session.is_body_done() {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), head).await?;
    if !head {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}
