//! The future of one request: it calls the handler and polls it until the response head is
//! known, then hands hyper either a complete response or a body that goes on polling it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use amphi_core::{Context, Message, Sender, SyncHandler};
use amphi_sync_to_async::{HttpBody, HttpCall};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::Body as _;

use crate::access::{AccessRecord, Outcome};
use crate::body::ResponseBody;
use crate::driver::Driver;
use crate::error::Chain;
use crate::exchange::{Exchange, Head};
use crate::reply::{
    error_response, finish_full, full, length_mismatch, length_misuse, plain, too_large,
};
use crate::response_rate::DrainClock;

/// An async handler (or a sync handler's streamed body) being polled.
pub(crate) struct Driving {
    pub(crate) driver: Driver,
    pub(crate) record: AccessRecord,
    pub(crate) drain: Option<DrainClock>,
}

/// A sync handler called directly (its request body complete).
pub(crate) struct SyncCalling {
    pub(crate) call: HttpCall<Arc<dyn SyncHandler>>,
    pub(crate) record: AccessRecord,
    pub(crate) drain: Option<DrainClock>,
    /// The request's span, entered on each poll: a call that waited for a slot starts its
    /// blocking side from a poll, and the blocking side carries the current span.
    pub(crate) span: crate::observe::RequestSpan,
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
        let result = {
            let _span = self.span.enter();
            std::task::ready!(Pin::new(&mut self.call).poll(cx))
        };
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
            driver: Driver::new(pump, Context::new(), exchange).with_span(self.span),
            record: self.record,
            drain: self.drain,
        }
    }
}

/// A mounted tower service (or a router behind layers) being called (`tower` feature).
#[cfg(feature = "tower")]
pub(crate) struct ServiceCalling {
    fut: crate::mounted::MountedFuture,
    /// Current while the call is polled, and cancelled when the call is dropped unfinished.
    context: Context,
    guard: Option<amphi_core::DropGuard>,
    record: AccessRecord,
    drain: Option<DrainClock>,
    /// The request's span, entered with the context on each poll.
    span: crate::observe::RequestSpan,
}

#[cfg(feature = "tower")]
impl ServiceCalling {
    pub(crate) fn new(
        fut: crate::mounted::MountedFuture,
        context: Context,
        record: AccessRecord,
        drain: Option<DrainClock>,
        span: crate::observe::RequestSpan,
    ) -> ServiceCalling {
        ServiceCalling {
            fut,
            guard: Some(context.token().clone().drop_guard()),
            context,
            record,
            drain,
            span,
        }
    }

    /// Polls the call with its context current and panics caught.
    fn poll_call(
        &mut self,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Result<Response<crate::body::ResponseBody>, amphi_core::Error>> {
        use std::panic::{catch_unwind, AssertUnwindSafe};
        let polled = {
            let _current = self.context.enter();
            let _span = self.span.enter();
            catch_unwind(AssertUnwindSafe(|| self.fut.as_mut().poll(cx)))
        };
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(Ok(response))) => Poll::Ready(Ok(response)),
            Ok(Poll::Ready(Err(e))) => Poll::Ready(Err(amphi_core::Error::handler(e))),
            Err(payload) => Poll::Ready(Err(amphi_core::Error::from_panic(&*payload))),
        }
    }

    /// The response for what the service answered.
    fn respond(
        mut self,
        result: Result<Response<crate::body::ResponseBody>, amphi_core::Error>,
    ) -> Response<ResponseBody> {
        // The service answered: its body, not this future, owns the rest of the exchange.
        if let Some(g) = self.guard.take() {
            g.disarm();
        }
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                if e.is_panic() {
                    tracing::error!(error = %Chain(&e), path = self.record.path(), "service panicked before its response started");
                } else {
                    tracing::error!(error = %Chain(&e), path = self.record.path(), "service failed before its response started");
                }
                let r = plain(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n");
                return finish_full(r, self.record);
            }
        };
        let (mut parts, body) = response.into_parts();
        // Status and headers only: the version on the wire is the connection's, and hyper
        // panics at one it cannot write.
        parts.version = http::Version::default();
        let mut record = self.record;
        if record.is_head() {
            drop(body);
            return finish_full(Response::from_parts(parts, Bytes::new()), record);
        }
        if let Some(len) = http_body::Body::size_hint(&body).exact() {
            if length_mismatch(parts.status, &parts.headers, len) {
                return finish_full(length_misuse(&record, len), record);
            }
        }
        record.status = Some(parts.status);
        Response::from_parts(parts, body.with_record(record, self.drain))
    }
}

#[allow(clippy::large_enum_variant)]
enum Stage {
    Ready(Option<(Response<Bytes>, AccessRecord)>),
    Sync(SyncCalling),
    Driving(Driving),
    #[cfg(feature = "tower")]
    Service(ServiceCalling),
    Handshake(crate::ws::Handshaking),
    Done,
}

/// The future of one request: it calls the request's handler (or service) and polls it until
/// the response head is known. What `tower::RouterService` returns (`tower` feature).
pub struct ResponseFuture {
    state: Stage,
    /// The request's id, put on the response (`Server::request_spans`).
    request_id: Option<http::HeaderValue>,
}

impl ResponseFuture {
    /// A response the server answers itself, complete.
    pub(crate) fn ready(response: Response<Bytes>, record: AccessRecord) -> ResponseFuture {
        ResponseFuture {
            state: Stage::Ready(Some((response, record))),
            request_id: None,
        }
    }

    /// A sync handler called directly.
    pub(crate) fn sync(calling: SyncCalling) -> ResponseFuture {
        ResponseFuture {
            state: Stage::Sync(calling),
            request_id: None,
        }
    }

    /// A handler driven through its exchange.
    pub(crate) fn driving(driving: Driving) -> ResponseFuture {
        ResponseFuture {
            state: Stage::Driving(driving),
            request_id: None,
        }
    }

    /// A websocket handshake waiting for its handler's answer.
    pub(crate) fn handshake(handshaking: crate::ws::Handshaking) -> ResponseFuture {
        ResponseFuture {
            state: Stage::Handshake(handshaking),
            request_id: None,
        }
    }

    /// A tower service called.
    #[cfg(feature = "tower")]
    pub(crate) fn service(calling: ServiceCalling) -> ResponseFuture {
        ResponseFuture {
            state: Stage::Service(calling),
            request_id: None,
        }
    }
}

impl ResponseFuture {
    /// Puts `id` on the response as its `x-request-id`.
    pub(crate) fn set_request_id(&mut self, id: Option<http::HeaderValue>) {
        self.request_id = id;
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let Ok(mut response) = std::task::ready!(self.poll_head(cx));
        if let Some(id) = self.request_id.take() {
            response
                .headers_mut()
                .insert(crate::observe::X_REQUEST_ID.clone(), id);
        }
        Poll::Ready(Ok(response))
    }
}

impl ResponseFuture {
    /// Polls the request until its response head is known. Inlined into `poll`, so the
    /// response is not moved once more on its way out.
    #[inline(always)]
    fn poll_head(
        &mut self,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Result<Response<ResponseBody>, Infallible>> {
        let this = self;
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
            #[cfg(feature = "tower")]
            Stage::Service(calling) => {
                let result = std::task::ready!(calling.poll_call(cx));
                let Stage::Service(calling) = std::mem::replace(&mut this.state, Stage::Done)
                else {
                    unreachable!("matched Service above")
                };
                return Poll::Ready(Ok(calling.respond(result)));
            }
            Stage::Handshake(h) => {
                let (response, record) = std::task::ready!(h.poll(cx));
                this.state = Stage::Done;
                return Poll::Ready(Ok(match record {
                    Some(record) => finish_full(response, record),
                    // Accepted: the session keeps the record until the socket closes.
                    None => response.map(|_| ResponseBody::default()),
                }));
            }
            Stage::Done => panic!("ResponseFuture polled after completion"),
        };
        let polled = driving.driver.poll_handler(cx);
        let (head, client_gone) = {
            let mut out = driving.driver.exchange.lock();
            match out.head(polled) {
                Head::Pending => return Poll::Pending,
                head => (head, out.client_gone()),
            }
        };
        let Stage::Driving(driving) = std::mem::replace(&mut this.state, Stage::Done) else {
            unreachable!("matched Driving above")
        };
        Poll::Ready(Ok(respond(driving, head, client_gone)))
    }
}

/// The response for what the handler produced (`head`, never [`Head::Pending`]).
fn respond(driving: Driving, head: Head, client_gone: bool) -> Response<ResponseBody> {
    let Driving {
        driver,
        mut record,
        drain,
    } = driving;
    if client_gone {
        // The handler answered a client that left mid-upload: the answer goes to nobody.
        record.outcome = Outcome::ClientGone;
    }
    let (status, headers, exact_len) = match head {
        Head::Pending => unreachable!("the caller returns on Pending"),
        Head::Complete {
            status,
            headers,
            body,
            late,
        } => {
            log_late(late.as_ref());
            return finish_full(full(status, headers, body), record);
        }
        Head::Failed {
            error,
            body_too_large,
            body_too_slow,
        } => {
            return finish_full(
                error_response(&error, body_too_large, body_too_slow),
                record,
            )
        }
        Head::BodyTooLarge => return finish_full(too_large(), record),
        Head::Unfinished { started } => {
            let what = if started {
                "handler returned before finishing its response"
            } else {
                "handler returned without sending a response"
            };
            tracing::error!(path = record.path(), "protocol misuse: {what}");
            let response = plain(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n");
            return finish_full(response, record);
        }
        Head::Stream {
            status,
            headers,
            exact_len,
            late,
        } => {
            log_late(late.as_ref());
            (status, headers, exact_len)
        }
    };
    if record.is_head() {
        // No body for HEAD (hyper leaves it out over HTTP/1.1, not over HTTP/2): the handler
        // is done with as soon as its head is out.
        drop(driver);
        return finish_full(full(status, headers, Bytes::new()), record);
    }
    if let Some(len) = exact_len.filter(|&len| length_mismatch(status, &headers, len)) {
        drop(driver);
        return finish_full(length_misuse(&record, len), record);
    }
    record.status = Some(status);
    let mut response = Response::new(ResponseBody::stream(driver, exact_len, record, drain));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

fn log_late(late: Option<&amphi_core::Error>) {
    if let Some(e) = late {
        tracing::warn!(error = %Chain(e), "handler failed after completing its response");
    }
}
