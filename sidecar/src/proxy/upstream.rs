//! One request sent to one upstream endpoint: the request made ready for the upstream (absolute
//! URI, hop-by-hop headers removed), the pooled client of the HTTP version in use, `Upgrade`
//! handled, and why an attempt failed ([`AttemptError`]). Shared by the target stack (`stack`)
//! and the passthrough path (`http`).

use std::{net::SocketAddr, sync::Arc};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, Version, header, uri::Authority};
use hyper_util::rt::TokioIo;

use super::{
    body::ProxyBody,
    client::{ConnectError, SendError},
    endpoint::Endpoint,
    error::Refusal,
};

/// The request's authority: the URI's (absolute form, HTTP/2) or the `Host` header's.
fn authority<B>(req: &Request<B>) -> Option<Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).and_then(|h| h.parse().ok())
}

/// Why one attempt to an endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// No connection could be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: super::client::ConnectError,
    },
    /// The upstream answered something that is not HTTP.
    #[error("{addr} answered invalid HTTP: {source}")]
    Protocol {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// Every connection `maxConnections` allows is busy.
    #[error("{addr}: every connection maxConnections allows is busy")]
    ConnectionLimit {
        /// The endpoint.
        addr: SocketAddr,
    },
    /// The target has no endpoint to send to.
    #[error("the Service has no endpoints")]
    NoEndpoints,
    /// The caller's request body failed while it was being sent (`reason`: `body-malformed`,
    /// `body-incomplete`): the caller's fault, not the upstream's.
    #[error("the request body failed ({reason}) while it was sent to {addr}")]
    ClientBody {
        /// The endpoint.
        addr: SocketAddr,
        /// How the body failed.
        reason: &'static str,
    },
    /// The connection or stream was closed or reset before a response.
    #[error("{addr} reset the request: {source}")]
    Reset {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: hyper::Error,
    },
}

impl AttemptError {
    /// The answer a caller gets for it.
    pub fn refusal(&self) -> Refusal {
        match self {
            Self::Connect { .. } | Self::NoEndpoints => Refusal::ConnectFailed,
            Self::ConnectionLimit { .. } => Refusal::BulkheadFull,
            Self::Protocol { .. } => Refusal::UpstreamProtocol,
            Self::Reset { .. } => Refusal::UpstreamReset,
            Self::ClientBody { .. } => Refusal::BadRequest,
        }
    }

    fn classify(addr: SocketAddr, e: SendError) -> Self {
        match e {
            SendError::Connect(ConnectError::Limit) => Self::ConnectionLimit { addr },
            SendError::Connect(source) => Self::Connect { addr, source },
            SendError::Http(source)
                if source.is_parse() || source.is_parse_status() || source.is_parse_too_large() =>
            {
                Self::Protocol { addr, source }
            }
            SendError::Http(source) => Self::Reset { addr, source },
        }
    }
}

/// Sends one request to `endpoint` and returns its response headers. Handles `Upgrade`
/// (WebSocket and the like): after a `101`, bytes are copied both ways until either side closes.
pub async fn forward_once(
    endpoint: &Arc<Endpoint>,
    mut req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, AttemptError> {
    let _in_flight = endpoint.start();
    let upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    prepare_request(&mut req, upgrade.is_some());
    let wanted = req.version();
    let version = endpoint.speaks.version_for(endpoint.addr, wanted, upgrade.is_some()).await;
    translate(&mut req, version);
    // Until HTTP/1.1 is known to work, keep what it takes to send a bodiless request again
    // over HTTP/2 (see `speaks`).
    let again = (version == Version::HTTP_11
        && upgrade.is_none()
        && endpoint.speaks.http1_unproven()
        && hyper::body::Body::is_end_stream(req.body()))
    .then(|| copy_bodiless(&req));
    let mut resp = match send(endpoint, req, version).await {
        Err(AttemptError::Protocol { addr, source }) if version == Version::HTTP_11 => {
            let refused = endpoint.speaks.http1_refused(addr).await;
            match again {
                Some(mut again) if refused => {
                    translate(&mut again, Version::HTTP_2);
                    send(endpoint, again, Version::HTTP_2).await?
                }
                _ => return Err(AttemptError::Protocol { addr, source }),
            }
        }
        sent => sent?,
    };
    // The caller's version, whatever the upstream's (hyper's HTTP/1 server would log each
    // HTTP/2 response it has to coerce).
    *resp.version_mut() = wanted;
    strip_hop_by_hop(resp.headers_mut(), upgrade.is_some());
    if let Some(downstream) = upgrade
        && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
    {
        let upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(downstream, upstream) {
                Ok((down, up)) => {
                    let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                        tracing::debug!(error = %e, "upgraded connection ended");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
    }
    Ok(resp)
}

/// Sends `req` over the endpoint's client of `version`, and remembers that the version works.
async fn send(
    endpoint: &Endpoint,
    req: Request<ProxyBody>,
    version: Version,
) -> Result<Response<ProxyBody>, AttemptError> {
    let sent = if version == Version::HTTP_2 {
        endpoint.clients.http2.send(req).await
    } else {
        endpoint.clients.http1.send(req).await
    };
    let resp = sent.map_err(|e| AttemptError::classify(endpoint.addr, e))?;
    endpoint.speaks.answered(version);
    Ok(resp)
}

/// Makes `req` (absolute URI, hop-by-hop headers gone) a request of `version`. To HTTP/2:
/// `:authority` comes from the URI, which carries the `Host` (RFC 9113 §8.3.1). To HTTP/1.1:
/// the HTTP/1.1 pool writes `Host` from the URI when there is none, and HTTP/2's cookie crumbs are joined
/// into one line (§8.2.3).
fn translate(req: &mut Request<ProxyBody>, version: Version) {
    if req.version() == version {
        return;
    }
    *req.version_mut() = version;
    let headers = req.headers_mut();
    if version == Version::HTTP_2 {
        headers.remove(header::HOST);
    } else if headers.get_all(header::COOKIE).iter().nth(1).is_some() {
        let joined: Vec<&[u8]> = headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes).collect();
        if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// A bodiless request's copy, to send again (extensions are not copied: nothing downstream of
/// here reads them).
fn copy_bodiless(req: &Request<ProxyBody>) -> Request<ProxyBody> {
    let mut copy = Request::new(super::body::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Gives an origin-form request (HTTP/1) the absolute URI its `Host` header implies, which is
/// what routing reads and the client needs. Without a host the URI stays as it is.
pub(super) fn absolute_uri<B>(req: &mut Request<B>) {
    if req.uri().scheme().is_some() && req.uri().authority().is_some() {
        return;
    }
    if let Some(authority) = authority(req) {
        set_absolute(req, authority);
    }
}

/// `http://AUTHORITY/path?query` from the request's path and query.
fn set_absolute<B>(req: &mut Request<B>, authority: Authority) {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
}

/// Gives the request an absolute URI (what the client needs) while keeping its authority, and
/// removes hop-by-hop headers.
fn prepare_request(req: &mut Request<ProxyBody>, upgrade: bool) {
    absolute_uri(req);
    if req.uri().authority().is_none() {
        set_absolute(req, Authority::from_static("localhost"));
    }
    if req.version() == Version::HTTP_10 {
        *req.version_mut() = Version::HTTP_11;
    }
    strip_hop_by_hop(req.headers_mut(), upgrade);
}

/// Removes headers that belong to one connection only (RFC 9110 §7.6.1), keeping the upgrade
/// handshake when one is under way and `te: trailers` (gRPC needs it).
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    // Most messages carry none: one pass over the names (an enum compare for the standard
    // ones) instead of eight hashed lookups on every request and response.
    let hop_by_hop = |k: &HeaderName| {
        k == header::CONNECTION
            || k == header::TE
            || k == header::UPGRADE
            || k == header::TRANSFER_ENCODING
            || k == header::PROXY_AUTHORIZATION
            || k == KEEP_ALIVE
            || k == PROXY_CONNECTION
    };
    if !upgrade && !headers.keys().any(hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<String> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !(t.is_empty() || (upgrade && t == "upgrade")))
            .collect();
        for name in listed {
            headers.remove(name.as_str());
        }
    }
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION, &header::PROXY_AUTHORIZATION, &header::TRANSFER_ENCODING] {
        headers.remove(name);
    }
    if headers.get(header::TE).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers")) {
        headers.remove(header::TE);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn hop_by_hop_headers_go_and_end_to_end_ones_stay() {
        let mut h = headers(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-request-id", "abc"),
            ("content-type", "text/plain"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "te", "x-request-id"], "te: trailers stays (gRPC needs it)");

        let mut plain = headers(&[("x-request-id", "abc"), ("accept", "*/*")]);
        let before = plain.clone();
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain, before, "nothing to strip: untouched");

        let mut ws = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut ws, true);
        assert_eq!(ws.get(header::CONNECTION).map(HeaderValue::as_bytes), Some(&b"upgrade"[..]));
        assert!(ws.contains_key(header::UPGRADE), "an upgrade under way keeps its handshake");
    }
}
