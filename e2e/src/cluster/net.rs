//! Ports and the API server's second address.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    time::Duration,
};

use crate::{Error, Result};

/// A port free on 127.0.0.1 right now (the kernel's choice; it could be taken before use, the
/// same race envtest accepts).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(Error::io("finding a free port"))?;
    Ok(listener.local_addr().map_err(Error::io("reading a bound address"))?.port())
}

/// Forwards connections on `listen` to the API server on 127.0.0.1:`port`.
pub(super) async fn forward(listen: SocketAddr, port: u16) {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%listen, error = %e, "cannot serve the API server on the bridge address");
            return;
        }
    };
    loop {
        let mut inbound = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accepting on the bridge address failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}
