//! Body types on the proxy's paths.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

pub use breakwater_resilience::BoxError;

/// Every body the proxy sends, to clients and to upstreams: boxed so that a proxied body, a
/// replayable one and one Breakwater wrote itself share a type.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
};

use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

/// A body that keeps something alive (a bulkhead slot, an in-flight mark) until the body ends
/// or is dropped — what "the call is over" means for a streamed response.
pub struct Guarded<G> {
    inner: ProxyBody,
    guard: Option<G>,
}

impl<G: Send + Unpin + 'static> Guarded<G> {
    /// Wraps `inner`, holding `guard` (one allocation: the box of the result).
    pub fn wrap(inner: ProxyBody, guard: G) -> ProxyBody {
        Self { inner, guard: Some(guard) }.boxed_unsync()
    }
}

impl<G: Unpin> Body for Guarded<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            // The body ended: release now rather than when the connection drops it.
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether the caller's request body failed, and how: set by [`ClientBody`] when the body it
/// reads from the caller fails, read by the forwarding code when an attempt fails, so that the
/// caller's own fault (a malformed chunk, a body cut short) is answered 400 and never retried
/// nor counted against the upstream. Shared by every copy of a request.
/// A request without a body cannot fail that way and shares nothing (`None`: no allocation on
/// the path most requests take).
#[derive(Debug, Clone, Default)]
pub struct ClientFault(Option<std::sync::Arc<std::sync::OnceLock<&'static str>>>);

impl ClientFault {
    /// `body-malformed` or `body-incomplete` once the caller's body failed.
    pub fn reason(&self) -> Option<&'static str> {
        self.0.as_ref().and_then(|f| f.get().copied())
    }
}

/// The caller's request body failed: its fault, not the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("the caller's request body failed ({reason}): {source}")]
pub struct ClientBodyError {
    /// `body-malformed` or `body-incomplete`.
    pub reason: &'static str,
    #[source]
    source: hyper::Error,
}

/// The body of a caller's request, which records in a [`ClientFault`] how it failed.
pub struct ClientBody {
    inner: hyper::body::Incoming,
    fault: ClientFault,
    /// Keeps the connection from taking the body's bytes for a new request head.
    _open: Option<super::idle::Open>,
}

impl ClientBody {
    /// Wraps a caller's request body, which came on the connection `activity` watches; the
    /// returned [`ClientFault`] tells later whether it failed.
    pub fn wrap(inner: hyper::body::Incoming, activity: &super::idle::Activity) -> (ProxyBody, ClientFault) {
        if inner.is_end_stream() {
            return (Self { inner, fault: ClientFault(None), _open: None }.boxed_unsync(), ClientFault(None));
        }
        let fault = ClientFault(Some(Default::default()));
        (Self { inner, fault: fault.clone(), _open: Some(activity.hold()) }.boxed_unsync(), fault)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Err(source)) => {
                // The connection ended before the body did (Content-Length not reached, an
                // HTTP/2 stream reset by the caller) or the body broke the framing rules.
                let cause = std::error::Error::source(&source);
                let cut_short = source.is_incomplete_message()
                    || source.is_canceled()
                    || cause
                        .and_then(|s| s.downcast_ref::<std::io::Error>())
                        .is_some_and(|e| e.kind() == std::io::ErrorKind::UnexpectedEof)
                    || cause
                        .and_then(|s| s.downcast_ref::<h2::Error>())
                        .is_some_and(|e| e.is_reset() || e.is_io());
                let reason = if cut_short { "body-incomplete" } else { "body-malformed" };
                if let Some(f) = &self.fault.0 {
                    let _ = f.set(reason);
                }
                Poll::Ready(Some(Err(Box::new(ClientBodyError { reason, source }))))
            }
            other => Poll::Ready(other.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An empty body; boxing it allocates nothing (every part of it is zero-sized).
pub fn empty() -> ProxyBody {
    http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync()
}

/// Frames already read, followed by the rest of a body.
pub struct Chain {
    head: VecDeque<Frame<Bytes>>,
    rest: Option<ProxyBody>,
}

impl Chain {
    /// `head`, then `rest`.
    pub fn wrap(head: VecDeque<Frame<Bytes>>, rest: Option<ProxyBody>) -> ProxyBody {
        Self { head, rest }.boxed_unsync()
    }
}

impl Body for Chain {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.head.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }
}

/// A body read up to a limit: whole (so it can be sent again) or not.
pub enum Buffered {
    /// Read to the end: data frames and trailers.
    Whole(Vec<Frame<Bytes>>),
    /// Too big, too slow, or failed: what was read, then the rest (sendable once).
    Partial(VecDeque<Frame<Bytes>>, ProxyBody),
}

impl Buffered {
    /// A fresh body for one attempt.
    pub fn body(&self) -> Option<ProxyBody> {
        match self {
            Self::Whole(frames) => Some(Chain::wrap(frames.iter().filter_map(clone_frame).collect(), None)),
            Self::Partial(..) => None,
        }
    }
}

fn clone_frame(f: &Frame<Bytes>) -> Option<Frame<Bytes>> {
    if let Some(d) = f.data_ref() {
        return Some(Frame::data(d.clone()));
    }
    f.trailers_ref().map(|t| Frame::trailers(t.clone()))
}

/// Reads `body` while it keeps coming: up to `cap` bytes, waiting at most `idle` for each
/// frame. A body that ends within both bounds is [`Buffered::Whole`].
///
/// The idle bound keeps a streaming body (a gRPC bidi stream, a slow upload) from being held
/// back: it is then forwarded as a stream, and simply not replayable.
pub async fn buffer(mut body: ProxyBody, cap: usize, idle: std::time::Duration) -> Buffered {
    let mut frames = Vec::new();
    let mut size = 0usize;
    loop {
        if body.is_end_stream() {
            return Buffered::Whole(frames);
        }
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(None) => return Buffered::Whole(frames),
            Ok(Some(Ok(frame))) => {
                size += frame.data_ref().map_or(0, Bytes::len);
                frames.push(frame);
                if size > cap {
                    return Buffered::Partial(frames.into(), body);
                }
            }
            Ok(Some(Err(e))) => {
                let failed =
                    http_body_util::StreamBody::new(futures_util::stream::once(async move { Err(e) }));
                return Buffered::Partial(frames.into(), failed.boxed_unsync());
            }
            // The sender paused: stream the rest.
            Err(_idle) => return Buffered::Partial(frames.into(), body),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::{BodyExt, Full};

    use super::*;

    fn full(n: usize) -> ProxyBody {
        Full::new(Bytes::from(vec![b'x'; n])).map_err(|never| match never {}).boxed_unsync()
    }

    #[tokio::test]
    async fn small_bodies_are_kept_whole_and_replay_identically() {
        let b = buffer(full(100), 1024, Duration::from_secs(1)).await;
        let first = b.body().expect("replayable").collect().await.expect("body").to_bytes();
        let second = b.body().expect("replayable").collect().await.expect("body").to_bytes();
        assert_eq!(first.len(), 100);
        assert_eq!(first, second);
    }

    #[tokio::test]
    async fn bodies_over_the_cap_stream_once_and_lose_nothing() {
        let b = buffer(full(5000), 1024, Duration::from_secs(1)).await;
        assert!(b.body().is_none(), "not replayable");
        let Buffered::Partial(head, rest) = b else { panic!("partial") };
        let all = Chain::wrap(head, Some(rest)).collect().await.expect("body").to_bytes();
        assert_eq!(all.len(), 5000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_stream_is_not_waited_on() {
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
        tx.send_data(Bytes::from_static(b"first")).await.expect("send");
        let b = buffer(body.boxed_unsync(), 1024, Duration::from_millis(20)).await;
        assert!(matches!(b, Buffered::Partial(ref head, _) if head.len() == 1));
    }
}
