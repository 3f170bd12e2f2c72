//! `breakwater-fault`: an upstream that fails on purpose.
//!
//! One server for Breakwater's integration tests, its demo and its benchmarks: HTTP/1.1 and h2c
//! (prior knowledge) on one port, gRPC status in trailers, WebSocket-style upgrades, and every
//! kind of misbehaviour a resilience layer must survive — error statuses, the first N requests
//! failing, delays, connection resets, bodies cut short or trickled slowly.
//!
//! Behaviour comes from the server's [`Faults`] (set once, from flags or a builder) and can be
//! overridden per request with query parameters, so a test or a `curl` can ask for exactly
//! what it needs:
//!
//! | query | effect |
//! |---|---|
//! | `status=503` | answer with that status |
//! | `delay=250ms` | wait before answering |
//! | `reset=1` | drop the connection (HTTP/1.1) or reset the stream (h2) instead of answering |
//! | `close_early=1` | announce a body, send part of it, then cut the connection |
//! | `slow_body=1` | trickle the body in 10 chunks, `delay` apart (default 100ms) |
//! | `grpc_status=14` | gRPC: answer 200 with `grpc-status: 14` in the trailers |
//! | `body_bytes=N` | answer with an N-byte body |
//!
//! `GET /echo` answers the request's method, URI, version and headers as JSON; `GET /stats`
//! answers the counters. An `Upgrade` request gets `101` and then an echo of the raw bytes.

#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

pub mod otlp;
mod server;
mod tcp;

pub use self::{
    server::{FaultServer, Faults, HttpVersions, SeenRequest, Stats},
    tcp::{GarbageServer, TcpEchoServer},
};
