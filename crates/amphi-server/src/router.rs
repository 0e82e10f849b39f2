//! Mounting handlers under path prefixes, and finding the one a request goes to.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use amphi_core::{AsyncHandler, SyncHandler};
use amphi_sync_to_async::{BlockingPool, SyncToAsync};

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
    mounts: Vec<Mount>,
}

enum Mount {
    Sync(String, Arc<dyn SyncHandler>),
    Async(String, Arc<dyn AsyncHandler>),
    Nested(String, Router),
}

impl Mount {
    fn prefix(&self) -> &str {
        match self {
            Mount::Sync(p, _) | Mount::Async(p, _) | Mount::Nested(p, _) => p,
        }
    }
}

/// Normalizes a mount prefix: `"/"` and `""` are the root (`""`), a trailing `/` is dropped.
fn normalize(prefix: &str) -> String {
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

    fn push(mut self, mount: Mount) -> Router {
        assert!(
            self.mounts.iter().all(|m| m.prefix() != mount.prefix()),
            "mount prefix {:?} is already mounted on this router",
            if mount.prefix().is_empty() {
                "/"
            } else {
                mount.prefix()
            }
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
        self.flatten("", &mut |prefix, _| {
            out.push(if prefix.is_empty() {
                "/".to_owned()
            } else {
                prefix.to_owned()
            })
        });
        out
    }

    fn flatten(&self, base: &str, f: &mut dyn FnMut(&str, Flat<'_>)) {
        for m in &self.mounts {
            let full = format!("{base}{}", m.prefix());
            match m {
                Mount::Sync(_, h) => f(&full, Flat::Sync(h)),
                Mount::Async(_, h) => f(&full, Flat::Async(h)),
                Mount::Nested(_, r) => {
                    r.flatten(&full, f);
                    // The nested router owns its prefix: what none of its mounts match is a
                    // 404 from it, not a fall-through to a shorter mount outside it.
                    if r.mounts.iter().all(|m| !m.prefix().is_empty()) {
                        f(&full, Flat::NotFound);
                    }
                }
            }
        }
    }

    /// Resolves the router into a lookup table; sync handlers take their slots from `pool`.
    pub(crate) fn compile(&self, pool: &BlockingPool) -> Result<RouteTable, ServeError> {
        let mut routes = Vec::new();
        let mut seen = HashSet::new();
        let mut duplicate = None;
        self.flatten("", &mut |prefix, flat| {
            if !seen.insert(prefix.to_owned()) {
                duplicate.get_or_insert_with(|| prefix.to_owned());
                return;
            }
            let (target, sync, kind) = match flat {
                Flat::Sync(h) => {
                    let mount: SyncMount = Arc::new(SyncToAsync::new(h.clone()).pool(pool.clone()));
                    let target: Arc<dyn AsyncHandler> = mount.clone();
                    (Some(target), Some(mount), HandlerKind::Sync)
                }
                Flat::Async(h) => (Some(h.clone()), None, HandlerKind::Async),
                Flat::NotFound => (None, None, HandlerKind::None),
            };
            routes.push(Route {
                prefix: Arc::from(prefix),
                target,
                sync,
                kind,
                lifespan: matches!(flat, Flat::Async(_)),
                order: routes.len(),
            });
        });
        if let Some(p) = duplicate {
            return Err(ServeError::routes(format!(
                "two mounts at {:?}",
                if p.is_empty() { "/" } else { &p }
            )));
        }
        // Longest prefix first, so the first match is the longest; the sort is stable, so
        // equal lengths keep mount order (they cannot both match one path anyway).
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(RouteTable { routes })
    }
}

enum Flat<'a> {
    Sync(&'a Arc<dyn SyncHandler>),
    Async(&'a Arc<dyn AsyncHandler>),
    NotFound,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("prefixes", &self.prefixes())
            .finish()
    }
}

/// Which kind of handler served a request, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandlerKind {
    Sync,
    Async,
    None,
}

impl HandlerKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HandlerKind::Sync => "sync",
            HandlerKind::Async => "async",
            HandlerKind::None => "none",
        }
    }
}

/// A mounted sync handler, taking one slot of the server's pool per request. Requests whose
/// body the server holds already (every GET) go through [`SyncToAsync::call_http`], the rest
/// through its `AsyncHandler` side, which streams the body in.
pub(crate) type SyncMount = Arc<SyncToAsync<Arc<dyn SyncHandler>>>;

/// One flattened mount.
pub(crate) struct Route {
    pub(crate) prefix: Arc<str>,
    /// `None`: answer 404 (a nested router's own prefix).
    pub(crate) target: Option<Arc<dyn AsyncHandler>>,
    /// The same handler as `target` for a sync mount, for requests served without the event
    /// protocol.
    pub(crate) sync: Option<SyncMount>,
    pub(crate) kind: HandlerKind,
    /// Whether the handler gets the lifespan scope (async mounts).
    pub(crate) lifespan: bool,
    /// The position in mount order (nested routers flattened in place).
    pub(crate) order: usize,
}

/// The flattened routes, longest prefix first.
pub(crate) struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// The route for `path`: the longest prefix matching at a segment boundary.
    pub(crate) fn resolve(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| {
            let p = &*r.prefix;
            match path.strip_prefix(p) {
                Some(rest) => rest.is_empty() || rest.starts_with('/') || p.is_empty(),
                None => false,
            }
        })
    }

    /// Every route, in mount order.
    pub(crate) fn in_mount_order(&self) -> Vec<&Route> {
        let mut v: Vec<&Route> = self.routes.iter().collect();
        v.sort_by_key(|r| r.order);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amphi_core::{asgi_fn, sync_fn, SyncBody};

    fn noop_async() -> impl AsyncHandler {
        asgi_fn(|_, _, _| async { Ok(()) })
    }

    fn table(router: &Router) -> RouteTable {
        router.compile(&BlockingPool::new(1)).unwrap()
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
        assert!(t.resolve("/api/v3").unwrap().target.is_none());
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
        let err = r.compile(&BlockingPool::new(1)).err().unwrap();
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
        let with: Vec<_> = t
            .in_mount_order()
            .into_iter()
            .filter(|r| r.lifespan)
            .map(|r| &*r.prefix)
            .collect();
        assert_eq!(with, ["/a"]);
    }
}
