//! The hyper service: routes a request, calls its handler, and turns what the handler sends
//! into a hyper response.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use amphi_core::{
    BlockingBody, BoxFuture, Context, DropGuard, Error, ErrorKind, HttpScope, Message, Receiver,
    RequestInfo, Scope, Sender, State, SyncHandler,
};
use amphi_sync_to_async::{HttpBody, HttpCall};
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::uri::Scheme;
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::access::{AccessRecord, Outcome};
use crate::body::ResponseBody;
use crate::exchange::{BodyRate, Exchange, IncomingSource};
use crate::idle::ConnState;
use crate::response_rate::{ConnWatch, DrainClock};
use crate::router::{HandlerKind, RouteTable};

/// What every connection of one server shares.
pub(crate) struct App {
    pub(crate) routes: RouteTable,
    pub(crate) state: State,
    pub(crate) max_body: u64,
    pub(crate) body_rate: Option<BodyRate>,
    /// Requests whose access record is alive.
    pub(crate) in_flight: AtomicUsize,
    /// Set when the grace period is over and the remaining connections are being cut.
    pub(crate) cutting: AtomicBool,
}

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
    type Error = Infallible;
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
            return ResponseFuture {
                state: Stage::Sync(SyncCalling {
                    call: mount.call_http(scope, body),
                    record,
                    drain,
                }),
            };
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
        ResponseFuture {
            state: Stage::Driving(Driving {
                driver: Driver::new(fut, context, exchange),
                record,
                drain,
            }),
        }
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

/// Polls a handler future with its request context current and panics caught.
pub(crate) struct Driver {
    // Field order matters: the future is dropped before the guard flips the token.
    fut: Option<BoxFuture<'static, Result<(), Error>>>,
    context: Context,
    /// Cancels the request's token when the exchange is abandoned before the handler returns.
    guard: Option<DropGuard>,
    pub(crate) exchange: Arc<Exchange>,
}

impl Driver {
    fn new(
        fut: BoxFuture<'static, Result<(), Error>>,
        context: Context,
        exchange: Arc<Exchange>,
    ) -> Driver {
        Driver {
            fut: Some(fut),
            guard: Some(context.token().clone().drop_guard()),
            context,
            exchange,
        }
    }

    /// Whether the handler is still running.
    pub(crate) fn is_running(&self) -> bool {
        self.fut.is_some()
    }

    /// Polls the handler once; `Ready` once it has returned (a panic is an error of kind
    /// [`ErrorKind::Panicked`]). Must not be called after it returned `Ready`.
    pub(crate) fn poll_handler(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let polled = {
            let _current = self.context.enter();
            catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx)))
        };
        let result = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(result)) => result,
            Err(payload) => Err(Error::from_panic(&*payload)),
        };
        // A future that panicked may panic again while dropped; keep that inside too.
        let fut = self.fut.take();
        if catch_unwind(AssertUnwindSafe(move || drop(fut))).is_err() {
            tracing::error!("a handler future panicked while being dropped");
        }
        if result.is_ok() {
            if let Some(g) = self.guard.take() {
                g.disarm();
            }
        }
        Poll::Ready(result)
    }
}

struct Driving {
    driver: Driver,
    record: AccessRecord,
    drain: Option<DrainClock>,
}

/// A sync handler called directly (its request body complete).
struct SyncCalling {
    call: HttpCall<Arc<dyn SyncHandler>>,
    record: AccessRecord,
    drain: Option<DrainClock>,
}

impl SyncCalling {
    /// Polls the call; `Ok` with the response once it is complete (or the error's response),
    /// `Err` with the head and the body when the handler's body streams (see [`stream`]).
    ///
    /// [`stream`]: SyncCalling::stream
    fn poll_call(
        &mut self,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Result<Response<Bytes>, (http::response::Parts, HttpBody)>> {
        let result = std::task::ready!(Pin::new(&mut self.call).poll(cx));
        Poll::Ready(match result {
            Err(e) => Ok(error_response(&e, false, false)),
            Ok(response) => {
                let (parts, body) = response.into_parts();
                match body.into_full() {
                    // Status and headers only: the version on the wire is the
                    // connection's, and hyper panics at one it cannot write.
                    Ok(bytes) => Ok(full(parts.status, parts.headers, bytes)),
                    Err(body) => Err((parts, body)),
                }
            }
        })
    }

    /// The driving stage for a streamed body: it goes out through the same exchange, rate
    /// clock and access record as an async handler's, pumped by a small future. The pump
    /// gets a context of its own: the handler's is the call's, and dropping the body (the
    /// client left) flips the call's token.
    fn stream(self, parts: http::response::Parts, mut body: HttpBody) -> Driving {
        let exchange = Arc::new(Exchange::default());
        let mut send = Sender::shared_http(exchange.clone());
        let pump = Box::pin(async move {
            send.send(Message::start(parts.status, parts.headers))
                .await?;
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                if let Ok(data) = frame?.into_data() {
                    send.send(Message::body(data, true)).await?;
                }
            }
            send.send(Message::body(Bytes::new(), false)).await
        });
        Driving {
            driver: Driver::new(pump, Context::new(), exchange),
            record: self.record,
            drain: self.drain,
        }
    }
}

#[allow(clippy::large_enum_variant)]
enum Stage {
    Ready(Option<(Response<Bytes>, AccessRecord)>),
    Sync(SyncCalling),
    Driving(Driving),
    Done,
}

/// The future of one request: polls the handler until the response head is known.
pub(crate) struct ResponseFuture {
    state: Stage,
}

impl ResponseFuture {
    fn ready(response: Response<Bytes>, record: AccessRecord) -> ResponseFuture {
        ResponseFuture {
            state: Stage::Ready(Some((response, record))),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let driving = match &mut this.state {
            Stage::Ready(r) => {
                let (response, record) = r.take().expect("polled after completion");
                this.state = Stage::Done;
                return Poll::Ready(Ok(finish_full(response, record)));
            }
            Stage::Sync(calling) => {
                let polled = std::task::ready!(calling.poll_call(cx));
                let Stage::Sync(calling) = std::mem::replace(&mut this.state, Stage::Done) else {
                    unreachable!("matched Sync above")
                };
                match polled {
                    Ok(response) => return Poll::Ready(Ok(finish_full(response, calling.record))),
                    Err((parts, body)) => {
                        this.state = Stage::Driving(calling.stream(parts, body));
                        let Stage::Driving(d) = &mut this.state else {
                            unreachable!("set above")
                        };
                        d
                    }
                }
            }
            Stage::Driving(d) => d,
            Stage::Done => panic!("ResponseFuture polled after completion"),
        };
        let polled = driving.driver.poll_handler(cx);
        let mut out = driving.driver.exchange.lock();
        let produced = match polled {
            Poll::Pending => {
                let Some((status, headers)) = out.head.take() else {
                    return Poll::Pending;
                };
                if out.response_done && out.trailers.is_none() && !out.trailers_announced {
                    // Answered in one piece, but the handler has not returned yet: hand the
                    // body over with its exact length and let the body keep polling the
                    // handler until it returns.
                    let len = out.chunk.as_ref().map_or(0, |c| c.len() as u64);
                    Produced::Stream(status, headers, Some(len))
                } else {
                    Produced::Stream(status, headers, None)
                }
            }
            Poll::Ready(result) => match (out.head.take(), out.response_done, result) {
                (Some((status, headers)), true, result) => {
                    if let Err(e) = result {
                        tracing::warn!(error = %Chain(&e), "handler failed after completing its response");
                    }
                    if out.trailers.is_some() {
                        Produced::Stream(status, headers, None)
                    } else {
                        let body = out.chunk.take().unwrap_or_default();
                        Produced::Full(full(status, headers, body))
                    }
                }
                (_, _, Err(e)) => {
                    let too_large = out.body_too_large;
                    Produced::Full(error_response(&e, too_large, out.body_too_slow))
                }
                (head, _, Ok(())) => {
                    if out.body_too_large && head.is_none() {
                        Produced::Full(too_large())
                    } else {
                        let what = if head.is_some() {
                            "handler returned before finishing its response"
                        } else {
                            "handler returned without sending a response"
                        };
                        tracing::error!(path = driving.record_path(), "protocol misuse: {what}");
                        Produced::Full(plain(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "internal server error\n",
                        ))
                    }
                }
            },
        };
        let client_gone = out.client_gone;
        drop(out);
        let Stage::Driving(driving) = std::mem::replace(&mut this.state, Stage::Done) else {
            unreachable!("matched Driving above")
        };
        let Driving {
            driver,
            mut record,
            drain,
        } = driving;
        if client_gone {
            // The handler answered a client that left mid-upload: the answer goes to nobody.
            record.outcome = Outcome::ClientGone;
        }
        let response = match produced {
            Produced::Full(full_response) => finish_full(full_response, record),
            Produced::Stream(status, headers, _) if record.is_head() => {
                // No body for HEAD (hyper leaves it out over HTTP/1.1, not over HTTP/2): the
                // handler is done with as soon as its head is out.
                drop(driver);
                let mut response = Response::new(Bytes::new());
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                finish_full(response, record)
            }
            Produced::Stream(status, headers, Some(len))
                if length_mismatch(status, &headers, len) =>
            {
                drop(driver);
                finish_full(length_misuse(&record, len), record)
            }
            Produced::Stream(status, headers, exact) => {
                record.status = Some(status);
                let mut response =
                    Response::new(ResponseBody::stream(driver, exact, record, drain));
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                response
            }
        };
        Poll::Ready(Ok(response))
    }
}

impl Driving {
    fn record_path(&self) -> &str {
        self.record.path()
    }
}

/// What the handler produced once the service future can answer.
enum Produced {
    /// A complete response.
    Full(Response<Bytes>),
    /// A head whose body the response body will keep pulling from the handler; with the exact
    /// length when the body is already complete.
    Stream(StatusCode, http::HeaderMap, Option<u64>),
}

/// Whether a `Content-Length` the handler set disagrees with the `len` bytes its complete
/// body holds. hyper frames a body of known length by that length but writes the handler's
/// header as it is, so passing both on would write bytes past the declared end: a second,
/// forged response on an HTTP/1.1 keep-alive connection (release builds; debug builds of
/// hyper panic instead). Streamed bodies of unknown length are framed by the header itself,
/// and statuses that cannot have a body get none whatever the header says.
fn length_mismatch(status: StatusCode, headers: &http::HeaderMap, len: u64) -> bool {
    if status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
    {
        return false;
    }
    has(headers, &CONTENT_LENGTH)
        && headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .any(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) != Some(len))
}

/// Whether `headers` holds `name`. Requests and responses carry a handful of headers, and
/// comparing that many names is cheaper than hashing one; larger maps are looked up as usual.
fn has(headers: &http::HeaderMap, name: &http::HeaderName) -> bool {
    if headers.len() <= 8 {
        headers.keys().any(|k| k == name)
    } else {
        headers.contains_key(name)
    }
}

/// The 500 for a handler whose `Content-Length` disagrees with its body.
fn length_misuse(record: &AccessRecord, len: u64) -> Response<Bytes> {
    tracing::error!(
        path = record.path(),
        body_len = len,
        "protocol misuse: the handler's content-length does not match its body"
    );
    plain(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
}

/// Wraps a complete response's body, recording it in the access log.
fn finish_full(response: Response<Bytes>, mut record: AccessRecord) -> Response<ResponseBody> {
    let len = response.body().len() as u64;
    let response =
        if !record.is_head() && length_mismatch(response.status(), response.headers(), len) {
            length_misuse(&record, len)
        } else {
            response
        };
    let (mut parts, mut body) = response.into_parts();
    record.status = Some(parts.status);
    if record.is_head() {
        // HEAD gets the headers a GET would, without the body. hyper leaves the body out over
        // HTTP/1.1 but not over HTTP/2, so it is left out here for both.
        if !body.is_empty() && !parts.headers.contains_key(CONTENT_LENGTH) {
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        body = Bytes::new();
    }
    record.bytes = body.len() as u64;
    // A complete body is handed to hyper in one frame; hyper may drop it without polling
    // (HEAD), so it counts as complete now.
    if record.outcome == Outcome::Running {
        record.outcome = Outcome::Complete;
    }
    Response::from_parts(parts, ResponseBody::full(body, record))
}

fn full(status: StatusCode, headers: http::HeaderMap, body: Bytes) -> Response<Bytes> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from_static(text.as_bytes()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn too_large() -> Response<Bytes> {
    plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
}

/// Displays an error with its `source()` chain: a handler's own error (`Error::handler(e)`,
/// an `io::Error` from a body) is the source, not the message, and a log line without it
/// would say only "handler error".
pub(crate) struct Chain<'a>(pub(crate) &'a Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(self.0);
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// The response for a handler that failed before its response started.
fn error_response(err: &Error, body_too_large: bool, body_too_slow: bool) -> Response<Bytes> {
    match err.kind() {
        ErrorKind::Saturated => {
            tracing::debug!(error = %err, "blocking pool saturated");
            let mut r = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "server busy, retry later\n",
            );
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        ErrorKind::BodyTooLarge => {
            tracing::debug!(error = %err, "request body too large");
            too_large()
        }
        ErrorKind::TimedOut if body_too_slow => {
            tracing::debug!(error = %err, "request body too slow");
            plain(StatusCode::REQUEST_TIMEOUT, "request body too slow\n")
        }
        _ if body_too_large => too_large(),
        ErrorKind::Panicked => {
            tracing::error!(error = %err, "handler panicked before its response started");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
        }
        ErrorKind::Protocol => {
            tracing::error!(error = %Chain(err), "protocol misuse by a handler");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
        }
        ErrorKind::Disconnected | ErrorKind::Cancelled => {
            tracing::debug!(error = %err, "handler stopped: client gone");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
        }
        _ => {
            tracing::error!(error = %Chain(err), "handler failed before its response started");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
        }
    }
}
