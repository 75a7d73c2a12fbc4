//! Compression: real upstreams, Rampart and a raw TCP client; bodies decoded with the crates
//! Pingora itself uses (flate2, brotli, zstd) and compared byte for byte with the upstream's.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};

use crate::common::*;

/// JSON-ish text of `len` bytes that compresses like real API output (not a repeated string).
fn body(len: usize) -> Vec<u8> {
    let mut out = String::with_capacity(len + 64);
    let mut x: u64 = 0x2545_f491;
    out.push('[');
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!(
            "{{\"day\":\"2024-{:02}-{:02}\",\"expense\":{},\"category\":\"{}\"}},",
            x % 12 + 1,
            x % 28 + 1,
            x % 100_000,
            ["travel", "software", "payroll", "rent"][(x % 4) as usize]
        ));
    }
    let mut bytes = out.into_bytes();
    bytes.truncate(len);
    bytes
}

fn decode(resp: &Response) -> Vec<u8> {
    let mut out = Vec::new();
    match resp.header("content-encoding") {
        None => return resp.body.clone(),
        Some("gzip") => {
            flate2::read::GzDecoder::new(&resp.body[..])
                .read_to_end(&mut out)
                .expect("valid gzip");
        }
        Some("br") => {
            brotli::Decompressor::new(&resp.body[..], 4096)
                .read_to_end(&mut out)
                .expect("complete brotli stream");
        }
        Some("zstd") => out = zstd::stream::decode_all(&resp.body[..]).expect("valid zstd"),
        Some(other) => panic!("unexpected content-encoding {other}"),
    }
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn varies(resp: &Response) -> bool {
    resp.headers
        .iter()
        .filter(|(k, _)| k == "vary")
        .any(|(_, v)| v.to_ascii_lowercase().contains("accept-encoding"))
}

/// An upstream that streams `body` chunked, without `Content-Length`, in 16 KiB chunks.
fn chunked_upstream(body: Vec<u8>, content_type: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                // The request (a health check's connect and close fails the writes below).
                let _ = HttpConn::new(stream.try_clone().expect("clone")).read_request();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\n\
                     transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                );
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for chunk in body.chunks(16 * 1024) {
                    let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
                    frame.extend_from_slice(chunk);
                    frame.extend_from_slice(b"\r\n");
                    if stream
                        .write_all(&frame)
                        .and_then(|_| stream.flush())
                        .is_err()
                    {
                        return;
                    }
                }
                let _ = stream.write_all(b"0\r\n\r\n");
            });
        }
    });
    addr
}

fn start(up: &SocketAddr, extra: &str) -> Rampart {
    Rampart::start(&format!(
        "{}\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"u\"\n{extra}",
        upstream_toml("u", &[up])
    ))
}

fn get_with(r: &Rampart, path: &str, accept: &str) -> Response {
    r.request("GET", path, &[("Accept-Encoding", accept)], None)
}

#[test]
fn every_coding_decodes_to_the_upstream_bytes() {
    // 200 KB arrives in several reads and is gzipped whole; 1 MiB is past that limit and
    // streams (so does the chunked one, of unknown length).
    let sizes = [
        ("small", 1500),
        ("threshold", 1000),
        ("whole", 200_000),
        ("large", 1 << 20),
    ];
    let up = Upstream::start(move |req| {
        let len = sizes
            .iter()
            .find(|(n, _)| req.target.ends_with(n))
            .map_or(10, |(_, l)| *l);
        Reply::json(body(len))
    });
    let streamed = body(1 << 20);
    let chunked = chunked_upstream(streamed.clone(), "application/javascript");
    let r = Rampart::start(&format!(
        "{}{}\n[[routes]]\nname = \"stream\"\nprefix = \"/stream\"\nupstream = \"s\"\n\
         [[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&up.addr]),
        upstream_toml("s", &[&chunked]),
    ));
    for coding in ["gzip", "br", "zstd"] {
        for (name, len) in sizes {
            let resp = get_with(&r, &format!("/{name}"), coding);
            assert_eq!(resp.status, 200);
            assert_eq!(
                resp.header("content-encoding"),
                Some(coding),
                "{name} {coding}"
            );
            assert!(varies(&resp), "{name} {coding}: Vary: Accept-Encoding");
            assert_eq!(resp.header("content-length"), None, "{name} {coding}");
            let plain = decode(&resp);
            assert_eq!(plain.len(), len, "{name} {coding}");
            assert_eq!(plain, body(len), "{name} {coding}");
            if len == 1 << 20 {
                assert!(
                    resp.body.len() < len / 3,
                    "{coding} compresses 1 MB of JSON"
                );
            }
        }
        let resp = get_with(&r, "/stream", coding);
        assert_eq!(
            resp.header("content-encoding"),
            Some(coding),
            "chunked {coding}"
        );
        assert_eq!(decode(&resp), streamed, "chunked {coding}");
    }
    // Without Accept-Encoding: the bytes as they are, and still Vary.
    let resp = r.get("/large");
    assert_eq!(resp.header("content-encoding"), None);
    assert!(varies(&resp));
    assert_eq!(resp.body, body(1 << 20));
    let resp = r.get("/stream");
    assert_eq!(resp.body, streamed);
}

#[test]
fn client_weights_decide() {
    let up = Upstream::start(|_| Reply::json(body(5000)));
    let r = start(&up.addr, "");
    let cases = [
        ("gzip, deflate, br, zstd", Some("zstd")),
        ("gzip, deflate, br", Some("br")),
        ("gzip;q=1, br;q=0.5", Some("gzip")),
        ("gzip;q=0, deflate", None),
        ("gzip;q=0, zstd", Some("zstd")),
        ("br;q=0, zstd;q=0, gzip;q=0", None),
        ("*", Some("zstd")),
        ("zstd;q=0, *;q=0.5", Some("br")),
        ("br;q=0.9, zstd;q=0.8, gzip", Some("gzip")),
        ("*;q=0", None),
        ("identity", None),
        ("gzip;q=0.4, identity;q=0.9", None),
        ("GZip;Q=0.7", Some("gzip")),
    ];
    for (accept, expected) in cases {
        let resp = get_with(&r, "/x", accept);
        assert_eq!(resp.header("content-encoding"), expected, "{accept}");
        assert!(
            varies(&resp),
            "{accept}: negotiable, so Vary even when identity"
        );
        assert_eq!(decode(&resp), body(5000), "{accept}");
    }
}

#[test]
fn ineligible_responses_go_out_untouched() {
    let up = Upstream::start(|req| match req.target.as_str() {
        "/png" => Reply::ok(body(5000)).header("content-type", "image/png"),
        "/small" => Reply::json(body(999)),
        "/events" => Reply::ok(body(5000)).header("content-type", "text/event-stream"),
        "/no-transform" => Reply::json(body(5000)).header("cache-control", "no-transform"),
        "/gzipped" => Reply::ok(gzip(&body(5000)))
            .header("content-type", "text/plain")
            .header("content-encoding", "gzip"),
        "/range" => Reply::ok(body(100))
            .status(206)
            .header("content-range", "bytes 0-99/5000"),
        "/empty" => Reply::ok("").status(204),
        "/not-modified" => Reply::ok("")
            .status(304)
            .header("etag", "\"v1\"")
            .header("content-type", "application/json"),
        _ => Reply::json(body(5000)).header("etag", "\"v1\""),
    });
    let r = start(&up.addr, "");
    let ae = "gzip, br, zstd";

    for path in ["/png", "/small", "/events"] {
        let resp = get_with(&r, path, ae);
        assert_eq!(resp.header("content-encoding"), None, "{path}");
        assert!(!varies(&resp), "{path}: never compressed, so no Vary");
        assert_eq!(resp.body, body(if path == "/small" { 999 } else { 5000 }));
    }
    let resp = get_with(&r, "/no-transform", ae);
    assert_eq!(resp.header("content-encoding"), None);
    assert_eq!(resp.header("content-length"), Some("5000"));
    assert_eq!(resp.body, body(5000));

    // Already gzip from the upstream and acceptable: the upstream's bytes, not gzip twice.
    let resp = get_with(&r, "/gzipped", ae);
    assert_eq!(resp.header("content-encoding"), Some("gzip"));
    assert_eq!(resp.body, gzip(&body(5000)));
    assert!(varies(&resp));

    let resp = r.request(
        "GET",
        "/range",
        &[("Accept-Encoding", ae), ("Range", "bytes=0-99")],
        None,
    );
    assert_eq!(resp.status, 206);
    assert_eq!(resp.header("content-encoding"), None);
    assert_eq!(resp.body, body(100));

    let resp = get_with(&r, "/empty", ae);
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("content-encoding"), None);

    let resp = get_with(&r, "/not-modified", ae);
    assert_eq!(resp.status, 304);
    assert_eq!(resp.header("content-encoding"), None);
    assert_eq!(resp.header("etag"), Some("\"v1\""), "304 untouched");
    assert!(varies(&resp), "a 304 stands for a 200 that varies");

    let resp = r.request("HEAD", "/page", &[("Accept-Encoding", ae)], None);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-encoding"), None);
    assert_eq!(resp.header("content-length"), Some("5000"));
    assert!(resp.body.is_empty());
    assert!(varies(&resp));

    // The same resource in GET: compressed, its strong ETag weakened.
    let resp = get_with(&r, "/page", "gzip");
    assert_eq!(resp.header("content-encoding"), Some("gzip"));
    assert_eq!(resp.header("etag"), Some("W/\"v1\""));
    assert_eq!(decode(&resp), body(5000));
    let resp = r.get("/page");
    assert_eq!(
        resp.header("etag"),
        Some("\"v1\""),
        "identity keeps the strong ETag"
    );
}

#[test]
fn upstream_encodings_are_decoded_for_clients_that_cannot_read_them() {
    let plain = body(8000);
    let mut br = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
        w.write_all(&plain).expect("br");
    }
    let zst = zstd::stream::encode_all(&plain[..], 3).expect("zstd");
    let gz = gzip(&plain);
    let up = Upstream::start(move |req| {
        let (coding, bytes) = match req.target.as_str() {
            "/br" => ("br", br.clone()),
            "/zstd" => ("zstd", zst.clone()),
            _ => ("gzip", gz.clone()),
        };
        Reply::json(bytes).header("content-encoding", coding)
    });
    let r = start(&up.addr, "");
    for (path, client) in [("/br", "gzip"), ("/zstd", "gzip, br"), ("/gzip", "br")] {
        let resp = get_with(&r, path, client);
        assert_eq!(resp.header("content-encoding"), None, "{path} for {client}");
        assert_eq!(resp.body, plain, "{path} for {client}");
        assert!(varies(&resp));
    }
    let resp = r.get("/gzip");
    assert_eq!(resp.body, plain, "no Accept-Encoding: decoded");

    let off = start(&up.addr, "[compression]\ndecompress = false\n");
    let resp = get_with(&off, "/br", "gzip");
    assert_eq!(
        resp.header("content-encoding"),
        Some("br"),
        "decompress = false"
    );
}

#[test]
fn rampart_own_responses_follow_the_policy() {
    let up = Upstream::start(|_| Reply::json(body(5000)));
    // Default: a problem+json is ~200 bytes, below min_size: identity and no Vary.
    let r = Rampart::start(&format!(
        "{}\n[[routes]]\nname = \"api\"\nprefix = \"/api/\"\nupstream = \"u\"\n",
        upstream_toml("u", &[&up.addr])
    ));
    let resp = get_with(&r, "/nothing", "gzip, br");
    assert_eq!(resp.status, 404);
    assert_eq!(resp.header("content-encoding"), None);
    assert!(!varies(&resp));
    assert_eq!(resp.json()["status"], 404);

    // Threshold lowered: the same 404 is compressed like any proxied JSON, with exact length.
    let r = Rampart::start(&format!(
        "{}\n[[routes]]\nname = \"api\"\nprefix = \"/api/\"\nupstream = \"u\"\n\
         [compression]\nmin_size = 0\n",
        upstream_toml("u", &[&up.addr])
    ));
    let resp = get_with(&r, "/nothing", "gzip;q=1, br;q=0.5");
    assert_eq!(resp.status, 404);
    assert_eq!(resp.header("content-encoding"), Some("gzip"));
    assert!(varies(&resp));
    assert_eq!(
        resp.header("content-length"),
        Some(resp.body.len().to_string().as_str())
    );
    let problem: serde_json::Value = serde_json::from_slice(&decode(&resp)).expect("json");
    assert_eq!(problem["status"], 404);
    let resp = r.request("HEAD", "/nothing", &[("Accept-Encoding", "gzip")], None);
    assert_eq!(resp.status, 404);
    assert_eq!(
        resp.header("content-encoding"),
        None,
        "HEAD: no body to encode"
    );
}

#[test]
fn routes_choose_named_policies() {
    let up = Upstream::start(|_| Reply::json(body(5000)));
    let r = Rampart::start(&format!(
        "{}
[[routes]]
name = \"raw\"
prefix = \"/raw/\"
upstream = \"u\"
compression = \"off\"

[[routes]]
name = \"gz\"
prefix = \"/gz/\"
upstream = \"u\"
compression = \"gzip-only\"

[[routes]]
name = \"all\"
prefix = \"/\"
upstream = \"u\"

[compression.policies.off]
enabled = false

[compression.policies.gzip-only]
encodings = [\"gzip\"]
gzip_level = 1
",
        upstream_toml("u", &[&up.addr])
    ));
    let ae = "br, zstd, gzip";
    let resp = get_with(&r, "/raw/x", ae);
    assert_eq!(resp.header("content-encoding"), None);
    assert!(!varies(&resp));
    let resp = get_with(&r, "/gz/x", ae);
    assert_eq!(resp.header("content-encoding"), Some("gzip"));
    assert_eq!(decode(&resp), body(5000));
    let resp = get_with(&r, "/x", "br, gzip");
    assert_eq!(resp.header("content-encoding"), Some("br"));

    let metrics = r.admin_get("/metrics").text();
    let count = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(count("rampart_compression_bytes_in_total{encoding=\"br\"}") >= 5000);
    let out = count("rampart_compression_bytes_out_total{encoding=\"br\"}");
    assert!(out > 0 && out < 5000, "br out bytes counted: {out}");
    assert!(count("rampart_compression_bytes_in_total{encoding=\"gzip\"}") >= 5000);
}

#[test]
fn unknown_policy_names_are_refused() {
    let text =
        "[upstreams.u]\naddrs = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"a\"\nprefix = \"/\"\n\
                upstream = \"u\"\ncompression = \"nope\"\n";
    let err = rampart::config::parse("t.toml", text, &Default::default())
        .expect_err("unknown policy")
        .to_string();
    assert!(err.contains("routes[0].compression"), "{err}");
    let err = rampart::config::parse(
        "t.toml",
        "[compression]\ngzip_level = 12\n",
        &Default::default(),
    )
    .expect_err("bad level")
    .to_string();
    assert!(err.contains("compression.gzip_level"), "{err}");
    assert!(err.starts_with("t.toml:2:"), "{err}");
}

#[test]
fn shipped_config_documents_the_defaults() {
    let text = std::fs::read_to_string("config/proxy.toml").expect("config/proxy.toml");
    let config = rampart::config::parse("proxy.toml", &text, &Default::default()).expect("valid");
    assert_eq!(
        format!("{:?}", config.compression),
        format!("{:?}", rampart::compress::Config::default()),
        "config/proxy.toml's [compression] shows every default"
    );
}

/// Streaming stays streaming: the upstream sends half the body and then waits until the client
/// has received compressed bytes; a proxy that buffered the body would never release them.
#[test]
fn compressed_bodies_stream_before_the_upstream_finishes() {
    use std::net::TcpStream;
    use std::sync::mpsc;
    use std::time::Duration;

    let full = body(1 << 20);
    let (first, rest) = full.split_at(full.len() / 2);
    let (first, rest) = (first.to_vec(), rest.to_vec());
    let (gate, wait) = mpsc::channel::<()>();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let up = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        // The first connection that sends a request (health checks connect and close).
        let mut stream = loop {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut conn = HttpConn::new(stream.try_clone().expect("clone"));
            if matches!(conn.read_request(), Ok(Some(_))) {
                break stream;
            }
        };
        let chunk = |data: &[u8]| {
            let mut frame = format!("{:x}\r\n", data.len()).into_bytes();
            frame.extend_from_slice(data);
            frame.extend_from_slice(b"\r\n");
            frame
        };
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                    transfer-encoding: chunked\r\nconnection: close\r\n\r\n";
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&chunk(&first));
        let _ = stream.flush();
        // Bounded: gives up after 10 s, which the client's 5 s read timeout turns into a failure.
        if wait.recv_timeout(Duration::from_secs(10)).is_err() {
            return;
        }
        let _ = stream.write_all(&chunk(&rest));
        let _ = stream.write_all(b"0\r\n\r\n");
    });
    let r = start(&up, "");

    let client = TcpStream::connect(r.addr).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut client = HttpConn::new(client);
    client
        .send(
            "GET",
            "/big",
            &[("Host", "t"), ("Accept-Encoding", "gzip")],
            None,
            true,
        )
        .expect("send");
    let head: Vec<String> = client
        .read_head()
        .expect("response head")
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}").to_ascii_lowercase())
        .collect();
    assert!(
        head.iter().any(|h| h == "content-encoding: gzip"),
        "{head:?}"
    );
    assert!(
        head.iter().any(|h| h == "transfer-encoding: chunked"),
        "{head:?}"
    );
    let mut compressed = Vec::new();
    let mut released = false;
    loop {
        let data = client
            .read_chunk()
            .expect("compressed bytes arrive while the upstream is still sending");
        compressed.extend_from_slice(&data);
        if data.is_empty() {
            break;
        }
        if !released {
            // Compressed output of the first half reached the client: let the upstream finish.
            released = true;
            gate.send(()).expect("upstream waiting");
        }
    }
    assert!(released, "some output came before the end");
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_end(&mut plain)
        .expect("gzip");
    assert_eq!(plain, full);
}

/// An HTTP/1.0 client cannot take chunked framing: the compressed body is delimited by close.
#[test]
fn http10_clients_get_a_close_delimited_body() {
    let up = Upstream::start(|_| Reply::json(body(5000)));
    let r = start(&up.addr, "");
    let resp = send_raw(
        r.addr,
        b"GET /x HTTP/1.0\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n",
    )
    .expect("response");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-encoding"), Some("gzip"));
    assert_eq!(resp.header("transfer-encoding"), None);
    assert_eq!(decode(&resp), body(5000));
}

/// Cache and compression together (Pingora issue #283): the cache stores the origin's identity
/// body and every hit is encoded per client, so any order of gzip, br, zstd and identity
/// clients gets the origin's bytes, from one upstream fetch. Both stores.
#[test]
fn cache_hits_are_encoded_per_client_in_any_order() {
    let original = body(40_000);
    let served = original.clone();
    let up = Upstream::start(move |_| Reply::json(served.clone()));
    let redis = Redis::start();
    for store in [
        String::new(),
        format!("[store]\nredis_url = \"{}\"\n", redis.url()),
    ] {
        let r = Rampart::start(&format!(
            "{}[[routes]]\nname = \"kpis\"\nprefix = \"/api/\"\nupstream = \"u\"\ncache = \"kpis\"\n{store}[cache.policies.kpis]\nttl = \"60s\"\n",
            upstream_toml("u", &[&up.addr])
        ));
        for (n, order) in [
            ["gzip", "identity", "br", "zstd", "gzip"],
            ["identity", "gzip", "zstd", "br", "identity"],
        ]
        .iter()
        .enumerate()
        {
            let before = up.count();
            let path = format!("/api/v1/dashboard/kpis?order={n}");
            for (i, accept) in order.iter().enumerate() {
                let resp = get_with(&r, &path, accept);
                assert_eq!(resp.status, 200);
                let expect_hit = if i == 0 { "MISS" } else { "HIT" };
                assert_eq!(
                    resp.header("x-cache"),
                    Some(expect_hit),
                    "{store} {path} {accept}"
                );
                let coding = resp.header("content-encoding");
                if *accept == "identity" {
                    assert_eq!(coding, None, "{accept}");
                } else {
                    assert_eq!(coding, Some(*accept), "{accept}");
                }
                assert!(varies(&resp), "Vary: Accept-Encoding on {accept}");
                assert_eq!(
                    decode(&resp),
                    original,
                    "{store} {path} {accept}: origin bytes"
                );
            }
            assert_eq!(up.count() - before, 1, "one upstream fetch for {path}");
        }
    }
}

/// Encoded copies (issue 10, scenario g): the first hit that wants a coding is encoded once and
/// kept beside the identity entry; later hits in that coding are served from the copy with no
/// compression at all (the compression counters stand still) and the same header fields, while
/// identity clients still get the identity body. A purged URL's copies are never served for
/// its new content, and ranges are still cut from the identity body. Both stores.
#[test]
fn cache_hits_keep_their_encoding() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let version = Arc::new(AtomicUsize::new(1));
    let content = |v: usize| {
        let mut b = body(40_000);
        b[1..3].copy_from_slice(format!("{v:02}").as_bytes());
        b
    };
    let served = version.clone();
    let up = Upstream::start(move |_| Reply::json(content(served.load(Ordering::SeqCst))));
    let redis = Redis::start();
    for store in [
        String::new(),
        format!("[store]\nredis_url = \"{}\"\n", redis.url()),
    ] {
        version.store(1, Ordering::SeqCst);
        let r = Rampart::start(&format!(
            "{}[[routes]]\nname = \"kpis\"\nprefix = \"/api/\"\nupstream = \"u\"\ncache = \"kpis\"\n{store}[cache.policies.kpis]\nttl = \"60s\"\n",
            upstream_toml("u", &[&up.addr])
        ));
        let path = "/api/v1/dashboard/kpis";
        let before = up.count();
        let miss = get_with(&r, path, "gzip");
        assert_eq!(miss.header("x-cache"), Some("MISS"), "{store}");
        let first_hit = get_with(&r, path, "gzip");
        assert_eq!(first_hit.header("x-cache"), Some("HIT"));
        assert_eq!(decode(&first_hit), content(1));
        assert!(
            gzip_in(&r) >= 40_000.0,
            "{store}: the first hit was compressed"
        );
        // The copy is stored when the first hit's response is complete (`logging`): the next
        // request may come before it is there (on Redis, a round trip later).
        let copied = (0..50).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            get_with(&r, path, "gzip")
                .header("content-length")
                .is_some()
        });
        assert!(
            copied,
            "{store}: a hit served from the copy within a second"
        );
        let compressed = gzip_in(&r);
        for _ in 0..3 {
            let hit = get_with(&r, path, "gzip");
            assert_eq!(hit.header("x-cache"), Some("HIT"), "{store}");
            assert_eq!(hit.header("content-encoding"), Some("gzip"));
            assert_eq!(
                hit.body, first_hit.body,
                "{store}: the copy is the first hit's bytes"
            );
            assert_eq!(
                hit.header("content-length"),
                Some(hit.body.len().to_string().as_str()),
                "{store}: the copy's exact length"
            );
            assert!(varies(&hit), "{store}");
            assert_eq!(hit.header("accept-ranges"), None);
            assert_eq!(hit.header("x-frame-options"), Some("SAMEORIGIN"));
        }
        assert_eq!(
            gzip_in(&r),
            compressed,
            "{store}: hits on the copy compress nothing"
        );
        let identity = get_with(&r, path, "identity");
        assert_eq!(identity.header("content-encoding"), None);
        assert_eq!(identity.body, content(1));
        let range = r.request(
            "GET",
            path,
            &[("Accept-Encoding", "gzip"), ("Range", "bytes=0-9")],
            None,
        );
        assert_eq!(range.status, 206, "{store}");
        assert_eq!(range.body, content(1)[..10]);
        assert_eq!(
            up.count() - before,
            1,
            "{store}: one upstream fetch for all of it"
        );

        // New content, purged: the old copy is never served for it.
        version.store(2, Ordering::SeqCst);
        let purged = crate::cache::purge(&r, &format!(r#"{{"url": "http://rampart.test{path}"}}"#));
        assert_eq!(purged.status, 200, "{}", purged.text());
        for expect in ["MISS", "HIT", "HIT"] {
            let resp = get_with(&r, path, "gzip");
            assert_eq!(resp.header("x-cache"), Some(expect), "{store}");
            assert_eq!(
                decode(&resp),
                content(2),
                "{store}: {expect} after the purge"
            );
        }
    }
}

/// A replica keeps an entry in its near tier (`[cache] local_bytes`) just before another replica
/// revalidates it in Redis: the copies it makes from the version it holds are refused (the
/// entry changed), and then it reads the current version and its hits are served from a copy
/// again. Before, it compressed every hit until its version's freshness ran out (seen in the
/// bench as scenario g slowing down about 12x after the entry's first expiry).
#[test]
fn a_replica_holding_a_replaced_version_gets_copies_again() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let revalidations = Arc::new(AtomicUsize::new(0));
    // B's revalidation has reached the origin; the test lets it be answered (A holds A's
    // version near).
    let (b_arrived, release_b) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (seen, arrived, release) = (revalidations.clone(), b_arrived.clone(), release_b.clone());
    let content = body(40_000);
    let served = content.clone();
    // Stale after 1 s; a 304 keeps it fresh for 30 s. The order is forced, whatever the
    // machine's load (each replica's request carries its own X-Request-Id, which Rampart
    // forwards): A's revalidation is answered only once B's has arrived (so both found the
    // same stale entry), and B's only once the test lets it (after A read A's version).
    let up = Upstream::start(move |req| {
        if req.header("if-none-match") == Some("\"v1\"") {
            seen.fetch_add(1, Ordering::SeqCst);
            let wait_for = if req.header("x-request-id") == Some("revalidate-on-b") {
                arrived.store(true, Ordering::SeqCst);
                &release
            } else {
                &arrived
            };
            let deadline = Instant::now() + Duration::from_secs(4);
            while !wait_for.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            return Reply::ok("")
                .status(304)
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=30");
        }
        Reply::json(served.clone())
            .header("etag", "\"v1\"")
            .header("cache-control", "max-age=1")
    });
    let redis = Redis::start();
    let config = format!(
        "{}read_timeout = \"5s\"\n[[routes]]\nname = \"kpis\"\nprefix = \"/api/\"\nupstream = \"u\"\n\
         cache = \"kpis\"\n[store]\nredis_url = \"{}\"\ntimeout = \"1s\"\n\
         [cache.policies.kpis]\nttl = \"1s\"\n",
        upstream_toml("u", &[&up.addr]),
        redis.url()
    );
    let (a, b) = (Rampart::start(&config), Rampart::start(&config));
    let path = "/api/v1/dashboard/kpis";
    assert_eq!(
        get_with(&a, path, "identity").header("x-cache"),
        Some("MISS")
    );
    std::thread::sleep(Duration::from_millis(1200));
    // Both replicas find the stale entry and revalidate it; A's version lands first.
    let (a_addr, b_addr) = (a.addr, b.addr);
    let on_a = std::thread::spawn(move || {
        let mut conn = HttpConn::connect(a_addr).expect("connect a");
        let id = [("X-Request-Id", "revalidate-on-a")];
        conn.send("GET", path, &id, None, false).expect("send");
        conn.read_response(false).expect("a's revalidation")
    });
    let on_b = std::thread::spawn(move || {
        let mut conn = HttpConn::connect(b_addr).expect("connect b");
        let id = [("X-Request-Id", "revalidate-on-b")];
        conn.send("GET", path, &id, None, false).expect("send");
        conn.read_response(false).expect("b's revalidation")
    });
    assert_eq!(
        on_a.join().expect("a").header("x-cache"),
        Some("REVALIDATED")
    );
    // A reads A's version from Redis and keeps it near, fresh for 30 s.
    let kept = get_with(&a, path, "identity");
    assert_eq!(kept.header("x-cache"), Some("HIT"));
    release_b.store(true, Ordering::SeqCst);
    assert_eq!(
        on_b.join().expect("b").header("x-cache"),
        Some("REVALIDATED")
    );
    assert_eq!(revalidations.load(Ordering::SeqCst), 2, "both revalidated");

    let copied = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        let hit = get_with(&a, path, "gzip");
        assert_eq!(hit.header("x-cache"), Some("HIT"));
        assert_eq!(decode(&hit), content);
        hit.header("content-length").is_some()
    });
    assert!(copied, "A's hits are served from a copy within a second");
    let compressed = gzip_in(&a);
    for _ in 0..3 {
        let hit = get_with(&a, path, "gzip");
        assert_eq!(hit.header("content-encoding"), Some("gzip"));
        assert_eq!(decode(&hit), content);
    }
    assert_eq!(gzip_in(&a), compressed, "hits on the copy compress nothing");
    assert_eq!(
        up.count(),
        3,
        "one fill and two revalidations reached the origin"
    );
}

/// Bytes `r` has gzipped so far (`rampart_compression_bytes_in_total`): a hit served from a
/// stored copy adds nothing.
fn gzip_in(r: &Rampart) -> f64 {
    sample(
        &r.metrics(),
        r#"rampart_compression_bytes_in_total{encoding="gzip"}"#,
    )
    .unwrap_or(0.0)
}
