//! The one HTTP/2 connection to an endpoint, shared by every request to it (h2c with prior
//! knowledge). Opened by the first request that needs it, one at a time (the others wait for
//! it), opened again when it has closed, and closed after the idle timeout without requests.

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{ConnectError, Dial, SendError};
use crate::proxy::body::ProxyBody;

/// HTTP/2 PING interval on an upstream connection: a dead peer is found within it (and hyper's
/// default 20 s to answer).
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// How many connections a request tries when the shared one closed before taking it.
const TRIES: usize = 3;

type Sender = http2::SendRequest<ProxyBody>;

/// The HTTP/2 connection of one endpoint.
#[derive(Debug)]
pub struct Http2Conn {
    pub(super) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(super) struct Shared {
    dial: Dial,
    pub(super) current: ArcSwapOption<Sender>,
    /// One connect at a time.
    connecting: tokio::sync::Mutex<()>,
    /// A request used the connection since the reaper last looked.
    used: AtomicBool,
    reaper: AtomicBool,
}

impl Http2Conn {
    pub(super) fn new(dial: Dial) -> Self {
        Self {
            shared: Arc::new(Shared {
                dial,
                current: ArcSwapOption::empty(),
                connecting: tokio::sync::Mutex::new(()),
                used: AtomicBool::new(false),
                reaper: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `req` (absolute URI: hyper takes `:scheme` and `:authority` from it) on the shared
    /// connection; a request it gave back unsent (it had closed) goes on a new one.
    pub async fn send(&self, mut req: Request<ProxyBody>) -> Result<Response<ProxyBody>, SendError> {
        let mut tries = 1;
        loop {
            let (mut sender, reused) = self.checkout().await?;
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(|b| b.map_err(Into::into).boxed_unsync())),
                Err(mut e) => match e.take_message() {
                    Some(back) if reused && tries < TRIES => {
                        tries += 1;
                        req = back;
                    }
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// The open connection, or a new one; whether it was already open.
    async fn checkout(&self) -> Result<(Sender, bool), SendError> {
        let shared = &self.shared;
        if let Some(sender) = shared.open() {
            return Ok((sender, true));
        }
        let _one = shared.connecting.lock().await;
        // Opened by the request this one waited for?
        if let Some(sender) = shared.open() {
            return Ok((sender, true));
        }
        let slot = match shared.dial.try_slot() {
            Some(slot) => slot,
            None => {
                let limit = shared.dial.limit.clone().expect("try_slot fails only under a limit");
                let wait = shared.dial.settings.connect_timeout;
                let slot = tokio::time::timeout(wait, limit.acquire_owned()).await;
                Some(slot.map_err(|_| ConnectError::Limit)?.map_err(|_| ConnectError::Limit)?)
            }
        };
        let tcp = shared.dial.tcp().await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE)
            .adaptive_window(true)
            .handshake(TokioIo::new(tcp))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection failed");
            }
            drop(slot);
        });
        shared.current.store(Some(Arc::new(sender.clone())));
        shared.used.store(true, Ordering::Relaxed);
        if !shared.reaper.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(shared), shared.dial.settings.idle_timeout / 2));
        }
        Ok((sender, false))
    }
}

impl Shared {
    fn open(&self) -> Option<Sender> {
        let current = self.current.load();
        let sender = current.as_deref().filter(|s| !s.is_closed())?;
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
        Some(sender.clone())
    }
}

/// Every `every`, closes the connection if no request used it for two rounds (streams still
/// open on it finish first); ends with its endpoint.
async fn reap(conn: Weak<Shared>, every: Duration) {
    let every = every.max(Duration::from_millis(50));
    let mut quiet = 0;
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = conn.upgrade() else { return };
        if shared.used.swap(false, Ordering::Relaxed) {
            quiet = 0;
        } else {
            quiet += 1;
            if quiet >= 2 {
                shared.current.store(None);
            }
        }
    }
}
