//! `SyncToAsync`: serve a blocking handler as an async one.

use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use amphi_core::plumbing::{take_handler_error, Crossing, TimedCrossing};
use amphi_core::{
    AsyncHandler, BlockingBody, BoxFuture, Context, Error, ErrorKind, Event, HttpScope, Message,
    Receiver, Scope, Sender, SyncHandler, SyncRequest, SyncResponse, ThreadSensitive,
};
use bytes::Bytes;

use crate::exchange::{AsyncEnd, Exchange, Out, Outcome};
use crate::pool::{BlockingPool, Slot};

/// Serves a [`SyncHandler`] as an [`AsyncHandler`]: each request runs the blocking handler on
/// tokio's blocking pool, with its body streamed in and its response streamed out.
///
/// This is asgiref's `WsgiToAsgi` without its flaws: the request body is not buffered whole
/// (the handler's [`BlockingBody`] reads chunks as `receive` delivers them, a few chunks
/// ahead at most), the response body streams back with backpressure (the producer blocks
/// while the connection is slower), and the body's cleanup always runs.
///
/// # Threads
///
/// By default each request runs on tokio's blocking pool, like
/// [`sync_to_async`](crate::sync_to_async). Two opt-in thread-sensitive modes keep a handler's
/// blocking work on one thread:
///
/// - [`thread_sensitive_per_request`](SyncToAsync::thread_sensitive_per_request): each
///   request runs on its request's own [`ThreadSensitive`] context (Django's per-request
///   `ThreadSensitiveContext`); requests still run in parallel with each other.
/// - [`thread_sensitive`](SyncToAsync::thread_sensitive): every request runs on one context
///   you give, one request at a time (for a handler built around one `!Send` resource).
///
/// In per-request mode, when the request is served from inside an `async_to_sync` call (an
/// `AsyncToSync(SyncToAsync(h))` sandwich), the handler runs back on the thread blocked in
/// that call, as asgiref does. A context given explicitly is always the one used: it may own
/// a `!Send` resource that lives on its thread only.
///
/// # Scopes
///
/// - `http`: served as described.
/// - `websocket`: the handler's [`SyncHandler::websocket`] runs on a blocking thread (denying
///   by default), see below.
/// - `lifespan`: returns at once without sending anything, which tells the server this app
///   takes no lifespan events.
///
/// # Websockets
///
/// A websocket session runs [`SyncHandler::websocket`] the way a request runs `call`: on the
/// blocking pool or the thread-sensitive context, counted against the pool, and it **holds
/// its pool slot (and its thread) for the whole session**, until the handler returns. Each
/// open sync websocket is one slot fewer for http requests: size the pool for both.
///
/// Its [`BlockingWebSocket`](amphi_core::BlockingWebSocket) talks to `receive` and `send`
/// through two bounded queues of 4 messages each: a handler that stops reading stops this
/// future reading `receive` (so the server stops reading the socket), and one that sends
/// faster than the client reads blocks in `send`. Memory per session is bounded by those 8
/// messages plus the server's own buffers.
///
/// When the handler returns, the future completes the protocol: after `Ok`, a close with
/// 1000 if it accepted and did not close, a denial (403) if it never answered; after an
/// error or a panic, a close with 1011 if it had accepted, and nothing if it had not (the
/// future returns the error, and the server answers 500). A client that closed or dropped
/// is owed nothing. Then the future returns the handler's error, if any, for the log.
///
/// The client going away (`websocket.disconnect` with 1006, or this future dropped) flips
/// the session's token (a child of the scope context's) and fails the handler's blocking
/// `recv` and `send` with `ConnectionAborted`; messages that arrived before are still
/// read first. Like any blocking call, the handler itself is not interrupted: its slot
/// comes back when it returns.
///
/// # Errors
///
/// The future returns `Err` *without sending anything* when the response has not started:
///
/// - [`ErrorKind::Saturated`]: the pool had no free slot within its queue timeout; the
///   handler did not run (a server answers 503 with `Retry-After`).
/// - [`ErrorKind::Panicked`]: the handler panicked, with the panic's message (500).
/// - [`ErrorKind::BodyTooLarge`]: a body read failed because the body passed the server's
///   limit and the handler had not started its response; the handler's own response is
///   dropped (its cleanup runs) and the server answers 413.
/// - The handler's own error, of whatever kind it has: a [`sync_fn`](amphi_core::sync_fn)
///   closure returned `Err`, or a handler answered with an `Error`'s
///   [`into_response`](amphi_core::IntoResponse::into_response) (see
///   [`plumbing::take_handler_error`](amphi_core::plumbing::take_handler_error)). The server
///   maps and logs it as any handler error.
///
/// Once the response has started, a panic or error of the body producer, or a client that is
/// gone, is returned as `Err` and the server cuts the connection.
///
/// # Cancellation
///
/// When the future is dropped (the client went away), the request's cancellation token
/// ([`SyncRequest::cancellation`], a child of the scope context's token) flips, body reads
/// fail with [`ErrorKind::Disconnected`], and body writes fail, so the producer stops and its
/// cleanup runs. The blocking call itself cannot be aborted; its pool slot comes back when
/// it returns.
///
/// A request whose future is dropped, or whose scope context's token is cancelled, *before*
/// its handler started (while it waited for a pool slot, for a blocking thread, or for a
/// thread-sensitive context's thread) never starts it: its slot comes back at once, and a
/// future still awaited returns [`ErrorKind::Cancelled`] without sending anything.
///
/// # Examples
///
/// ```
/// use amphi_core::{sync_fn, Error, SyncRequest};
/// use amphi_sync_to_async::{BlockingPool, SyncToAsync};
/// use std::io::Read;
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let upper = sync_fn(|mut req: SyncRequest| -> Result<String, Error> {
///     let mut text = String::new();
///     req.body_mut().read_to_string(&mut text)?; // a failed read: the future's `Err`
///     Ok(text.to_uppercase())
/// });
/// let app = Arc::new(SyncToAsync::new(upper).pool(BlockingPool::new(64)));
///
/// let req = http::Request::post("/").body(bytes::Bytes::from("shout")).unwrap();
/// let resp = amphi_core::testing::call(&app, req).await.unwrap();
/// assert_eq!(resp.body, "SHOUT");
/// # }
/// ```
pub struct SyncToAsync<H> {
    pub(crate) handler: Arc<H>,
    pub(crate) pool: Option<BlockingPool>,
    pub(crate) place: Place,
}

#[derive(Debug, Clone)]
pub(crate) enum Place {
    BlockingPool,
    PerRequest,
    Shared(ThreadSensitive),
}

impl<H: SyncHandler> SyncToAsync<H> {
    /// Wraps `handler`; requests are not counted against any pool until
    /// [`pool`](SyncToAsync::pool).
    pub fn new(handler: H) -> SyncToAsync<H> {
        SyncToAsync {
            handler: Arc::new(handler),
            pool: None,
            place: Place::BlockingPool,
        }
    }

    /// Runs each request on its request's own thread-sensitive context (see the type's docs).
    #[must_use]
    pub fn thread_sensitive_per_request(mut self) -> SyncToAsync<H> {
        self.place = Place::PerRequest;
        self
    }

    /// Runs every request on `context`'s thread, one request at a time (see the type's docs).
    #[must_use]
    pub fn thread_sensitive(mut self, context: ThreadSensitive) -> SyncToAsync<H> {
        self.place = Place::Shared(context);
        self
    }

    /// Counts each request against `pool`: one slot per request, held until the handler has
    /// returned and its response body is fully produced.
    #[must_use]
    pub fn pool(mut self, pool: BlockingPool) -> SyncToAsync<H> {
        self.pool = Some(pool);
        self
    }

    /// The wrapped handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }
}

impl<H> Clone for SyncToAsync<H> {
    fn clone(&self) -> Self {
        SyncToAsync {
            handler: self.handler.clone(),
            pool: self.pool.clone(),
            place: self.place.clone(),
        }
    }
}

impl<H> fmt::Debug for SyncToAsync<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncToAsync")
            .field("handler", &std::any::type_name::<H>())
            .field("pool", &self.pool)
            .field("place", &self.place)
            .finish()
    }
}

impl<H: SyncHandler> AsyncHandler for SyncToAsync<H> {
    fn call(
        &self,
        scope: Scope,
        receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'_, Result<(), Error>> {
        self.start(scope, receive, send)
    }

    fn call_owned(
        self: Arc<Self>,
        scope: Scope,
        receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'static, Result<(), Error>> {
        self.start(scope, receive, send)
    }
}

impl<H: SyncHandler> SyncToAsync<H> {
    /// Both `call`s: the future borrows nothing from `self`.
    fn start(
        &self,
        scope: Scope,
        receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'static, Result<(), Error>> {
        let (scope, websocket) = match scope {
            Scope::Http(scope) => (scope, false),
            Scope::WebSocket(scope) => (scope, true),
            // Returning without a message: this app takes no lifespan events (ASGI's rule).
            _ => return Box::pin(async { Ok(()) }),
        };
        let place = self.place.thread_for(&scope);
        let launch = Launch {
            handler: self.handler.clone(),
            pool: self.pool.clone(),
            slot: None,
            place,
            scope,
            receive,
            send,
            websocket,
        };
        match &self.pool {
            None => Box::pin(Serve::Launch(launch)),
            Some(pool) => match pool.try_acquire() {
                Some(slot) => Box::pin(Serve::Launch(Launch {
                    slot: Some(slot),
                    ..launch
                })),
                // The wait for a slot holds a timer: only the requests that wait carry it.
                None => {
                    let pool = pool.clone();
                    Box::pin(async move {
                        let context = launch.scope.context();
                        let token = context.token().clone();
                        let slot = pool.acquire(&token).await?;
                        Serve::Launch(Launch {
                            slot: Some(slot),
                            ..launch
                        })
                        .await
                    })
                }
            },
        }
    }
}

impl Place {
    /// The thread-sensitive context a request of `scope` runs on; `None`: the blocking pool.
    pub(crate) fn thread_for(&self, scope: &HttpScope) -> Option<ThreadSensitive> {
        match self {
            Place::BlockingPool => None,
            Place::PerRequest => Some(per_request(scope)),
            Place::Shared(ts) => Some(ts.clone()),
        }
    }
}

/// The thread the request's context runs on: the thread blocked in an enclosing
/// `async_to_sync`, else the request context's own.
fn per_request(scope: &HttpScope) -> ThreadSensitive {
    ThreadSensitive::lent()
        .unwrap_or_else(|| scope.context().get_or_insert_with(ThreadSensitive::new))
}

/// What one request needs to start its blocking side; the start waits for the first poll,
/// which has a waker to look at `receive` with.
struct Launch<H> {
    handler: Arc<H>,
    pool: Option<BlockingPool>,
    slot: Option<Slot>,
    place: Option<ThreadSensitive>,
    scope: HttpScope,
    receive: Receiver,
    send: Sender,
    /// A websocket session rather than an http request.
    websocket: bool,
}

impl<H: SyncHandler> Launch<H> {
    /// Starts the blocking side and returns the async side that serves it.
    fn start(self, cx: &mut TaskContext<'_>) -> Result<Serve<H>, Error> {
        if self.websocket {
            let Launch {
                handler,
                pool,
                slot,
                place,
                scope,
                receive,
                send,
                ..
            } = self;
            return Ok(Serve::WebSocket(crate::websocket::start(
                handler,
                pool.as_ref(),
                slot,
                place,
                scope,
                receive,
                send,
            )?));
        }
        let Launch {
            handler,
            pool,
            slot,
            place,
            scope,
            mut receive,
            send,
            ..
        } = self;
        let context = scope.context().child();
        let cancel = context.token().clone().drop_guard();
        let exchange = Exchange::new();
        let content_length = content_length(scope.headers());
        // Most bodies are complete by the time the handler is called (every GET's empty body,
        // a small POST that came with its head): the blocking side then gets the body in
        // hand, and neither side waits on the other for it.
        let (body, body_done) = match receive.poll_receive(cx).map(body_item) {
            Poll::Ready((None, true)) => (BlockingBody::empty(), true),
            // Not `from_bytes`, which would declare a length the request may not have declared.
            Poll::Ready((Some(Ok(bytes)), true)) => {
                (BlockingBody::from_chunks(std::iter::once(Ok(bytes))), true)
            }
            first => {
                let mut done = false;
                if let Poll::Ready((item, last)) = first {
                    exchange.push_body(item, last);
                    done = last;
                }
                let reader = exchange.clone();
                let token = context.token().clone();
                let chunks = std::iter::from_fn(move || reader.next_body(&token));
                (BlockingBody::from_chunks(chunks), done)
            }
        };
        let body = match content_length {
            Some(len) => body.with_content_length(len),
            None => body,
        };
        let scope = scope.with_context(context);
        spawn_blocking_side(
            handler,
            pool.as_ref(),
            slot,
            place,
            scope,
            body,
            exchange.clone(),
        )?;
        Ok(Serve::Drive(Drive {
            end: AsyncEnd::new(exchange, cancel),
            receive,
            send,
            body_done,
            pending: None,
            then: None,
            finished: false,
        }))
    }
}

/// Starts the blocking side of one request: the handler runs with `scope` and `body` on
/// tokio's blocking pool (or on `place`'s thread), holding `slot` until its response is fully
/// produced, and reports through `exchange`.
pub(crate) fn spawn_blocking_side<H: SyncHandler>(
    handler: Arc<H>,
    pool: Option<&BlockingPool>,
    slot: Option<Slot>,
    place: Option<ThreadSensitive>,
    scope: HttpScope,
    body: BlockingBody,
    exchange: Arc<Exchange>,
) -> Result<(), Error> {
    let context = scope.context().clone();
    let report = exchange.clone();
    spawn_blocking_work(pool, slot, place, context, report, move || {
        run_handler(&*handler, scope, body, &exchange)
    })
}

/// Where the blocking side of a request reports how it ended: the http exchange, or a
/// websocket session.
pub(crate) trait Report: Send + Sync + 'static {
    type Outcome: Send + 'static;

    /// The blocking side ended with `outcome`.
    fn finish(&self, outcome: Result<Self::Outcome, Error>);

    /// The blocking side was dropped unrun.
    fn abandon(&self);
}

impl Report for Exchange {
    type Outcome = Outcome;

    fn finish(&self, outcome: Result<Outcome, Error>) {
        Exchange::finish(self, outcome);
    }

    fn abandon(&self) {
        Exchange::abandon(self);
    }
}

/// Starts `work`, a request's blocking side, on tokio's blocking pool (or on `place`'s
/// thread) in `context`, holding `slot` until it returns, and reports its outcome to
/// `report`.
pub(crate) fn spawn_blocking_work<R: Report>(
    pool: Option<&BlockingPool>,
    slot: Option<Slot>,
    place: Option<ThreadSensitive>,
    context: Context,
    report: Arc<R>,
    work: impl FnOnce() -> Result<R::Outcome, Error> + Send + 'static,
) -> Result<(), Error> {
    let span = tracing::Span::current();
    // Made out here and moved in: if the closure is dropped unrun (runtime shutdown, or a
    // lent thread-sensitive context that ended), its drop still tells the async side.
    let done = Abandon(Some(report));
    let blocking = move || {
        // A request whose caller went away while it waited (in the lane's queue, on a
        // thread-sensitive thread, in tokio's queue, or through a runtime shutdown) never
        // starts: dropping the async side flips the call's token, and so does a cancelled
        // request. One look at the token, and the slot goes back at once.
        if context.token().is_cancelled() {
            drop(slot);
            done.finish(Err(not_started()));
            return;
        }
        let outcome = {
            let _slot = slot;
            let _context = context.enter();
            let _span = span.enter();
            // The request's observer (a server with metrics), if any, hears how long the
            // handler held its blocking thread, its streamed body (or websocket) included.
            let _timed = TimedCrossing::start(&context, Crossing::SyncHandler);
            work()
        };
        // The slot is back before the caller hears the outcome: a caller that saw its
        // response complete never counts the call as still in flight.
        done.finish(outcome);
    };
    match (place, pool) {
        (Some(ts), _) => ts.submit(blocking)?,
        (None, Some(pool)) => pool.spawn(Box::new(blocking)),
        // The join handle is not needed: the outcome comes back through the exchange, and
        // the closure reports even a drop-before-run there.
        (None, None) => drop(tokio::task::spawn_blocking(blocking)),
    }
    Ok(())
}

fn not_started() -> Error {
    Error::new(ErrorKind::Cancelled)
        .with_message("the request was cancelled before its blocking handler started")
}

/// The future of one request: starts the blocking side on its first poll, then drives it.
/// Written by hand so that the one allocation a request makes for it stays small (an `async
/// fn` lays out its arguments and the locals they move into side by side).
enum Serve<H> {
    Launch(Launch<H>),
    Drive(Drive),
    WebSocket(crate::websocket::Session),
    Done,
}

impl<H: SyncHandler> Future for Serve<H> {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Serve::Launch(_) = this {
            let Serve::Launch(launch) = std::mem::replace(this, Serve::Done) else {
                unreachable!("matched Launch above")
            };
            *this = launch.start(cx)?;
        }
        match this {
            Serve::Drive(drive) => Pin::new(drive).poll(cx),
            Serve::WebSocket(session) => Pin::new(session).poll(cx),
            _ => panic!("the request's future was polled after it completed"),
        }
    }
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Runs on the blocking thread: calls the handler and produces its response.
fn run_handler<H: SyncHandler + ?Sized>(
    handler: &H,
    scope: HttpScope,
    body: BlockingBody,
    exchange: &Arc<Exchange>,
) -> Result<Outcome, Error> {
    let request = SyncRequest::from_scope(scope, body);
    let mut response = catch_unwind(AssertUnwindSafe(|| handler.call(request)))
        .map_err(|p| Error::from_panic(&*p))?;
    // A handler that failed (a `sync_fn` closure's `Err`) answered with its error inside the
    // response: it becomes the call's `Err`, which the server maps and logs. Checked after the
    // body limit: the limit's 413 stands whatever the handler made of its failed read. On a
    // response without one this is a look at empty extensions.
    let failure = take_handler_error(&mut response);
    if exchange.saw_too_large() {
        // The handler's answer to a body it could not read whole is replaced by the server's
        // 413.
        drop_quietly(response);
        return Err(Error::new(ErrorKind::BodyTooLarge)
            .with_message("the request body passed the limit while the handler read it"));
    }
    if let Some(e) = failure {
        drop_quietly(response);
        return Err(e);
    }
    let (parts, body) = response.into_parts();
    match body.try_into_bytes() {
        Ok(bytes) => Ok(Outcome::Full(parts, bytes)),
        Err(body) => {
            exchange.push_out(Out::Head(parts)).map_err(Error::from)?;
            let written = catch_unwind(AssertUnwindSafe(|| {
                body.write_to(&mut |chunk| exchange.push_out(Out::Chunk(chunk)))
            }));
            match written {
                Ok(Ok(())) => Ok(Outcome::Streamed),
                Ok(Err(e)) => Err(Error::from(e)),
                Err(p) => Err(Error::from_panic(&*p)),
            }
        }
    }
}

/// Drops a response the handler's failure replaces; that runs its body's cleanup, which may
/// panic too.
fn drop_quietly(response: SyncResponse) {
    if catch_unwind(AssertUnwindSafe(move || drop(response))).is_err() {
        tracing::error!("a sync response body's cleanup panicked while being dropped");
    }
}

/// Reports the blocking side's end, even when the closure is dropped unrun.
struct Abandon<R: Report>(Option<Arc<R>>);

impl<R: Report> Abandon<R> {
    fn finish(mut self, outcome: Result<R::Outcome, Error>) {
        if let Some(x) = self.0.take() {
            x.finish(outcome);
        }
    }
}

impl<R: Report> Drop for Abandon<R> {
    fn drop(&mut self) {
        if let Some(x) = self.0.take() {
            x.abandon();
        }
    }
}

/// The async side of one request: pumps `receive` into the body queue and the response
/// queue into `send`, both at once (a handler may stream its response while it reads).
struct Drive {
    end: AsyncEnd,
    receive: Receiver,
    send: Sender,
    body_done: bool,
    /// A message waiting for the connection to take it.
    pending: Option<Message>,
    /// The message to send after `pending`, for a full response.
    then: Option<Message>,
    /// The blocking side's outcome has been taken.
    finished: bool,
}

impl Drive {
    fn pump_body(&mut self, cx: &mut TaskContext<'_>) {
        while !self.body_done && self.end.exchange.body_has_room(cx.waker()) {
            let Poll::Ready(event) = self.receive.poll_receive(cx) else {
                return;
            };
            let (item, last) = body_item(event);
            self.body_done = last;
            self.end.exchange.push_body(item, last);
        }
    }

    fn poll_drive(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        self.pump_body(cx);
        loop {
            if self.pending.is_some() {
                std::task::ready!(self.send.poll_send(cx, &mut self.pending))?;
                self.pending = self.then.take();
                continue;
            }
            if self.finished {
                return Poll::Ready(Ok(()));
            }
            match self.end.exchange.take_out(cx.waker()) {
                None => return Poll::Pending,
                Some(Ok(Out::Head(parts))) => {
                    self.pending = Some(Message::start(parts.status, parts.headers));
                }
                Some(Ok(Out::Chunk(chunk))) => self.pending = Some(Message::body(chunk, true)),
                Some(Err(outcome)) => {
                    self.finished = true;
                    match outcome? {
                        Outcome::Full(parts, bytes) => {
                            self.pending = Some(Message::start(parts.status, parts.headers));
                            self.then = Some(Message::body(bytes, false));
                        }
                        Outcome::Streamed => {
                            self.pending = Some(Message::body(Bytes::new(), false))
                        }
                    }
                }
            }
        }
    }
}

/// What a `receive` event means for the blocking body: a chunk or error to hand over (`None`
/// for an empty chunk), and whether the body ends with it.
fn body_item(event: Result<Event, Error>) -> (Option<Result<Bytes, Error>>, bool) {
    match event {
        Ok(Event::Request { body, more_body }) => {
            ((!body.is_empty()).then_some(Ok(body)), !more_body)
        }
        Ok(Event::Disconnect) => (
            Some(Err(Error::new(ErrorKind::Disconnected)
                .with_message("client went away before the body ended"))),
            true,
        ),
        Ok(other) => (
            Some(Err(Error::protocol(format!(
                "{} received while reading an http body",
                other.type_name()
            )))),
            true,
        ),
        Err(e) => (Some(Err(e)), true),
    }
}

impl Future for Drive {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let result = std::task::ready!(this.poll_drive(cx));
        if this.finished {
            // The blocking side is done with the token: it must not flip when we are dropped.
            this.end.finished();
        }
        Poll::Ready(result)
    }
}
