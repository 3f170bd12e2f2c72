//! Closing client connections that stay silent (no byte either way for `clientIdleTimeout`) or
//! that begin an HTTP/1 request head and do not finish it within `headerReadTimeout`.
//!
//! The head timer is ours, not hyper's: hyper's HTTP/1 server starts its `header_read_timeout`
//! when it starts waiting for the next head, that is at the end of every response, so it closes a
//! keep-alive connection after that much silence, far sooner than `clientIdleTimeout`; a client
//! pooling that connection then races the close with its next request. Envoy's
//! `request_headers_timeout` starts at the head's first byte, and so does this one.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// What the connection's bytes and requests did: when it last moved a byte, and whether an
/// HTTP/1 request head has begun and since when (milliseconds since `base`).
#[derive(Debug, Clone)]
pub struct Activity {
    base: Instant,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    last_ms: AtomicU64,
    /// When the first byte of a request head arrived, plus one; 0: no head has begun.
    head_since: AtomicU64,
    /// Requests being handled and request bodies still open: while any is, bytes from the
    /// client belong to them, not to a new head.
    open: AtomicUsize,
    /// [`UNKNOWN`], [`HTTP1`] or [`HTTP2`] (HTTP/2 bounds nothing here: PINGs and SETTINGS
    /// arrive between streams, and h2 has its own limits).
    protocol: AtomicU8,
    head_began: tokio::sync::Notify,
}

const UNKNOWN: u8 = 0;
const HTTP1: u8 = 1;
const HTTP2: u8 = 2;

/// Holds a request (or its body) open: the client's bytes are not a new head meanwhile.
#[derive(Debug)]
pub struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    /// Starts now.
    pub fn new() -> Self {
        Self { base: Instant::now(), shared: Arc::default() }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn touch(&self) {
        self.shared.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Bytes arrived from the client: the first of a connection tell HTTP/1 from HTTP/2, and
    /// on HTTP/1 the first while no request is open begin a head.
    fn received(&self, bytes: &[u8]) {
        self.touch();
        let shared = &self.shared;
        let mut protocol = shared.protocol.load(Ordering::Relaxed);
        if protocol == UNKNOWN {
            const PREFACE: &[u8] = b"PRI * HTTP/2.0";
            let n = bytes.len().min(PREFACE.len());
            protocol = if bytes[..n] == PREFACE[..n] { HTTP2 } else { HTTP1 };
            shared.protocol.store(protocol, Ordering::Relaxed);
        }
        if protocol == HTTP1
            && shared.open.load(Ordering::Acquire) == 0
            && shared.head_since.load(Ordering::Acquire) == 0
        {
            shared.head_since.store(self.now_ms() + 1, Ordering::Release);
            shared.head_began.notify_one();
        }
    }

    /// A request's head was read: it is open until the returned guard drops (hold one more in
    /// its body while that is read).
    pub fn request_open(&self) -> Open {
        self.shared.open.fetch_add(1, Ordering::AcqRel);
        self.shared.head_since.store(0, Ordering::Release);
        Open(self.shared.clone())
    }

    /// Another hold on the request open (for its body).
    pub fn hold(&self) -> Open {
        self.shared.open.fetch_add(1, Ordering::AcqRel);
        Open(self.shared.clone())
    }

    /// Resolves once an HTTP/1 request head has been arriving for `timeout` without ending.
    pub async fn head_overdue(&self, timeout: Duration) {
        loop {
            let began = self.shared.head_began.notified();
            tokio::pin!(began);
            began.as_mut().enable();
            let since = self.shared.head_since.load(Ordering::Acquire);
            if since == 0 {
                began.await;
                continue;
            }
            let due = self.base + Duration::from_millis(since - 1) + timeout;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }

    /// Resolves once nothing moved for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.base + Duration::from_millis(self.shared.last_ms.load(Ordering::Relaxed));
            let due = last + timeout;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

pin_project_lite::pin_project! {
    /// An I/O stream that records activity.
    pub struct Watched<T> {
        #[pin]
        io: T,
        activity: Activity,
    }
}

impl<T> Watched<T> {
    /// Wraps `io`.
    pub fn new(io: T, activity: Activity) -> Self {
        Self { io, activity }
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.io.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.received(&buf.filled()[before..]);
        }
        r
    }
}

impl<T: AsyncWrite> AsyncWrite for Watched<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.io.poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.io.poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
