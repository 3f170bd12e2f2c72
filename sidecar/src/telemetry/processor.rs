//! A bounded, non-blocking batch span processor that counts what it drops.
//!
//! Why not the SDK's `BatchSpanProcessor`: its dropped-span count is private (logged once, at
//! shutdown), and Breakwater promises a metric for it. The contract is the SDK's: `on_end` never
//! blocks and never fails a request — a full queue drops the span and counts it — and export
//! happens in batches, each bounded by a timeout, so a dead or slow collector costs memory only
//! up to the queue bound and time only on the export thread. `force_flush` returns once what
//! was queued before it is exported (or its timeout passed); `shutdown` exports what is left,
//! shuts the exporter down and stops the thread, after which spans are dropped and counted.
//!
//! The export loop runs on a thread of its own, with a one-thread tokio runtime on which the
//! exporter is built (as the SDK's processor does): flush and shutdown can then wait for it from
//! anywhere, also from a thread of the proxy's runtime, without waiting on themselves.

use std::{
    sync::{Arc, mpsc as std_mpsc},
    time::Duration,
};

use opentelemetry::Context;
use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    trace::{Span, SpanData, SpanExporter, SpanProcessor},
};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Notify, mpsc};

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

/// What becomes of spans, counted in the sidecar's `/metrics` (handed in by its registry).
#[derive(Debug, Clone, Default)]
pub struct SpanCounters {
    /// Spans dropped: the queue was full, or the processor shut down.
    pub dropped: Counter,
    /// Spans handed to the exporter successfully.
    pub exported: Counter,
    /// Spans in batches the exporter failed (or timed out) on.
    pub failed: Counter,
}

/// A request to the export loop, answered once done. They travel apart from the spans, so that
/// a full span queue never holds one up.
enum Control {
    /// Export everything queued so far.
    Flush(std_mpsc::SyncSender<OTelSdkResult>),
    /// Export everything queued so far, shut the exporter down and stop.
    Shutdown(std_mpsc::SyncSender<OTelSdkResult>),
}

/// See the module documentation.
#[derive(Debug)]
pub struct BoundedBatchProcessor {
    spans: mpsc::Sender<Box<SpanData>>,
    // Unbounded, and bounded by construction: each sender waits for its answer.
    control: mpsc::UnboundedSender<Control>,
    // Told when a full batch is waiting in `spans`.
    full: Arc<Notify>,
    max_batch: usize,
    counters: SpanCounters,
}

/// The export loop's ends of the channels.
struct Queues {
    spans: mpsc::Receiver<Box<SpanData>>,
    control: mpsc::UnboundedReceiver<Control>,
    full: Arc<Notify>,
}

impl BoundedBatchProcessor {
    fn channels(limits: &Limits, counters: SpanCounters) -> (Self, Queues) {
        let (spans, spans_rx) = mpsc::channel(limits.max_queue);
        let (control, control_rx) = mpsc::unbounded_channel();
        let full = Arc::new(Notify::new());
        let max_batch = limits.max_batch;
        (
            Self { spans, control, full: full.clone(), max_batch, counters },
            Queues { spans: spans_rx, control: control_rx, full },
        )
    }

    /// Starts the export thread, builds the exporter on it with `build`, and returns once the
    /// exporter is built (or with why it could not be).
    pub fn start<E, B>(build: B, limits: Limits, counters: SpanCounters) -> Result<Self, String>
    where
        E: SpanExporter + 'static,
        B: FnOnce() -> Result<E, String> + Send + 'static,
    {
        let (processor, queues) = Self::channels(&limits, counters);
        let (built, outcome) = std_mpsc::sync_channel(1);
        let loop_counters = processor.counters.clone();
        std::thread::Builder::new()
            .name("otel-export".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = built.send(Err(format!("cannot start the export runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match build() {
                        Ok(exporter) => {
                            let _ = built.send(Ok(()));
                            export_loop(exporter, queues, limits, loop_counters).await;
                        }
                        Err(e) => {
                            let _ = built.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| format!("cannot start the export thread: {e}"))?;
        outcome.recv().map_err(|_| "the export thread ended before building the exporter".to_owned())??;
        Ok(processor)
    }

    /// Runs the export loop as a task on the current runtime (tests on a paused clock).
    #[cfg(test)]
    fn spawn_here<E: SpanExporter + 'static>(exporter: E, limits: Limits, counters: SpanCounters) -> Self {
        let (processor, queues) = Self::channels(&limits, counters);
        tokio::spawn(export_loop(exporter, queues, limits, processor.counters.clone()));
        processor
    }

    /// Sends a request to the export loop and waits at most `timeout` for its answer.
    fn ask(
        &self,
        request: fn(std_mpsc::SyncSender<OTelSdkResult>) -> Control,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (done, answer) = std_mpsc::sync_channel(1);
        self.control.send(request(done)).map_err(|_| OTelSdkError::AlreadyShutdown)?;
        match answer.recv_timeout(timeout) {
            Ok(result) => result,
            Err(std_mpsc::RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(timeout)),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => Err(OTelSdkError::AlreadyShutdown),
        }
    }
}

/// Collects spans into batches and exports each when it is full, when its oldest span has
/// waited `limits.delay`, or when asked to; stops on shutdown or when every handle is gone. It
/// sleeps until one of those happens: a queued span does not wake it (`on_end` does once a full
/// batch is waiting), which would cost a wake-up of this thread per span.
async fn export_loop<E: SpanExporter>(
    exporter: E,
    mut queues: Queues,
    limits: Limits,
    counters: SpanCounters,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(limits.max_batch);
    let mut deadline = tokio::time::Instant::now() + limits.delay;
    loop {
        let (mut asked, mut closed, mut due) = (None, false, false);
        tokio::select! {
            // A full batch is waiting.
            _ = queues.full.notified() => {}
            // A flush or a shutdown; `None`: every processor handle is gone.
            control = queues.control.recv() => match control {
                Some(c) => asked = Some(c),
                None => closed = true,
            },
            // The batch waited long enough.
            _ = tokio::time::sleep_until(deadline) => due = true,
        }
        // Take what is queued; full batches go at once.
        let mut result = Ok(());
        while let Ok(s) = queues.spans.try_recv() {
            batch.push(*s);
            if batch.len() >= limits.max_batch {
                result = result.and(export(&exporter, &mut batch, &limits, &counters).await);
            }
        }
        if due || closed || asked.is_some() {
            result = result.and(export(&exporter, &mut batch, &limits, &counters).await);
            deadline = tokio::time::Instant::now() + limits.delay;
        }
        if closed {
            let _ = exporter.shutdown_with_timeout(limits.export_timeout);
            return;
        }
        match asked {
            Some(Control::Flush(done)) => {
                let _ = done.send(result);
            }
            Some(Control::Shutdown(done)) => {
                queues.spans.close();
                // Spans that raced the close are dropped, and counted.
                while queues.spans.try_recv().is_ok() {
                    counters.dropped.inc();
                }
                let _ = done.send(result.and(exporter.shutdown_with_timeout(limits.export_timeout)));
                return;
            }
            None => {}
        }
    }
}

/// Exports `batch` (emptying it), bounded by the export timeout, and counts the outcome.
async fn export<E: SpanExporter>(
    exporter: &E,
    batch: &mut Vec<SpanData>,
    limits: &Limits,
    counters: &SpanCounters,
) -> OTelSdkResult {
    if batch.is_empty() {
        return Ok(());
    }
    let n = batch.len() as u64;
    let spans = std::mem::replace(batch, Vec::with_capacity(limits.max_batch));
    let result = match tokio::time::timeout(limits.export_timeout, exporter.export(spans)).await {
        Ok(r) => r,
        Err(_) => Err(OTelSdkError::Timeout(limits.export_timeout)),
    };
    match &result {
        Ok(()) => counters.exported.inc_by(n),
        Err(e) => {
            tracing::debug!(target: "breakwater_sidecar::telemetry", error = %e, spans = n, "span export failed");
            counters.failed.inc_by(n)
        }
    };
    result
}

impl SpanProcessor for BoundedBatchProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.spans.try_send(Box::new(span)).is_err() {
            self.counters.dropped.inc();
        } else if self.spans.max_capacity() - self.spans.capacity() >= self.max_batch {
            self.full.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Control::Flush, Limits::default().export_timeout)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(Control::Shutdown, timeout)
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Control::Flush(_) => "Flush",
            Control::Shutdown(_) => "Shutdown",
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };

    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    use super::*;

    /// Counts what it is given; `stall` makes every export wait forever.
    #[derive(Debug, Clone, Default)]
    struct Collector {
        spans: Arc<AtomicUsize>,
        batches: Arc<AtomicUsize>,
        shut: Arc<AtomicBool>,
        stall: bool,
    }

    impl SpanExporter for Collector {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            if self.stall {
                std::future::pending::<()>().await;
            }
            self.spans.fetch_add(batch.len(), Ordering::SeqCst);
            self.batches.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            self.shut.store(true, Ordering::SeqCst);
            Ok(())
        }
    }

    fn span(sampled: bool) -> SpanData {
        let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(1u128.to_be_bytes()),
                SpanId::from_bytes(1u64.to_be_bytes()),
                flags,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: "test".into(),
            start_time: std::time::SystemTime::UNIX_EPOCH,
            end_time: std::time::SystemTime::UNIX_EPOCH,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    fn limits() -> Limits {
        Limits {
            max_queue: 8,
            max_batch: 4,
            delay: Duration::from_secs(1),
            export_timeout: Duration::from_secs(2),
        }
    }

    /// Waits (on the paused clock, so without real time passing) until `f` holds.
    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..1000 {
            if f() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("never happened: {what}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_goes_when_full_or_when_its_delay_passes() {
        let c = Collector::default();
        let counters = SpanCounters::default();
        let p = BoundedBatchProcessor::spawn_here(c.clone(), limits(), counters.clone());
        for _ in 0..5 {
            p.on_end(span(true));
        }
        p.on_end(span(false)); // not sampled: never queued
        until("the full batch exported", || c.spans.load(Ordering::SeqCst) == 4).await;
        tokio::time::advance(Duration::from_millis(999)).await;
        until("a pass of the loop", || true).await;
        assert_eq!(c.spans.load(Ordering::SeqCst), 4, "the fifth waits for its delay");
        tokio::time::advance(Duration::from_millis(2)).await;
        until("the rest exported after the delay", || c.spans.load(Ordering::SeqCst) == 5).await;
        assert_eq!(c.batches.load(Ordering::SeqCst), 2);
        assert_eq!(counters.exported.get(), 5);
        assert_eq!(counters.dropped.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_drops_and_counts_and_a_stalled_export_fails_after_its_timeout() {
        let c = Collector { stall: true, ..Default::default() };
        let counters = SpanCounters::default();
        let p = BoundedBatchProcessor::spawn_here(c.clone(), limits(), counters.clone());
        // The loop takes 4 into its batch and stalls exporting them; 8 more fill the queue.
        for _ in 0..4 {
            p.on_end(span(true));
        }
        until("the first batch taken", || p.spans.capacity() == 8).await;
        for _ in 0..10 {
            p.on_end(span(true));
        }
        assert_eq!(counters.dropped.get(), 2, "8 queued, 2 dropped");
        tokio::time::advance(Duration::from_secs(2)).await;
        until("the stalled batch counted as failed", || counters.failed.get() == 4).await;
        assert_eq!(counters.exported.get(), 0);
    }

    /// The SDK's contract, on the export thread as in production: `force_flush` returns once
    /// what was queued is exported; `shutdown` exports the rest, shuts the exporter down and
    /// stops, after which spans are dropped and counted.
    #[test]
    fn flush_and_shutdown_do_what_they_say() {
        let c = Collector::default();
        let counters = SpanCounters::default();
        let exporter = c.clone();
        let limits = Limits { delay: Duration::from_secs(3600), ..limits() };
        let p =
            BoundedBatchProcessor::start(move || Ok(exporter), limits, counters.clone()).expect("started");
        for _ in 0..3 {
            p.on_end(span(true));
        }
        p.force_flush().expect("flushed");
        assert_eq!(
            c.spans.load(Ordering::SeqCst),
            3,
            "flushed before returning, though the delay is an hour"
        );
        p.on_end(span(true));
        p.shutdown_with_timeout(Duration::from_secs(5)).expect("shut down");
        assert_eq!(c.spans.load(Ordering::SeqCst), 4, "what was left is exported");
        assert!(c.shut.load(Ordering::SeqCst), "the exporter is shut down");
        p.on_end(span(true));
        assert_eq!(counters.dropped.get(), 1, "after shutdown a span is dropped and counted");
        assert_eq!(counters.exported.get(), 4);
        assert!(p.force_flush().is_err(), "nothing to flush into after shutdown");
    }

    #[test]
    fn an_exporter_that_cannot_be_built_is_an_error() {
        let built = BoundedBatchProcessor::start(
            || Err::<Collector, _>("no endpoint".to_owned()),
            limits(),
            SpanCounters::default(),
        );
        assert_eq!(built.map(|_| ()).expect_err("not built"), "no endpoint");
    }
}
