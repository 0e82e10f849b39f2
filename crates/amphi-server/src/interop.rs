//! Tower interop (`tower` feature): an amphi router served as a tower service, and a router
//! behind tower layers mounted as one route.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;

use crate::access::HandlerKind;
use crate::app::App;
use crate::body::ResponseBody;
use crate::conn::ConnState;
use crate::incoming::{BoxError, Incoming};
use crate::mounted::{BoxLayer, MountService, Mounted, MountedFuture, RequestBody};
use crate::response::ResponseFuture;
use crate::service::{ConnService, Peer};

/// An amphi router as a tower service: what [`Server::into_service`](crate::Server::into_service)
/// returns, for axum's `route_service`/`nest_service` or any tower-based server.
///
/// Each request is served as amphi's own server serves it (the router, the blocking pool and
/// its `503` on saturation, the body limit and minimum body rate, panic isolation, the access
/// log), on the task of whoever polls the future. What belongs to a connection (header
/// timeout, header limits, connection cap, minimum response rate, graceful shutdown) is the
/// host server's, and lifespan is not run. Requests have no client or server address unless
/// the host puts them in: amphi cannot see the host's connection.
///
/// Cloning it is a reference-count increment; it is always ready.
#[derive(Clone)]
pub struct RouterService {
    app: Arc<App>,
    /// The access log's view of the host: one "connection" for every request.
    conn: Arc<ConnState>,
}

impl std::fmt::Debug for RouterService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterService").finish_non_exhaustive()
    }
}

impl RouterService {
    pub(crate) fn new(app: Arc<App>) -> RouterService {
        let conn = ConnState::new(app.counters.clone(), None);
        RouterService { app, conn }
    }

    /// Requests that are in flight: counted from the call to the end of the response body.
    pub fn in_flight(&self) -> usize {
        self.app
            .counters
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<B> tower_service::Service<Request<B>> for RouterService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> ResponseFuture {
        let service = match req.extensions_mut().remove::<Peer>() {
            // Behind layers inside amphi's server: the outer request counts and logs it.
            Some(peer) => ConnService {
                app: self.app.clone(),
                client: peer.client,
                server: peer.server,
                conn: None,
                watch: None,
                origin: peer.origin,
            },
            None => ConnService {
                app: self.app.clone(),
                client: None,
                server: None,
                conn: Some(self.conn.clone()),
                watch: None,
                origin: None,
            },
        };
        let req = req.map(|b| Incoming::Boxed(b.map_err(Into::into).boxed_unsync()));
        service.dispatch(req)
    }
}

/// A router behind tower layers, as one mount: the layers wrap the router's service, and the
/// access log names the handler the inner router routes to.
pub(crate) struct Layered {
    service: MountService,
    app: Arc<App>,
}

impl Layered {
    pub(crate) fn new(app: Arc<App>, layers: &[BoxLayer]) -> Layered {
        let inner: Arc<dyn Mounted> = Arc::new(Inner(RouterService::new(app.clone())));
        let mut service = MountService::new(inner);
        for layer in layers {
            service = layer(service);
        }
        Layered { service, app }
    }
}

impl Mounted for Layered {
    fn call(&self, req: Request<RequestBody>) -> MountedFuture {
        tower_service::Service::call(&mut self.service.clone(), req)
    }

    fn strips_prefix(&self) -> bool {
        false
    }

    fn kind(&self, path: &str) -> HandlerKind {
        match self.app.routes.resolve(path) {
            Some(crate::app::Route {
                service: Some(s), ..
            }) => s.kind(path),
            Some(r) => r.kind,
            None => HandlerKind::None,
        }
    }
}

/// The router below the layers.
struct Inner(RouterService);

impl Mounted for Inner {
    fn call(&self, req: Request<RequestBody>) -> MountedFuture {
        let fut = tower_service::Service::call(&mut self.0.clone(), req);
        Box::pin(async move {
            match fut.await {
                Ok(response) => Ok(response),
                Err(never) => match never {},
            }
        })
    }
}
