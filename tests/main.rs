//! Rampart's integration tests: one binary (Pingora links once), one module per feature.
//! Every test starts real servers on loopback: upstreams, redis-server, Rampart itself.

mod common;

mod cache;
mod cluster;
mod compress;
mod config;
mod cors;
mod errors;
mod headers;
mod metrics;
mod ratelimit;
mod redis;
mod routing;
