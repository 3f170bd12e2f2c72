//! Configuration: a local file (or, later, the operator's stream) compiled into one current
//! [`Config`] — the sidecar's own settings plus the [`breakwater_crds::snapshot::Snapshot`] it
//! enforces — published through [`Store`] for lock-free reads on the request path.

mod compile;
pub mod model;
mod store;
pub mod stream;
mod watch;

pub use self::{
    compile::{Checked, Config, ConfigError, ListenerAddrs, ProxyLimits, ServiceKey, check, compile},
    store::{Published, Source, Store},
    watch::watch_file,
};
