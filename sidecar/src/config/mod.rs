//! Configuration: a local file, or the operator's snapshot, compiled into one [`Config`] — the
//! sidecar's own settings plus the [`breakwater_crds::snapshot::Snapshot`] it enforces — and each
//! policy compiled into the settings its target runs with ([`policy::Policy`]). Publishing the
//! current one, and following its sources, is `crate::store`'s job.

mod compile;
pub mod model;
pub mod policy;

pub use self::compile::{
    Checked, Config, ConfigError, ListenerAddrs, ProxyLimits, ServiceKey, check, compile,
};
