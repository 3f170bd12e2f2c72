//! Binding a listener, with an error that names what it is for and where (every listener of the
//! operator binds through here: admin, webhook, config API).

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::{Error, Result};

/// Binds `addr` for `what`.
pub async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|source| Error::Listen { what, addr, source })
}
