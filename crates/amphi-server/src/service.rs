//! The hyper service of one connection: routes a request, answers what it can itself (404,
//! 413 by `Content-Length`), and starts the handler's request future.

use std::net::SocketAddr;
use std::sync::Arc;

use amphi_core::{BlockingBody, HttpScope, Receiver, RequestInfo, Scope, Sender};
use http::header::CONTENT_LENGTH;
use http::uri::Scheme;
use http::{Request, Response, StatusCode};
use http_body::Body as _;

use crate::access::{AccessRecord, HandlerKind};
use crate::app::App;
use crate::body::ResponseBody;
use crate::conn::ConnState;
use crate::driver::Driver;
use crate::exchange::{Exchange, IncomingSource};
use crate::incoming::Incoming;
use crate::observe::request_context;
use crate::origin::Origin;
use crate::proxy::Forwarded;
use crate::reply::{has, plain, too_large};
use crate::response::{Driving, ResponseFuture, SyncCalling};
use crate::response_rate::{ConnWatch, DrainClock};
use crate::ws;

/// The service of one connection.
#[derive(Clone)]
pub(crate) struct ConnService {
    pub(crate) app: Arc<App>,
    pub(crate) client: Option<SocketAddr>,
    pub(crate) server: Option<SocketAddr>,
    /// What the connection's task watches: requests in progress, for the head deadline.
    /// `None` inside a layered router: the router's outer request counts and logs it.
    pub(crate) conn: Option<Arc<ConnState>>,
    /// The connection's streamed responses, watched for the minimum response rate.
    pub(crate) watch: Option<Arc<ConnWatch>>,
    /// What the connection adds to each request (TLS, a trusted proxy's headers, the
    /// external prefix); `None` for plain HTTP from an untrusted peer without a prefix.
    pub(crate) origin: Option<Arc<Origin>>,
}

impl hyper::service::Service<Request<hyper::body::Incoming>> for ConnService {
    type Response = Response<ResponseBody>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: Request<hyper::body::Incoming>) -> ResponseFuture {
        self.dispatch(req.map(Incoming::Hyper))
    }
}

impl ConnService {
    /// Serves one request: routes it and starts the future that answers it.
    pub(crate) fn dispatch(&self, req: Request<Incoming>) -> ResponseFuture {
        let app = &self.app;
        let route = app.routes.resolve(req.uri().path());
        let kind = match route {
            #[cfg(feature = "tower")]
            Some(crate::app::Route {
                service: Some(s), ..
            }) => s.kind(req.uri().path()),
            Some(r) => r.kind,
            None => HandlerKind::None,
        };
        let obs = app
            .observe
            .request(req.method(), req.headers(), route, kind);
        let (method, uri, version) = (req.method().clone(), req.uri(), req.version());
        // What a trusted proxy says, read once for the access log and the scope.
        // Boxed, as the access log's client: a plain request carries two null pointers.
        let forwarded = match &self.origin {
            None => None,
            Some(origin) => origin.forwarded(req.headers()).map(Box::new),
        };
        let mut record = match &self.conn {
            Some(conn) => {
                let client = forwarded.as_ref().and_then(|f| f.client).map(Box::new);
                AccessRecord::new(conn.clone(), method, uri, version, kind, client)
            }
            None => AccessRecord::silent(method, uri, version, kind),
        };
        if obs.span.is_some() {
            record.set_span(obs.span.clone());
        }
        #[cfg(feature = "metrics")]
        record.set_stats(match route {
            Some(r) => r.stats,
            None => app.observe.unmatched,
        });
        let mut future = self.serve(req, route, record, obs.span, forwarded);
        future.set_request_id(obs.id);
        future
    }

    /// Serves a request `route` took (`None`: none did), in `span`. Inlined: the request
    /// future is built in place, as if `dispatch` were one function.
    #[inline(always)]
    fn serve(
        &self,
        req: Request<Incoming>,
        route: Option<&crate::app::Route>,
        record: AccessRecord,
        span: crate::observe::RequestSpan,
        forwarded: Option<Box<Forwarded>>,
    ) -> ResponseFuture {
        let app = &self.app;
        let Some(route) = route.filter(|r| !r.is_not_found()) else {
            return ResponseFuture::ready(plain(StatusCode::NOT_FOUND, "not found\n"), record);
        };
        #[cfg(feature = "tower")]
        let is_service = route.service.is_some();
        #[cfg(not(feature = "tower"))]
        let is_service = false;
        if !is_service {
            match ws::handshake(&req) {
                ws::Handshake::No => {}
                ws::Handshake::Bad(why) => {
                    tracing::debug!(why, "bad websocket handshake");
                    return ResponseFuture::ready(
                        plain(StatusCode::BAD_REQUEST, "bad websocket handshake\n"),
                        record,
                    );
                }
                kind => return self.websocket(route, kind, req, record, forwarded, span),
            }
        }
        let declared = declared_length(&req);
        if declared.is_some_and(|len| len > app.max_body) {
            return ResponseFuture::ready(too_large(), record);
        }
        // HTTP/2 streams run on tasks of their own, away from the connection's watchdog.
        let version = req.version();
        let cross_task = version == http::Version::HTTP_2;
        let (mut parts, body) = req.into_parts();
        let info = self.info(route, &mut parts, !is_service, forwarded);
        let drain = self
            .watch
            .as_ref()
            .map(|w| DrainClock::new(w.clone(), cross_task));
        let context = request_context(route, self.conn.as_deref());
        #[cfg(feature = "tower")]
        if let Some(service) = &route.service {
            return self.call_mounted(
                service,
                &route.prefix,
                (parts, body),
                info,
                context,
                record,
                drain,
                span,
            );
        }
        let Some(handler) = route.target.as_ref() else {
            unreachable!("a route that is not a 404 has a handler or a service")
        };
        let scope = HttpScope::from_parts(parts, info, context, app.state.clone());
        if let Some(mount) = route.sync.as_ref().filter(|_| body.is_end_stream()) {
            // The whole body is here (every GET): the blocking handler gets it in hand and
            // answers straight back, without the event protocol.
            let body = match declared {
                Some(len) => BlockingBody::empty().with_content_length(len),
                None => BlockingBody::empty(),
            };
            // Started now when a slot is free: the blocking side carries the current span.
            let call = {
                let _span = span.enter();
                mount.call_http(scope, body)
            };
            return ResponseFuture::sync(SyncCalling {
                call,
                record,
                drain,
                span,
            });
        }
        let context = scope.context().clone();
        // Only for a body with something in it (never a GET's): two header scans.
        let discard_unread =
            !body.is_end_stream() && crate::exchange::discards_unread(version, scope.headers());
        let exchange = Arc::new(Exchange::with_body(
            IncomingSource::new(body, app.max_body, context.token().clone(), discard_unread)
                .with_rate(app.body_rate),
        ));
        let receive = Receiver::shared(exchange.clone());
        let send = Sender::shared_http(exchange.clone());
        let fut = handler
            .clone()
            .call_owned(Scope::Http(scope), receive, send);
        ResponseFuture::driving(Driving {
            driver: Driver::new(fut, context, exchange).with_span(span),
            record,
            drain,
        })
    }
}

impl ConnService {
    /// Starts a websocket session for a handshake request to `route`'s handler. Kept out of
    /// line: inlined, it made every plain request's dispatch slower.
    #[cold]
    #[inline(never)]
    fn websocket(
        &self,
        route: &crate::app::Route,
        kind: ws::Handshake,
        mut req: Request<Incoming>,
        mut record: AccessRecord,
        forwarded: Option<Box<Forwarded>>,
        span: crate::observe::RequestSpan,
    ) -> ResponseFuture {
        let Some(handler) = route.target.clone() else {
            unreachable!("a route that is not a 404 or a service has a handler")
        };
        let Some(place) = self.app.sessions.place() else {
            tracing::debug!("websocket refused: the server has its most websockets open");
            let mut r = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many websockets, retry later\n",
            );
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            return ResponseFuture::ready(r, record);
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (mut parts, _body) = req.into_parts();
        // One method for the scope whatever carried the handshake (HTTP/2 uses CONNECT).
        parts.method = http::Method::GET;
        detach(&mut parts);
        record.set_uri(&parts.uri);
        let info = self.info(route, &mut parts, true, forwarded);
        let scope = HttpScope::from_parts(
            parts,
            info,
            request_context(route, self.conn.as_deref()),
            self.app.state.clone(),
        );
        let context = scope.context().clone();
        let handshaking = ws::start(
            &self.app.sessions,
            place,
            kind,
            on_upgrade,
            move |session| {
                let (receive, send) = ws::ends(&session);
                let fut = handler.call_owned(Scope::WebSocket(scope), receive, send);
                Driver::new(fut, context, session).with_span(span)
            },
            record,
        );
        ResponseFuture::handshake(handshaking)
    }

    /// What the server knows of a request beyond its head; with the connection's
    /// [`Origin`], also what it changes in the head (see [`Origin::apply`]).
    // Always inlined: called from two places, it would otherwise be a call that returns the
    // info through a copy, on every request.
    #[inline(always)]
    fn info(
        &self,
        route: &crate::app::Route,
        parts: &mut http::request::Parts,
        prefix_path: bool,
        forwarded: Option<Box<Forwarded>>,
    ) -> RequestInfo {
        let info = RequestInfo::new()
            .with_scheme(Scheme::HTTP)
            .with_client(self.client)
            .with_server(self.server)
            .with_root_path(route.prefix.clone());
        match &self.origin {
            None => info,
            Some(origin) => origin.apply(info, parts, prefix_path, forwarded),
        }
    }
}

/// Copies the request head's header values and URI out of hyper's read buffer. hyper parses
/// them as slices of that buffer (8-16 KiB), so a websocket's scope and access record, which
/// live as long as its session, would otherwise keep the whole buffer alive for each socket.
fn detach(parts: &mut http::request::Parts) {
    let headers = std::mem::take(&mut parts.headers);
    parts.headers = headers
        .into_iter()
        .scan(None, |name, (next, value)| {
            // `into_iter` names only the first of a header's values.
            if next.is_some() {
                *name = next;
            }
            let mut copied =
                http::HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
            copied.set_sensitive(value.is_sensitive());
            Some(name.clone().map(|n| (n, copied)))
        })
        .flatten()
        .collect();
    if let Ok(uri) = parts.uri.to_string().parse::<http::Uri>() {
        parts.uri = uri;
    }
}

pub(crate) fn declared_length<B>(req: &Request<B>) -> Option<u64> {
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

/// Who a request inside a layered router came from: the outer request puts it into the
/// request's extensions for the inner router, which takes it out again.
#[cfg(feature = "tower")]
#[derive(Clone)]
pub(crate) struct Peer {
    /// The client as the outer request resolved it (a trusted proxy's headers applied).
    pub(crate) client: Option<SocketAddr>,
    pub(crate) server: Option<SocketAddr>,
    /// What the inner router's requests still need from the connection: the scheme and the
    /// external prefix (the proxy headers are applied, the client's certificate is in the
    /// extensions already).
    pub(crate) origin: Option<Arc<Origin>>,
}

#[cfg(feature = "tower")]
impl ConnService {
    /// Calls a mounted tower service (or a router behind layers) for one request.
    #[allow(clippy::too_many_arguments)]
    fn call_mounted(
        &self,
        service: &Arc<dyn crate::mounted::Mounted>,
        prefix: &str,
        (mut parts, body): (http::request::Parts, Incoming),
        info: RequestInfo,
        context: amphi_core::Context,
        record: AccessRecord,
        drain: Option<DrainClock>,
        span: crate::observe::RequestSpan,
    ) -> ResponseFuture {
        if service.strips_prefix() {
            // A foreign service sees the path below its mount, as under axum's `nest_service`;
            // the mount is in its `RequestInfo`.
            if let Some(uri) = strip_prefix(&parts.uri, prefix) {
                parts.uri = uri;
            }
            parts.extensions.insert(info);
            parts.extensions.insert(context.clone());
            parts.extensions.insert(self.app.state.clone());
        } else {
            let https = *info.scheme() == Scheme::HTTPS;
            let prefix = self.origin.as_ref().and_then(|o| o.prefix.clone());
            parts.extensions.insert(Peer {
                client: info.client(),
                server: self.server,
                origin: Origin {
                    https,
                    prefix,
                    ..Origin::default()
                }
                .shared(),
            });
        }
        let body = crate::mounted::RequestBody::new(body, self.app.max_body, self.app.body_rate);
        // Layers may call the inner service right here (most do): the request's context and
        // span are current, as they are when the call is polled, so a router behind layers
        // runs its handlers inside both.
        let fut = {
            let _context = context.enter();
            let _span = span.enter();
            service.call(Request::from_parts(parts, body))
        };
        ResponseFuture::service(crate::response::ServiceCalling::new(
            fut, context, record, drain, span,
        ))
    }
}

/// `uri` with `prefix` taken off its path (`/` when nothing is left); `None` when it does not
/// start with it or cannot be rebuilt.
#[cfg(feature = "tower")]
fn strip_prefix(uri: &http::Uri, prefix: &str) -> Option<http::Uri> {
    if prefix.is_empty() {
        return None;
    }
    let rest = uri.path().strip_prefix(prefix)?;
    let path = if rest.is_empty() { "/" } else { rest };
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut builder = http::Uri::builder().path_and_query(path_and_query);
    if let Some(scheme) = uri.scheme() {
        builder = builder.scheme(scheme.clone());
    }
    if let Some(authority) = uri.authority() {
        builder = builder.authority(authority.clone());
    }
    builder.build().ok()
}
