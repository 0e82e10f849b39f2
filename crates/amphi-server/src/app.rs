//! What every connection of one server shares: the compiled routes, the app state, the
//! request limits, and the counters the shutdown reads.

use std::sync::Arc;

use amphi_core::{AsyncHandler, State, SyncHandler};
use amphi_sync_to_async::SyncToAsync;

use crate::access::HandlerKind;
use crate::conn::Counters;
use crate::exchange::BodyRate;

/// The server-wide state, one `Arc` for the server's lifetime.
pub(crate) struct App {
    pub(crate) routes: RouteTable,
    pub(crate) state: State,
    pub(crate) max_body: u64,
    pub(crate) body_rate: Option<BodyRate>,
    pub(crate) counters: Arc<Counters>,
    /// The server's websocket sessions.
    pub(crate) sessions: Arc<crate::ws::Sessions>,
    /// Request spans, request ids and metrics: what the server does for each request.
    pub(crate) observe: crate::observe::Observe,
}

/// A mounted sync handler, taking one slot of the server's pool per request. Requests whose
/// body the server holds already (every GET) go through [`SyncToAsync::call_http`], the rest
/// through its `AsyncHandler` side, which streams the body in.
pub(crate) type SyncMount = Arc<SyncToAsync<Arc<dyn SyncHandler>>>;

/// One flattened mount. Neither a handler nor a service: answer 404 (a nested router's own
/// prefix).
pub(crate) struct Route {
    pub(crate) prefix: Arc<str>,
    pub(crate) target: Option<Arc<dyn AsyncHandler>>,
    /// The same handler as `target` for a sync mount, for requests served without the event
    /// protocol.
    pub(crate) sync: Option<SyncMount>,
    /// A tower service, or an amphi router behind tower layers.
    #[cfg(feature = "tower")]
    pub(crate) service: Option<Arc<dyn crate::mounted::Mounted>>,
    pub(crate) kind: HandlerKind,
    /// The index of the route's counters in `Counters::route_stats`, when the server keeps
    /// metrics (`metrics` feature).
    #[cfg(feature = "metrics")]
    pub(crate) stats: Option<u32>,
}

impl Route {
    pub(crate) fn new(
        prefix: &str,
        target: Option<Arc<dyn AsyncHandler>>,
        sync: Option<SyncMount>,
        kind: HandlerKind,
    ) -> Route {
        Route {
            prefix: Arc::from(prefix),
            target,
            sync,
            #[cfg(feature = "tower")]
            service: None,
            kind,
            #[cfg(feature = "metrics")]
            stats: None,
        }
    }

    /// The label of this route in spans and metrics: its prefix, `/` for the root.
    pub(crate) fn label(&self) -> &str {
        shown(&self.prefix)
    }

    /// Whether a request for this route is answered 404 without calling anything.
    pub(crate) fn is_not_found(&self) -> bool {
        #[cfg(feature = "tower")]
        if self.service.is_some() {
            return false;
        }
        self.target.is_none()
    }
}

/// The flattened routes, longest prefix first, and the handlers that get the lifespan scope.
pub(crate) struct RouteTable {
    pub(crate) routes: Vec<Route>,
    /// Async handlers in mount order, each once (those behind layers included), with the
    /// prefix each was first mounted at.
    pub(crate) lifespans: Vec<(Arc<str>, Arc<dyn AsyncHandler>)>,
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
}

/// A mount prefix as people read it: `/` for the root (stored as the empty prefix).
pub(crate) fn shown(prefix: &str) -> &str {
    if prefix.is_empty() {
        "/"
    } else {
        prefix
    }
}
