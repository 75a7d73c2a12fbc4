//! Rampart's integration tests: one binary (Pingora links once), one module per feature.
//! Every test starts real servers on loopback: upstreams, redis-server, Rampart itself.

mod common;

mod cache;
mod compress;
mod config;
mod cors;
mod errors;
mod fuzz;
mod headers;
mod limits;
mod metrics;
mod ratelimit;
mod redis;
mod routing;
