//! Configuration: a local file (or, later, the operator's stream) compiled into one current
//! [`Config`], published through [`Store`] for lock-free reads on the request path.

mod compile;
pub mod model;
mod store;
mod watch;

pub use self::{
    compile::{
        AppliedPolicy, Checked, Config, ConfigError, InboundConfig, ListenerAddrs, ProxyLimits,
        ServiceConfig, ServiceKey, check, compile,
    },
    store::{Published, Store},
    watch::watch_file,
};
