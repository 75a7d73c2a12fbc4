//! The TLS listener, with certificates generated here (a CA and leaf certificates it signs)
//! and a rustls client that verifies them: the handshake, HTTP/2 by ALPN, HSTS on TLS
//! responses only, the plain listener's optional redirect to HTTPS, and a renewed certificate
//! served to new connections after a reload, without a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::common::*;

const HSTS: &str = "max-age=31536000; includeSubDomains";

/// A test CA.
fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "Rampart test CA");
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

/// A certificate for `localhost` signed by `ca`, named `name`: (cert PEM, key PEM, cert DER).
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, name: &str) -> (String, String, Vec<u8>) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, ca).expect("sign");
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

/// Write a certificate and key where `[server.tls]` points.
fn install(dir: &TempDir, (cert, key, _): &(String, String, Vec<u8>)) {
    std::fs::write(dir.join("cert.pem"), cert).expect("write cert");
    std::fs::write(dir.join("key.pem"), key).expect("write key");
}

/// `[server.tls]` lines for a TLS listener on `port` with the files in `dir`.
fn tls_table(dir: &Path, port: u16, redirect: bool) -> String {
    format!(
        "[server.tls]\nlisten = \"127.0.0.1:{port}\"\ncert = \"{}\"\nkey = \"{}\"\nredirect_http = {redirect}\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    )
}

fn body(up: &Upstream) -> String {
    format!(
        "{}[[routes]]\nname = \"api\"\nprefix = \"/api/\"\nupstream = \"u\"\n[metrics]\npublic_path = \"/metrics\"\n",
        upstream_toml("u", &[&up.addr])
    )
}

/// Rampart with a TLS listener serving the files in `dir` (`server` lines before its table),
/// and the TLS address.
fn start_with(up: &Upstream, dir: &TempDir, redirect: bool, server: &str) -> (Rampart, SocketAddr) {
    let port = free_port();
    let extra = format!("{server}{}", tls_table(&dir.0, port, redirect));
    let r = Rampart::start_reloadable(&body(up), &extra);
    let tls = SocketAddr::from(([127, 0, 0, 1], port));
    eventually("the TLS listener accepts", || {
        std::net::TcpStream::connect(tls).is_ok()
    });
    (r, tls)
}

fn start(up: &Upstream, dir: &TempDir, redirect: bool) -> (Rampart, SocketAddr) {
    start_with(up, dir, redirect, "")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A client that trusts only `ca`, offers `alpn`, and never resumes a session (so each
/// connection sees the certificate served now).
fn client(ca: &CertifiedIssuer<'static, KeyPair>, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.der().to_vec()))
        .expect("trust the CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

async fn connect(connector: &TlsConnector, addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("server name");
    connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake verified against the test CA")
}

/// The end-entity certificate the server presented.
fn served(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .expect("a peer certificate")
}

/// One HTTP/2 request on a ready connection: (status, headers, body).
async fn h2_get(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    path: &str,
) -> (u16, http::HeaderMap, Vec<u8>) {
    let req = http::Request::get(format!("https://localhost{path}"))
        .body(())
        .expect("request");
    let ready = send.clone().ready().await.expect("h2 ready");
    *send = ready;
    let (resp, _) = send.send_request(req, true).expect("send");
    let resp = resp.await.expect("h2 response");
    let (parts, mut body) = resp.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    (parts.status.as_u16(), parts.headers, data)
}

/// An HTTP/2 connection over `stream`; its driver runs on the current runtime.
async fn h2_connect(stream: TlsStream<TcpStream>) -> h2::client::SendRequest<bytes::Bytes> {
    let (send, conn) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

#[test]
fn the_handshake_negotiates_h2_and_hsts_goes_only_over_tls() {
    let up = Upstream::named("over tls");
    let dir = TempDir::new("tls");
    let ca = ca();
    let first = leaf(&ca, "first");
    install(&dir, &first);
    let (r, tls) = start(&up, &dir, false);

    runtime().block_on(async {
        let stream = connect(&client(&ca, &[b"h2", b"http/1.1"]), tls).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(served(&stream), first.2);
        let mut h2 = h2_connect(stream).await;
        let (status, headers, body) = h2_get(&mut h2, "/api/x").await;
        assert_eq!((status, body.as_slice()), (200, &b"over tls"[..]));
        assert_eq!(
            headers
                .get("strict-transport-security")
                .and_then(|v| v.to_str().ok()),
            Some(HSTS)
        );
        assert_eq!(
            headers.get("x-frame-options").and_then(|v| v.to_str().ok()),
            Some("SAMEORIGIN")
        );
    });
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    let plain = r.get("/api/x");
    assert_eq!(plain.status, 200);
    assert_eq!(
        plain.header("strict-transport-security"),
        None,
        "never on plain HTTP"
    );
    assert_eq!(up.last().header("x-forwarded-proto"), Some("http"));
}

#[test]
fn http11_is_served_over_tls_to_clients_without_h2() {
    let up = Upstream::named("h1");
    let dir = TempDir::new("tls");
    let ca = ca();
    install(&dir, &leaf(&ca, "first"));
    let (_r, tls) = start(&up, &dir, false);

    let raw = runtime().block_on(async {
        let mut stream = connect(&client(&ca, &[b"http/1.1"]), tls).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        stream
            .write_all(b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut raw = Vec::new();
        // A TLS close_notify or a plain close both end the response.
        let _ = stream.read_to_end(&mut raw).await;
        raw
    });
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(&raw).expect("HTTP/1.1 response") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => panic!("partial response: {}", String::from_utf8_lossy(&raw)),
    };
    assert_eq!(resp.code, Some(200));
    let hsts = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("strict-transport-security"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned());
    assert_eq!(hsts.as_deref(), Some(HSTS));
    assert!(raw[head..].ends_with(b"h1"));
}

#[test]
fn the_plain_listener_redirects_to_https_when_asked() {
    let up = Upstream::named("secure");
    let dir = TempDir::new("tls");
    let ca = ca();
    install(&dir, &leaf(&ca, "first"));
    // Loopback is a trusted proxy here, to show a TLS terminator in front is believed.
    let (r, tls) = start_with(&up, &dir, true, "trusted_proxies = [\"127.0.0.1\"]\n");

    let resp = r.request(
        "POST",
        "/api/report?period=q3&x=1",
        &[("Host", "dash.example.com:8080")],
        Some(b"{}"),
    );
    assert_eq!(resp.status, 308);
    assert_eq!(
        resp.header("location"),
        Some(
            format!(
                "https://dash.example.com:{}/api/report?period=q3&x=1",
                tls.port()
            )
            .as_str()
        )
    );
    assert_eq!(resp.header("strict-transport-security"), None);
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        up.count(),
        0,
        "nothing reached the upstream over plain HTTP"
    );
    let no_host = send_raw(r.addr, b"GET /api/x HTTP/1.0\r\n\r\n").expect("HTTP/1.0");
    assert_eq!(no_host.status, 400, "no Host: nowhere to redirect to");
    assert!(no_host.text().contains("Host header"), "{}", no_host.text());
    // Scrapers of the public metrics path are not redirected.
    assert_eq!(r.get("/metrics").status, 200);
    // A trusted proxy that terminated TLS itself says so: no redirect loop.
    let behind_tls = r.request("GET", "/api/x", &[("X-Forwarded-Proto", "https")], None);
    assert_eq!(
        (behind_tls.status, behind_tls.text().as_str()),
        (200, "secure")
    );
    let behind_plain = r.request("GET", "/api/x", &[("X-Forwarded-Proto", "http")], None);
    assert_eq!(behind_plain.status, 308);

    runtime().block_on(async {
        let stream = connect(&client(&ca, &[b"h2"]), tls).await;
        let mut h2 = h2_connect(stream).await;
        let (status, _, body) = h2_get(&mut h2, "/api/x").await;
        assert_eq!((status, body.as_slice()), (200, &b"secure"[..]));
    });
}

#[test]
fn a_renewed_certificate_is_served_after_a_reload() {
    let up = Upstream::named("ok");
    let dir = TempDir::new("tls");
    let ca = ca();
    let first = leaf(&ca, "first");
    let renewed = leaf(&ca, "renewed");
    install(&dir, &first);
    let (r, tls) = start(&up, &dir, false);
    let connector = client(&ca, &[b"h2"]);
    let rt = runtime();

    let mut open = rt.block_on(async {
        let stream = connect(&connector, tls).await;
        assert_eq!(served(&stream), first.2);
        let mut h2 = h2_connect(stream).await;
        assert_eq!(h2_get(&mut h2, "/api/x").await.0, 200);
        h2
    });

    // Same paths, new content, then a reload: no restart.
    install(&dir, &renewed);
    assert_eq!(r.reload(), Ok(2));
    rt.block_on(async {
        let stream = connect(&connector, tls).await;
        assert_eq!(
            served(&stream),
            renewed.2,
            "new connections get the renewed certificate"
        );
        let mut h2 = h2_connect(stream).await;
        assert_eq!(h2_get(&mut h2, "/api/x").await.0, 200);
        // The connection opened before the reload still works.
        assert_eq!(h2_get(&mut open, "/api/x").await.0, 200);
    });

    // A half-renewed pair (the new certificate, the old key) is refused: the renewed pair
    // stays in service.
    std::fs::write(dir.join("cert.pem"), leaf(&ca, "third").0).expect("write cert");
    let why = r.reload().expect_err("mismatched key");
    assert!(why.contains("cert.pem"), "{why}");
    assert_eq!(r.metric("rampart_config_load_success"), Some(0.0));
    rt.block_on(async {
        let stream = connect(&connector, tls).await;
        assert_eq!(served(&stream), renewed.2);
    });
}
