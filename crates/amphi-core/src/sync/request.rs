//! The request a sync handler is called with.

use std::net::SocketAddr;

use http::{HeaderMap, Method, Uri, Version};

use crate::{BlockingBody, CancellationToken, Context, HttpScope, RequestInfo, State};

/// The request a [`SyncHandler`](crate::SyncHandler) is called with: WSGI's environ as a
/// typed value.
///
/// It holds the request head and everything the server knows about it as an [`HttpScope`]
/// (method, URI, headers, version, the mount prefix and the path below it, client and server
/// addresses, scheme, the request [`Context`], the app [`State`]), plus the body, read by
/// blocking I/O.
///
/// # Cancellation
///
/// [`cancellation`](SyncRequest::cancellation) flips when the request is abandoned: the client
/// disconnected, or the async caller was dropped. Blocking code cannot be interrupted, so
/// long work should check it between steps; body reads fail on their own.
///
/// # Examples
///
/// ```
/// use amphi_core::{RequestInfo, SyncRequest};
///
/// let req = SyncRequest::new(http::Request::post("/sync/echo?x=1").body("hi".into()).unwrap())
///     .with_info(RequestInfo::new().with_root_path("/sync"));
/// assert_eq!(req.method(), http::Method::POST);
/// assert_eq!(req.root_path(), "/sync");
/// assert_eq!(req.path(), "/echo");
/// assert_eq!(req.query_string(), "x=1");
/// ```
#[derive(Debug)]
pub struct SyncRequest {
    scope: HttpScope,
    body: BlockingBody,
}

impl SyncRequest {
    /// A request from an `http::Request`, with default [`RequestInfo`], a fresh context and
    /// empty state. Servers and adapters use [`from_scope`](SyncRequest::from_scope).
    pub fn new(request: http::Request<BlockingBody>) -> SyncRequest {
        let (parts, body) = request.into_parts();
        SyncRequest::from_scope(HttpScope::new(parts, RequestInfo::new()), body)
    }

    /// A request from a scope and a body.
    pub fn from_scope(scope: HttpScope, body: BlockingBody) -> SyncRequest {
        SyncRequest { scope, body }
    }

    /// Replaces the request info (mount, peers, scheme).
    #[must_use]
    pub fn with_info(self, info: RequestInfo) -> SyncRequest {
        let (parts, _, context, state) = self.scope.into_parts();
        let scope = HttpScope::new(parts, info)
            .with_context(context)
            .with_state(state);
        SyncRequest::from_scope(scope, self.body)
    }

    /// Replaces the request context.
    #[must_use]
    pub fn with_context(self, context: Context) -> SyncRequest {
        SyncRequest::from_scope(self.scope.with_context(context), self.body)
    }

    /// The request's scope: everything but the body.
    pub fn scope(&self) -> &HttpScope {
        &self.scope
    }

    /// The method.
    pub fn method(&self) -> &Method {
        self.scope.method()
    }

    /// The full URI, mount prefix included.
    pub fn uri(&self) -> &Uri {
        self.scope.uri()
    }

    /// The HTTP version.
    pub fn version(&self) -> Version {
        self.scope.version()
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        self.scope.headers()
    }

    /// The mount prefix (`SCRIPT_NAME`).
    pub fn root_path(&self) -> &str {
        self.scope.root_path()
    }

    /// The path below the mount (`PATH_INFO`), percent-encoded as it arrived.
    pub fn path(&self) -> &str {
        self.scope.path()
    }

    /// The raw query string (`QUERY_STRING`), `""` when there is none.
    pub fn query_string(&self) -> &str {
        self.scope.query_string()
    }

    /// `http` or `https` (`wsgi.url_scheme`).
    pub fn scheme(&self) -> &str {
        self.scope.scheme()
    }

    /// The client's address (`REMOTE_ADDR`/`REMOTE_PORT`).
    pub fn client(&self) -> Option<SocketAddr> {
        self.scope.client()
    }

    /// The server's address (`SERVER_NAME`/`SERVER_PORT`).
    pub fn server(&self) -> Option<SocketAddr> {
        self.scope.server()
    }

    /// The request context.
    pub fn context(&self) -> &Context {
        self.scope.context()
    }

    /// The app state.
    pub fn state(&self) -> &State {
        self.scope.state()
    }

    /// The token that flips when the request is abandoned.
    pub fn cancellation(&self) -> &CancellationToken {
        self.scope.context().token()
    }

    /// The body, to read from.
    pub fn body_mut(&mut self) -> &mut BlockingBody {
        &mut self.body
    }

    /// Takes the request apart.
    pub fn into_parts(self) -> (HttpScope, BlockingBody) {
        (self.scope, self.body)
    }
}
