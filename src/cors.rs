//! CORS: per-route policies, preflight answers and the headers on actual responses.
//!
//! Phases: `request_filter` (a preflight is answered here, never proxied) and every response
//! Rampart sends (`response_filter` for proxied and cached ones, `respond` for its own).
//!
//! Invariants: an allowed origin is echoed, never a list; `*` is only sent when the policy
//! allows any origin without credentials; `Vary: Origin` is set whenever the answer depends on
//! the request's `Origin`, so a shared cache cannot hand one origin's answer to another.

use http::header::{HeaderName, HeaderValue};
use http::Method;
use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};

use crate::fields::Fields;
use crate::types::{serialize_display, Duration, HeaderNameText, Invalid};

/// `[cors.NAME]`: a policy routes refer to by name.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Exact origins (`https://app.example.com`) or `"*"` for any.
    pub allow_origins: Vec<Origin>,
    pub allow_methods: Vec<MethodName>,
    pub allow_headers: Vec<HeaderNameText>,
    pub expose_headers: Vec<HeaderNameText>,
    /// How long browsers may cache a preflight answer.
    pub max_age: Duration,
    pub allow_credentials: bool,
}

impl Default for Config {
    /// The old nginx.conf's `/api/` CORS block.
    fn default() -> Self {
        Self {
            allow_origins: vec![Origin::Any],
            allow_methods: [
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::OPTIONS,
            ]
            .map(MethodName)
            .to_vec(),
            allow_headers: [
                "DNT",
                "User-Agent",
                "X-Requested-With",
                "If-Modified-Since",
                "Cache-Control",
                "Content-Type",
                "Range",
                "Authorization",
            ]
            .map(HeaderNameText::from_static)
            .to_vec(),
            expose_headers: Vec::new(),
            max_age: Duration::secs(600),
            allow_credentials: false,
        }
    }
}

impl Config {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if self.allow_origins.is_empty() {
            return Err(Invalid::new(
                "allow_origins",
                "at least one origin, or \"*\" for any",
            ));
        }
        if self.allow_credentials && self.allow_origins.contains(&Origin::Any) {
            return Err(Invalid::new(
                "allow_credentials",
                "credentials cannot be allowed for any origin (\"*\"); list the origins",
            ));
        }
        Ok(())
    }
}

/// One entry of `allow_origins`: `"*"`, or an origin (`scheme://host[:port]`, no path).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Origin {
    Any,
    Exact(String),
}

impl TryFrom<String> for Origin {
    type Error = String;
    fn try_from(o: String) -> Result<Self, String> {
        if o == "*" {
            return Ok(Origin::Any);
        }
        if !(o.starts_with("http://") || o.starts_with("https://")) {
            return Err(format!(
                "\"*\" or an origin such as \"https://app.example.com\", not \"{o}\""
            ));
        }
        if o.ends_with('/') {
            return Err("an origin has no trailing slash".into());
        }
        Ok(Origin::Exact(o))
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Any => f.write_str("*"),
            Origin::Exact(o) => f.write_str(o),
        }
    }
}

impl std::fmt::Display for MethodName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_str())
    }
}

serialize_display!(Origin, MethodName);

/// An HTTP method name in `allow_methods`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct MethodName(pub Method);

impl TryFrom<String> for MethodName {
    type Error = String;
    fn try_from(m: String) -> Result<Self, String> {
        Method::from_bytes(m.as_bytes())
            .map(MethodName)
            .map_err(|_| format!("an HTTP method name, not \"{m}\""))
    }
}

/// A policy ready for requests: header values joined once at start.
#[derive(Debug)]
pub struct Policy {
    any_origin: bool,
    origins: Vec<String>,
    credentials: bool,
    methods: HeaderValue,
    headers: HeaderValue,
    expose: Option<HeaderValue>,
    max_age: HeaderValue,
}

/// Method and header names (tokens) joined with `", "`: always a valid header value; the
/// empty value stands in for the impossible failure rather than a panic.
fn join<'a>(tokens: impl Iterator<Item = &'a str>) -> HeaderValue {
    let text = tokens.collect::<Vec<_>>().join(", ");
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""))
}

/// What the request asked, as far as CORS cares.
pub enum Request {
    /// No `Origin`: not a CORS request.
    None,
    /// `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
    Preflight { allowed: bool },
    /// Any other request with an `Origin`.
    Actual,
}

impl Policy {
    pub fn new(c: &Config) -> Self {
        Self {
            any_origin: c.allow_origins.contains(&Origin::Any),
            origins: c
                .allow_origins
                .iter()
                .filter_map(|o| match o {
                    Origin::Exact(o) => Some(o.clone()),
                    Origin::Any => None,
                })
                .collect(),
            credentials: c.allow_credentials,
            methods: join(c.allow_methods.iter().map(|m| m.0.as_str())),
            headers: join(c.allow_headers.iter().map(|h| h.written.as_str())),
            expose: (!c.expose_headers.is_empty())
                .then(|| join(c.expose_headers.iter().map(|h| h.written.as_str()))),
            max_age: HeaderValue::from(c.max_age.0.as_secs()),
        }
    }

    fn allows(&self, origin: &[u8]) -> bool {
        self.any_origin || self.origins.iter().any(|o| o.as_bytes() == origin)
    }

    pub fn classify(&self, req: &RequestHeader) -> Request {
        let Some(origin) = req.headers.get(http::header::ORIGIN) else {
            return Request::None;
        };
        if req.method == Method::OPTIONS
            && req
                .headers
                .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            Request::Preflight {
                allowed: self.allows(origin.as_bytes()),
            }
        } else {
            Request::Actual
        }
    }

    /// Headers for the answer to a preflight (only sent when the origin is allowed).
    pub fn preflight_headers(&self) -> [(HeaderName, HeaderValue); 3] {
        [
            (
                http::header::ACCESS_CONTROL_ALLOW_METHODS,
                self.methods.clone(),
            ),
            (
                http::header::ACCESS_CONTROL_ALLOW_HEADERS,
                self.headers.clone(),
            ),
            (http::header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone()),
        ]
    }

    /// Headers every response to a request on this route gets (preflight included).
    pub fn response_headers(&self, req: &RequestHeader, resp: &mut impl Fields) {
        let echo_origin = !self.any_origin || self.credentials;
        if echo_origin {
            crate::headers::add_vary(resp, "Origin");
        }
        let Some(origin) = req.headers.get(http::header::ORIGIN) else {
            return;
        };
        if !self.allows(origin.as_bytes()) {
            return;
        }
        let allow = if echo_origin {
            origin.clone()
        } else {
            HeaderValue::from_static("*")
        };
        resp.set(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if self.credentials {
            resp.set(
                http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose {
            resp.set(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;

    fn policy(origins: &[&str], credentials: bool) -> Policy {
        Policy::new(&Config {
            allow_origins: origins
                .iter()
                .map(|o| Origin::try_from(o.to_string()).expect("origin"))
                .collect(),
            allow_credentials: credentials,
            ..Config::default()
        })
    }

    fn req(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/api/x", None).expect("request");
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).expect("header");
        }
        r
    }

    fn header<'a>(resp: &'a ResponseHeader, name: &str) -> Option<&'a str> {
        resp.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn classification() {
        let p = policy(&["https://a.example"], false);
        let allowed = [
            ("origin", "https://a.example"),
            ("access-control-request-method", "GET"),
        ];
        assert!(matches!(
            p.classify(&req("OPTIONS", &allowed)),
            Request::Preflight { allowed: true }
        ));
        let other = [
            ("origin", "https://b.example"),
            ("access-control-request-method", "GET"),
        ];
        assert!(matches!(
            p.classify(&req("OPTIONS", &other)),
            Request::Preflight { allowed: false }
        ));
        // OPTIONS without Access-Control-Request-Method is an actual request, not a preflight.
        let plain = [("origin", "https://a.example")];
        assert!(matches!(
            p.classify(&req("OPTIONS", &plain)),
            Request::Actual
        ));
        assert!(matches!(p.classify(&req("GET", &plain)), Request::Actual));
        assert!(matches!(p.classify(&req("GET", &[])), Request::None));
    }

    #[test]
    fn listed_origins_are_echoed_with_vary() {
        let p = policy(&["https://a.example"], true);
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        p.response_headers(&req("GET", &[("origin", "https://a.example")]), &mut resp);
        assert_eq!(
            header(&resp, "access-control-allow-origin"),
            Some("https://a.example")
        );
        assert_eq!(
            header(&resp, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(header(&resp, "vary"), Some("Origin"));
        // An origin not listed gets no grant, but still the Vary (the answer depends on it).
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        p.response_headers(
            &req("GET", &[("origin", "https://evil.example")]),
            &mut resp,
        );
        assert_eq!(header(&resp, "access-control-allow-origin"), None);
        assert_eq!(header(&resp, "vary"), Some("Origin"));
    }

    #[test]
    fn any_origin_without_credentials_is_a_star_without_vary() {
        let p = policy(&["*"], false);
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        p.response_headers(&req("GET", &[("origin", "https://x.example")]), &mut resp);
        assert_eq!(header(&resp, "access-control-allow-origin"), Some("*"));
        assert_eq!(header(&resp, "vary"), None);
        let names: Vec<String> = p
            .preflight_headers()
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "access-control-allow-methods",
                "access-control-allow-headers",
                "access-control-max-age"
            ]
        );
    }

    #[test]
    fn config_values_and_checks() {
        assert!(Origin::try_from("https://a.example/".to_string()).is_err());
        assert!(Origin::try_from("a.example".to_string()).is_err());
        assert!(MethodName::try_from("GE T".to_string()).is_err());
        let both = Config {
            allow_origins: vec![Origin::Any],
            allow_credentials: true,
            ..Config::default()
        };
        assert_eq!(
            both.validate().expect_err("credentials").key,
            "allow_credentials"
        );
        Config::default().validate().expect("defaults are valid");
    }
}
