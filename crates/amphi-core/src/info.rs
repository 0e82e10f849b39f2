//! What a request carries beyond `http::request::Parts`: the mount, the peers, the scheme.

use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::Scheme;

/// Where a request came from and where it is mounted: what WSGI's environ carries and the
/// `http` crate does not.
///
/// The server fills it in; handlers read it through the request or scope. `root_path` is the
/// mount prefix (WSGI's `SCRIPT_NAME`, ASGI's `root_path`); the path below it (WSGI's
/// `PATH_INFO`) is computed from the URI, see [`RequestInfo::path_below`].
///
/// # Examples
///
/// ```
/// use amphi_core::RequestInfo;
///
/// let info = RequestInfo::new().with_root_path("/sync");
/// assert_eq!(info.path_below("/sync/hello"), "/hello");
/// assert_eq!(info.path_below("/sync"), "");
/// ```
#[derive(Debug, Clone)]
pub struct RequestInfo {
    scheme: Scheme,
    client: Option<SocketAddr>,
    server: Option<SocketAddr>,
    /// `None` for the root, so a request mounted at the root costs no allocation.
    root_path: Option<Arc<str>>,
}

impl Default for RequestInfo {
    fn default() -> Self {
        RequestInfo::ROOT
    }
}

/// What a request without its own info reads (see `RequestExt::info`).
pub(crate) static DEFAULT_INFO: RequestInfo = RequestInfo::ROOT;

impl RequestInfo {
    /// Plain http, no addresses, mounted at the root.
    const ROOT: RequestInfo = RequestInfo {
        scheme: Scheme::HTTP,
        client: None,
        server: None,
        root_path: None,
    };
}

impl RequestInfo {
    /// Plain http, no addresses, mounted at the root.
    pub fn new() -> RequestInfo {
        RequestInfo::default()
    }

    /// Sets the scheme (`http` or `https`).
    #[must_use]
    pub fn with_scheme(mut self, scheme: Scheme) -> RequestInfo {
        self.scheme = scheme;
        self
    }

    /// Sets the client (peer) address.
    #[must_use]
    pub fn with_client(mut self, client: Option<SocketAddr>) -> RequestInfo {
        self.client = client;
        self
    }

    /// Sets the server (local) address.
    #[must_use]
    pub fn with_server(mut self, server: Option<SocketAddr>) -> RequestInfo {
        self.server = server;
        self
    }

    /// Sets the mount prefix. It must be a prefix of the request path, without a trailing
    /// slash (`""` for the root).
    #[must_use]
    pub fn with_root_path(mut self, root_path: impl Into<Arc<str>>) -> RequestInfo {
        let root_path = root_path.into();
        self.root_path = (!root_path.is_empty()).then_some(root_path);
        self
    }

    /// The scheme the request arrived with.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// The client's address; `None` over a unix socket or when unknown.
    pub fn client(&self) -> Option<SocketAddr> {
        self.client
    }

    /// The server's local address; `None` over a unix socket or when unknown.
    pub fn server(&self) -> Option<SocketAddr> {
        self.server
    }

    /// The mount prefix (`SCRIPT_NAME`), `""` at the root.
    pub fn root_path(&self) -> &str {
        self.root_path.as_deref().unwrap_or("")
    }

    /// The part of `path` below the mount prefix (`PATH_INFO`): `"/hello"` for `"/sync/hello"`
    /// mounted at `"/sync"`, `""` for `"/sync"` itself. A path that does not start with the
    /// prefix is returned whole. The path stays percent-encoded, as it arrived.
    pub fn path_below<'p>(&self, path: &'p str) -> &'p str {
        match path.strip_prefix(self.root_path()) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => path,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_below_respects_segment_boundaries() {
        let info = RequestInfo::new().with_root_path("/api");
        assert_eq!(info.path_below("/api/x/y"), "/x/y");
        assert_eq!(info.path_below("/api"), "");
        assert_eq!(info.path_below("/apix"), "/apix");
        assert_eq!(RequestInfo::new().path_below("/a"), "/a");
    }
}
