//! TLS certificates: read from PEM files at start and on every reload, and handed to rustls
//! per handshake by a resolver, so a renewed certificate is served without a restart; and
//! where the plain listener redirects to (`server.tls.redirect_http`).
//!
//! Phases: none for certificates: the TLS listener asks [`Resolver`] for the certificate of
//! each new connection. `request_filter` asks [`https_location`] for the redirect target. Pingora 0.9's rustls listener (`TlsSettings::build`) reads `cert`/`key` once
//! into a fixed `ServerConfig`; its `set_cert_resolver` is the one hook that can change the
//! certificate later, so the listener is built with a resolver that returns the certificate
//! of the current configuration generation (see `runtime`).
//!
//! Invariants: a certificate is accepted only when its private key matches it (checked when
//! loaded, so a half-renewed pair is refused by the reload instead of failing handshakes);
//! connections already established keep the certificate they were opened with.

use std::fmt;
use std::sync::Arc;

use http::uri::Authority;
use http::HeaderValue;
use pingora::http::RequestHeader;

use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

/// Load a certificate chain and its key from PEM files, checking that they belong together.
pub fn load(cert: &str, key: &str) -> Result<Arc<CertifiedKey>, String> {
    let cant = |why: &str| format!("certificate {cert} and key {key}: {why}");
    let (chain, key_der) = match pingora::tls::load_certs_and_key_files(cert, key) {
        Ok(Some(pair)) => pair,
        Ok(None) => {
            return Err(cant(
                "no certificate or no private key found (PEM expected: CERTIFICATE, and PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
            ))
        }
        Err(e) => return Err(cant(&e.to_string())),
    };
    pingora::tls::install_default_crypto_provider();
    let provider =
        CryptoProvider::get_default().ok_or_else(|| cant("no TLS crypto provider is installed"))?;
    CertifiedKey::from_der(chain, key_der, provider)
        .map(Arc::new)
        .map_err(|e| cant(&format!("unusable ({e})")))
}

/// A rustls certificate resolver that asks `current` for the certificate on each handshake.
pub struct Resolver {
    current: Box<dyn Fn() -> Option<Arc<CertifiedKey>> + Send + Sync>,
}

impl Resolver {
    pub fn new(current: impl Fn() -> Option<Arc<CertifiedKey>> + Send + Sync + 'static) -> Self {
        Self {
            current: Box::new(current),
        }
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tls::Resolver(current generation)")
    }
}

impl ResolvesServerCert for Resolver {
    /// One certificate for every server name (as nginx with a single `ssl_certificate`).
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        (self.current)()
    }
}

/// `https://<host>[:port]<path>?<query>` for a request that came in over plain HTTP: the
/// host the client asked for (its `Host`, or the URI's authority under HTTP/2), its port
/// replaced by the TLS listener's (left out when 443). `None` without a usable host.
pub fn https_location(req: &RequestHeader, tls_port: u16) -> Option<HeaderValue> {
    let authority = match req.headers.get(http::header::HOST) {
        Some(h) => h.to_str().ok()?.parse::<Authority>().ok()?,
        None => req.uri.authority()?.clone(),
    };
    let host = authority.host();
    if host.is_empty() || authority.as_str().contains('@') {
        return None;
    }
    let path = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = if tls_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{tls_port}{path}")
    };
    HeaderValue::from_str(&location).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: Option<&str>, target: &str) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).expect("request");
        if let Some(h) = host {
            r.insert_header("host", h).expect("host");
        }
        r
    }

    #[test]
    fn redirect_targets() {
        let loc = |host, target, port| {
            https_location(&req(host, target), port).map(|v| v.to_str().expect("ascii").to_string())
        };
        assert_eq!(
            loc(Some("dash.example.com:8080"), "/api/x?a=1", 8443).as_deref(),
            Some("https://dash.example.com:8443/api/x?a=1")
        );
        assert_eq!(
            loc(Some("dash.example.com"), "/", 443).as_deref(),
            Some("https://dash.example.com/")
        );
        assert_eq!(
            loc(Some("[::1]:80"), "/x", 8443).as_deref(),
            Some("https://[::1]:8443/x")
        );
        assert_eq!(loc(None, "/x", 443), None);
        assert_eq!(loc(Some("user@evil.example"), "/x", 443), None);
        assert_eq!(loc(Some("a b"), "/x", 443), None);
    }

    #[test]
    fn missing_files_are_named() {
        let e = load("/nonexistent/cert.pem", "/nonexistent/key.pem").expect_err("no files");
        assert!(e.contains("/nonexistent/cert.pem"), "{e}");
    }
}
