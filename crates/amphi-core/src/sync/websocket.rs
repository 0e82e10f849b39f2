//! A blocking websocket for sync handlers, over the same `receive`/`send` ends an async
//! handler gets: each blocking call polls its end and parks the thread until it is woken.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::task::Poll;

use bytes::Bytes;

use crate::asgi::{client_closed, expect_connect, incoming, Incoming};
use crate::into_response::take_handler_error;
use crate::park::block_on;
use crate::{
    Accept, CancellationToken, Cancelled, CloseFrame, Error, ErrorKind, Event, HttpScope,
    IntoResponse, Message, Receiver, Sender, SyncBody, WebSocketData,
};

fn cancelled_error() -> Error {
    Error::new(ErrorKind::Disconnected).with_message("the websocket's session was cancelled")
}

fn dropped_error() -> Error {
    Error::new(ErrorKind::Disconnected)
        .with_message("the connection dropped without a close frame (1006)")
}

/// Blocks until `receive` yields an event.
///
/// It does not watch the token: whoever provides the ends knows the session's order (the
/// client's close may be on its way when the token flips because the socket is done), and
/// ends a cancelled session with a disconnect or an error of its own.
fn recv_blocking(receive: &mut Receiver) -> Result<Event, Error> {
    block_on(|cx| receive.poll_receive(cx))
}

/// Blocks until `send` has taken `message`, or fails once `token` flips (at once if it has).
fn send_blocking(
    send: &mut Sender,
    cancelled: &mut Option<Cancelled>,
    token: &CancellationToken,
    message: Message,
) -> Result<(), Error> {
    if token.is_cancelled() {
        return Err(cancelled_error());
    }
    let mut slot = Some(message);
    block_on(|cx| {
        if let Poll::Ready(result) = send.poll_send(cx, &mut slot) {
            return Poll::Ready(result);
        }
        let wait = cancelled.get_or_insert_with(|| token.cancelled());
        match Pin::new(wait).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(cancelled_error())),
            Poll::Pending => Poll::Pending,
        }
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each half's state is an end of the protocol and a sticky error; a panic while one is
    // held (a source that panicked) leaves nothing half-updated that a later call could
    // misread: the end checks its own state.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A websocket handshake a sync handler has not answered yet: the request, to
/// [`accept`](SyncWebSocketRequest::accept) or deny. What
/// [`SyncHandler::websocket`](crate::SyncHandler::websocket) is called with.
///
/// Every method blocks the calling thread; call them where a sync handler runs.
///
/// # Errors
///
/// Answering fails with an `io::Error` that [`Error::from_io`] turns back into an amphi
/// [`Error`]:
///
/// | what happened | `io::ErrorKind` | [`ErrorKind`] |
/// |---|---|---|
/// | the client went away, or the session was cancelled | `ConnectionAborted` | `Disconnected` |
/// | a subprotocol the client did not offer, or another misuse | `Other` | `Protocol` |
///
/// # Examples
///
/// ```
/// use amphi_core::{sync_fn, Accept, SyncRequest, SyncWebSocketRequest};
/// use http::StatusCode;
///
/// let app = sync_fn(|_req: SyncRequest| "page")
///     .websocket(|req: SyncWebSocketRequest| {
///         if req.scope().headers().get("authorization").is_none() {
///             return req.deny_with((StatusCode::UNAUTHORIZED, "log in first\n"));
///         }
///         let chosen = req.subprotocols().first().map(|p| p.to_string());
///         let accept = match chosen {
///             Some(p) => Accept::new().with_subprotocol(p),
///             None => Accept::new(),
///         };
///         let ws = req.accept_with(accept)?;
///         for message in &ws {
///             ws.send(message?)?;
///         }
///         Ok(())
///     });
/// # let _ = app;
/// ```
pub struct SyncWebSocketRequest {
    scope: HttpScope,
    receive: Receiver,
    send: Sender,
}

impl SyncWebSocketRequest {
    /// A request over the two ends of a websocket session, for whoever runs sync handlers
    /// (adapters, servers); `send` must be a websocket [`Sender`].
    ///
    /// The ends are polled from the blocking thread, with a waker that unparks it: their
    /// [`EventSource`](crate::plumbing::EventSource) and
    /// [`MessageSink`](crate::plumbing::MessageSink) must work without a runtime context on
    /// that thread (wake it when an event or room comes, never create timers or I/O resources
    /// in a poll). The source **must** end a session that is over, cancelled included, with
    /// `websocket.disconnect` (1006 for a connection gone) or an error: a blocking `recv`
    /// waits on the source alone, so that the client's close is never cut short by a token
    /// that flipped because the socket is done. (Sends also fail at once on a flipped
    /// token.) The ends are handed as they are to an async handler when one serves the
    /// request ([`into_parts`](SyncWebSocketRequest::into_parts)).
    pub fn new(scope: HttpScope, receive: Receiver, send: Sender) -> SyncWebSocketRequest {
        SyncWebSocketRequest {
            scope,
            receive,
            send,
        }
    }

    /// The request: head, mount, peers, context, state.
    pub fn scope(&self) -> &HttpScope {
        &self.scope
    }

    /// The subprotocols the client offered, in its order of preference.
    pub fn subprotocols(&self) -> Vec<&str> {
        self.scope.subprotocols()
    }

    /// The token that flips when the session is abandoned.
    pub fn cancellation(&self) -> &CancellationToken {
        self.scope.context().token()
    }

    /// Accepts with no subprotocol and no extra headers; blocks until the client's
    /// `websocket.connect` has come and the accept is sent.
    ///
    /// # Errors
    ///
    /// See the type's docs.
    pub fn accept(self) -> io::Result<BlockingWebSocket> {
        self.accept_with(Accept::new())
    }

    /// Accepts as `accept` says.
    ///
    /// # Errors
    ///
    /// See the type's docs.
    pub fn accept_with(self, accept: Accept) -> io::Result<BlockingWebSocket> {
        let SyncWebSocketRequest {
            scope,
            mut receive,
            mut send,
        } = self;
        let token = scope.context().token().clone();
        let subprotocol = accept.subprotocol().map(str::to_owned);
        let message = accept.into_message(&scope).map_err(Error::into_io)?;
        recv_blocking(&mut receive)
            .and_then(expect_connect)
            .map_err(Error::into_io)?;
        // The wait on the token moves with its half: re-polled by the same thread's waker, it
        // keeps its registration.
        let mut cancelled = None;
        send_blocking(&mut send, &mut cancelled, &token, message).map_err(Error::into_io)?;
        Ok(BlockingWebSocket {
            scope,
            subprotocol,
            token,
            reader: Mutex::new(Reader {
                receive,
                failed: None,
            }),
            writer: Mutex::new(Writer { send, cancelled }),
            closed: OnceLock::new(),
        })
    }

    /// Denies the handshake: the client gets a 403.
    ///
    /// # Errors
    ///
    /// See the type's docs.
    pub fn deny(mut self) -> io::Result<()> {
        let token = self.scope.context().token().clone();
        let close = Message::WebSocketClose {
            code: 1000,
            reason: String::new(),
        };
        send_blocking(&mut self.send, &mut None, &token, close).map_err(Error::into_io)
    }

    /// Denies the handshake with `response`, anything that is
    /// [`IntoResponse<SyncBody>`](IntoResponse), its body produced on this thread and sent
    /// as it comes, through ASGI's `websocket.http.response` extension.
    ///
    /// # Errors
    ///
    /// See the type's docs; and the body producer's own error, after which the connection
    /// is cut. An [`Error`] given as the response is returned (as an `io::Error` that
    /// [`Error::from_io`] finds) with nothing sent.
    pub fn deny_with(mut self, response: impl IntoResponse<SyncBody>) -> io::Result<()> {
        let mut response = response.into_response();
        if let Some(e) = take_handler_error(&mut response) {
            return Err(e.into_io());
        }
        let token = self.scope.context().token().clone();
        let mut cancelled = None;
        let (parts, body) = response.into_parts();
        let start = Message::WebSocketResponseStart {
            status: parts.status,
            headers: parts.headers,
        };
        let send = &mut self.send;
        send_blocking(send, &mut cancelled, &token, start).map_err(Error::into_io)?;
        let body = match body.try_into_bytes() {
            Ok(bytes) => {
                let last = Message::WebSocketResponseBody {
                    body: bytes,
                    more_body: false,
                };
                return send_blocking(send, &mut cancelled, &token, last).map_err(Error::into_io);
            }
            Err(streamed) => streamed,
        };
        body.write_to(&mut |chunk| {
            let piece = Message::WebSocketResponseBody {
                body: chunk,
                more_body: true,
            };
            send_blocking(send, &mut cancelled, &token, piece).map_err(Error::into_io)
        })?;
        let last = Message::WebSocketResponseBody {
            body: Bytes::new(),
            more_body: false,
        };
        send_blocking(send, &mut cancelled, &token, last).map_err(Error::into_io)
    }

    /// The session's parts, for an adapter that serves it with an async handler.
    pub fn into_parts(self) -> (HttpScope, Receiver, Sender) {
        (self.scope, self.receive, self.send)
    }
}

impl fmt::Debug for SyncWebSocketRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncWebSocketRequest")
            .field("path", &self.scope.path())
            .field("subprotocols", &self.scope.subprotocols())
            .finish_non_exhaustive()
    }
}

struct Reader {
    receive: Receiver,
    /// A failure, returned again by every later `recv`.
    failed: Option<(ErrorKind, String)>,
}

struct Writer {
    send: Sender,
    cancelled: Option<Cancelled>,
}

/// An accepted websocket for blocking code: [`recv`](BlockingWebSocket::recv) blocks for the
/// client's next message, [`send`](BlockingWebSocket::send) blocks while the connection
/// applies backpressure, [`messages`](BlockingWebSocket::messages) (or `for m in &ws`)
/// iterates until the client closes.
///
/// # Two threads at once
///
/// It is `Send + Sync` and every method takes `&self`: one thread may sit in `recv` while
/// another sends (each direction has its own lock; two threads reading at once take turns,
/// as do two writing). Share it with `std::thread::scope` or an `Arc`.
///
/// # The end of a session
///
/// - The client closes: `recv` returns `Ok(None)` (and the iterator ends), and
///   [`close_frame`](BlockingWebSocket::close_frame) says how (1005 when its close frame had
///   no code). Sends fail from then on.
/// - The client is gone (the connection dropped, 1006, or the session was cancelled: the
///   async caller dropped, the server gave up on it): `recv` and `send` fail with
///   `ConnectionAborted` ([`Error::from_io`] gives [`ErrorKind::Disconnected`]), and the
///   request's [`cancellation`](BlockingWebSocket::cancellation) token has flipped. Messages
///   that arrived before are still delivered first. `send` fails as soon as the token has
///   flipped; `recv` when the ends say the session is over (see
///   [`SyncWebSocketRequest::new`]), so a close that is on its way is still seen as one.
/// - The handler closes with [`close`](BlockingWebSocket::close); `recv` may still see the
///   client's answer.
/// - The handler returns: the session ends (whoever runs the handler closes with 1000 if
///   it did not close, 1011 if it panicked or returned an error), and calls on a websocket
///   kept past that fail.
///
/// # Errors
///
/// Besides the disconnects above: a code a server may not send or a message after `close`
/// fail with `io::ErrorKind::Other`, kind [`ErrorKind::Protocol`]. Errors of `recv` are
/// sticky: once it failed, it fails the same way again.
///
/// # Examples
///
/// ```
/// use amphi_core::{sync_fn, SyncBody, SyncRequest, SyncWebSocketRequest};
/// use std::time::Duration;
///
/// // Echo what the client sends, while another thread sends a tick every second.
/// let app = sync_fn(|_req: SyncRequest| http::Response::new(SyncBody::empty()))
///     .websocket(|req: SyncWebSocketRequest| {
///         let ws = req.accept()?;
///         std::thread::scope(|s| {
///             s.spawn(|| {
///                 while ws.send("tick").is_ok() {
///                     if ws.cancellation().wait_timeout(Duration::from_secs(1)) {
///                         break;
///                     }
///                 }
///             });
///             for message in &ws {
///                 ws.send(message?)?;
///             }
///             ws.close(1000, "bye")
///         })
///     });
/// # let _ = app;
/// ```
pub struct BlockingWebSocket {
    scope: HttpScope,
    subprotocol: Option<String>,
    token: CancellationToken,
    reader: Mutex<Reader>,
    writer: Mutex<Writer>,
    /// How the client closed; read by both directions without the reader's lock.
    closed: OnceLock<CloseFrame>,
}

impl BlockingWebSocket {
    /// Blocks for the client's next message; `Ok(None)` once it has closed the websocket.
    ///
    /// # Errors
    ///
    /// See the type's docs.
    pub fn recv(&self) -> io::Result<Option<WebSocketData>> {
        let mut r = lock(&self.reader);
        if let Some((kind, message)) = &r.failed {
            return Err(Error::new(*kind).with_message(message.clone()).into_io());
        }
        if self.closed.get().is_some() {
            return Ok(None);
        }
        let result = recv_blocking(&mut r.receive).and_then(incoming);
        let error = match result {
            Ok(Incoming::Data(data)) => return Ok(Some(data)),
            Ok(Incoming::Closed(frame)) => {
                let abnormal = frame.is_abnormal();
                let _ = self.closed.set(frame);
                if !abnormal {
                    return Ok(None);
                }
                dropped_error()
            }
            Err(e) => e,
        };
        r.failed = Some((error.kind(), error.message().unwrap_or_default().to_owned()));
        Err(error.into_io())
    }

    /// Blocks until the connection takes `data`: a `String` or `&str` as text, `Bytes` or
    /// `Vec<u8>` as binary.
    ///
    /// # Errors
    ///
    /// See the type's docs.
    pub fn send(&self, data: impl Into<WebSocketData>) -> io::Result<()> {
        self.send_message(Message::WebSocketSend(data.into()))
    }

    /// Closes the websocket with `code` and `reason`; does nothing when the client has
    /// closed it already.
    ///
    /// # Errors
    ///
    /// See the type's docs; a code a server may not send (see
    /// [`Message::WebSocketClose`]) is refused.
    pub fn close(&self, code: u16, reason: impl Into<String>) -> io::Result<()> {
        if self.closed.get().is_some() {
            return Ok(());
        }
        self.send_message(Message::WebSocketClose {
            code,
            reason: reason.into(),
        })
    }

    fn send_message(&self, message: Message) -> io::Result<()> {
        match self.closed.get() {
            Some(frame) if frame.is_abnormal() => return Err(dropped_error().into_io()),
            Some(_) => return Err(client_closed().into_io()),
            None => {}
        }
        let mut w = lock(&self.writer);
        let Writer { send, cancelled } = &mut *w;
        send_blocking(send, cancelled, &self.token, message).map_err(Error::into_io)
    }

    /// The client's messages until it closes; see [`Messages`].
    pub fn messages(&self) -> Messages<'_> {
        Messages {
            ws: self,
            ended: false,
        }
    }

    /// How the client closed the websocket, once `recv` has seen it.
    pub fn close_frame(&self) -> Option<&CloseFrame> {
        self.closed.get()
    }

    /// The subprotocol the handshake chose.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// The request the websocket was opened with.
    pub fn scope(&self) -> &HttpScope {
        &self.scope
    }

    /// The token that flips when the session is abandoned (the client is gone).
    pub fn cancellation(&self) -> &CancellationToken {
        &self.token
    }
}

impl fmt::Debug for BlockingWebSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingWebSocket")
            .field("path", &self.scope.path())
            .field("subprotocol", &self.subprotocol)
            .field("closed", &self.closed.get())
            .finish_non_exhaustive()
    }
}

impl<'a> IntoIterator for &'a BlockingWebSocket {
    type Item = io::Result<WebSocketData>;
    type IntoIter = Messages<'a>;

    fn into_iter(self) -> Messages<'a> {
        self.messages()
    }
}

/// The client's messages as an iterator, each `next` a blocking
/// [`recv`](BlockingWebSocket::recv): it ends when the client closes, and after yielding an
/// error once.
#[derive(Debug)]
pub struct Messages<'a> {
    ws: &'a BlockingWebSocket,
    ended: bool,
}

impl Iterator for Messages<'_> {
    type Item = io::Result<WebSocketData>;

    fn next(&mut self) -> Option<io::Result<WebSocketData>> {
        if self.ended {
            return None;
        }
        let item = self.ws.recv().transpose();
        // `recv`'s errors are sticky: an iterator that repeated one would spin `for` loops
        // that skip errors.
        self.ended = !matches!(item, Some(Ok(_)));
        item
    }
}
