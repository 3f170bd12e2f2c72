//! The original destination of a connection redirected by iptables (`SO_ORIGINAL_DST`), read
//! through socket2 so that this crate needs no `unsafe`.

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Where the client meant to connect, when iptables redirected it here; `None` when it
/// connected to us directly (explicit proxy mode).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let sock = socket2::SockRef::from(stream);
    let dst = if local.is_ipv4() { sock.original_dst_v4() } else { sock.original_dst_v6() };
    // Without a NAT entry the kernel reports our own address (or an error): not redirected.
    dst.ok().and_then(|a| a.as_socket()).filter(|a| *a != local)
}
