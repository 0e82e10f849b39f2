//! `AsyncToSync`: serve an async handler as a blocking one.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, Waker};

use amphi_core::plumbing::{EventSource, MessageSink};
use amphi_core::{
    AsyncHandler, BlockingBody, BoxFuture, CancellationToken, Cancelled, Context, DropGuard, Error,
    ErrorKind, Event, HttpScope, Message, Receiver, Scope, Sender, SyncBody, SyncHandler,
    SyncRequest, SyncResponse, SyncWebSocketRequest, ThreadSensitive,
};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};

use crate::frame::{block_on_drive, Drive};

/// Response messages buffered ahead of the blocking reader of the body.
const OUT_CAPACITY: usize = 4;

/// Serves an [`AsyncHandler`] as a [`SyncHandler`]: what a2wsgi's `ASGIMiddleware` does for
/// Python, without its event-loop thread.
///
/// Each request drives the handler's future with [`async_to_sync`](crate::async_to_sync)'s
/// machinery on the calling blocking thread:
///
/// - the request's [`BlockingBody`] is read on the blocking thread, one chunk each time the
///   handler's `receive` asks for more, and handed over as `http.request` events; a client
///   that went away becomes `http.disconnect`, a body over the limit an
///   [`ErrorKind::BodyTooLarge`] error from `receive`;
/// - `call` returns once the handler has sent its response start and first body message
///   (or finished); the rest of the body streams: the returned [`SyncBody`] drives the
///   handler on as the server pulls chunks, so the response is never buffered whole and a slow
///   client slows the handler (backpressure);
/// - after the body, `receive` waits and then yields `http.disconnect` once the response is
///   complete or the request is cancelled.
///
/// Response trailers (`http.response.trailers`) are dropped, with a debug line: a blocking
/// response body, like WSGI's, has no place for them. The body before them arrives whole.
///
/// # Errors
///
/// A handler error before its response started becomes an empty response: 503 with
/// `Retry-After: 1` for [`ErrorKind::Saturated`], 413 for [`ErrorKind::BodyTooLarge`], 500
/// otherwise (panics included), logged through `tracing`. After the start, an error ends the
/// body with an `io::Error` (the server cuts the connection).
///
/// # Cancellation
///
/// The handler runs with a child of the request context; when the server drops the response
/// body early (the client went away), the handler's future is dropped and that child's token
/// flips. When the request's own token flips, the handler sees it and gets `http.disconnect`
/// from `receive`. The response body ends with the handler's last body message, and the
/// server then drops it: work the handler does after that message (cleanup, or an await
/// before trailers) may be cancelled at its next await, so do it before the last body.
///
/// # Websockets
///
/// [`SyncHandler::websocket`] serves the session with the async handler on a
/// [`Scope::WebSocket`]: the caller's thread drives the handler until it returns, over the
/// session's own `receive` and `send` ends (the [`SyncWebSocketRequest`]'s, handed over as
/// they are: no thread and no queue of its own), so the handler sees the session end as
/// those ends report it (`SyncToAsync`'s: the client's close, or 1006 once the session is
/// cancelled). The handler's error
/// (or panic) comes back as the `io::Error` of the call, for the caller to close 1011 or deny
/// 500 as its runner does.
///
/// # Examples
///
/// ```
/// use amphi_async_to_sync::AsyncToSync;
/// use amphi_core::{async_fn, AsyncBody, AsyncRequest, SyncHandler, SyncRequest};
///
/// let echo = AsyncToSync::new(async_fn(|req: AsyncRequest| async move {
///     let body = req.into_body().to_bytes().await.unwrap_or_default();
///     http::Response::new(AsyncBody::from(body))
/// }));
/// let resp = echo.call(SyncRequest::new(http::Request::post("/").body("ping".into()).unwrap()));
/// assert_eq!(resp.into_body().collect().unwrap(), "ping");
/// ```
pub struct AsyncToSync<H> {
    handler: Arc<H>,
}

impl<H: AsyncHandler> AsyncToSync<H> {
    /// Wraps `handler`.
    pub fn new(handler: H) -> AsyncToSync<H> {
        AsyncToSync {
            handler: Arc::new(handler),
        }
    }

    /// The wrapped handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }
}

impl<H> Clone for AsyncToSync<H> {
    fn clone(&self) -> Self {
        AsyncToSync {
            handler: self.handler.clone(),
        }
    }
}

impl<H> fmt::Debug for AsyncToSync<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncToSync")
            .field("handler", &std::any::type_name::<H>())
            .finish()
    }
}

impl<H: AsyncHandler> SyncHandler for AsyncToSync<H> {
    fn websocket(&self, request: SyncWebSocketRequest) -> io::Result<()> {
        self.serve_websocket(request)
    }

    fn call(&self, request: SyncRequest) -> SyncResponse {
        let (scope, body) = request.into_parts();
        let (parts, info, request_context, state) = scope.into_parts();
        let context = request_context.child();
        let token = context.token().clone();
        let scope = HttpScope::new(parts, info)
            .with_context(context.clone())
            .with_state(state);
        let shared = Arc::new(Shared::default());
        let receive = Receiver::new(Source {
            shared: shared.clone(),
            token: token.clone(),
            cancelled: None,
        });
        let send = Sender::http(Sink(shared.clone()));
        let handler = self.handler.clone();
        let future: BoxFuture<'static, Result<(), Error>> =
            Box::pin(async move { handler.call(Scope::Http(scope), receive, send).await });
        let mut driver = Driver {
            future: Some(future),
            result: None,
            shared,
            body,
            until: Until::FirstBody,
            context,
            span: tracing::Span::current(),
            cancel: Some(token.drop_guard()),
        };
        if let Err(e) = driver.drive() {
            return error_response(&e);
        }
        let start = driver.shared.lock().out.pop_front();
        let (status, headers) = match start {
            Some(Message::ResponseStart {
                status, headers, ..
            }) => (status, headers),
            _ => {
                let error = match driver.result.take() {
                    Some(Err(e)) => e,
                    _ => Error::protocol("the async handler finished without http.response.start"),
                };
                return error_response(&error);
            }
        };
        let mut response = http::Response::new(SyncBody::empty());
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        *response.body_mut() = driver.into_body();
        response
    }
}

impl<H: AsyncHandler> AsyncToSync<H> {
    /// [`SyncHandler::websocket`]: drives the handler on this thread over the session's own
    /// ends (no thread or queue of its own), until it returns.
    fn serve_websocket(&self, request: SyncWebSocketRequest) -> io::Result<()> {
        let (scope, receive, send) = request.into_parts();
        let (parts, info, request_context, state) = scope.into_parts();
        let context = request_context.child();
        let token = context.token().clone();
        let scope = HttpScope::from_parts(parts, info, context.clone(), state);
        let future = H::call_owned(self.handler.clone(), Scope::WebSocket(scope), receive, send);
        let mut session = Session {
            future,
            cancel: Some(token.drop_guard()),
        };
        let loan = ThreadSensitive::lend_current_thread();
        let span = tracing::Span::current();
        let result = block_on_drive(&mut session, Some(&context), &span, &loan);
        result.and_then(|r| r).map_err(Error::into_io)
    }
}

/// A websocket handler's future, driven on the calling thread.
struct Session {
    future: BoxFuture<'static, Result<(), Error>>,
    /// Flips the handler's token if the future is dropped before it finished (a panic).
    cancel: Option<DropGuard>,
}

impl Drive for Session {
    type Output = Result<(), Error>;

    fn poll_drive(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        let result = std::task::ready!(self.future.as_mut().poll(cx));
        if let Some(guard) = self.cancel.take() {
            guard.disarm();
        }
        Poll::Ready(result)
    }
}

fn error_response(error: &Error) -> SyncResponse {
    let status = match error.kind() {
        ErrorKind::Saturated => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    tracing::error!(%error, status = status.as_u16(), "async handler failed before its response started");
    let mut response = http::Response::new(SyncBody::empty());
    *response.status_mut() = status;
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// What the handler's `receive` and `send` share with the blocking side.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Request events read on the blocking side, not yet received.
    events: VecDeque<Result<Event, Error>>,
    /// `receive` waits for the next body chunk.
    want_read: bool,
    /// The whole request body (or its error) has been handed over.
    body_done: bool,
    /// Response messages not yet taken by the blocking side.
    out: VecDeque<Message>,
    /// The handler sent the last message of its response.
    response_done: bool,
    /// `receive`'s task, waiting for an event.
    receive_waker: Option<Waker>,
    /// `send`'s task, waiting for room.
    send_waker: Option<Waker>,
    /// The thread blocked on the handler, to wake when `receive` asks for a read from another
    /// task.
    frame_waker: Option<Waker>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections are queue updates only; a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn store(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

/// `receive` of the handler: request events from the blocking side.
struct Source {
    shared: Arc<Shared>,
    token: CancellationToken,
    cancelled: Option<Cancelled>,
}

impl EventSource for Source {
    fn poll_event(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Event, Error>> {
        let mut s = self.shared.lock();
        if let Some(event) = s.events.pop_front() {
            return Poll::Ready(event);
        }
        if !s.body_done {
            s.want_read = true;
            store(&mut s.receive_waker, cx.waker());
            if let Some(w) = s.frame_waker.take() {
                w.wake();
            }
            return Poll::Pending;
        }
        // After the body: `http.disconnect` once the response is done or the request is gone.
        if s.response_done {
            return Poll::Ready(Ok(Event::Disconnect));
        }
        store(&mut s.receive_waker, cx.waker());
        drop(s);
        let cancelled = self.cancelled.get_or_insert_with(|| self.token.cancelled());
        match std::pin::Pin::new(cancelled).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Ok(Event::Disconnect)),
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future as _;

/// `send` of the handler: response messages for the blocking side.
struct Sink(Arc<Shared>);

impl MessageSink for Sink {
    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        let mut s = self.0.lock();
        if s.out.len() < OUT_CAPACITY {
            return Poll::Ready(Ok(()));
        }
        store(&mut s.send_waker, cx.waker());
        Poll::Pending
    }

    fn start_send(&mut self, message: Message) -> Result<(), Error> {
        let mut s = self.0.lock();
        let last = match &message {
            Message::ResponseBody { more_body, .. } => !more_body,
            Message::ResponseTrailers { more_trailers, .. } => !more_trailers,
            _ => false,
        };
        // Trailers have no place in a blocking response body, so they are dropped here, as
        // they are sent: they follow the last body message, after which the blocking side
        // takes nothing more from the queue.
        if let Message::ResponseTrailers { headers, .. } = &message {
            tracing::debug!(
                trailers = headers.len(),
                "response trailers dropped: a blocking response body has no place for them"
            );
        } else {
            s.out.push_back(message);
        }
        if last {
            s.response_done = true;
            if let Some(w) = s.receive_waker.take() {
                w.wake();
            }
        }
        if let Some(w) = s.frame_waker.take() {
            w.wake();
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Until the response start and the first body message are out.
    FirstBody,
    /// Until the next response message is out.
    NextMessage,
}

/// The handler's future and the blocking side's end of its channels.
struct Driver {
    future: Option<BoxFuture<'static, Result<(), Error>>>,
    /// The handler's result, once it has finished.
    result: Option<Result<(), Error>>,
    shared: Arc<Shared>,
    body: BlockingBody,
    until: Until,
    context: Context,
    span: tracing::Span,
    /// Flips the handler's token if the blocking side drops it before it finished.
    cancel: Option<DropGuard>,
}

impl Driver {
    /// Drives the handler on this thread until [`until`](Driver::until) holds or it finishes.
    fn drive(&mut self) -> Result<(), Error> {
        if self.future.is_none() {
            return Ok(());
        }
        let loan = ThreadSensitive::lend_current_thread();
        let context = self.context.clone();
        let span = self.span.clone();
        block_on_drive(self, Some(&context), &span, &loan)
    }

    fn finished(&mut self, result: Result<(), Error>) {
        self.future = None;
        self.result = Some(result);
        if let Some(guard) = self.cancel.take() {
            guard.disarm();
        }
    }

    /// The response body: all of it when the handler is done, else a stream that drives it.
    fn into_body(mut self) -> SyncBody {
        if self.future.is_none() && self.result.as_ref().is_some_and(Result::is_ok) {
            let mut s = self.shared.lock();
            if s.out.len() == 1 {
                if let Some(Message::ResponseBody { body, .. }) = s.out.pop_front() {
                    return SyncBody::full(body);
                }
            }
        }
        self.until = Until::NextMessage;
        SyncBody::try_chunks(Chunks {
            driver: self,
            ended: false,
        })
    }
}

impl Drive for Driver {
    type Output = ();

    fn poll_drive(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        store(&mut self.shared.lock().frame_waker, cx.waker());
        if let Some(future) = self.future.as_mut() {
            if let Poll::Ready(result) = future.as_mut().poll(cx) {
                self.finished(result);
                return Poll::Ready(());
            }
        } else {
            return Poll::Ready(());
        }
        let s = self.shared.lock();
        let enough = match self.until {
            Until::FirstBody => s
                .out
                .iter()
                .any(|m| matches!(m, Message::ResponseBody { .. })),
            Until::NextMessage => !s.out.is_empty(),
        };
        if enough {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn wants_blocking(&self) -> bool {
        self.shared.lock().want_read
    }

    fn run_blocking(&mut self) {
        let item = match self.body.chunk() {
            Ok(Some(chunk)) => {
                let last = self.body.content_length() == Some(self.body.bytes_read());
                Ok(Event::Request {
                    body: chunk,
                    more_body: !last,
                })
            }
            Ok(None) => Ok(Event::Request {
                body: Bytes::new(),
                more_body: false,
            }),
            Err(e) => match Error::from(e) {
                e if e.is_disconnected() || e.is_cancelled() => Ok(Event::Disconnect),
                e => Err(e),
            },
        };
        let done = !matches!(
            item,
            Ok(Event::Request {
                more_body: true,
                ..
            })
        );
        let mut s = self.shared.lock();
        s.events.push_back(item);
        s.want_read = false;
        s.body_done = done;
        if let Some(w) = s.receive_waker.take() {
            w.wake();
        }
    }
}

/// The streamed response body: each pull drives the handler until it sends more.
struct Chunks {
    driver: Driver,
    ended: bool,
}

impl Iterator for Chunks {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if self.ended {
                return None;
            }
            let next = {
                let mut s = self.driver.shared.lock();
                let next = s.out.pop_front();
                if next.is_some() {
                    if let Some(w) = s.send_waker.take() {
                        w.wake();
                    }
                }
                next
            };
            match next {
                Some(Message::ResponseBody { body, more_body }) => {
                    self.ended = !more_body;
                    if !body.is_empty() {
                        return Some(Ok(body));
                    }
                }
                // Trailers never get here: `Sink::start_send` drops them.
                Some(_) => {}
                None => match self.driver.result.take() {
                    Some(Err(e)) => {
                        self.ended = true;
                        return Some(Err(e.into_io()));
                    }
                    Some(Ok(())) => {
                        self.ended = true;
                        return None;
                    }
                    None => {
                        if let Err(e) = self.driver.drive() {
                            self.ended = true;
                            return Some(Err(e.into_io()));
                        }
                    }
                },
            }
        }
    }
}
