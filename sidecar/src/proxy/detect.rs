//! Protocol detection: HTTP/2 (prior knowledge), HTTP/1.x, or opaque TCP — unless the port
//! declares its protocol.
//!
//! The first bytes decide. An HTTP/2 connection starts with the 24-byte preface; an HTTP/1
//! request with a request line, `method SP target SP HTTP/1.d`, after any empty lines (RFC 9112
//! §2.2: a server should ignore at least one CRLF before it). The method is any token (methods
//! are case-sensitive, and `get` is a method hyper forwards like any other); what makes it
//! HTTP is the whole line, so a text protocol such as memcached's `get key` stays opaque. A
//! prefix that can still become a request line when the client stops sending (a slow client, a
//! deliberate pause) is taken as HTTP, where hyper's header timeout applies — never as TCP,
//! which would let the rest of a request past the HTTP limits and policies. Nothing sent at all
//! for `timeout`, which is what a server-first protocol such as MySQL or SMTP looks like, is
//! opaque TCP. The bytes read are replayed in front of the stream ([`Prefixed`]), so nothing is
//! lost.
//!
//! A port can declare its protocol instead ([`Declared`], from a Kubernetes `appProtocol` or the
//! local file's): an HTTP port is never taken as TCP, and an opaque one (Linkerd's "opaque
//! ports") is forwarded at once without waiting for the client to speak.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest method token we wait for (WebDAV's `VERSION-CONTROL` is 15).
const MAX_METHOD: usize = 32;
/// Empty lines' bytes skipped before a request line; more is not HTTP.
const MAX_LEADING_EMPTY: usize = 16;
/// A request line longer than this without its version is taken as HTTP/1 (hyper then answers
/// 414 or 431 under its own limits) once its method and target look right.
const MAX_REQUEST_LINE: usize = 16 * 1024;

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge (h2c), including gRPC.
    Http2,
    /// Anything else.
    Opaque,
}

impl Protocol {
    /// A label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Opaque => "tcp",
        }
    }
}

/// A protocol a port declares, so that it is not detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// HTTP/1.1 or HTTP/2 (hyper tells them apart by the HTTP/2 preface); never TCP.
    Http,
    /// Opaque TCP, forwarded without waiting for the client's first bytes.
    Opaque,
}

impl Declared {
    /// What a Kubernetes `appProtocol` declares: the HTTP family (`http`, `http2`, `h2c`,
    /// `kubernetes.io/h2c`, `grpc`, `grpc-web`, `kubernetes.io/ws`) is HTTP; `tcp`, `opaque`
    /// and TLS (`tls`, `https`, `kubernetes.io/wss`, which the sidecar cannot read) are opaque;
    /// anything else (a vendor's protocol name) declares nothing, and the port is detected.
    pub fn from_app_protocol(app_protocol: &str) -> Option<Self> {
        match app_protocol.to_ascii_lowercase().as_str() {
            "http" | "http2" | "h2c" | "kubernetes.io/h2c" | "grpc" | "grpc-web" | "kubernetes.io/ws"
            | "ws" => Some(Self::Http),
            "tcp" | "opaque" | "tls" | "https" | "kubernetes.io/wss" | "wss" => Some(Self::Opaque),
            _ => None,
        }
    }
}

/// Reads the first bytes of `io` (for at most `timeout`) and classifies them. Returns the
/// stream with those bytes put back.
pub async fn detect<T: AsyncRead + Unpin>(
    mut io: T,
    timeout: Duration,
) -> io::Result<(Protocol, Prefixed<T>)> {
    let mut buf = BytesMut::with_capacity(64);
    let deadline = tokio::time::Instant::now() + timeout;
    let protocol = loop {
        if let Some(p) = classify(&buf) {
            break p;
        }
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        match read {
            // The client stopped (or never started) before the bytes decided: silence is a
            // server-first protocol; a prefix that can still be HTTP is HTTP.
            Err(_) | Ok(Ok(0)) => break undecided(&buf),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok((protocol, Prefixed { prefix: buf, io }))
}

/// The protocol of bytes that did not decide by themselves (`classify` said `None`).
fn undecided(buf: &[u8]) -> Protocol {
    if buf.is_empty() { Protocol::Opaque } else { Protocol::Http1 }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `Some` once the bytes so far decide the protocol.
fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    // Empty lines before the request line are ignored (as hyper's parser does).
    let skipped = buf.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
    if skipped > MAX_LEADING_EMPTY {
        return Some(Protocol::Opaque);
    }
    let line = &buf[skipped..];
    if line.is_empty() {
        return None;
    }
    // method SP
    let method = line.iter().take_while(|b| is_tchar(**b)).count();
    if method > MAX_METHOD {
        return Some(Protocol::Opaque);
    }
    match line.get(method) {
        None => return None,
        Some(b' ') if method > 0 => {}
        Some(_) => return Some(Protocol::Opaque),
    }
    // request-target SP: visible characters only
    let rest = &line[method + 1..];
    let target = rest.iter().take_while(|b| b.is_ascii_graphic()).count();
    match rest.get(target) {
        None if line.len() > MAX_REQUEST_LINE => return Some(Protocol::Http1),
        None => return None,
        Some(b' ') if target > 0 => {}
        Some(_) => return Some(Protocol::Opaque),
    }
    // HTTP-version: `HTTP/1.` and a digit.
    const VERSION: &[u8] = b"HTTP/1.";
    let version = &rest[target + 1..];
    let n = version.len().min(VERSION.len());
    if version[..n] != VERSION[..n] {
        return Some(Protocol::Opaque);
    }
    match version.get(VERSION.len()) {
        None => None,
        Some(d) if d.is_ascii_digit() => Some(Protocol::Http1),
        Some(_) => Some(Protocol::Opaque),
    }
}

pin_project_lite::pin_project! {
    /// A stream with bytes already read from it put back in front.
    #[derive(Debug)]
    pub struct Prefixed<T> {
        prefix: BytesMut,
        #[pin]
        io: T,
    }
}

impl<T> Prefixed<T> {
    /// `io` with nothing put back (a port whose protocol is declared is not read ahead; the
    /// same stream type keeps one copy of the HTTP server's code for both).
    pub fn unread(io: T) -> Self {
        Self { prefix: BytesMut::new(), io }
    }

    /// The underlying stream (any unread prefix is lost: call only before reading).
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncRead> AsyncRead for Prefixed<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(out.remaining());
            out.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.io.poll_read(cx, out)
    }
}

impl<T: AsyncWrite> AsyncWrite for Prefixed<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
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
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"PROPFIND /x HTTP/1.0"), Some(Protocol::Http1));
        assert_eq!(classify(b"PROPFIND "), None, "a request line needs more bytes");
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(b"PRI * HTTP/2"), None, "a partial preface needs more bytes");
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Protocol::Opaque), "TLS ClientHello");
        assert_eq!(classify(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), Some(Protocol::Opaque));
        assert_eq!(classify(b" GET"), Some(Protocol::Opaque));
        assert_eq!(classify(b"*1\r\n$4\r\nPING\r\n"), Some(Protocol::Opaque), "Redis");
    }

    /// What used to steer a request past the HTTP path: leading empty lines, a lower-case
    /// method. Both are HTTP/1 now, as hyper (and RFC 9112) read them.
    #[test]
    fn leading_empty_lines_and_any_method_token_are_http() {
        assert_eq!(classify(b"\r\nGET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"\r\n\r\n\nPOST /x HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"get / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"\r\n"), None, "an empty line alone decides nothing");
        assert_eq!(undecided(b"\r\n"), Protocol::Http1, "and a client that stops there is HTTP");
        assert_eq!(undecided(b"GET /slow"), Protocol::Http1, "a paused request line stays HTTP");
        assert_eq!(undecided(b""), Protocol::Opaque, "silence is a server-first protocol");
        assert_eq!(classify(&[b'\r'; 40]), Some(Protocol::Opaque));
    }

    /// Text protocols whose commands look like words stay opaque: the whole request line decides.
    #[test]
    fn text_protocols_are_not_http() {
        assert_eq!(classify(b"get mykey\r\n"), Some(Protocol::Opaque), "memcached");
        assert_eq!(classify(b"SET key value\r\n"), Some(Protocol::Opaque), "Redis inline");
        assert_eq!(classify(b"GET / HTTP/2.0\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GET / FTP/1.1\r\n"), Some(Protocol::Opaque));
        let long = [b"GET /".as_slice(), &[b'a'; MAX_REQUEST_LINE], b" HTTP/1.1"].concat();
        assert_eq!(classify(&long[..MAX_REQUEST_LINE + 2]), Some(Protocol::Http1), "hyper answers 414");
    }

    #[test]
    fn app_protocols_declare_http_or_tcp() {
        for p in ["http", "HTTP", "kubernetes.io/h2c", "grpc", "kubernetes.io/ws", "http2"] {
            assert_eq!(Declared::from_app_protocol(p), Some(Declared::Http), "{p}");
        }
        for p in ["tcp", "kubernetes.io/wss", "https", "tls"] {
            assert_eq!(Declared::from_app_protocol(p), Some(Declared::Opaque), "{p}");
        }
        assert_eq!(Declared::from_app_protocol("example.com/custom"), None);
    }

    #[tokio::test]
    async fn replays_what_it_read() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"POST /x HTTP/1.1\r\n\r\nrest").await.expect("write");
        let (p, mut io) = detect(server, Duration::from_secs(5)).await.expect("detect");
        assert_eq!(p, Protocol::Http1);
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"POST /x HTTP/1.1\r\n\r\nrest");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_opaque_tcp() {
        let (_client, server) = tokio::io::duplex(1024);
        let (p, _) = detect(server, Duration::from_secs(1)).await.expect("detect");
        assert_eq!(p, Protocol::Opaque);
    }
}
