//! Rampart: a hardening reverse proxy on Pingora.
//!
//! Start reading at [`proxy`] (the request path, phase by phase) and [`config`] (the file an
//! operator edits). [`runtime`] is what one config file builds (a generation), [`reload`]
//! swaps generations without downtime. Each other module is one capability.

pub mod accesslog;
pub mod admin;
pub mod alloc;
pub mod app;
pub mod cache;
pub mod cli;
pub mod client;
pub mod compress;
pub mod config;
pub mod cors;
pub mod ctx;
pub mod demo;
pub mod fields;
pub mod gate;
pub mod headers;
pub mod health;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod ratelimit;
pub mod redis;
pub mod reload;
pub mod respond;
pub mod routing;
pub mod runtime;
pub mod signal;
pub mod tls;
pub mod types;
