//! Test doubles for the async protocol: drive a handler without a socket or a runtime.
//!
//! [`Communicator`] plays the server's part for one scope, the way asgiref's
//! `ApplicationCommunicator` does: the test scripts the events `receive` yields and reads the
//! messages the handler sends. [`call`] is the one-line version for a whole HTTP exchange.
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
    Scope, Sender,
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

#[derive(Default)]
struct Inbox {
    queue: VecDeque<Event>,
    closed: bool,
    waker: Option<Waker>,
}

struct InboxSource(Arc<Mutex<Inbox>>);

impl EventSource for InboxSource {
    fn poll_event(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Event, Error>> {
        let mut inbox = lock(&self.0);
        if let Some(e) = inbox.queue.pop_front() {
            return Poll::Ready(Ok(e));
        }
        if inbox.closed {
            return Poll::Ready(Ok(Event::Disconnect));
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

    /// After the queued events, `receive` yields [`Event::Disconnect`] forever.
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
