//! A bounded load: `total` calls from `concurrency` workers, stopped after `max_time` in any
//! case, each call bounded by the client's own timeout (a typical HTTP client's 5s).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::time::Instant;

/// Where calls go.
#[derive(Clone)]
pub enum Via {
    /// Straight to the service's pods, round robin (what a client does without a mesh).
    Direct(Vec<SocketAddr>),
    /// Through the sidecar's outbound listener, naming the service in `Host`.
    Sidecar(SocketAddr),
}

/// What one load run saw.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub calls: usize,
    pub ok: usize,
    pub latencies: Vec<Duration>,
    /// Failures by cause (`503`, `connect refused`, `breakwater: bulkhead-full`, ...).
    pub failures: BTreeMap<String, usize>,
    pub wall: Duration,
    /// Time callers spent waiting on calls that failed.
    pub failed_wait: Duration,
}

impl LoadResult {
    pub fn errors(&self) -> usize {
        self.calls - self.ok
    }

    /// Calls that took longer than `limit`.
    pub fn slower_than(&self, limit: Duration) -> usize {
        self.latencies.iter().filter(|l| **l > limit).count()
    }

    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let mut l = self.latencies.clone();
        l.sort_unstable();
        let i = ((l.len() as f64 - 1.0) * p).round() as usize;
        l[i.min(l.len() - 1)]
    }
}

pub struct Load {
    /// Open loop: start calls at this rate whatever the answers (how real traffic arrives);
    /// `None`: closed loop, `concurrency` callers each waiting for its answer.
    pub rate: Option<u32>,
    pub host: &'static str,
    pub path: &'static str,
    pub total: usize,
    pub concurrency: usize,
    pub max_time: Duration,
    pub client_timeout: Duration,
}

pub async fn run(via: Via, load: &Load) -> LoadResult {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let stop_at = started + load.max_time;
    let mut workers = Vec::new();
    // Open loop: one task per call, started on a fixed schedule.
    if let Some(rate) = load.rate {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
        for _ in 0..load.total {
            tick.tick().await;
            if Instant::now() >= stop_at {
                break;
            }
            let (client, via) = (client.clone(), via.clone());
            let (host, path, timeout) = (load.host, load.path, load.client_timeout);
            let i = next.fetch_add(1, Ordering::Relaxed);
            workers.push(tokio::spawn(async move {
                let mut out = LoadResult::default();
                one(&client, &via, i, host, path, timeout, &mut out).await;
                out
            }));
        }
    }
    for _ in 0..load.concurrency.min(if load.rate.is_some() { 0 } else { usize::MAX }) {
        let (client, next, via) = (client.clone(), next.clone(), via.clone());
        let (host, path, total, timeout) = (load.host, load.path, load.total, load.client_timeout);
        workers.push(tokio::spawn(async move {
            let mut out = LoadResult::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= stop_at {
                    break;
                }
                one(&client, &via, i, host, path, timeout, &mut out).await;
            }
            out
        }));
    }
    let mut all = LoadResult::default();
    for w in workers {
        if let Ok(r) = w.await {
            all.calls += r.calls;
            all.ok += r.ok;
            all.latencies.extend(r.latencies);
            all.failed_wait += r.failed_wait;
            for (k, v) in r.failures {
                *all.failures.entry(k).or_default() += v;
            }
        }
    }
    all.wall = started.elapsed();
    all
}

/// One call, recorded in `out`.
async fn one(
    client: &Client<HttpConnector, Empty<Bytes>>,
    via: &Via,
    i: usize,
    host: &str,
    path: &str,
    timeout: Duration,
    out: &mut LoadResult,
) {
    {
        {
            let addr = match via {
                Via::Direct(pods) => pods[i % pods.len()],
                Via::Sidecar(a) => *a,
            };
            let req = Request::get(format!("http://{addr}{path}"))
                .header("host", host)
                .body(Empty::new())
                .expect("a valid request");
            let t = Instant::now();
            let result = tokio::time::timeout(timeout, async {
                let resp = client.request(req).await?;
                let status = resp.status();
                let cause =
                    resp.headers().get("breakwater-error").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let _ = resp.into_body().collect().await;
                Ok::<_, hyper_util::client::legacy::Error>((status, cause))
            })
            .await;
            let took = t.elapsed();
            out.calls += 1;
            out.latencies.push(took);
            let failure = match result {
                Ok(Ok((s, _))) if s.is_success() => None,
                Ok(Ok((s, Some(cause)))) => Some(format!("{} breakwater: {cause}", s.as_u16())),
                Ok(Ok((s, None))) => Some(s.as_u16().to_string()),
                Ok(Err(e)) if e.is_connect() => Some("connection refused".to_owned()),
                Ok(Err(_)) => Some("connection reset".to_owned()),
                Err(_) => Some(format!("client timeout ({}s)", timeout.as_secs())),
            };
            match failure {
                None => out.ok += 1,
                Some(f) => {
                    *out.failures.entry(f).or_default() += 1;
                    out.failed_wait += took;
                }
            }
        }
    }
}
