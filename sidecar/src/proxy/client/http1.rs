//! HTTP/1.1 connections to one endpoint, kept idle between requests.
//!
//! A connection is taken from the idle queue (or opened), carries one request, and goes back
//! when its response body has ended and hyper is ready to send the next request on it (after
//! an upgrade or a `Connection: close`, it never is). Idle connections are closed after the
//! idle timeout by a reaper task per pool that sleeps between rounds and ends with its pool;
//! it counts time in rounds, so no request reads a clock.

use std::{
    pin::Pin,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header, uri::PathAndQuery};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::{body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::{sync::Notify, time::Instant};

use super::{ConnectError, Dial, SendError};
use crate::proxy::body::ProxyBody;

/// Most idle connections kept per endpoint; one more is closed instead.
const MAX_IDLE: usize = 256;

type Sender = http1::SendRequest<ProxyBody>;

/// The HTTP/1.1 connections of one endpoint.
#[derive(Debug)]
pub struct Http1Pool {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dial: Dial,
    /// Ready connections, oldest first.
    idle: ArrayQueue<Idle>,
    /// A connection went back (only signalled under `maxConnections`, where requests wait).
    returned: Notify,
    /// The reaper's round; an idle connection remembers the round it went back in.
    round: AtomicU64,
    reaper: AtomicBool,
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    round: u64,
}

impl Http1Pool {
    pub(super) fn new(dial: Dial) -> Self {
        Self {
            shared: Arc::new(Shared {
                dial,
                idle: ArrayQueue::new(MAX_IDLE),
                returned: Notify::new(),
                round: AtomicU64::new(0),
                reaper: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `req` (absolute URI) in origin form with a `Host` header, on an idle connection or
    /// a new one. A request that a pooled connection gave back unsent (it had closed meanwhile)
    /// is sent on the next one.
    pub async fn send(&self, mut req: Request<ProxyBody>) -> Result<Response<ProxyBody>, SendError> {
        to_origin_form(&mut req);
        let connect = req.method() == Method::CONNECT;
        loop {
            let (mut sender, reused) = self.checkout().await?;
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.returning(resp, sender, connect)),
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => req = back,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// An idle connection ready to send, or a new one; whether it was reused.
    async fn checkout(&self) -> Result<(Sender, bool), SendError> {
        let shared = &self.shared;
        let mut deadline = None;
        loop {
            while let Some(idle) = shared.idle.pop() {
                // Closed by the peer, or no longer ready (it was when it went back): dropped.
                if idle.sender.is_ready() && !shared.expired(idle.round) {
                    return Ok((idle.sender, true));
                }
            }
            if let Some(slot) = shared.dial.try_slot() {
                return Ok((self.connect(slot).await?, false));
            }
            // `maxConnections`: wait for a connection to go back or to close, up to the connect
            // timeout from the first wait.
            let limit = shared.dial.limit.clone().expect("try_slot fails only under a limit");
            let deadline =
                *deadline.get_or_insert_with(|| Instant::now() + shared.dial.settings.connect_timeout);
            tokio::select! {
                slot = limit.acquire_owned() => {
                    let slot = slot.map_err(|_| ConnectError::Limit)?;
                    return Ok((self.connect(Some(slot)).await?, false));
                }
                () = shared.returned.notified() => {}
                () = tokio::time::sleep_until(deadline) => return Err(ConnectError::Limit.into()),
            }
        }
    }

    async fn connect(&self, slot: Option<tokio::sync::OwnedSemaphorePermit>) -> Result<Sender, SendError> {
        let tcp = self.shared.dial.tcp().await?;
        let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream HTTP/1.1 connection failed");
            }
            drop(slot);
        });
        Ok(sender)
    }

    /// The response, its body made to give the connection back when it ends (not after an
    /// upgrade or a `CONNECT` tunnel: that connection is the tunnel now).
    fn returning(&self, resp: Response<Incoming>, sender: Sender, connect: bool) -> Response<ProxyBody> {
        let tunnel =
            resp.status() == StatusCode::SWITCHING_PROTOCOLS || (connect && resp.status().is_success());
        if tunnel {
            return resp.map(|b| b.map_err(Into::into).boxed_unsync());
        }
        let (parts, incoming) = resp.into_parts();
        if incoming.is_end_stream() {
            self.shared.give_back(sender);
            return Response::from_parts(parts, incoming.map_err(Into::into).boxed_unsync());
        }
        let body = Returning { inner: incoming, sender: Some((sender, self.shared.clone())) };
        Response::from_parts(parts, body.boxed_unsync())
    }
}

impl Shared {
    /// Whether a connection idle since `round` has been idle for the idle timeout (the reaper
    /// counts a round per half timeout, so that is two rounds later).
    fn expired(&self, round: u64) -> bool {
        self.round.load(Ordering::Relaxed) >= round + 2
    }

    /// Puts a connection back once hyper can send on it again (at once, usually: the body's end
    /// is read after hyper has finished the exchange).
    fn give_back(self: &Arc<Self>, mut sender: Sender) {
        if sender.is_ready() {
            self.push(sender);
        } else if !sender.is_closed() {
            let shared = Arc::downgrade(self);
            tokio::spawn(async move {
                if sender.ready().await.is_ok()
                    && let Some(shared) = shared.upgrade()
                {
                    shared.push(sender);
                }
            });
        }
    }

    fn push(self: &Arc<Self>, sender: Sender) {
        let round = self.round.load(Ordering::Relaxed);
        // A full queue drops the connection, which closes it.
        if self.idle.push(Idle { sender, round }).is_ok() {
            if self.dial.limit.is_some() {
                self.returned.notify_one();
            }
            if !self.reaper.swap(true, Ordering::Relaxed) {
                tokio::spawn(reap(Arc::downgrade(self), self.dial.settings.idle_timeout / 2));
            }
        }
    }
}

/// Every `every`, closes the connections idle for two rounds or more; ends with its pool.
async fn reap(pool: Weak<Shared>, every: std::time::Duration) {
    let every = every.max(std::time::Duration::from_millis(50));
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = pool.upgrade() else { return };
        shared.round.fetch_add(1, Ordering::Relaxed);
        // Oldest first: stop at the first one still fresh (put back at the end; order among
        // fresh ones does not matter).
        while let Some(idle) = shared.idle.pop() {
            if shared.expired(idle.round) || idle.sender.is_closed() {
                continue;
            }
            let _ = shared.idle.push(idle);
            break;
        }
    }
}

/// A response body that gives its connection back to the pool when it ends.
struct Returning {
    inner: Incoming,
    sender: Option<(Sender, Arc<Shared>)>,
}

impl Body for Returning {
    type Data = Bytes;
    type Error = breakwater_resilience::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            // A failed body: the connection is not reused (dropped with this body).
            _ => false,
        };
        if ended && let Some((sender, shared)) = this.sender.take() {
            shared.give_back(sender);
        }
        polled.map(|f| f.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What hyper's HTTP/1.1 client needs: a `Host` header (from the URI's authority when the
/// request has none) and an origin-form URI (authority-form for `CONNECT`).
fn to_origin_form(req: &mut Request<ProxyBody>) {
    let uri = req.uri();
    if !req.headers().contains_key(header::HOST)
        && let Some(authority) = uri.authority()
    {
        let host = match (uri.port_u16(), uri.scheme_str()) {
            (Some(80), Some("http")) | (Some(443), Some("https")) => authority.host(),
            _ => authority.as_str(),
        };
        if let Ok(host) = HeaderValue::from_str(host) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    let form = if req.method() == Method::CONNECT {
        req.uri().authority().map(|a| Uri::from(a.clone()))
    } else if req.uri().scheme().is_some() {
        let path = req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        Some(Uri::from(path))
    } else {
        None
    };
    if let Some(form) = form {
        *req.uri_mut() = form;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str, host: Option<&'static str>) -> Request<ProxyBody> {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .body(crate::proxy::body::empty())
            .expect("a valid request");
        if let Some(host) = host {
            req.headers_mut().insert(header::HOST, HeaderValue::from_static(host));
        }
        req
    }

    #[test]
    fn origin_form_with_host_from_the_authority_unless_the_request_has_one() {
        let mut req = request(Method::GET, "http://orders.shop:8080/a/b?c=1", None);
        to_origin_form(&mut req);
        assert_eq!(req.uri(), "/a/b?c=1");
        assert_eq!(req.headers()[header::HOST], "orders.shop:8080");

        let mut req = request(Method::GET, "http://orders.shop:80", None);
        to_origin_form(&mut req);
        assert_eq!(req.uri(), "/");
        assert_eq!(req.headers()[header::HOST], "orders.shop", "the default port is left out");

        let mut req = request(Method::POST, "http://10.0.0.1:8080/x", Some("orders.shop"));
        to_origin_form(&mut req);
        assert_eq!(req.headers()[header::HOST], "orders.shop", "the caller's Host stays");

        let mut req = request(Method::CONNECT, "http://tunnel.shop:443/", None);
        to_origin_form(&mut req);
        assert_eq!(req.uri(), "tunnel.shop:443");
    }
}
