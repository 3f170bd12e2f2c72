//! The proxy: listeners, original destinations, protocol detection, HTTP and TCP forwarding,
//! upstream pools and balancing.

pub mod balance;
pub mod body;
pub mod client;
pub mod detect;
pub mod endpoint;
pub mod error;
pub mod health;
pub mod http;
pub mod http_route;
pub mod idle;
pub mod listener;
pub mod orig_dst;
pub mod routes;
pub mod speaks;
pub mod stack;
pub mod state;
pub mod tcp;
pub mod upstream;

pub use self::{
    error::{ERROR_HEADER, GRPC_STATUS, Refusal},
    routes::Routes,
};
