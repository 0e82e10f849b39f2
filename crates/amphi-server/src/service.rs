//! The hyper service of one connection: routes a request, answers what it can itself (404,
//! 413 by `Content-Length`), and starts the handler's request future.

use std::net::SocketAddr;
use std::sync::Arc;

use amphi_core::{BlockingBody, Context, HttpScope, Receiver, RequestInfo, Scope, Sender};
use http::header::CONTENT_LENGTH;
use http::uri::Scheme;
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::access::AccessRecord;
use crate::app::App;
use crate::body::ResponseBody;
use crate::conn::ConnState;
use crate::driver::Driver;
use crate::exchange::{Exchange, IncomingSource};
use crate::reply::{has, plain, too_large};
use crate::response::{Driving, ResponseFuture, SyncCalling};
use crate::response_rate::{ConnWatch, DrainClock};
use crate::router::HandlerKind;

/// The service of one connection.
#[derive(Clone)]
pub(crate) struct ConnService {
    pub(crate) app: Arc<App>,
    pub(crate) client: Option<SocketAddr>,
    pub(crate) server: Option<SocketAddr>,
    /// What the connection's task watches: requests in progress, for the head deadline.
    pub(crate) conn: Arc<ConnState>,
    /// The connection's streamed responses, watched for the minimum response rate.
    pub(crate) watch: Option<Arc<ConnWatch>>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<ResponseBody>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: Request<Incoming>) -> ResponseFuture {
        let app = &self.app;
        let route = app.routes.resolve(req.uri().path());
        let kind = route.map_or(HandlerKind::None, |r| r.kind);
        let mut record = AccessRecord::new(
            self.conn.clone(),
            req.method().clone(),
            req.uri().clone(),
            req.version(),
            kind,
        );
        let Some((route, handler)) = route.and_then(|r| Some((r, r.target.as_ref()?))) else {
            return ResponseFuture::ready(plain(StatusCode::NOT_FOUND, "not found\n"), record);
        };
        let declared = declared_length(&req);
        if declared.is_some_and(|len| len > app.max_body) {
            return ResponseFuture::ready(too_large(), record);
        }
        // HTTP/2 streams run on tasks of their own, away from the connection's watchdog.
        let cross_task = req.version() == http::Version::HTTP_2;
        let (parts, body) = req.into_parts();
        let info = RequestInfo::new()
            .with_scheme(Scheme::HTTP)
            .with_client(self.client)
            .with_server(self.server)
            .with_root_path(route.prefix.clone());
        let scope = HttpScope::from_parts(parts, info, Context::new(), app.state.clone());
        let drain = self
            .watch
            .as_ref()
            .map(|w| DrainClock::new(w.clone(), cross_task));
        record.status = None;
        if let Some(mount) = route.sync.as_ref().filter(|_| body.is_end_stream()) {
            // The whole body is here (every GET): the blocking handler gets it in hand and
            // answers straight back, without the event protocol.
            let body = match declared {
                Some(len) => BlockingBody::empty().with_content_length(len),
                None => BlockingBody::empty(),
            };
            return ResponseFuture::sync(SyncCalling {
                call: mount.call_http(scope, body),
                record,
                drain,
            });
        }
        let context = scope.context().clone();
        let exchange = Arc::new(Exchange::with_body(
            IncomingSource::new(body, app.max_body, context.token().clone())
                .with_rate(app.body_rate),
        ));
        let receive = Receiver::shared(exchange.clone());
        let send = Sender::shared_http(exchange.clone());
        let fut = handler
            .clone()
            .call_owned(Scope::Http(scope), receive, send);
        ResponseFuture::driving(Driving {
            driver: Driver::new(fut, context, exchange),
            record,
            drain,
        })
    }
}

fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    if !has(req.headers(), &CONTENT_LENGTH) {
        return None;
    }
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
