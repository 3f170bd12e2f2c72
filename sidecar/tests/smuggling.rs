//! Request smuggling and header normalisation: the raw bytes a hostile or broken client sends,
//! through the sidecar to a real upstream (the fault server, hyper) behind a relay that records
//! every byte reaching it. One client request never becomes two upstream requests, nothing
//! hidden in a body ever arrives as a request of its own, and an ambiguous request is refused
//! before it reaches the upstream.

mod support;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use breakwater_fault::{FaultServer, Faults};
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A TCP relay in front of `upstream` that keeps every byte sent to it.
struct Recorder {
    addr: SocketAddr,
    bytes: Arc<tokio::sync::Mutex<Vec<u8>>>,
    /// Relayed connections still open.
    open: Arc<std::sync::atomic::AtomicUsize>,
}

impl Recorder {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let bytes = Arc::new(tokio::sync::Mutex::new(Vec::new()));
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (seen, counter) = (bytes.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let (seen, counter) = (seen.clone(), counter.clone());
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let _open = Open(counter);
                    let Ok(up) = TcpStream::connect(upstream).await else { return };
                    let (mut up_read, mut up_write) = up.into_split();
                    let (mut down_read, mut down_write) = down.split();
                    let forward = async {
                        let mut buf = [0u8; 8192];
                        loop {
                            match down_read.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    seen.lock().await.extend_from_slice(&buf[..n]);
                                    if up_write.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = up_write.shutdown().await;
                    };
                    let back = async {
                        let _ = tokio::io::copy(&mut up_read, &mut down_write).await;
                        let _ = down_write.shutdown().await;
                    };
                    tokio::join!(forward, back);
                });
            }
        });
        Self { addr, bytes, open }
    }

    /// Waits (up to 5 s) until every relayed connection has closed: then the upstream has
    /// seen all it ever will of a case.
    async fn quiet(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.open.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            assert!(tokio::time::Instant::now() < deadline, "relayed connections stayed open");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn take(&self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut *self.bytes.lock().await)).into_owned()
    }
}

/// A last request after each case's bytes, asking the sidecar to close once it has answered:
/// when the connection closes, everything the case caused upstream has happened.
const SENTINEL: &str = "GET /end HTTP/1.1\r\nHost: payments\r\nConnection: close\r\n\r\n";

/// Decrements the relay's open-connection count when a relayed connection ends.
struct Open(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Sends `raw` and the sentinel, and reads every answer until the sidecar closes.
async fn exchange(proxy: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(raw).await.expect("write");
    // The sidecar may already have closed after refusing `raw`.
    let _ = s.write_all(SENTINEL.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Lines of what reached the upstream that look like request lines (for the report).
fn request_lines(recorded: &str) -> Vec<&str> {
    recorded
        .split("\r\n")
        .filter(|l| {
            let mut parts = l.split(' ');
            matches!((parts.next(), parts.next(), parts.next()), (Some(m), Some(_), Some(v))
                if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) && v.starts_with("HTTP/1."))
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// The sidecar answers 400 (or 4xx) itself; nothing reaches the upstream.
    Refused,
    /// Exactly one request reaches the upstream.
    One,
    /// At most one reaches the upstream, framed one way only (its body may then break, as the
    /// case's bytes were built to make another reader see two requests).
    AtMostOne,
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: payments\r\n\r\n";

fn cases() -> Vec<(&'static str, String, Expect)> {
    let h = "POST /a HTTP/1.1\r\nHost: payments\r\n";
    vec![
        // RFC 9112 §6.1 lets a server frame these by Transfer-Encoding alone and close after
        // answering: hyper does (and drops the Content-Length), so the upstream gets one
        // consistently chunked request and the rest of the connection is never read. In TE.CL
        // the chunk runs past the data into the next bytes: a broken body, the client's fault.
        (
            "CL.TE",
            format!("{h}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Expect::One,
        ),
        (
            "TE.CL",
            format!(
                "{h}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\n{SMUGGLED}\r\n0\r\n\r\n"
            ),
            Expect::AtMostOne,
        ),
        (
            "TE obfuscated: xchunked",
            format!("{h}Transfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\nabcd{SMUGGLED}"),
            Expect::Refused,
        ),
        (
            "TE obfuscated: space before colon",
            format!("{h}Transfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\nabcd{SMUGGLED}"),
            Expect::Refused,
        ),
        (
            "TE obfuscated: chunked, identity",
            format!("{h}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Expect::Refused,
        ),
        (
            "TE obfuscated: vertical tab",
            format!("{h}Transfer-Encoding:\x0bchunked\r\nContent-Length: 4\r\n\r\nabcd{SMUGGLED}"),
            Expect::Refused,
        ),
        (
            "TE twice",
            format!(
                "{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
            Expect::Refused,
        ),
        (
            "duplicate CL, equal",
            format!("{h}Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"),
            Expect::One,
        ),
        (
            "duplicate CL, conflicting",
            format!("{h}Content-Length: 4\r\nContent-Length: 50\r\n\r\nabcd{SMUGGLED}"),
            Expect::Refused,
        ),
        ("CL list, conflicting", format!("{h}Content-Length: 4, 50\r\n\r\nabcd{SMUGGLED}"), Expect::Refused),
        ("CL with a sign", format!("{h}Content-Length: +4\r\n\r\nabcd{SMUGGLED}"), Expect::Refused),
        (
            "bare LF line endings",
            "POST /a HTTP/1.1\nHost: payments\nContent-Length: 4\n\nabcd".to_owned(),
            Expect::One,
        ),
        (
            "whitespace before the colon",
            format!("{h}Content-Length : 4\r\n\r\nabcd{SMUGGLED}"),
            Expect::Refused,
        ),
        ("NUL in a header value", format!("{h}X-Note: a\0b\r\nContent-Length: 0\r\n\r\n"), Expect::Refused),
        (
            "CR alone in a header value",
            format!("{h}X-Note: a\rb\r\nContent-Length: 0\r\n\r\n"),
            Expect::Refused,
        ),
        (
            "control byte in a header name",
            format!("{h}X-No\x01te: a\r\nContent-Length: 0\r\n\r\n"),
            Expect::Refused,
        ),
        (
            "oversize header",
            format!("{h}X-Big: {}\r\nContent-Length: 0\r\n\r\n", "a".repeat(100_000)),
            Expect::Refused,
        ),
        (
            "obsolete line folding",
            format!("{h}X-Note: a\r\n b\r\nContent-Length: 0\r\n\r\n"),
            Expect::Refused,
        ),
        ("HTTP/1.0 without Host", "GET http://payments/a HTTP/1.0\r\n\r\n".to_owned(), Expect::One),
        (
            "absolute-form with another Host",
            "GET http://payments/a HTTP/1.1\r\nHost: evil.example\r\n\r\n".to_owned(),
            Expect::One,
        ),
        ("leading CRLF", format!("\r\n\r\n{h}Content-Length: 0\r\n\r\n"), Expect::One),
        (
            "two Host headers",
            "GET /a HTTP/1.1\r\nHost: payments\r\nHost: evil.example\r\n\r\n".to_owned(),
            Expect::Refused,
        ),
        (
            "chunk size overflow",
            format!("{h}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff1\r\nabcd\r\n0\r\n\r\n"),
            Expect::Refused,
        ),
        (
            "chunk extension abuse",
            format!("{h}Transfer-Encoding: chunked\r\n\r\n4;{}\r\nabcd\r\n0\r\n\r\n", "x".repeat(100_000)),
            Expect::Refused,
        ),
    ]
}

#[tokio::test]
async fn one_client_request_never_becomes_two_upstream_requests() {
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (name, raw, expect) in cases() {
        // A fresh upstream, relay and sidecar per case: nothing of one case can show in another.
        let up = FaultServer::bind("127.0.0.1:0", Faults { name: "up".into(), ..Default::default() })
            .await
            .expect("fault server");
        let recorder = Recorder::start(up.addr()).await;
        let sc = start(&sidecar_yaml(&service("payments", &[recorder.addr]), None, "")).await;
        let answer = exchange(sc.outbound, raw.as_bytes()).await;
        // The sidecar gone, its upstream connections close; then the upstream has seen it all.
        sc.shutdown(Duration::from_secs(1)).await;
        recorder.quiet().await;
        let seen = up.stats().seen().await;
        // What the upstream's own parser (hyper) took as requests: the ground truth. The relay's
        // bytes are the evidence (a hidden request inside a forwarded body is just body).
        let arrived = seen.iter().filter(|r| r.uri != "/end").count();
        let hidden = seen.iter().any(|r| r.uri.contains("/smuggled"));
        let recorded = recorder.take().await;
        let lines: Vec<&str> =
            request_lines(&recorded).into_iter().filter(|l| !l.contains(" /end ")).collect();
        let status = answer.lines().next().unwrap_or("(nothing)").to_owned();
        let mut wrong = Vec::new();
        if hidden {
            wrong.push("a hidden request reached the upstream");
        }
        if arrived > 1 {
            wrong.push("one client request became two");
        }
        match expect {
            Expect::Refused if arrived != 0 => wrong.push("an ambiguous request reached the upstream"),
            Expect::Refused if !(status.starts_with("HTTP/1.1 4") || status == "(nothing)") => {
                wrong.push("not refused with 4xx")
            }
            Expect::One if arrived != 1 => wrong.push("a sound request did not arrive once"),
            Expect::AtMostOne if !status.starts_with("HTTP/1.1 ") => wrong.push("no answer"),
            _ => {}
        }
        report.push(format!("{name:38} {status:28} upstream: {arrived} {lines:?} {wrong:?}"));
        if !wrong.is_empty() {
            failures.push(format!("{name}: {wrong:?}\n  answer:\n{answer}\n  upstream saw:\n{recorded}"));
        }
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
