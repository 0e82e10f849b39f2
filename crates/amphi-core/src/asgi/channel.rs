//! `receive` and `send`: the two ends an async handler talks through.

use std::fmt;
use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use crate::{Error, ErrorKind, Event, Message, Scope};

/// Where a [`Receiver`] gets its events: implemented by servers, adapters and test doubles,
/// not by handlers.
///
/// After the last event of a request body, or once the connection is gone, a source should
/// keep yielding [`Event::Disconnect`] for http scopes (ASGI's rule), once the response is
/// done or the client has left.
pub trait EventSource: Send + 'static {
    /// Polls for the next event.
    fn poll_event(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Event, Error>>;
}

/// Where a [`Sender`] puts its messages: implemented by servers, adapters and test doubles,
/// not by handlers. Messages reach it already checked against the protocol.
pub trait MessageSink: Send + 'static {
    /// Ready when the sink can take a message; pending applies backpressure. Fails with
    /// [`ErrorKind::Disconnected`] once the client is gone.
    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>>;

    /// Takes a message; called only after `poll_ready` returned ready.
    fn start_send(&mut self, message: Message) -> Result<(), Error>;
}

/// An [`EventSource`] polled through a shared reference: for a source that lives in an
/// object its owner shares with the [`Receiver`] (and perhaps the [`Sender`]), so that one
/// allocation serves the whole exchange. See [`Receiver::shared`].
pub trait SharedEventSource: Send + Sync + 'static {
    /// Polls for the next event; as [`EventSource::poll_event`].
    fn poll_event(&self, cx: &mut TaskContext<'_>) -> Poll<Result<Event, Error>>;

    /// Called when a [`Receiver`] built over this source is dropped: nothing will read
    /// through it again, so whatever it reads from (a request body, say) can be let go now
    /// rather than when the last owner drops. Build one receiver per source: each one's drop
    /// calls this. Does nothing unless implemented.
    fn release(&self) {}
}

/// A [`MessageSink`] used through a shared reference: for a sink that lives in an object its
/// owner shares with the [`Sender`]. See [`Sender::shared_http`].
pub trait SharedMessageSink: Send + Sync + 'static {
    /// As [`MessageSink::poll_ready`].
    fn poll_ready(&self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>>;

    /// As [`MessageSink::start_send`].
    fn start_send(&self, message: Message) -> Result<(), Error>;
}

/// Where a [`Receiver`] reads from: a source of its own, boxed, or one shared with its owner.
enum Source {
    Owned(Box<dyn EventSource>),
    Shared(Arc<dyn SharedEventSource>),
}

/// Where a [`Sender`] writes to: a sink of its own, boxed, or one shared with its owner.
enum Sink {
    Owned(Box<dyn MessageSink>),
    Shared(Arc<dyn SharedMessageSink>),
}

impl Sink {
    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        match self {
            Sink::Owned(s) => s.poll_ready(cx),
            Sink::Shared(s) => s.poll_ready(cx),
        }
    }

    fn start_send(&mut self, message: Message) -> Result<(), Error> {
        match self {
            Sink::Owned(s) => s.start_send(message),
            Sink::Shared(s) => s.start_send(message),
        }
    }
}

/// The `receive` end of an async handler: yields [`Event`]s.
///
/// # Cancellation
///
/// `receive` is cancel-safe: dropping its future loses no event.
pub struct Receiver {
    source: Source,
}

impl Receiver {
    /// A receiver pulling from `source` (boxed: one allocation).
    pub fn new(source: impl EventSource) -> Receiver {
        Receiver {
            source: Source::Owned(Box::new(source)),
        }
    }

    /// A receiver pulling from a source its owner shares: no allocation of its own. A server
    /// keeps a request's body, its response slot and their state in one `Arc` this way.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::task::{Context, Poll};
    /// use amphi_core::plumbing::SharedEventSource;
    /// use amphi_core::{Error, Event, Receiver};
    ///
    /// struct Empty;
    /// impl SharedEventSource for Empty {
    ///     fn poll_event(&self, _cx: &mut Context<'_>) -> Poll<Result<Event, Error>> {
    ///         Poll::Ready(Ok(Event::Disconnect))
    ///     }
    /// }
    ///
    /// let shared = Arc::new(Empty);
    /// let mut receive = Receiver::shared(shared.clone());
    /// # futures_executor::block_on(async {
    /// assert!(matches!(receive.receive().await, Ok(Event::Disconnect)));
    /// # });
    /// ```
    pub fn shared<S: SharedEventSource>(source: Arc<S>) -> Receiver {
        Receiver {
            source: Source::Shared(source),
        }
    }

    /// Waits for the next event.
    ///
    /// # Errors
    ///
    /// When the source fails; a client that goes away is usually an [`Event::Disconnect`]
    /// rather than an error.
    pub async fn receive(&mut self) -> Result<Event, Error> {
        poll_fn(|cx| self.poll_receive(cx)).await
    }

    /// Polls for the next event.
    pub fn poll_receive(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Event, Error>> {
        match &mut self.source {
            Source::Owned(s) => s.poll_event(cx),
            Source::Shared(s) => s.poll_event(cx),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Source::Shared(s) = &self.source {
            s.release();
        }
    }
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    HttpIdle,
    HttpBody {
        trailers: bool,
    },
    HttpTrailers,
    WsConnecting,
    WsOpen,
    /// A denial response started (`websocket.http.response.start`): only its body may follow.
    WsDenying,
    LifespanStarting,
    LifespanRunning,
    Done,
}

/// The `send` end of an async handler: takes [`Message`]s and checks them against the
/// protocol of the scope before they reach the connection.
///
/// # Errors
///
/// Misuse is an error of kind [`ErrorKind::Protocol`] returned from [`send`](Sender::send),
/// never a panic: a body before the start, a second start, trailers that were not announced,
/// anything after the end, a message of another scope (a websocket message in an http scope,
/// say), and a lifespan message out of turn. For websockets: a send before accept, a second
/// accept, a denial response (`websocket.http.response.*`) after accept or anything but its
/// body after its start, and a close after accept with a code a server may not send or a
/// reason over 123 bytes (a close *before* accept is a 403 whatever its code). The message is
/// not sent and the state does not change, so a handler may recover. A client that went away
/// is [`ErrorKind::Disconnected`].
///
/// # Examples
///
/// ```
/// use amphi_core::{Message, Sender, testing::CollectSink};
/// use http::{HeaderMap, StatusCode};
///
/// # futures_executor::block_on(async {
/// let (sink, sent) = CollectSink::new();
/// let mut send = Sender::http(sink);
/// let err = send.send(Message::body("too early", false)).await.unwrap_err();
/// assert!(err.is_protocol());
/// send.send(Message::start(StatusCode::OK, HeaderMap::new())).await.unwrap();
/// send.send(Message::body("hi", false)).await.unwrap();
/// assert!(send.send(Message::body("late", false)).await.unwrap_err().is_protocol());
/// assert_eq!(sent.lock().unwrap().len(), 2);
/// # });
/// ```
pub struct Sender {
    sink: Sink,
    state: State,
}

impl Sender {
    /// A sender for an http scope.
    pub fn http(sink: impl MessageSink) -> Sender {
        Sender::with_state(sink, State::HttpIdle)
    }

    /// A sender for a websocket scope.
    pub fn websocket(sink: impl MessageSink) -> Sender {
        Sender::with_state(sink, State::WsConnecting)
    }

    /// A sender for a lifespan scope.
    pub fn lifespan(sink: impl MessageSink) -> Sender {
        Sender::with_state(sink, State::LifespanStarting)
    }

    /// A sender for whatever kind `scope` is.
    pub fn for_scope(scope: &Scope, sink: impl MessageSink) -> Sender {
        match scope {
            Scope::Http(_) => Sender::http(sink),
            Scope::WebSocket(_) => Sender::websocket(sink),
            Scope::Lifespan(_) => Sender::lifespan(sink),
        }
    }

    /// A sender for an http scope writing to a sink its owner shares: no allocation of its
    /// own (see [`Receiver::shared`]).
    pub fn shared_http<S: SharedMessageSink>(sink: Arc<S>) -> Sender {
        Sender {
            sink: Sink::Shared(sink),
            state: State::HttpIdle,
        }
    }

    /// A sender for a websocket scope writing to a sink its owner shares: no allocation of
    /// its own (see [`Receiver::shared`]). One object can be both ends of a session: a
    /// server's per-socket state, or an adapter's queues.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::task::{Context, Poll};
    /// use amphi_core::plumbing::SharedMessageSink;
    /// use amphi_core::{Error, Message, Sender, WebSocketData};
    ///
    /// #[derive(Default)]
    /// struct Socket(Mutex<Vec<Message>>);
    /// impl SharedMessageSink for Socket {
    ///     fn poll_ready(&self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
    ///         Poll::Ready(Ok(()))
    ///     }
    ///     fn start_send(&self, message: Message) -> Result<(), Error> {
    ///         self.0.lock().unwrap().push(message);
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let socket = Arc::new(Socket::default());
    /// let mut send = Sender::shared_websocket(socket.clone());
    /// # futures_executor::block_on(async {
    /// let early = send.send(Message::WebSocketSend("hi".into())).await.unwrap_err();
    /// assert!(early.is_protocol(), "nothing may be sent before accept");
    /// send.send(Message::WebSocketAccept { subprotocol: None, headers: Default::default() }).await.unwrap();
    /// send.send(Message::WebSocketSend(WebSocketData::from("hi"))).await.unwrap();
    /// # });
    /// assert_eq!(socket.0.lock().unwrap().len(), 2);
    /// ```
    pub fn shared_websocket<S: SharedMessageSink>(sink: Arc<S>) -> Sender {
        Sender {
            sink: Sink::Shared(sink),
            state: State::WsConnecting,
        }
    }

    fn with_state(sink: impl MessageSink, state: State) -> Sender {
        Sender {
            sink: Sink::Owned(Box::new(sink)),
            state,
        }
    }

    /// Whether a response start (or websocket accept or denial, or lifespan reply) has been
    /// sent.
    pub fn is_started(&self) -> bool {
        !matches!(
            self.state,
            State::HttpIdle | State::WsConnecting | State::LifespanStarting
        )
    }

    /// Whether the exchange is complete: nothing more may be sent.
    pub fn is_finished(&self) -> bool {
        self.state == State::Done
    }

    /// Checks `message` against the protocol and returns the state it leads to.
    fn check(&self, message: &Message) -> Result<State, Error> {
        use Message as M;
        use State as S;
        let next = match (self.state, message) {
            (S::Done, m) => {
                return Err(Error::protocol(format!(
                    "{} sent after the exchange ended",
                    m.type_name()
                )))
            }
            (S::HttpIdle, M::ResponseStart { trailers, .. }) => S::HttpBody {
                trailers: *trailers,
            },
            (S::HttpIdle, M::ResponseBody { .. } | M::ResponseTrailers { .. }) => {
                return Err(Error::protocol(format!(
                    "{} sent before http.response.start",
                    message.type_name()
                )))
            }
            (S::HttpBody { .. } | S::HttpTrailers, M::ResponseStart { .. }) => {
                return Err(Error::protocol("http.response.start sent a second time"))
            }
            (S::HttpBody { trailers }, M::ResponseBody { more_body, .. }) => {
                match (more_body, trailers) {
                    (true, _) => S::HttpBody { trailers },
                    (false, true) => S::HttpTrailers,
                    (false, false) => S::Done,
                }
            }
            (S::HttpBody { trailers: false }, M::ResponseTrailers { .. }) => {
                return Err(Error::protocol(
                    "http.response.trailers sent but http.response.start did not announce trailers",
                ))
            }
            (S::HttpBody { trailers: true }, M::ResponseTrailers { .. }) => {
                return Err(Error::protocol(
                    "http.response.trailers sent before the last http.response.body",
                ))
            }
            (S::HttpTrailers, M::ResponseTrailers { more_trailers, .. }) => {
                if *more_trailers {
                    S::HttpTrailers
                } else {
                    S::Done
                }
            }
            (S::HttpTrailers, M::ResponseBody { .. }) => {
                return Err(Error::protocol(
                    "http.response.body sent after the last body",
                ))
            }
            (S::WsConnecting, M::WebSocketAccept { .. }) => S::WsOpen,
            // Before accept a close is a 403: its code and reason go nowhere.
            (S::WsConnecting, M::WebSocketClose { .. }) => S::Done,
            (S::WsOpen, M::WebSocketClose { code, reason }) => {
                check_close(*code, reason)?;
                S::Done
            }
            (S::WsConnecting, M::WebSocketSend(_)) => {
                return Err(Error::protocol(
                    "websocket.send sent before websocket.accept",
                ))
            }
            (S::WsOpen, M::WebSocketSend(_)) => S::WsOpen,
            (S::WsOpen, M::WebSocketAccept { .. }) => {
                return Err(Error::protocol("websocket.accept sent a second time"))
            }
            (S::WsConnecting, M::WebSocketResponseStart { .. }) => S::WsDenying,
            (S::WsConnecting, M::WebSocketResponseBody { .. }) => {
                return Err(Error::protocol(
                    "websocket.http.response.body sent before websocket.http.response.start",
                ))
            }
            (S::WsOpen, M::WebSocketResponseStart { .. } | M::WebSocketResponseBody { .. }) => {
                return Err(Error::protocol(format!(
                    "{} sent after websocket.accept: a denial response is only for a handshake \
                     not yet accepted",
                    message.type_name()
                )))
            }
            (S::WsDenying, M::WebSocketResponseBody { more_body, .. }) => {
                if *more_body {
                    S::WsDenying
                } else {
                    S::Done
                }
            }
            (S::WsDenying, m) => {
                return Err(Error::protocol(format!(
                    "{} sent after websocket.http.response.start: only \
                     websocket.http.response.body may follow",
                    m.type_name()
                )))
            }
            (S::LifespanStarting, M::StartupComplete) => S::LifespanRunning,
            (S::LifespanStarting, M::StartupFailed { .. }) => S::Done,
            (S::LifespanRunning, M::ShutdownComplete | M::ShutdownFailed { .. }) => S::Done,
            (S::LifespanStarting, M::ShutdownComplete | M::ShutdownFailed { .. }) => {
                return Err(Error::protocol(format!(
                    "{} sent before startup completed",
                    message.type_name()
                )))
            }
            (S::LifespanRunning, M::StartupComplete | M::StartupFailed { .. }) => {
                return Err(Error::protocol(format!(
                    "{} sent after lifespan.startup.complete",
                    message.type_name()
                )))
            }
            (state, m) => {
                let scope = match state {
                    S::HttpIdle | S::HttpBody { .. } | S::HttpTrailers => "an http",
                    S::WsConnecting | S::WsOpen | S::WsDenying => "a websocket",
                    _ => "a lifespan",
                };
                return Err(Error::protocol(format!(
                    "{} does not belong to {scope} scope",
                    m.type_name()
                )));
            }
        };
        Ok(next)
    }

    /// Sends `message`, waiting while the connection applies backpressure.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Protocol`] for a message out of order (nothing is sent),
    /// [`ErrorKind::Disconnected`] once the client is gone.
    ///
    /// # Cancellation
    ///
    /// Dropping the future before it completes drops the message unsent.
    pub fn send(&mut self, message: Message) -> impl Future<Output = Result<(), Error>> + '_ {
        // A poll function over one slot rather than an `async fn`, which would lay the message
        // out twice (its argument and the local it moves into): every handler's future holds
        // one of these while it waits.
        let mut slot = Some(message);
        poll_fn(move |cx| self.poll_send(cx, &mut slot))
    }

    /// Like [`send`](Sender::send) in poll form: checks and sends `message` once the sink is
    /// ready, leaving it in `slot` while it is not.
    pub fn poll_send(
        &mut self,
        cx: &mut TaskContext<'_>,
        slot: &mut Option<Message>,
    ) -> Poll<Result<(), Error>> {
        let Some(message) = slot.as_ref() else {
            return Poll::Ready(Err(
                Error::new(ErrorKind::Other).with_message("poll_send with an empty slot")
            ));
        };
        let next = match self.check(message) {
            Ok(n) => n,
            Err(e) => {
                *slot = None;
                return Poll::Ready(Err(e));
            }
        };
        match self.sink.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let message = slot.take().expect("checked above that the slot is full");
                self.sink.start_send(message)?;
                self.state = next;
                Poll::Ready(Ok(()))
            }
        }
    }
}

/// Whether a server may send `code` and `reason` in a close frame (RFC 6455, sections 5.5 and
/// 7.4): 1005, 1006 and 1015 are reserved for reporting a close that had no frame, and a
/// control frame carries at most 125 bytes, two of them the code.
fn check_close(code: u16, reason: &str) -> Result<(), Error> {
    let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    if !sendable {
        return Err(Error::protocol(format!(
            "websocket.close with code {code}, which a server may not send (1000-1003, \
             1007-1014 or 3000-4999)"
        )));
    }
    if reason.len() > 123 {
        return Err(Error::protocol(format!(
            "websocket.close with a reason of {} bytes, over the 123 a close frame holds",
            reason.len()
        )));
    }
    Ok(())
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}
