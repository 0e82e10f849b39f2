//! `receive` and `send`: the two ends an async handler talks through.

use std::fmt;
use std::future::{poll_fn, Future};
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

/// The `receive` end of an async handler: yields [`Event`]s.
///
/// # Cancellation
///
/// `receive` is cancel-safe: dropping its future loses no event.
pub struct Receiver {
    source: Box<dyn EventSource>,
}

impl Receiver {
    /// A receiver pulling from `source`.
    pub fn new(source: impl EventSource) -> Receiver {
        Receiver {
            source: Box::new(source),
        }
    }

    /// Waits for the next event.
    ///
    /// # Errors
    ///
    /// When the source fails; a client that goes away is usually an [`Event::Disconnect`]
    /// rather than an error.
    pub async fn receive(&mut self) -> Result<Event, Error> {
        poll_fn(|cx| self.source.poll_event(cx)).await
    }

    /// Polls for the next event.
    pub fn poll_receive(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Event, Error>> {
        self.source.poll_event(cx)
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
    HttpBody { trailers: bool },
    HttpTrailers,
    WsConnecting,
    WsOpen,
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
/// say), and a lifespan message out of turn. The message is not sent and the state does not
/// change, so a handler may recover. A client that went away is [`ErrorKind::Disconnected`].
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
    sink: Box<dyn MessageSink>,
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

    fn with_state(sink: impl MessageSink, state: State) -> Sender {
        Sender {
            sink: Box::new(sink),
            state,
        }
    }

    /// Whether a response start (or websocket accept, or lifespan reply) has been sent.
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
            (S::WsConnecting | S::WsOpen, M::WebSocketClose { .. }) => S::Done,
            (S::WsConnecting, M::WebSocketSend(_)) => {
                return Err(Error::protocol(
                    "websocket.send sent before websocket.accept",
                ))
            }
            (S::WsOpen, M::WebSocketSend(_)) => S::WsOpen,
            (S::WsOpen, M::WebSocketAccept { .. }) => {
                return Err(Error::protocol("websocket.accept sent a second time"))
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
                    S::WsConnecting | S::WsOpen => "a websocket",
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

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}
