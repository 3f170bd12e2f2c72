//! Body types on the proxy's paths.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

/// Errors between proxy layers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body the proxy sends, to clients and to upstreams: boxed so that a proxied body, a
/// replayable one and one Breakwater wrote itself share a type.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
