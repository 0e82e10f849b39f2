//! Scopes: what an async handler is told about the connection it serves.

use http::request::Parts;
use http::{HeaderMap, Method, Uri, Version};
use std::net::SocketAddr;

use crate::{Context, RequestInfo, State};

/// What an async handler is called for: an HTTP request, a websocket session, or the app's
/// lifespan. New scopes may be added in minor releases.
///
/// A handler that does not serve a scope should return early: for lifespan, returning without
/// sending anything tells the server to go on without lifespan events for it (ASGI's rule).
#[derive(Debug)]
#[non_exhaustive]
pub enum Scope {
    /// An HTTP request (ASGI `http`).
    Http(HttpScope),
    /// A websocket session (ASGI `websocket`): the same keys as an HTTP request; see
    /// [`HttpScope::subprotocols`]. [`WebSocketRequest`](crate::WebSocketRequest) and
    /// [`websocket_fn`](crate::websocket_fn) are the sugar over its events.
    WebSocket(HttpScope),
    /// The app's lifespan: startup and shutdown events (ASGI `lifespan`).
    Lifespan(LifespanScope),
}

impl Scope {
    /// `"http"`, `"websocket"` or `"lifespan"`, as in ASGI.
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Http(_) => "http",
            Scope::WebSocket(_) => "websocket",
            Scope::Lifespan(_) => "lifespan",
        }
    }

    /// The request context, for request scopes.
    pub fn context(&self) -> Option<&Context> {
        match self {
            Scope::Http(s) | Scope::WebSocket(s) => Some(s.context()),
            Scope::Lifespan(_) => None,
        }
    }

    /// The app-wide lifespan state.
    pub fn state(&self) -> &State {
        match self {
            Scope::Http(s) | Scope::WebSocket(s) => s.state(),
            Scope::Lifespan(l) => l.state(),
        }
    }
}

/// The scope of one HTTP request or websocket session.
///
/// It holds the request's `http::request::Parts` as they arrived (no header copying), the
/// [`RequestInfo`] the server filled in (mount, peers, scheme), the request [`Context`] and
/// the app's [`State`].
///
/// # Examples
///
/// ```
/// use amphi_core::{HttpScope, RequestInfo};
///
/// let (parts, ()) = http::Request::get("/sync/items?page=2").body(()).unwrap().into_parts();
/// let scope = HttpScope::new(parts, RequestInfo::new().with_root_path("/sync"));
/// assert_eq!(scope.root_path(), "/sync");
/// assert_eq!(scope.path(), "/items");
/// assert_eq!(scope.query_string(), "page=2");
/// ```
#[derive(Debug)]
pub struct HttpScope {
    parts: Parts,
    info: RequestInfo,
    context: Context,
    state: State,
}

impl HttpScope {
    /// A scope with a fresh context and empty state.
    pub fn new(parts: Parts, info: RequestInfo) -> HttpScope {
        HttpScope {
            parts,
            info,
            context: Context::new(),
            state: State::new(),
        }
    }

    /// A scope from all of its parts, allocating nothing: what servers and adapters use on
    /// their hot path ([`new`](HttpScope::new) makes a fresh context and state).
    pub fn from_parts(
        parts: Parts,
        info: RequestInfo,
        context: Context,
        state: State,
    ) -> HttpScope {
        HttpScope {
            parts,
            info,
            context,
            state,
        }
    }

    /// Replaces the request context.
    #[must_use]
    pub fn with_context(mut self, context: Context) -> HttpScope {
        self.context = context;
        self
    }

    /// Replaces the app state.
    #[must_use]
    pub fn with_state(mut self, state: State) -> HttpScope {
        self.state = state;
        self
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.parts.method
    }

    /// The full request URI as it arrived, mount prefix included.
    pub fn uri(&self) -> &Uri {
        &self.parts.uri
    }

    /// The HTTP version.
    pub fn version(&self) -> Version {
        self.parts.version
    }

    /// `"1.0"`, `"1.1"`, `"2"` or `"3"`, as ASGI's `http_version`.
    pub fn http_version(&self) -> &'static str {
        match self.parts.version {
            Version::HTTP_09 => "0.9",
            Version::HTTP_10 => "1.0",
            Version::HTTP_2 => "2",
            Version::HTTP_3 => "3",
            _ => "1.1",
        }
    }

    /// The request headers, duplicates preserved.
    pub fn headers(&self) -> &HeaderMap {
        &self.parts.headers
    }

    /// The request's `http` extensions.
    pub fn extensions(&self) -> &http::Extensions {
        &self.parts.extensions
    }

    /// The path below the mount prefix (WSGI's `PATH_INFO`), still percent-encoded.
    pub fn path(&self) -> &str {
        self.info.path_below(self.parts.uri.path())
    }

    /// The full path, mount prefix included, percent-encoded as it arrived (ASGI's `raw_path`).
    pub fn raw_path(&self) -> &str {
        self.parts.uri.path()
    }

    /// The raw query string without the `?`, `""` when there is none.
    pub fn query_string(&self) -> &str {
        self.parts.uri.query().unwrap_or("")
    }

    /// The mount prefix (`SCRIPT_NAME`), `""` at the root.
    pub fn root_path(&self) -> &str {
        self.info.root_path()
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &str {
        self.info.scheme().as_str()
    }

    /// The client's address, when known.
    pub fn client(&self) -> Option<SocketAddr> {
        self.info.client()
    }

    /// The server's address, when known.
    pub fn server(&self) -> Option<SocketAddr> {
        self.info.server()
    }

    /// Everything the server filled in beyond the request head.
    pub fn info(&self) -> &RequestInfo {
        &self.info
    }

    /// The request context.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The app-wide lifespan state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The websocket subprotocols the client offered, in order (empty for plain HTTP).
    pub fn subprotocols(&self) -> Vec<&str> {
        self.parts
            .headers
            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// The request head.
    pub fn parts(&self) -> &Parts {
        &self.parts
    }

    /// Takes the scope apart.
    pub fn into_parts(self) -> (Parts, RequestInfo, Context, State) {
        (self.parts, self.info, self.context, self.state)
    }
}

/// The scope of the app's lifespan: startup, then shutdown.
#[derive(Debug, Clone, Default)]
pub struct LifespanScope {
    state: State,
}

impl LifespanScope {
    /// A lifespan scope sharing `state` with every request scope.
    pub fn new(state: State) -> LifespanScope {
        LifespanScope { state }
    }

    /// The state handlers fill during startup.
    pub fn state(&self) -> &State {
        &self.state
    }
}
