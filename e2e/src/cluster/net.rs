//! Ports and the API server's second address.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{Error, Result};

/// A port free on 127.0.0.1 right now, for a process the harness starts (etcd, the API server,
/// a collector).
///
/// The port comes from below the kernel's ephemeral range: a port from there (what binding to
/// port 0 returns) is also what every outgoing connection takes as its source port, so between
/// closing the probe and the child binding it, a connection of the tests could take it, and etcd
/// failed with "address already in use" exactly so. Below the range only explicit binds compete;
/// the ports are handed out in turn from an offset of our pid, so two harness processes seldom
/// probe the same one, and each is checked free before it is returned.
pub fn free_port() -> Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, span) = below_ephemeral();
    let offset = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + u16::try_from((offset + n) % span).expect("the span fits in a port");
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(Error::Other(format!("no free port on 127.0.0.1 in {low}..{}", u32::from(low) + span)))
}

/// The first port and the number of ports below the ephemeral range that `free_port` uses.
fn below_ephemeral() -> (u16, u32) {
    const WANTED: u16 = 8192;
    // "32768\t60999" on Linux; without it, Linux's default.
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Stay clear of the privileged ports even when the ephemeral range starts low.
    let low = first_ephemeral.saturating_sub(WANTED).max(1024);
    (low, u32::from(first_ephemeral.saturating_sub(low).max(1)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_never_ephemeral() {
        let (low, span) = below_ephemeral();
        let ports: Vec<u16> = (0..64).map(|_| free_port().expect("a free port")).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port was handed out twice: {ports:?}");
        for port in ports {
            assert!(u32::from(port) >= u32::from(low) && u32::from(port) < u32::from(low) + span, "{port}");
            assert!(port >= 1024, "{port} is privileged");
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("the port is still free");
        }
    }
}
