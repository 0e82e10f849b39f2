//! What a connection adds to each of its requests beyond its addresses: TLS (the scheme, the
//! client's certificate), a trusted proxy's headers, and the server's external prefix.
//!
//! A plain connection from an untrusted peer, on a server without an external prefix, has
//! none of it: its requests pay one branch for this module.

use std::sync::Arc;

use amphi_core::RequestInfo;
use http::header::HOST;
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};

use crate::proxy::{self, Forwarded, TrustedProxies};

/// The extras of one connection (shared by every connection with the same ones).
#[derive(Debug, Clone, Default)]
pub(crate) struct Origin {
    /// The connection is TLS.
    pub(crate) https: bool,
    /// Set when the connection's peer is a trusted proxy: its headers are read.
    pub(crate) proxies: Option<Arc<TrustedProxies>>,
    /// The external prefix (`Server::root_path`), prepended to each scope's root path.
    pub(crate) prefix: Option<Arc<str>>,
    /// The client's certificate (mutual TLS), put into each request's extensions.
    #[cfg(feature = "tls")]
    pub(crate) client_cert: Option<crate::tls::ClientCertificate>,
}

impl Origin {
    /// `None` for a connection with nothing to add.
    pub(crate) fn shared(self) -> Option<Arc<Origin>> {
        let empty = !self.https && self.proxies.is_none() && self.prefix.is_none();
        #[cfg(feature = "tls")]
        let empty = empty && self.client_cert.is_none();
        (!empty).then(|| Arc::new(self))
    }

    /// What the proxy headers of a request say, when the connection is a trusted proxy's.
    pub(crate) fn forwarded(&self, headers: &http::HeaderMap) -> Option<Forwarded> {
        let proxies = self.proxies.as_ref()?;
        Some(proxy::read(headers, proxies))
    }

    /// Completes `info` (the connection's addresses and the route's mount) and the request:
    /// the scheme, what a trusted proxy says (`forwarded`, from [`Origin::forwarded`]: client, scheme, host: the `Host` header and
    /// an absolute URI's authority are set to the forwarded host), the external prefix
    /// (before the root path and, when `prefix_path`, before the URI's path, so that
    /// `root_path + path` stays the path the client asked the proxy for) and the client's
    /// certificate. A mounted tower service's URI keeps its path: it sees the path below its
    /// mount.
    pub(crate) fn apply(
        &self,
        mut info: RequestInfo,
        parts: &mut Parts,
        prefix_path: bool,
        forwarded: Option<Box<Forwarded>>,
    ) -> RequestInfo {
        if self.https {
            info = info.with_scheme(Scheme::HTTPS);
        }
        let mut authority = None;
        if let Some(forwarded) = forwarded.map(|f| *f) {
            if let Some(client) = forwarded.client {
                info = info.with_client(client);
            }
            if let Some(scheme) = forwarded.scheme {
                info = info.with_scheme(scheme);
            }
            if let Some(host) = forwarded.host {
                if let Ok(value) = HeaderValue::from_str(host.as_str()) {
                    parts.headers.insert(HOST, value);
                }
                authority = parts.uri.authority().is_some().then_some(host);
            }
        }
        let mut path = None;
        if let Some(prefix) = &self.prefix {
            let root = format!("{prefix}{}", info.root_path());
            info = info.with_root_path(root);
            if prefix_path {
                path = Some(prefix.as_ref());
            }
        }
        if authority.is_some() || path.is_some() {
            if let Some(uri) = rewrite(&parts.uri, authority, path) {
                parts.uri = uri;
            }
        }
        #[cfg(feature = "tls")]
        if let Some(cert) = &self.client_cert {
            parts.extensions.insert(cert.clone());
        }
        info
    }
}

/// `uri` with its authority replaced and `prefix` before its path; `None` if it cannot be
/// rebuilt (it is then kept as it was).
fn rewrite(uri: &Uri, authority: Option<Authority>, prefix: Option<&str>) -> Option<Uri> {
    let mut parts = uri.clone().into_parts();
    if let Some(a) = authority {
        parts.authority = Some(a);
    }
    if let Some(prefix) = prefix {
        let rest = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        // The root itself is the prefix alone: `/` below `/app` is `/app/`, not `/app`.
        parts.path_and_query = Some(format!("{prefix}{rest}").parse().ok()?);
    }
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_trusted_proxy_sets_client_scheme_and_host() {
        let origin = Origin {
            proxies: Some(Arc::new("127.0.0.1".parse().unwrap())),
            ..Origin::default()
        };
        let mut p = parts(
            "http://inner:8000/a?q=1",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "example.com"),
                ("host", "inner:8000"),
            ],
        );
        let peer = "127.0.0.1:5555".parse().unwrap();
        let forwarded = origin.forwarded(&p.headers).map(Box::new);
        let info = origin.apply(
            RequestInfo::new().with_client(Some(peer)),
            &mut p,
            true,
            forwarded,
        );
        assert_eq!(info.client(), Some("203.0.113.9:0".parse().unwrap()));
        assert_eq!(info.scheme(), &Scheme::HTTPS);
        assert_eq!(p.headers[HOST], "example.com");
        assert_eq!(p.uri.to_string(), "http://example.com/a?q=1");
    }

    #[test]
    fn the_prefix_goes_before_the_root_path_and_the_path() {
        let origin = Origin {
            prefix: Some(Arc::from("/ext")),
            ..Origin::default()
        };
        let mut p = parts("/sync/hello?x=1", &[]);
        assert_eq!(origin.forwarded(&p.headers), None);
        let info = origin.apply(
            RequestInfo::new().with_root_path("/sync"),
            &mut p,
            true,
            None,
        );
        assert_eq!(info.root_path(), "/ext/sync");
        assert_eq!(p.uri.path(), "/ext/sync/hello");
        assert_eq!(p.uri.query(), Some("x=1"));
        assert_eq!(info.path_below(p.uri.path()), "/hello");
        // A tower service keeps its path.
        let mut p = parts("/svc/x", &[]);
        let info = origin.apply(
            RequestInfo::new().with_root_path("/svc"),
            &mut p,
            false,
            None,
        );
        assert_eq!((info.root_path(), p.uri.path()), ("/ext/svc", "/svc/x"));
    }
}
