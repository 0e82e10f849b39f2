//! Test doubles for the async protocol: drive a handler without a socket or a runtime.
//!
//! [`Communicator`] plays the server's part for one scope, the way asgiref's
//! `ApplicationCommunicator` does: the test scripts the events `receive` yields and reads the
//! messages the handler sends. [`call`] is the one-line version for a whole HTTP exchange.
//! [`WebSocketCommunicator`] plays a websocket client and its server (asgiref's
//! `WebsocketCommunicator`): connect, send text or binary, read what the handler sends, see
//! it accept, deny or close, close or drop the connection.
//! Nothing here spawns: the handler runs when the test awaits, on the test's own executor.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, Waker};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::plumbing::{EventSource, MessageSink};
use crate::{
    AsyncHandler, BoxFuture, Error, ErrorKind, Event, HttpScope, Message, Receiver, RequestInfo,
    Scope, Sender, WebSocketData,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Test doubles: a panic in a test while holding the lock leaves plain queues behind.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A [`MessageSink`] that keeps every message, for tests of [`Sender`].
#[derive(Debug, Clone)]
pub struct CollectSink {
    sent: Arc<Mutex<Vec<Message>>>,
}

impl CollectSink {
    /// A sink and the shared list its messages land in.
    pub fn new() -> (CollectSink, Arc<Mutex<Vec<Message>>>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        (CollectSink { sent: sent.clone() }, sent)
    }
}

impl MessageSink for CollectSink {
    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(&mut self, message: Message) -> Result<(), Error> {
        lock(&self.sent).push(message);
        Ok(())
    }
}

struct Inbox {
    queue: VecDeque<Event>,
    closed: bool,
    /// What `receive` yields forever once the input is closed and drained.
    on_close: Event,
    waker: Option<Waker>,
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox {
            queue: VecDeque::new(),
            closed: false,
            on_close: Event::Disconnect,
            waker: None,
        }
    }
}

struct InboxSource(Arc<Mutex<Inbox>>);

impl EventSource for InboxSource {
    fn poll_event(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Event, Error>> {
        let mut inbox = lock(&self.0);
        if let Some(e) = inbox.queue.pop_front() {
            return Poll::Ready(Ok(e));
        }
        if inbox.closed {
            return Poll::Ready(Ok(inbox.on_close.clone()));
        }
        inbox.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<Message>,
    capacity: Option<usize>,
    disconnected: bool,
    waker: Option<Waker>,
}

struct OutboxSink(Arc<Mutex<Outbox>>);

impl MessageSink for OutboxSink {
    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        let mut out = lock(&self.0);
        if out.disconnected {
            return Poll::Ready(Err(Error::new(ErrorKind::Disconnected)));
        }
        if out.capacity.is_some_and(|c| out.queue.len() >= c) {
            out.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(&mut self, message: Message) -> Result<(), Error> {
        lock(&self.0).queue.push_back(message);
        Ok(())
    }
}

/// Plays the server for one scope of an async handler; see the [module docs](self).
///
/// # Examples
///
/// ```
/// use amphi_core::testing::Communicator;
/// use amphi_core::{async_fn, AsyncRequest, Event, Message};
/// use std::sync::Arc;
///
/// let echo = Arc::new(async_fn(|req: AsyncRequest| async move { req.into_body().to_bytes().await }));
/// # futures_executor::block_on(async {
/// let mut comm = Communicator::http(echo, http::Request::post("/").body(()).unwrap());
/// comm.send_input(Event::Request { body: "a".into(), more_body: true });
/// assert!(comm.try_receive_output().is_none(), "still waiting for the body");
/// comm.send_input(Event::Request { body: "b".into(), more_body: false });
/// let Some(Message::ResponseStart { status, .. }) = comm.receive_output().await else { panic!() };
/// assert_eq!(status, 200);
/// assert_eq!(comm.receive_output().await, Some(Message::body("ab", false)));
/// comm.wait().await.unwrap();
/// # });
/// ```
pub struct Communicator {
    inbox: Arc<Mutex<Inbox>>,
    outbox: Arc<Mutex<Outbox>>,
    app: Option<BoxFuture<'static, Result<(), Error>>>,
    result: Option<Result<(), Error>>,
}

impl Communicator {
    /// Starts `handler` on `scope` (nothing runs until the test awaits an output).
    pub fn new<H: AsyncHandler + ?Sized>(handler: Arc<H>, scope: Scope) -> Communicator {
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let outbox = Arc::new(Mutex::new(Outbox::default()));
        let receive = Receiver::new(InboxSource(inbox.clone()));
        let send = Sender::for_scope(&scope, OutboxSink(outbox.clone()));
        let app = H::call_owned(handler, scope, receive, send);
        Communicator {
            inbox,
            outbox,
            app: Some(app),
            result: None,
        }
    }

    /// Starts `handler` on an http scope for `head`, mounted at the root.
    pub fn http<H: AsyncHandler + ?Sized>(
        handler: Arc<H>,
        head: http::Request<()>,
    ) -> Communicator {
        let (parts, ()) = head.into_parts();
        Communicator::new(
            handler,
            Scope::Http(HttpScope::new(parts, RequestInfo::new())),
        )
    }

    /// Holds at most `capacity` unread messages: past that the handler's `send` waits, as it
    /// would on a slow client.
    #[must_use]
    pub fn output_capacity(self, capacity: usize) -> Communicator {
        lock(&self.outbox).capacity = Some(capacity);
        self
    }

    /// Queues an event for `receive`.
    pub fn send_input(&self, event: Event) {
        let mut inbox = lock(&self.inbox);
        inbox.queue.push_back(event);
        if let Some(w) = inbox.waker.take() {
            w.wake();
        }
    }

    /// How many queued events `receive` has not taken yet: a handler that stops reading
    /// leaves them here.
    pub fn pending_input(&self) -> usize {
        lock(&self.inbox).queue.len()
    }

    /// After the queued events, `receive` yields [`Event::Disconnect`] forever (for a
    /// communicator made by [`WebSocketCommunicator`], `websocket.disconnect` with 1006).
    pub fn close_input(&self) {
        let mut inbox = lock(&self.inbox);
        inbox.closed = true;
        if let Some(w) = inbox.waker.take() {
            w.wake();
        }
    }

    /// Makes every further `send` fail with [`ErrorKind::Disconnected`], as a server does once
    /// the client is gone, and closes the input.
    pub fn disconnect(&self) {
        lock(&self.outbox).disconnected = true;
        self.close_input();
    }

    fn poll_output(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<Message>> {
        loop {
            {
                let mut out = lock(&self.outbox);
                if let Some(m) = out.queue.pop_front() {
                    if let Some(w) = out.waker.take() {
                        w.wake();
                    }
                    return Poll::Ready(Some(m));
                }
            }
            let Some(app) = self.app.as_mut() else {
                return Poll::Ready(None);
            };
            match app.as_mut().poll(cx) {
                Poll::Ready(result) => {
                    self.result = Some(result);
                    self.app = None;
                }
                Poll::Pending => {
                    let out = lock(&self.outbox);
                    if out.queue.is_empty() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    /// Runs the handler until it sends a message, and returns it; `None` once the handler has
    /// finished and every message has been read. Waits forever if the handler waits for input
    /// that never comes: check with [`try_receive_output`](Self::try_receive_output) first.
    pub async fn receive_output(&mut self) -> Option<Message> {
        poll_fn(|cx| self.poll_output(cx)).await
    }

    /// Runs the handler as far as it goes without waiting, and returns its next message if
    /// there is one.
    pub fn try_receive_output(&mut self) -> Option<Message> {
        match self.poll_output(&mut TaskContext::from_waker(Waker::noop())) {
            Poll::Ready(m) => m,
            Poll::Pending => None,
        }
    }

    /// Runs the handler to completion (keeping its messages for later reads) and returns what
    /// it returned.
    ///
    /// # Errors
    ///
    /// The handler's error; a later call returns a copy of its kind and message, without the
    /// source.
    pub async fn wait(&mut self) -> Result<(), Error> {
        if let Some(app) = self.app.as_mut() {
            let result = app.await;
            self.result = Some(result);
            self.app = None;
        }
        match self.result.take().expect("the handler has finished") {
            Ok(()) => {
                self.result = Some(Ok(()));
                Ok(())
            }
            Err(e) => {
                // `Error` is not `Clone`: the first caller gets the handler's error as it was
                // (source included), later callers a copy of its kind and message.
                let mut copy = Error::new(e.kind());
                if let Some(m) = e.message() {
                    copy = copy.with_message(m);
                }
                self.result = Some(Err(copy));
                Err(e)
            }
        }
    }

    /// Whether the handler has returned.
    pub fn is_finished(&self) -> bool {
        self.app.is_none()
    }
}

impl fmt::Debug for Communicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Communicator")
            .field("finished", &self.is_finished())
            .finish_non_exhaustive()
    }
}

/// A whole response as [`call`] collected it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TestResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body, every chunk joined.
    pub body: Bytes,
    /// How many `http.response.body` messages carried it.
    pub body_messages: usize,
    /// Trailers, if the handler sent any.
    pub trailers: Option<HeaderMap>,
}

/// Sends `request` (its body as one `http.request` event) to `handler` and collects the
/// response.
///
/// # Errors
///
/// The handler's error, or [`ErrorKind::Protocol`] if it finished without a complete response.
pub async fn call<H: AsyncHandler + ?Sized>(
    handler: &Arc<H>,
    request: http::Request<Bytes>,
) -> Result<TestResponse, Error> {
    let (parts, body) = request.into_parts();
    call_chunked(handler, http::Request::from_parts(parts, ()), vec![body]).await
}

/// Like [`call`], with the request body sent as one `http.request` event per chunk.
///
/// # Errors
///
/// As for [`call`].
pub async fn call_chunked<H: AsyncHandler + ?Sized>(
    handler: &Arc<H>,
    head: http::Request<()>,
    chunks: Vec<Bytes>,
) -> Result<TestResponse, Error> {
    let mut comm = Communicator::http(handler.clone(), head);
    let n = chunks.len();
    for (i, body) in chunks.into_iter().enumerate() {
        comm.send_input(Event::Request {
            body,
            more_body: i + 1 < n,
        });
    }
    if n == 0 {
        comm.send_input(Event::Request {
            body: Bytes::new(),
            more_body: false,
        });
    }
    comm.close_input();
    let mut start = None;
    let mut body = Vec::new();
    let mut body_messages = 0;
    let mut trailers: Option<HeaderMap> = None;
    while let Some(m) = comm.receive_output().await {
        match m {
            Message::ResponseStart {
                status, headers, ..
            } => start = Some((status, headers)),
            Message::ResponseBody { body: b, .. } => {
                body_messages += 1;
                body.extend_from_slice(&b);
            }
            Message::ResponseTrailers { headers, .. } => {
                trailers.get_or_insert_with(HeaderMap::new).extend(headers);
            }
            other => {
                return Err(Error::protocol(format!(
                    "{} in an http response",
                    other.type_name()
                )))
            }
        }
    }
    comm.wait().await?;
    let (status, headers) =
        start.ok_or_else(|| Error::protocol("handler finished without http.response.start"))?;
    Ok(TestResponse {
        status,
        headers,
        body: body.into(),
        body_messages,
        trailers,
    })
}

/// How a websocket handler answered the handshake; see [`WebSocketCommunicator::connect`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Handshake {
    /// `websocket.accept`.
    Accepted {
        /// The subprotocol it chose.
        subprotocol: Option<String>,
        /// Its extra headers.
        headers: HeaderMap,
    },
    /// Denied: by `websocket.close` before accept (a 403 with no body), or by a response of
    /// its own (`websocket.http.response.*`).
    Denied(TestResponse),
}

/// Plays a websocket client, and the server between it and a handler, for one session; see
/// the [module docs](self).
///
/// It queues `websocket.connect` when made; [`connect`](Self::connect) runs the handler until
/// it answers the handshake. Then [`send`](Self::send) queues a `websocket.receive`,
/// [`receive`](Self::receive) returns the handler's next message, [`close`](Self::close)
/// delivers the client's close (`websocket.disconnect` with its code), and
/// [`drop_connection`](Self::drop_connection) a dropped connection (1006, and every later
/// `send` of the handler fails). Dropping the communicator drops the handler's future, as a
/// server does when it gives up on a connection.
///
/// # Examples
///
/// ```
/// use amphi_core::testing::{Handshake, WebSocketCommunicator};
/// use amphi_core::{websocket_fn, Message, WebSocketRequest};
/// use std::sync::Arc;
///
/// let handler = Arc::new(websocket_fn(|req: WebSocketRequest| async move {
///     let mut ws = req.accept().await?;
///     while let Some(data) = ws.recv().await? {
///         ws.send(data).await?;
///     }
///     // What the client's close said:
///     assert_eq!(ws.close_frame().unwrap().code(), 4000);
///     Ok(())
/// }));
/// # futures_executor::block_on(async {
/// let mut client = WebSocketCommunicator::new(handler, http::Request::get("/ws").body(()).unwrap());
/// assert!(matches!(client.connect().await.unwrap(), Handshake::Accepted { .. }));
/// client.send("ping");
/// assert_eq!(client.receive().await, Some(Message::WebSocketSend("ping".into())));
/// client.close(4000, "done");
/// client.wait().await.unwrap();
/// assert_eq!(client.receive().await, None);
/// # });
/// ```
pub struct WebSocketCommunicator {
    comm: Communicator,
}

impl WebSocketCommunicator {
    /// Starts `handler` on a websocket scope for `head`, mounted at the root, with
    /// `websocket.connect` queued (nothing runs until the test awaits).
    pub fn new<H: AsyncHandler + ?Sized>(
        handler: Arc<H>,
        head: http::Request<()>,
    ) -> WebSocketCommunicator {
        let (parts, ()) = head.into_parts();
        WebSocketCommunicator::from_scope(handler, HttpScope::new(parts, RequestInfo::new()))
    }

    /// Starts `handler` on a websocket scope of your making (a mount, a context, state).
    pub fn from_scope<H: AsyncHandler + ?Sized>(
        handler: Arc<H>,
        scope: HttpScope,
    ) -> WebSocketCommunicator {
        let comm = Communicator::new(handler, Scope::WebSocket(scope));
        {
            let mut inbox = lock(&comm.inbox);
            // A source whose input has ended reports a dropped connection the websocket way.
            inbox.on_close = Event::WebSocketDisconnect {
                code: 1006,
                reason: String::new(),
            };
            inbox.queue.push_back(Event::WebSocketConnect);
        }
        WebSocketCommunicator { comm }
    }

    /// Holds at most `capacity` unread messages: past that the handler's `send` waits, as it
    /// would on a slow client.
    #[must_use]
    pub fn output_capacity(self, capacity: usize) -> WebSocketCommunicator {
        WebSocketCommunicator {
            comm: self.comm.output_capacity(capacity),
        }
    }

    /// Runs the handler until it answers the handshake. A handler that returns `Ok` without
    /// answering is [`Denied`](Handshake::Denied) with a 403, as a server would answer.
    ///
    /// # Errors
    ///
    /// The handler's error if it finished without answering; [`ErrorKind::Protocol`] if it
    /// answered with something other than an accept or a denial, or stopped in the middle of
    /// a denial response.
    pub async fn connect(&mut self) -> Result<Handshake, Error> {
        match self.comm.receive_output().await {
            Some(Message::WebSocketAccept {
                subprotocol,
                headers,
            }) => Ok(Handshake::Accepted {
                subprotocol,
                headers,
            }),
            Some(Message::WebSocketClose { .. }) => Ok(Handshake::Denied(TestResponse {
                status: StatusCode::FORBIDDEN,
                headers: HeaderMap::new(),
                body: Bytes::new(),
                body_messages: 0,
                trailers: None,
            })),
            Some(Message::WebSocketResponseStart { status, headers }) => {
                let mut body = Vec::new();
                let mut body_messages = 0;
                loop {
                    match self.comm.receive_output().await {
                        Some(Message::WebSocketResponseBody { body: b, more_body }) => {
                            body_messages += 1;
                            body.extend_from_slice(&b);
                            if !more_body {
                                break;
                            }
                        }
                        Some(other) => {
                            return Err(Error::protocol(format!(
                                "{} in a websocket denial response",
                                other.type_name()
                            )))
                        }
                        None => {
                            self.comm.wait().await?;
                            return Err(Error::protocol(
                                "handler finished in the middle of its denial response",
                            ));
                        }
                    }
                }
                Ok(Handshake::Denied(TestResponse {
                    status,
                    headers,
                    body: body.into(),
                    body_messages,
                    trailers: None,
                }))
            }
            Some(other) => Err(Error::protocol(format!(
                "{} sent to answer a websocket handshake",
                other.type_name()
            ))),
            // A handler that returns `Ok` without answering has declined: a server denies
            // the handshake with a 403, as for a close before accept.
            None => {
                self.comm.wait().await?;
                Ok(Handshake::Denied(TestResponse {
                    status: StatusCode::FORBIDDEN,
                    headers: HeaderMap::new(),
                    body: Bytes::new(),
                    body_messages: 0,
                    trailers: None,
                }))
            }
        }
    }

    /// Sends a message from the client: a `String` or `&str` as text, `Bytes` or `Vec<u8>`
    /// as binary.
    pub fn send(&self, data: impl Into<WebSocketData>) {
        self.comm.send_input(Event::WebSocketReceive(data.into()));
    }

    /// Queues any event for `receive` (for tests of the raw protocol).
    pub fn send_input(&self, event: Event) {
        self.comm.send_input(event);
    }

    /// The client closes the websocket with `code` (1005: its close frame had none) and
    /// `reason`: the handler's `receive` yields `websocket.disconnect` with them, after the
    /// messages queued before.
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        self.comm.send_input(Event::WebSocketDisconnect {
            code,
            reason: reason.into(),
        });
    }

    /// The connection drops: after the queued messages the handler's `receive` yields
    /// `websocket.disconnect` with 1006, and every further `send` fails with
    /// [`ErrorKind::Disconnected`].
    pub fn drop_connection(&self) {
        self.comm.disconnect();
    }

    /// Runs the handler until it sends a message, and returns it; `None` once the handler has
    /// finished and every message has been read. Waits forever if the handler waits for input
    /// that never comes: check with [`try_receive`](Self::try_receive) first.
    pub async fn receive(&mut self) -> Option<Message> {
        self.comm.receive_output().await
    }

    /// Runs the handler as far as it goes without waiting, and returns its next message if
    /// there is one.
    pub fn try_receive(&mut self) -> Option<Message> {
        self.comm.try_receive_output()
    }

    /// How many client messages (and other events) the handler has not taken yet.
    pub fn pending_input(&self) -> usize {
        self.comm.pending_input()
    }

    /// Runs the handler to completion (keeping its messages for later reads) and returns what
    /// it returned.
    ///
    /// # Errors
    ///
    /// As for [`Communicator::wait`].
    pub async fn wait(&mut self) -> Result<(), Error> {
        self.comm.wait().await
    }

    /// Whether the handler has returned.
    pub fn is_finished(&self) -> bool {
        self.comm.is_finished()
    }
}

impl fmt::Debug for WebSocketCommunicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketCommunicator")
            .field("finished", &self.is_finished())
            .finish_non_exhaustive()
    }
}
