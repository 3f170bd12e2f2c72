//! Protocol detection: HTTP/2 (prior knowledge), HTTP/1.x, or opaque TCP.
//!
//! The first bytes decide. An HTTP/2 connection starts with the 24-byte preface; an HTTP/1
//! request with a method token and a space. Anything else — or silence for `timeout`, which is
//! what a server-first protocol such as MySQL or SMTP looks like — is forwarded as opaque TCP.
//! The bytes read are replayed in front of the stream ([`Prefixed`]), so nothing is lost.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest method token we wait for (`OPTIONS`, `CONNECT`, WebDAV's `PROPPATCH`...).
const MAX_METHOD: usize = 16;

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
            // The client said nothing (more) in time: not a client-first protocol we know.
            Err(_elapsed) => break Protocol::Opaque,
            // EOF before a decision: forward what there is as opaque bytes.
            Ok(Ok(0)) => break Protocol::Opaque,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok((protocol, Prefixed { prefix: buf, io }))
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
    // An HTTP/1 request line starts with a token of upper-case letters (RFC 9110 methods in
    // practice) followed by a space.
    for (i, b) in buf.iter().enumerate().take(MAX_METHOD + 1) {
        match b {
            b'A'..=b'Z' | b'-' | b'_' => continue,
            b' ' if i > 0 => return Some(Protocol::Http1),
            _ => return Some(Protocol::Opaque),
        }
    }
    if buf.len() > MAX_METHOD { Some(Protocol::Opaque) } else { None }
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
        assert_eq!(classify(b"PROPFIND "), Some(Protocol::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(b"PRI * HTTP/2"), None, "a partial preface needs more bytes");
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Protocol::Opaque), "TLS ClientHello");
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Protocol::Opaque));
        assert_eq!(classify(b"AAAAAAAAAAAAAAAAAAAAAAAA"), Some(Protocol::Opaque));
        assert_eq!(classify(b" GET"), Some(Protocol::Opaque));
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
