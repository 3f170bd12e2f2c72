//! One endpoint of a target: its pooled clients, its load, its health and the HTTP versions it
//! speaks. Shared by the routing table that owns endpoints, the balancer that picks one and the
//! upstream send; it depends on none of them.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use super::client::{EndpointClients, PoolSettings};

/// One endpoint of a target: its pools and its load.
#[derive(Debug)]
pub struct Endpoint {
    /// Address.
    pub addr: SocketAddr,
    /// Pooled clients.
    pub clients: EndpointClients,
    /// Requests in flight to it (the balancer's load measure).
    pub in_flight: AtomicUsize,
    /// Its health as the balancer sees it.
    pub health: super::health::Health,
    /// The HTTP versions it speaks (declared by its port, or learned).
    pub speaks: super::speaks::Speaks,
}

impl Endpoint {
    pub(super) fn new(
        addr: SocketAddr,
        settings: PoolSettings,
        limit: Option<Arc<tokio::sync::Semaphore>>,
    ) -> Self {
        Self {
            addr,
            clients: EndpointClients::new(addr, settings, limit),
            in_flight: AtomicUsize::new(0),
            health: Default::default(),
            speaks: Default::default(),
        }
    }

    /// An endpoint outside any table, for unit tests.
    #[cfg(test)]
    pub fn new_for_test(addr: SocketAddr, settings: PoolSettings) -> Self {
        Self::new(addr, settings, None)
    }

    /// Marks a request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight to an endpoint.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
