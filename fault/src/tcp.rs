//! Raw TCP peers: an echo server (for opaque TCP passthrough) and a server that answers
//! garbage (for the proxy's `upstream-protocol` error).

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::watch,
};

/// Echoes every byte back; stops when dropped.
#[derive(Debug)]
pub struct TcpEchoServer {
    addr: SocketAddr,
    _stop: watch::Sender<()>,
}

impl TcpEchoServer {
    /// Binds `addr` and echoes. With `greeting`, sends it first (a server-first protocol, like
    /// SMTP or MySQL, which a proxy must not wait on).
    pub async fn bind(addr: &str, greeting: Option<&'static [u8]>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = tokio::select! {
                    // Owner dropped the server.
                    _ = stopped.changed() => return,
                    // A new connection.
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                tokio::spawn(async move {
                    if let Some(g) = greeting
                        && s.write_all(g).await.is_err()
                    {
                        return;
                    }
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(Self { addr, _stop: stop })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Reads a request, answers bytes that are not HTTP, and closes; stops when dropped.
#[derive(Debug)]
pub struct GarbageServer {
    addr: SocketAddr,
    _stop: watch::Sender<()>,
}

impl GarbageServer {
    /// Binds `addr`.
    pub async fn bind(addr: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = tokio::select! {
                    // Owner dropped the server.
                    _ = stopped.changed() => return,
                    // A new connection.
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(b"\x00\x01garbage, not HTTP\r\n\r\n").await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Ok(Self { addr, _stop: stop })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
