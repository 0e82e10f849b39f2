//! Mounting handlers under path prefixes, and finding the one a request goes to.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use amphi_core::{AsyncHandler, State, SyncHandler};
use amphi_sync_to_async::{BlockingPool, SyncToAsync};

use crate::access::HandlerKind;
use crate::app::{Route, RouteTable, SyncMount};
use crate::conn::Counters;
use crate::exchange::BodyRate;
use crate::ServeError;

/// Mounts sync handlers, async handlers and other routers under path prefixes.
///
/// A request goes to the mount with the longest prefix that matches its path at a segment
/// boundary: `/api` matches `/api` and `/api/users`, not `/apiary`. The handler sees the prefix
/// as its `root_path` (WSGI's `SCRIPT_NAME`) and the rest as its `path` (`PATH_INFO`); nested
/// routers concatenate their prefixes. A request that matches no mount gets a 404, and so does
/// one that reaches a nested router and matches none of its mounts: a nested router owns its
/// prefix.
///
/// Sync handlers are run by the server through
/// [`SyncToAsync`](amphi_sync_to_async::SyncToAsync) on the server's bounded blocking pool;
/// async handlers are polled directly by the connection that received the request.
///
/// # Panics
///
/// The `mount_*` and [`nest`](Router::nest) methods panic when a prefix does not start with
/// `/`, contains `?`, `#` or an empty segment (`//`), or is already mounted on this router:
/// those are programming errors, caught when the router is built.
///
/// # Examples
///
/// ```
/// use amphi_core::{async_fn, sync_fn, AsyncBody, SyncBody};
/// use amphi_server::Router;
///
/// let api = Router::new()
///     .mount_async("/v2", async_fn(|_req| async { http::Response::new(AsyncBody::from("v2")) }));
/// let router = Router::new()
///     .mount_sync("/legacy", sync_fn(|_req| http::Response::new(SyncBody::from("old"))))
///     .nest("/api", api);
/// assert_eq!(router.prefixes(), ["/legacy", "/api/v2", "/api"]);
/// ```
#[derive(Default)]
pub struct Router {
    pub(crate) mounts: Vec<Mount>,
    /// Tower layers around the whole router, innermost first (`tower` feature).
    #[cfg(feature = "tower")]
    pub(crate) layers: Vec<crate::mounted::BoxLayer>,
}

pub(crate) enum Mount {
    Sync(String, Arc<dyn SyncHandler>),
    Async(String, Arc<dyn AsyncHandler>),
    Nested(String, Router),
    #[cfg(feature = "tower")]
    Service(String, Arc<dyn crate::mounted::Mounted>),
}

impl Mount {
    fn prefix(&self) -> &str {
        match self {
            Mount::Sync(p, _) | Mount::Async(p, _) | Mount::Nested(p, _) => p,
            #[cfg(feature = "tower")]
            Mount::Service(p, _) => p,
        }
    }
}

/// What compiling a router needs besides the router: what the app of a router behind tower
/// layers holds, since such a router is served as an app of its own.
#[cfg_attr(not(feature = "tower"), allow(dead_code))]
pub(crate) struct Compile<'a> {
    pub(crate) pool: &'a BlockingPool,
    pub(crate) state: &'a State,
    pub(crate) max_body: u64,
    pub(crate) body_rate: Option<BodyRate>,
    pub(crate) counters: &'a Arc<Counters>,
    pub(crate) sessions: &'a Arc<crate::ws::Sessions>,
}

/// Normalizes a mount prefix: `"/"` and `""` are the root (`""`), a trailing `/` is dropped.
pub(crate) fn normalize(prefix: &str) -> String {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if !trimmed.is_empty() {
        assert!(
            trimmed.starts_with('/'),
            "mount prefix {prefix:?} must start with '/'"
        );
    }
    assert!(
        !trimmed.contains(['?', '#']),
        "mount prefix {prefix:?} must be a path, without '?' or '#'"
    );
    assert!(
        !trimmed.contains("//"),
        "mount prefix {prefix:?} has an empty segment"
    );
    trimmed.to_owned()
}

impl Router {
    /// An empty router: every request gets a 404.
    pub fn new() -> Router {
        Router::default()
    }

    pub(crate) fn push(mut self, mount: Mount) -> Router {
        assert!(
            self.mounts.iter().all(|m| m.prefix() != mount.prefix()),
            "mount prefix {:?} is already mounted on this router",
            crate::app::shown(mount.prefix())
        );
        self.mounts.push(mount);
        self
    }

    /// Mounts a blocking handler at `prefix` (`"/"` for the root). The server runs it on its
    /// bounded blocking pool; see [`Server`](crate::Server) for the limits.
    ///
    /// # Panics
    ///
    /// See the type's docs.
    #[must_use]
    pub fn mount_sync(self, prefix: &str, handler: impl SyncHandler) -> Router {
        self.mount_sync_arc(prefix, Arc::new(handler))
    }

    /// Like [`mount_sync`](Router::mount_sync) for a handler that is already shared.
    ///
    /// # Panics
    ///
    /// See the type's docs.
    #[must_use]
    pub fn mount_sync_arc(self, prefix: &str, handler: Arc<dyn SyncHandler>) -> Router {
        self.push(Mount::Sync(normalize(prefix), handler))
    }

    /// Mounts an async handler at `prefix` (`"/"` for the root). It also gets the lifespan
    /// scope at startup and shutdown.
    ///
    /// # Panics
    ///
    /// See the type's docs.
    #[must_use]
    pub fn mount_async(self, prefix: &str, handler: impl AsyncHandler) -> Router {
        self.mount_async_arc(prefix, Arc::new(handler))
    }

    /// Like [`mount_async`](Router::mount_async) for a handler that is already shared. A
    /// handler mounted twice gets one lifespan scope.
    ///
    /// # Panics
    ///
    /// See the type's docs.
    #[must_use]
    pub fn mount_async_arc(self, prefix: &str, handler: Arc<dyn AsyncHandler>) -> Router {
        self.push(Mount::Async(normalize(prefix), handler))
    }

    /// Mounts a tower service at `prefix` (`tower` feature): an axum `Router`, a
    /// tower-http-wrapped service, anything that serves `http::Request<RequestBody>`. The
    /// service sees the path below `prefix`; its body streams both ways; `poll_ready` is
    /// awaited on a clone before each call; its errors and panics become `500`s. See
    /// [`tower`](crate::tower).
    ///
    /// # Panics
    ///
    /// See the type's docs.
    ///
    /// # Examples
    ///
    /// ```
    /// use amphi_server::Router;
    /// use amphi_server::tower::RequestBody;
    /// use std::convert::Infallible;
    ///
    /// let hello = tower::service_fn(|_req: http::Request<RequestBody>| async {
    ///     Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("hi"))))
    /// });
    /// let router = Router::new().mount_service("/tower", hello);
    /// assert_eq!(router.prefixes(), ["/tower"]);
    /// ```
    #[cfg(feature = "tower")]
    #[must_use]
    pub fn mount_service<S, B>(self, prefix: &str, service: S) -> Router
    where
        S: tower_service::Service<
                http::Request<crate::tower::RequestBody>,
                Response = http::Response<B>,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mounted: Arc<dyn crate::mounted::Mounted> =
            Arc::new(crate::mounted::ServiceMount(service));
        self.push(Mount::Service(normalize(prefix), mounted))
    }

    /// Wraps this router in a tower layer (`tower` feature): every request it routes goes
    /// through the layer (tower-http's `TraceLayer`, `CompressionLayer`, `CorsLayer`,
    /// `TimeoutLayer`, ...). Layers added later wrap those added before. To layer one mount,
    /// nest a router that holds it: `.nest("/api", Router::new().mount_async("/", h).layer(l))`.
    /// The handlers behind the layer keep their `root_path`, lifespan and access log line (one
    /// per request, with the status the layers answered).
    ///
    /// # Examples
    ///
    /// ```
    /// use amphi_core::{async_fn, AsyncBody};
    /// use amphi_server::Router;
    /// use std::time::Duration;
    ///
    /// let api = Router::new()
    ///     .mount_async("/", async_fn(|_req| async { http::Response::new(AsyncBody::from("api")) }))
    ///     .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(5)));
    /// let router = Router::new().nest("/api", api);
    /// assert_eq!(router.prefixes(), ["/api"]);
    /// ```
    #[cfg(feature = "tower")]
    #[must_use]
    pub fn layer<L, B>(mut self, layer: L) -> Router
    where
        L: tower_layer::Layer<crate::tower::MountService> + Send + Sync + 'static,
        L::Service: tower_service::Service<
                http::Request<crate::tower::RequestBody>,
                Response = http::Response<B>,
            > + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower_service::Service<http::Request<crate::tower::RequestBody>>>::Future:
            Send + 'static,
        <L::Service as tower_service::Service<http::Request<crate::tower::RequestBody>>>::Error:
            Into<Box<dyn std::error::Error + Send + Sync>>,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.layers.push(Arc::new(move |inner| {
            let mounted: Arc<dyn crate::mounted::Mounted> =
                Arc::new(crate::mounted::ServiceMount(layer.layer(inner)));
            crate::tower::MountService::new(mounted)
        }));
        self
    }

    /// Mounts every route of `router` below `prefix`.
    ///
    /// # Panics
    ///
    /// See the type's docs.
    #[must_use]
    pub fn nest(self, prefix: &str, router: Router) -> Router {
        self.push(Mount::Nested(normalize(prefix), router))
    }

    /// The full prefix of every mount, nested ones flattened, in mount order (`"/"` for the
    /// root); a nested router's own prefix comes after its mounts.
    pub fn prefixes(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.flatten("", true, &mut |prefix, _| {
            out.push(crate::app::shown(prefix).to_owned())
        });
        out
    }

    /// Calls `f` with the full prefix of each mount; a router behind tower layers is one
    /// [`Flat::Layered`] unless `into_layered` asks for its mounts.
    // Without the `tower` feature there are no layered routers to step into.
    #[cfg_attr(not(feature = "tower"), allow(clippy::only_used_in_recursion))]
    fn flatten(&self, base: &str, into_layered: bool, f: &mut dyn FnMut(&str, Flat<'_>)) {
        for m in &self.mounts {
            let full = format!("{base}{}", m.prefix());
            match m {
                Mount::Sync(_, h) => f(&full, Flat::Sync(h)),
                Mount::Async(_, h) => f(&full, Flat::Async(h)),
                #[cfg(feature = "tower")]
                Mount::Service(_, s) => f(&full, Flat::Service(s)),
                #[cfg(feature = "tower")]
                Mount::Nested(_, r) if !into_layered && !r.layers.is_empty() => {
                    f(&full, Flat::Layered(r))
                }
                Mount::Nested(_, r) => {
                    r.flatten(&full, into_layered, f);
                    // The nested router owns its prefix: what none of its mounts match is a
                    // 404 from it, not a fall-through to a shorter mount outside it.
                    if r.mounts.iter().all(|m| !m.prefix().is_empty()) {
                        f(&full, Flat::NotFound);
                    }
                }
            }
        }
    }

    /// Resolves the router into a lookup table; sync handlers take their slots from the pool.
    pub(crate) fn compile(&self, ctx: &Compile<'_>) -> Result<RouteTable, ServeError> {
        #[cfg(feature = "tower")]
        if !self.layers.is_empty() {
            let (route, lifespans) = self.layered_route("", ctx)?;
            return Ok(RouteTable {
                routes: vec![route],
                lifespans,
            });
        }
        self.compile_below("", ctx)
    }

    /// The table of this router's mounts below `base`, its own layers left out.
    fn compile_below(&self, base: &str, ctx: &Compile<'_>) -> Result<RouteTable, ServeError> {
        let mut routes = Vec::new();
        let mut lifespans: Vec<(Arc<str>, Arc<dyn AsyncHandler>)> = Vec::new();
        let mut seen = HashSet::new();
        let mut failed = None;
        self.flatten(base, false, &mut |prefix, flat| {
            if !seen.insert(prefix.to_owned()) {
                failed.get_or_insert_with(|| {
                    ServeError::routes(format!("two mounts at {:?}", crate::app::shown(prefix)))
                });
                return;
            }
            let route = match flat {
                Flat::Sync(h) => {
                    let mount: SyncMount =
                        Arc::new(SyncToAsync::new(h.clone()).pool(ctx.pool.clone()));
                    let target: Arc<dyn AsyncHandler> = mount.clone();
                    Route::new(prefix, Some(target), Some(mount), HandlerKind::Sync)
                }
                Flat::Async(h) => {
                    lifespans.push((Arc::from(prefix), h.clone()));
                    Route::new(prefix, Some(h.clone()), None, HandlerKind::Async)
                }
                Flat::NotFound => Route::new(prefix, None, None, HandlerKind::None),
                #[cfg(feature = "tower")]
                Flat::Service(s) => {
                    let mut route = Route::new(prefix, None, None, HandlerKind::Service);
                    route.service = Some(s.clone());
                    route
                }
                #[cfg(feature = "tower")]
                Flat::Layered(r) => match r.layered_route(prefix, ctx) {
                    Ok((route, inner)) => {
                        lifespans.extend(inner);
                        route
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                        return;
                    }
                },
            };
            routes.push(route);
        });
        if let Some(e) = failed {
            return Err(e);
        }
        // Longest prefix first, so the first match is the longest; the sort is stable, so
        // equal lengths keep mount order (they cannot both match one path anyway).
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        // One lifespan scope per handler, however often it is mounted.
        let mut unique: Vec<(Arc<str>, Arc<dyn AsyncHandler>)> = Vec::new();
        for (prefix, h) in lifespans {
            if !unique.iter().any(|(_, u)| Arc::ptr_eq(u, &h)) {
                unique.push((prefix, h));
            }
        }
        Ok(RouteTable {
            routes,
            lifespans: unique,
        })
    }

    /// This router, behind its layers, as one route at `prefix`: its mounts are compiled
    /// into an app of their own (with their full prefixes, so its handlers see the right
    /// `root_path`), served by a `RouterService` that the layers wrap.
    #[cfg(feature = "tower")]
    #[allow(clippy::type_complexity)]
    fn layered_route(
        &self,
        prefix: &str,
        ctx: &Compile<'_>,
    ) -> Result<(Route, Vec<(Arc<str>, Arc<dyn AsyncHandler>)>), ServeError> {
        let inner = self.compile_below(prefix, ctx)?;
        let lifespans = inner.lifespans.clone();
        let app = Arc::new(crate::app::App {
            routes: inner,
            state: ctx.state.clone(),
            max_body: ctx.max_body,
            body_rate: ctx.body_rate,
            counters: ctx.counters.clone(),
            sessions: ctx.sessions.clone(),
            // The outer request does both: its span is current inside, its record counts.
            observe: crate::observe::Observe::default(),
        });
        let service = crate::interop::Layered::new(app, &self.layers);
        let mut route = Route::new(prefix, None, None, HandlerKind::Service);
        route.service = Some(Arc::new(service));
        Ok((route, lifespans))
    }
}

pub(crate) enum Flat<'a> {
    Sync(&'a Arc<dyn SyncHandler>),
    Async(&'a Arc<dyn AsyncHandler>),
    NotFound,
    #[cfg(feature = "tower")]
    Service(&'a Arc<dyn crate::mounted::Mounted>),
    #[cfg(feature = "tower")]
    Layered(&'a Router),
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("prefixes", &self.prefixes())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amphi_core::{asgi_fn, sync_fn, SyncBody};

    fn noop_async() -> impl AsyncHandler {
        asgi_fn(|_, _, _| async { Ok(()) })
    }

    fn compile(router: &Router) -> Result<RouteTable, ServeError> {
        router.compile(&Compile {
            pool: &BlockingPool::new(1),
            state: &State::new(),
            max_body: 0,
            body_rate: None,
            counters: &Arc::default(),
            sessions: &Arc::new(crate::ws::Sessions::new(Default::default())),
        })
    }

    fn table(router: &Router) -> RouteTable {
        compile(router).unwrap()
    }

    fn resolve<'a>(t: &'a RouteTable, path: &str) -> Option<(&'a str, HandlerKind)> {
        t.resolve(path).map(|r| (&*r.prefix, r.kind))
    }

    #[test]
    fn longest_prefix_wins_at_segment_boundaries() {
        let r = Router::new()
            .mount_async("/", noop_async())
            .mount_async("/api", noop_async())
            .mount_sync(
                "/api/v1/",
                sync_fn(|_| http::Response::new(SyncBody::empty())),
            );
        let t = table(&r);
        assert_eq!(resolve(&t, "/api"), Some(("/api", HandlerKind::Async)));
        assert_eq!(resolve(&t, "/api/x"), Some(("/api", HandlerKind::Async)));
        assert_eq!(resolve(&t, "/api/v1"), Some(("/api/v1", HandlerKind::Sync)));
        assert_eq!(
            resolve(&t, "/api/v1/users"),
            Some(("/api/v1", HandlerKind::Sync))
        );
        assert_eq!(resolve(&t, "/api/v10"), Some(("/api", HandlerKind::Async)));
        assert_eq!(resolve(&t, "/apiary"), Some(("", HandlerKind::Async)));
        assert_eq!(resolve(&t, "/"), Some(("", HandlerKind::Async)));
    }

    #[test]
    fn no_root_mount_means_no_match() {
        let t = table(&Router::new().mount_async("/a", noop_async()));
        assert!(t.resolve("/b").is_none());
        assert!(t.resolve("/ab").is_none());
        assert!(t.resolve("/").is_none());
    }

    #[test]
    fn nested_prefixes_concatenate_and_own_their_space() {
        let inner = Router::new().mount_async("/v2", noop_async());
        let r = Router::new()
            .mount_async("/", noop_async())
            .nest("/api", inner);
        let t = table(&r);
        assert_eq!(
            resolve(&t, "/api/v2/x"),
            Some(("/api/v2", HandlerKind::Async))
        );
        // Inside /api but matching no mount of the nested router: its 404, not the root's.
        assert_eq!(resolve(&t, "/api/v3"), Some(("/api", HandlerKind::None)));
        assert!(t.resolve("/api/v3").unwrap().is_not_found());
        assert_eq!(resolve(&t, "/other"), Some(("", HandlerKind::Async)));
    }

    #[test]
    fn nested_router_with_root_mount_has_no_404_sentinel() {
        let inner = Router::new().mount_async("/", noop_async());
        let t = table(&Router::new().nest("/api", inner));
        assert_eq!(
            resolve(&t, "/api/anything"),
            Some(("/api", HandlerKind::Async))
        );
    }

    #[test]
    fn duplicate_after_flattening_is_an_error() {
        let inner = Router::new().mount_async("/b", noop_async());
        let r = Router::new()
            .mount_async("/a/b", noop_async())
            .nest("/a", inner);
        let err = compile(&r).err().unwrap();
        assert!(err.is_routes());
    }

    #[test]
    #[should_panic(expected = "must start with '/'")]
    fn prefix_must_be_absolute() {
        let _ = Router::new().mount_async("api", noop_async());
    }

    #[test]
    #[should_panic(expected = "already mounted")]
    fn same_prefix_twice_panics() {
        let _ = Router::new()
            .mount_async("/a", noop_async())
            .mount_async("/a/", noop_async());
    }

    #[test]
    fn lifespan_only_for_async_mounts() {
        let r = Router::new()
            .mount_async("/a", noop_async())
            .mount_sync("/s", sync_fn(|_| http::Response::new(SyncBody::empty())));
        let t = table(&r);
        let with: Vec<_> = t.lifespans.iter().map(|(p, _)| &**p).collect();
        assert_eq!(with, ["/a"]);
    }
}
