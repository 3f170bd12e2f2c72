//! A bounded, non-blocking batch span processor that counts what it drops.
//!
//! Why not the SDK's `BatchSpanProcessor`: its dropped-span count is private (logged once, at
//! shutdown), and Breakwater promises a metric for it. The contract is the same: `on_end` never
//! blocks and never fails a request — a full queue drops the span and counts it — and export
//! happens on a background task, in batches, each bounded by a timeout, so a dead or slow
//! collector costs memory only up to the queue bound and time only on that task.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry::Context;
use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    trace::{Span, SpanData, SpanExporter, SpanProcessor},
};
use tokio::sync::{mpsc, oneshot};

/// Queue and batch bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Spans waiting for export; beyond this they are dropped.
    pub max_queue: usize,
    /// Spans per export call.
    pub max_batch: usize,
    /// Longest a span waits before its batch is sent.
    pub delay: Duration,
    /// Longest one export call may take.
    pub export_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_queue: 2048,
            max_batch: 512,
            delay: Duration::from_secs(1),
            export_timeout: Duration::from_secs(10),
        }
    }
}

/// Export outcome counters, shared with `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Spans dropped because the queue was full or the exporter gone.
    pub dropped: AtomicU64,
    /// Spans handed to the exporter successfully.
    pub exported: AtomicU64,
    /// Spans in batches the exporter failed (or timed out) on.
    pub failed: AtomicU64,
}

enum Msg {
    Span(Box<SpanData>),
    Flush(oneshot::Sender<()>),
}

/// See the module documentation.
#[derive(Debug)]
pub struct BoundedBatchProcessor {
    tx: mpsc::Sender<Msg>,
    counters: Arc<Counters>,
}

impl BoundedBatchProcessor {
    /// Starts the export task on the current tokio runtime.
    pub fn start<E: SpanExporter + 'static>(exporter: E, limits: Limits, counters: Arc<Counters>) -> Self {
        let (tx, rx) = mpsc::channel(limits.max_queue);
        tokio::spawn(export_loop(exporter, rx, limits, counters.clone()));
        Self { tx, counters }
    }
}

async fn export_loop<E: SpanExporter>(
    exporter: E,
    mut rx: mpsc::Receiver<Msg>,
    limits: Limits,
    counters: Arc<Counters>,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(limits.max_batch);
    let mut flush_waiters = Vec::new();
    loop {
        let deadline = tokio::time::sleep(limits.delay);
        tokio::pin!(deadline);
        let mut closed = false;
        while batch.len() < limits.max_batch && flush_waiters.is_empty() {
            tokio::select! {
                // A finished span, or a flush request.
                msg = rx.recv() => match msg {
                    Some(Msg::Span(s)) => batch.push(*s),
                    Some(Msg::Flush(done)) => flush_waiters.push(done),
                    // Every processor handle is gone: export what is left and stop.
                    None => { closed = true; break; }
                },
                // The batch waited long enough.
                _ = &mut deadline => break,
            }
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(limits.max_batch));
            match tokio::time::timeout(limits.export_timeout, exporter.export(spans)).await {
                Ok(Ok(())) => counters.exported.fetch_add(n, Ordering::Relaxed),
                Ok(Err(e)) => {
                    tracing::debug!(target: "breakwater_sidecar::telemetry", error = %e, spans = n, "span export failed");
                    counters.failed.fetch_add(n, Ordering::Relaxed)
                }
                Err(_) => {
                    tracing::debug!(target: "breakwater_sidecar::telemetry", spans = n, "span export timed out");
                    counters.failed.fetch_add(n, Ordering::Relaxed)
                }
            };
        }
        for w in flush_waiters.drain(..) {
            let _ = w.send(());
        }
        if closed {
            return;
        }
    }
}

impl SpanProcessor for BoundedBatchProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.tx.try_send(Msg::Span(Box::new(span))).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Asks the task to export what it holds; does not wait (no blocking on a runtime
        // thread). `flush()` below waits, from async code.
        let (done, _) = oneshot::channel();
        self.tx.try_send(Msg::Flush(done)).map_err(|_| OTelSdkError::InternalFailure("queue full".into()))
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.force_flush()
    }
}

impl BoundedBatchProcessor {
    /// A handle that can flush from async code.
    pub fn flusher(&self) -> Flusher {
        Flusher(self.tx.clone())
    }
}

/// Flushes a [`BoundedBatchProcessor`] from async code.
#[derive(Debug, Clone)]
pub struct Flusher(mpsc::Sender<Msg>);

impl Flusher {
    /// Exports everything queued so far, waiting at most `timeout`.
    pub async fn flush(&self, timeout: Duration) {
        let (done, wait) = oneshot::channel();
        if self.0.send(Msg::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(timeout, wait).await;
        }
    }
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Span(_) => "Span",
            Msg::Flush(_) => "Flush",
        })
    }
}
