//! Rampart's integration tests: one binary (Pingora links once), one module per feature.
//! Every test starts real servers on loopback: upstreams, redis-server, Rampart itself.

mod common;

mod cache;
mod cluster;
mod compress;
mod config;
mod cors;
mod deploy;
mod errors;
mod fuzz;
mod headers;
mod health;
mod lifecycle;
mod limits;
mod metrics;
mod ratelimit;
mod redis;
mod reload;
mod routing;
mod semantics;
mod tls;
