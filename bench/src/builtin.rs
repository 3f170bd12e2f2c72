//! A small in-process load generator, for `--smoke` in `make test`: it exercises every setup,
//! measurement and report of the harness without oha, whose build from crates.io costs CI
//! several minutes. Real measurements (`make bench`) always use oha.
//!
//! Fixed rate: requests are due on a schedule and their latency counts from when they were due
//! (no coordinated omission); saturation: each connection sends its next request as soon as the
//! previous one is answered.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpStream, sync::Mutex, time::Instant};

use crate::load::{LoadResult, Protocol, Shape};

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

async fn connect(entry: SocketAddr, protocol: Protocol) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(entry).await?;
    stream.set_nodelay(true)?;
    let io = TokioIo::new(stream);
    Ok(match protocol {
        Protocol::Http1 => {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Sender::H1(send)
        }
        Protocol::H2c => {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Sender::H2(send)
        }
    })
}

async fn send(sender: &mut Sender) -> Result<u16, String> {
    let req = Request::get("http://backend/")
        .header("host", "backend")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = match sender {
        Sender::H1(s) => {
            s.ready().await.map_err(|e| e.to_string())?;
            s.send_request(req).await
        }
        Sender::H2(s) => {
            s.ready().await.map_err(|e| e.to_string())?;
            s.send_request(req).await
        }
    }
    .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok(status)
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<f64>,
    ok: u64,
    failures: BTreeMap<String, u64>,
}

/// Runs one load against `entry` for `duration` and summarises it like oha's report.
pub async fn run(
    entry: SocketAddr,
    protocol: Protocol,
    shape: Shape,
    duration: Duration,
    connections: u32,
) -> anyhow::Result<LoadResult> {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let end = started + duration;
    let connections = connections.max(1) as usize;
    let interval = match shape {
        Shape::Fixed(rps) => Some(Duration::from_secs_f64(connections as f64 / f64::from(rps.max(1)))),
        Shape::Saturation => None,
    };
    let mut workers = Vec::new();
    for i in 0..connections {
        let tally = tally.clone();
        let mut sender = connect(entry, protocol).await?;
        workers.push(tokio::spawn(async move {
            // Each connection carries every `connections`-th request of the schedule.
            let mut due =
                started + interval.map_or(Duration::ZERO, |iv| iv.mul_f64(i as f64 / connections as f64));
            // Bounded in time, and in count by the schedule (or by the connection's pace).
            while due < end {
                if interval.is_some() {
                    tokio::time::sleep_until(due).await;
                }
                let sent = if interval.is_some() { due } else { Instant::now() };
                let result = send(&mut sender).await;
                let latency = sent.elapsed();
                let mut t = tally.lock().await;
                match result {
                    Ok(s) if (200..300).contains(&s) => {
                        t.ok += 1;
                        t.latencies_us.push(latency.as_secs_f64() * 1e6);
                    }
                    Ok(s) => *t.failures.entry(format!("status {s}")).or_default() += 1,
                    Err(e) => *t.failures.entry(e).or_default() += 1,
                }
                drop(t);
                due = match interval {
                    Some(iv) => due + iv,
                    None => Instant::now(),
                };
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut t = std::mem::take(&mut *tally.lock().await);
    t.latencies_us.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if t.latencies_us.is_empty() {
            0.0
        } else {
            t.latencies_us[(((t.latencies_us.len() - 1) as f64) * p).round() as usize]
        }
    };
    let failed: u64 = t.failures.values().sum();
    Ok(LoadResult {
        requests: t.ok + failed,
        ok: t.ok,
        failed,
        failures: t.failures.clone(),
        aborted: 0,
        rps: if seconds > 0.0 { t.ok as f64 / seconds } else { 0.0 },
        seconds,
        p50_us: pct(0.5),
        p90_us: pct(0.9),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
    })
}
