//! Rampart: a hardening reverse proxy on Pingora.
//!
//! Start reading at [`proxy`] (the request path, phase by phase) and [`config`] (the file an
//! operator edits). Each other module is one capability.

pub mod accesslog;
pub mod admin;
pub mod app;
pub mod cache;
pub mod cli;
pub mod client;
pub mod compress;
pub mod config;
pub mod cors;
pub mod ctx;
pub mod demo;
pub mod gate;
pub mod headers;
pub mod limits;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod ratelimit;
pub mod redis;
pub mod respond;
pub mod routing;
pub mod types;
