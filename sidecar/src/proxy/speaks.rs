//! Which HTTP version an endpoint speaks, so that every caller reaches it whatever version the
//! caller speaks (HAProxy and Linkerd translate the same way).
//!
//! Declared first: a port's `appProtocol` (`http`, `kubernetes.io/ws`: HTTP/1.1; `http2`,
//! `h2c`, `kubernetes.io/h2c`, `grpc`: HTTP/2 by prior knowledge). Otherwise the caller's own
//! version is tried, and a mismatch is learned once per endpoint and remembered:
//! - before the first HTTP/2 request to an endpoint, a probe connection sends the HTTP/2 preface
//!   and reads the first bytes back: an HTTP/1 answer (`HTTP/1.1 400`, `505`) or a silent close
//!   (hyper's HTTP/1 server) means HTTP/1.1 only; a frame means HTTP/2. No request is put at
//!   risk, so requests with bodies need no replay.
//! - an HTTP/1.1 request answered with something that is not HTTP/1 (an h2c-only server's
//!   SETTINGS frame) has the endpoint probed the same way; a request without a body is then
//!   sent again over HTTP/2 (the app saw no request: an HTTP/1.1 request is no HTTP/2 preface).
//!
//! Translation is the clients': the request's version picks the connection (HTTP/1.1 writes
//! `Host` from the URI and origin-form, HTTP/2 `:authority`), hop-by-hop headers are already
//! gone, and HTTP/1.1 chunking and HTTP/2 DATA frames carry the same body.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, AtomicU8, Ordering},
    time::Duration,
};

use http::Version;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;

/// How long a probe may take, connecting included. An HTTP/2 server sends its SETTINGS at
/// once; an HTTP/1 one answers or closes at once.
const PROBE_PATIENCE: Duration = Duration::from_secs(1);

/// After a probe got no answer, requests go out in their caller's version without probing for
/// this long (an endpoint that is down must not make each request wait for a probe).
const PROBE_BACKOFF: Duration = Duration::from_secs(5);

/// What an endpoint speaks, version by version: declared, learned, or not known yet.
#[derive(Debug, Default)]
pub struct Speaks {
    /// HTTP/1.1: [`UNKNOWN`], [`YES`] or [`NO`].
    http1: AtomicU8,
    /// HTTP/2 with prior knowledge, likewise.
    http2: AtomicU8,
    /// Whether the port declared its version (nothing is learned then).
    declared: AtomicBool,
    /// One probe at a time per endpoint, the others wait for its answer; when the last one got
    /// no answer.
    probing: tokio::sync::Mutex<Option<Instant>>,
}

impl Speaks {
    /// What a Kubernetes `appProtocol` says about the HTTP version, if anything.
    pub fn declared_by(app_protocol: Option<&str>) -> Option<Version> {
        match app_protocol?.to_ascii_lowercase().as_str() {
            "http" | "kubernetes.io/ws" | "ws" => Some(Version::HTTP_11),
            "http2" | "h2c" | "kubernetes.io/h2c" | "grpc" => Some(Version::HTTP_2),
            _ => None,
        }
    }

    /// Sets (or clears) the declared version; a declaration replaces what was learned.
    pub fn declare(&self, version: Option<Version>) {
        let (h1, h2) = match version {
            Some(Version::HTTP_2) => (NO, YES),
            Some(_) => (YES, NO),
            None => (UNKNOWN, UNKNOWN),
        };
        let was = self.declared.swap(version.is_some(), Ordering::Relaxed);
        if was || version.is_some() {
            self.http1.store(h1, Ordering::Relaxed);
            self.http2.store(h2, Ordering::Relaxed);
        }
    }

    /// The version to speak to the endpoint at `addr` for a request of `wanted` (the caller's)
    /// version. `upgrade`: an HTTP/1.1 `Upgrade` handshake, which only HTTP/1.1 carries.
    pub async fn version_for(&self, addr: SocketAddr, wanted: Version, upgrade: bool) -> Version {
        if upgrade {
            return Version::HTTP_11;
        }
        if wanted != Version::HTTP_2 {
            return if self.http1.load(Ordering::Relaxed) == NO { Version::HTTP_2 } else { Version::HTTP_11 };
        }
        match self.http2.load(Ordering::Relaxed) {
            YES => Version::HTTP_2,
            NO => Version::HTTP_11,
            _ => match self.probe_http2(addr).await {
                Some(false) => Version::HTTP_11,
                // Speaks it, or no answer (down, slow: the attempt tells the caller).
                _ => Version::HTTP_2,
            },
        }
    }

    /// Whether HTTP/1.1 is not known to work yet (an HTTP/1.1 request may have to be sent
    /// again over HTTP/2, so keep what it takes).
    pub fn http1_unproven(&self) -> bool {
        self.http1.load(Ordering::Relaxed) == UNKNOWN
    }

    /// The endpoint answered a request of `version`.
    pub fn answered(&self, version: Version) {
        let cell = if version == Version::HTTP_2 { &self.http2 } else { &self.http1 };
        if cell.load(Ordering::Relaxed) != YES {
            cell.store(YES, Ordering::Relaxed);
        }
    }

    /// An HTTP/1.1 request got an answer that is not HTTP/1. Unless the version is declared,
    /// probe for HTTP/2; `true`: it speaks HTTP/2 and not HTTP/1.1 (send the request again so).
    pub async fn http1_refused(&self, addr: SocketAddr) -> bool {
        if self.declared.load(Ordering::Relaxed) {
            return false;
        }
        let _one = self.probing.lock().await;
        if self.http1.load(Ordering::Relaxed) == NO {
            return true;
        }
        let speaks_h2 = probe(addr).await == Some(Version::HTTP_2);
        if speaks_h2 {
            self.http1.store(NO, Ordering::Relaxed);
            self.http2.store(YES, Ordering::Relaxed);
            tracing::info!(endpoint = %addr, "the endpoint speaks HTTP/2 only; HTTP/1.1 callers are translated");
        }
        speaks_h2
    }

    /// Probes `addr` for HTTP/2 (once, however many ask at the same time) and remembers the
    /// answer. `None`: no answer (down or slow): nothing learned, ask again next time.
    async fn probe_http2(&self, addr: SocketAddr) -> Option<bool> {
        let mut failed = self.probing.lock().await;
        match self.http2.load(Ordering::Relaxed) {
            YES => return Some(true),
            NO => return Some(false),
            _ => {}
        }
        if failed.is_some_and(|at| at.elapsed() < PROBE_BACKOFF) {
            return None;
        }
        let Some(answer) = probe(addr).await else {
            *failed = Some(Instant::now());
            return None;
        };
        *failed = None;
        let speaks_h2 = answer == Version::HTTP_2;
        self.http2.store(if speaks_h2 { YES } else { NO }, Ordering::Relaxed);
        if !speaks_h2 {
            tracing::info!(endpoint = %addr, "the endpoint speaks HTTP/1.1 only; HTTP/2 callers are translated");
        }
        Some(speaks_h2)
    }
}

/// The client connection preface (RFC 9113 §3.4): the magic, then an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// GOAWAY, last stream 0, NO_ERROR: a polite goodbye to an HTTP/2 server.
const GOAWAY: &[u8] = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";

/// Sends the HTTP/2 preface on a fresh connection and reads what comes back.
async fn probe(addr: SocketAddr) -> Option<Version> {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(PREFACE).await.ok()?;
        let mut first = [0u8; 9];
        let mut n = 0;
        while n < first.len() {
            match s.read(&mut first[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        Some(match classify(&first[..n]) {
            Some(v) => {
                if v == Version::HTTP_2 {
                    let _ = s.write_all(GOAWAY).await;
                }
                v
            }
            None => return None,
        })
    };
    tokio::time::timeout(PROBE_PATIENCE, attempt).await.ok().flatten()
}

/// What the first bytes an endpoint answered to the HTTP/2 preface say it speaks. Closed
/// without a byte, or an HTTP/1 status line: HTTP/1 (hyper's HTTP/1 server closes; nginx, Go
/// and Node answer 400 or 505). A SETTINGS frame, which must be a server's first (RFC 9113
/// §3.4: stream 0, no ACK, a length that is a multiple of 6): HTTP/2. Anything else: unknown.
fn classify(first: &[u8]) -> Option<Version> {
    if first.is_empty() || first.starts_with(b"HTTP/") || b"HTTP/".starts_with(first) {
        return Some(Version::HTTP_11);
    }
    let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = *first else { return None };
    let length = u32::from_be_bytes([0, l0, l1, l2]);
    let stream = u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff;
    (kind == 0x4 && flags == 0 && stream == 0 && length.is_multiple_of(6)).then_some(Version::HTTP_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_first_bytes_say() {
        assert_eq!(classify(b""), Some(Version::HTTP_11));
        assert_eq!(classify(b"HTTP/1.1 400 Bad Request\r\n"), Some(Version::HTTP_11));
        assert_eq!(classify(b"HTT"), Some(Version::HTTP_11));
        assert_eq!(classify(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00"), Some(Version::HTTP_2));
        assert_eq!(
            classify(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"),
            Some(Version::HTTP_2),
            "empty SETTINGS"
        );
        assert_eq!(classify(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"), None, "an ACK is never first");
        assert_eq!(classify(b"\x00\x01garbage,"), None);
        assert_eq!(classify(b"\x00\x00"), None);
    }

    #[test]
    fn app_protocols_that_name_a_version() {
        assert_eq!(Speaks::declared_by(Some("http")), Some(Version::HTTP_11));
        assert_eq!(Speaks::declared_by(Some("kubernetes.io/h2c")), Some(Version::HTTP_2));
        assert_eq!(Speaks::declared_by(Some("GRPC")), Some(Version::HTTP_2));
        assert_eq!(Speaks::declared_by(Some("grpc-web")), None);
        assert_eq!(Speaks::declared_by(None), None);
    }

    #[tokio::test]
    async fn an_endpoint_that_is_down_is_not_probed_for_each_request() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let s = Speaks::default();
        assert_eq!(s.version_for(addr, Version::HTTP_2, false).await, Version::HTTP_2, "the caller's");
        assert!(s.probing.lock().await.is_some(), "the failed probe is remembered");
        assert_eq!(s.http2.load(Ordering::Relaxed), UNKNOWN, "nothing learned");
    }

    #[tokio::test]
    async fn a_declaration_replaces_what_was_learned() {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let s = Speaks::default();
        s.answered(Version::HTTP_11);
        s.declare(Some(Version::HTTP_2));
        assert_eq!(s.version_for(addr, Version::HTTP_11, false).await, Version::HTTP_2);
        assert_eq!(
            s.version_for(addr, Version::HTTP_2, true).await,
            Version::HTTP_11,
            "upgrades are HTTP/1.1"
        );
        assert!(!s.http1_refused(addr).await, "declared: nothing to learn");
        s.declare(None);
        assert_eq!(
            s.version_for(addr, Version::HTTP_11, false).await,
            Version::HTTP_11,
            "undeclared: the caller's"
        );
    }
}
