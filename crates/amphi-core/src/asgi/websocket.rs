//! Websocket sugar for async handlers, over the raw `websocket.*` protocol: a request to
//! accept or deny, then a [`WebSocket`] to read and write; and handlers that answer http and
//! websocket scopes on one mount.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, StatusCode};

use super::{send_response, BoxFuture, ResponseKind};
use crate::into_response::take_handler_error;
use crate::{
    AsyncBody, AsyncHandler, CancellationToken, Error, ErrorKind, Event, HttpScope, IntoResponse,
    Message, Receiver, Scope, Sender, WebSocketData,
};

/// How a websocket ended from the client's side: the code and reason of its close frame, or
/// the code that stands for a close without one.
///
/// | code | meaning |
/// |---|---|
/// | 1000 | normal close |
/// | 1001 | going away (a browser leaving the page, a server shutting down) |
/// | 1005 | the client's close frame carried no code |
/// | 1006 | the connection dropped without a close frame |
/// | others | as the client sent them (RFC 6455, section 7.4) |
///
/// # Examples
///
/// ```
/// use amphi_core::CloseFrame;
///
/// let frame = CloseFrame::new(1000, "bye");
/// assert_eq!(frame.code(), 1000);
/// assert_eq!(frame.reason(), "bye");
/// assert!(!frame.is_abnormal());
/// assert!(CloseFrame::new(1006, "").is_abnormal());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    code: u16,
    reason: String,
}

impl CloseFrame {
    /// A close with `code` and `reason`.
    pub fn new(code: u16, reason: impl Into<String>) -> CloseFrame {
        CloseFrame {
            code,
            reason: reason.into(),
        }
    }

    /// The close code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The reason, possibly empty.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Whether the connection dropped rather than closed (code 1006).
    pub fn is_abnormal(&self) -> bool {
        self.code == 1006
    }
}

/// How to accept a websocket: the subprotocol chosen among those the client offered, and
/// extra response headers. `Accept::new()` (or `default()`) chooses none and adds none.
///
/// # Examples
///
/// ```
/// use amphi_core::Accept;
///
/// let accept = Accept::new().with_subprotocol("chat");
/// assert_eq!(accept.subprotocol(), Some("chat"));
/// assert!(accept.headers().is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accept {
    subprotocol: Option<String>,
    headers: HeaderMap,
}

impl Accept {
    /// No subprotocol, no extra headers.
    pub fn new() -> Accept {
        Accept::default()
    }

    /// Chooses `subprotocol`; it must be one the client offered
    /// ([`HttpScope::subprotocols`]).
    #[must_use]
    pub fn with_subprotocol(mut self, subprotocol: impl Into<String>) -> Accept {
        self.subprotocol = Some(subprotocol.into());
        self
    }

    /// Adds `headers` to the handshake response.
    #[must_use]
    pub fn with_headers(mut self, headers: HeaderMap) -> Accept {
        self.headers.extend(headers);
        self
    }

    /// The chosen subprotocol.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// The extra headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Checks the choice against what the client offered in `scope`, and makes the message.
    pub(crate) fn into_message(self, scope: &HttpScope) -> Result<Message, Error> {
        if let Some(chosen) = &self.subprotocol {
            if !scope.subprotocols().contains(&chosen.as_str()) {
                return Err(Error::protocol(format!(
                    "websocket accepted with subprotocol {chosen:?}, which the client did not \
                     offer (it offered {:?})",
                    scope.subprotocols()
                )));
            }
        }
        Ok(Message::WebSocketAccept {
            subprotocol: self.subprotocol,
            headers: self.headers,
        })
    }
}

/// The first event of a session must be `websocket.connect`.
pub(crate) fn expect_connect(event: Event) -> Result<(), Error> {
    match event {
        Event::WebSocketConnect => Ok(()),
        Event::WebSocketDisconnect { .. } | Event::Disconnect => {
            Err(Error::new(ErrorKind::Disconnected)
                .with_message("the client went away before the handshake was answered"))
        }
        other => Err(Error::protocol(format!(
            "{} received where websocket.connect was expected",
            other.type_name()
        ))),
    }
}

/// What an event means on an open websocket.
pub(crate) enum Incoming {
    Data(WebSocketData),
    Closed(CloseFrame),
}

pub(crate) fn incoming(event: Event) -> Result<Incoming, Error> {
    match event {
        Event::WebSocketReceive(data) => Ok(Incoming::Data(data)),
        Event::WebSocketDisconnect { code, reason } => {
            Ok(Incoming::Closed(CloseFrame { code, reason }))
        }
        // A source whose connection is gone may say so the http way.
        Event::Disconnect => Ok(Incoming::Closed(CloseFrame::new(1006, ""))),
        other => Err(Error::protocol(format!(
            "{} received on an open websocket",
            other.type_name()
        ))),
    }
}

pub(crate) fn client_closed() -> Error {
    Error::new(ErrorKind::Disconnected).with_message("the client closed the websocket")
}

/// A websocket handshake an async handler has not answered yet: look at the request, then
/// [`accept`](WebSocketRequest::accept) it or deny it.
///
/// Denying with [`deny`](WebSocketRequest::deny) answers 403 (ASGI's `websocket.close` before
/// accept); [`deny_with`](WebSocketRequest::deny_with) sends a response of your own through
/// ASGI's `websocket.http.response` extension. A handler that returns `Ok` without answering
/// is denied with a 403 too; one that returns an error before answering gets a 500 from the
/// server.
///
/// # Examples
///
/// ```
/// use amphi_core::testing::{Handshake, WebSocketCommunicator};
/// use amphi_core::{websocket_fn, Accept, Message, WebSocketRequest};
/// use std::sync::Arc;
///
/// let echo = websocket_fn(|req: WebSocketRequest| async move {
///     if !req.subprotocols().contains(&"echo") {
///         return req.deny().await;
///     }
///     let mut ws = req.accept_with(Accept::new().with_subprotocol("echo")).await?;
///     while let Some(data) = ws.recv().await? {
///         ws.send(data).await?;
///     }
///     Ok(())
/// });
///
/// # futures_executor::block_on(async {
/// let head = http::Request::get("/ws").header("sec-websocket-protocol", "echo").body(()).unwrap();
/// let mut client = WebSocketCommunicator::new(Arc::new(echo), head);
/// let Handshake::Accepted { subprotocol, .. } = client.connect().await.unwrap() else { panic!() };
/// assert_eq!(subprotocol.as_deref(), Some("echo"));
/// client.send("hello");
/// assert_eq!(client.receive().await, Some(Message::WebSocketSend("hello".into())));
/// client.close(1000, "");
/// client.wait().await.unwrap();
/// # });
/// ```
pub struct WebSocketRequest {
    scope: HttpScope,
    receive: Receiver,
    send: Sender,
}

impl WebSocketRequest {
    /// A request over the raw protocol's three parts; `send` must be a websocket
    /// [`Sender`]. This is how [`websocket_fn`] builds one; a handler written with
    /// [`asgi_fn`](crate::asgi_fn) can too.
    pub fn new(scope: HttpScope, receive: Receiver, send: Sender) -> WebSocketRequest {
        WebSocketRequest {
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

    /// Accepts with no subprotocol and no extra headers.
    ///
    /// # Errors
    ///
    /// As for [`accept_with`](WebSocketRequest::accept_with).
    pub async fn accept(self) -> Result<WebSocket, Error> {
        self.accept_with(Accept::new()).await
    }

    /// Accepts as `accept` says: waits for the client's `websocket.connect`, then sends
    /// `websocket.accept`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Protocol`] when the subprotocol was not offered (nothing is sent) or
    /// `receive` yields something other than `websocket.connect`;
    /// [`ErrorKind::Disconnected`] when the client went away first.
    pub async fn accept_with(self, accept: Accept) -> Result<WebSocket, Error> {
        let WebSocketRequest {
            scope,
            mut receive,
            mut send,
        } = self;
        let subprotocol = accept.subprotocol().map(str::to_owned);
        let message = accept.into_message(&scope)?;
        expect_connect(receive.receive().await?)?;
        send.send(message).await?;
        Ok(WebSocket {
            scope,
            receive,
            send,
            subprotocol,
            closed: None,
        })
    }

    /// Denies the handshake: the client gets a 403.
    ///
    /// # Errors
    ///
    /// When `send` fails (the client is gone).
    pub async fn deny(mut self) -> Result<(), Error> {
        self.send
            .send(Message::WebSocketClose {
                code: 1000,
                reason: String::new(),
            })
            .await
    }

    /// Denies the handshake with `response`, anything that is
    /// [`IntoResponse<AsyncBody>`](IntoResponse) (status, headers, body streamed as it is
    /// read), through ASGI's `websocket.http.response` extension.
    ///
    /// # Errors
    ///
    /// When `send` fails (the client is gone) or the body fails; after the start the server
    /// cuts the connection. An [`Error`] given as the response is returned as it is, with
    /// nothing sent (the server answers it as a handler error).
    pub async fn deny_with(mut self, response: impl IntoResponse<AsyncBody>) -> Result<(), Error> {
        let mut response = response.into_response();
        if let Some(e) = take_handler_error(&mut response) {
            return Err(e);
        }
        send_response(&mut self.send, response, ResponseKind::Denial).await
    }

    /// The raw protocol's parts, for a handler that goes on without the sugar.
    pub fn into_parts(self) -> (HttpScope, Receiver, Sender) {
        (self.scope, self.receive, self.send)
    }
}

impl fmt::Debug for WebSocketRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketRequest")
            .field("path", &self.scope.path())
            .field("subprotocols", &self.scope.subprotocols())
            .finish_non_exhaustive()
    }
}

/// An accepted websocket, for an async handler: [`recv`](WebSocket::recv) the client's
/// messages, [`send`](WebSocket::send) yours, [`close`](WebSocket::close) when done.
///
/// The client's close ends the stream: `recv` returns `Ok(None)` and
/// [`close_frame`](WebSocket::close_frame) tells how it ended (1005 when the client's close
/// frame had no code, 1006 when the connection dropped without one). Sending after that fails
/// with [`ErrorKind::Disconnected`].
///
/// Returning without [`close`](WebSocket::close) leaves the close to whoever runs the
/// handler (a server closes with 1000 after `Ok`, 1011 after `Err`).
///
/// # Cancellation
///
/// `recv` is cancel-safe (dropping its future loses no message), so it can race other work
/// in a `select!`; `send` dropped before it completes drops its message unsent.
///
/// # Examples
///
/// ```
/// use amphi_core::testing::WebSocketCommunicator;
/// use amphi_core::{websocket_fn, Message, WebSocketData, WebSocketRequest};
/// use std::sync::Arc;
///
/// let shout = websocket_fn(|req: WebSocketRequest| async move {
///     let mut ws = req.accept().await?;
///     while let Some(data) = ws.recv().await? {
///         match data {
///             WebSocketData::Text(t) if t == "bye" => return ws.close(1000, "bye").await,
///             WebSocketData::Text(t) => ws.send(t.to_uppercase()).await?,
///             binary => ws.send(binary).await?,
///         }
///     }
///     // The client closed first; `ws.close_frame()` says how.
///     Ok(())
/// });
///
/// # futures_executor::block_on(async {
/// let mut client = WebSocketCommunicator::new(Arc::new(shout), http::Request::get("/").body(()).unwrap());
/// client.connect().await.unwrap();
/// client.send("hi");
/// assert_eq!(client.receive().await, Some(Message::WebSocketSend("HI".into())));
/// client.send("bye");
/// assert_eq!(client.receive().await, Some(Message::WebSocketClose { code: 1000, reason: "bye".into() }));
/// client.wait().await.unwrap();
/// # });
/// ```
pub struct WebSocket {
    scope: HttpScope,
    receive: Receiver,
    send: Sender,
    subprotocol: Option<String>,
    closed: Option<CloseFrame>,
}

impl WebSocket {
    /// The next message from the client; `None` once it has closed the websocket (see
    /// [`close_frame`](WebSocket::close_frame)), then `None` again on every call.
    ///
    /// # Errors
    ///
    /// When `receive` fails, or yields an event that does not belong to an open websocket
    /// ([`ErrorKind::Protocol`]).
    pub async fn recv(&mut self) -> Result<Option<WebSocketData>, Error> {
        if self.closed.is_some() {
            return Ok(None);
        }
        match incoming(self.receive.receive().await?)? {
            Incoming::Data(data) => Ok(Some(data)),
            Incoming::Closed(frame) => {
                self.closed = Some(frame);
                Ok(None)
            }
        }
    }

    /// Sends a message: a `String` or `&str` as text, `Bytes` or `Vec<u8>` as binary; waits
    /// while the connection applies backpressure.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Disconnected`] once the client has closed or gone; [`ErrorKind::Protocol`]
    /// after [`close`](WebSocket::close)'s message went out.
    pub async fn send(&mut self, data: impl Into<WebSocketData>) -> Result<(), Error> {
        if self.closed.is_some() {
            return Err(client_closed());
        }
        self.send.send(Message::WebSocketSend(data.into())).await
    }

    /// Closes the websocket with `code` and `reason`; does nothing when the client has
    /// closed it already.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Protocol`] for a code a server may not send or a reason over 123 bytes
    /// (see [`Message::WebSocketClose`]); [`ErrorKind::Disconnected`] when the client is gone.
    pub async fn close(mut self, code: u16, reason: impl Into<String>) -> Result<(), Error> {
        if self.closed.is_some() {
            return Ok(());
        }
        self.send
            .send(Message::WebSocketClose {
                code,
                reason: reason.into(),
            })
            .await
    }

    /// How the client closed the websocket, once [`recv`](WebSocket::recv) has returned
    /// `None`.
    pub fn close_frame(&self) -> Option<&CloseFrame> {
        self.closed.as_ref()
    }

    /// The subprotocol the handshake chose.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// The request the websocket was opened with.
    pub fn scope(&self) -> &HttpScope {
        &self.scope
    }

    /// The raw protocol's parts, for a handler that goes on without the sugar.
    pub fn into_parts(self) -> (HttpScope, Receiver, Sender) {
        (self.scope, self.receive, self.send)
    }
}

impl fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocket")
            .field("path", &self.scope.path())
            .field("subprotocol", &self.subprotocol)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// An [`AsyncHandler`] for websocket sessions made from a closure; see [`websocket_fn`].
#[derive(Clone)]
pub struct WebSocketFn<G> {
    f: G,
}

/// Makes an [`AsyncHandler`] that serves websocket sessions with an async closure taking a
/// [`WebSocketRequest`].
///
/// An http request to it gets `426 Upgrade Required`; it takes no lifespan events. To answer
/// http on the same mount, start from [`async_fn`](crate::async_fn) and add
/// [`websocket`](crate::AsyncFn::websocket), or combine any two handlers with
/// [`WithWebSocket`].
///
/// # Examples
///
/// See [`WebSocketRequest`] and [`WebSocket`].
pub fn websocket_fn<G, Fut>(f: G) -> WebSocketFn<G>
where
    G: Fn(WebSocketRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    WebSocketFn { f }
}

impl<G, Fut> WebSocketFn<G>
where
    G: Fn(WebSocketRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    /// Both `call`s: the future borrows nothing from `self`.
    fn serve(
        &self,
        scope: Scope,
        receive: Receiver,
        mut send: Sender,
    ) -> BoxFuture<'static, Result<(), Error>> {
        match scope {
            Scope::WebSocket(scope) => {
                Box::pin((self.f)(WebSocketRequest::new(scope, receive, send)))
            }
            Scope::Http(scope) => Box::pin(async move {
                let mut headers = HeaderMap::new();
                // HTTP/2 has no Upgrade header (it is connection-specific there); its
                // websockets come by extended CONNECT.
                if scope.version() < http::Version::HTTP_2 {
                    headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
                }
                send.send(Message::start(StatusCode::UPGRADE_REQUIRED, headers))
                    .await?;
                send.send(Message::body(bytes::Bytes::new(), false)).await
            }),
            // Returning without a message: this handler takes no lifespan events.
            _ => Box::pin(async { Ok(()) }),
        }
    }
}

impl<G, Fut> AsyncHandler for WebSocketFn<G>
where
    G: Fn(WebSocketRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    fn call(
        &self,
        scope: Scope,
        receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'_, Result<(), Error>> {
        self.serve(scope, receive, send)
    }

    fn call_owned(
        self: Arc<Self>,
        scope: Scope,
        receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'static, Result<(), Error>> {
        self.serve(scope, receive, send)
    }
}

impl<G> fmt::Debug for WebSocketFn<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketFn").finish_non_exhaustive()
    }
}

/// One handler for http (and lifespan) and another for websocket sessions, on one mount.
///
/// - As an [`AsyncHandler`] (both parts async handlers): websocket scopes go to the second,
///   everything else to the first. [`AsyncFn::websocket`](crate::AsyncFn::websocket) builds
///   one from two closures.
/// - As a [`SyncHandler`](crate::SyncHandler) (a sync handler and a
///   `Fn(SyncWebSocketRequest) -> io::Result<()>` closure): `call` goes to the first,
///   [`websocket`](crate::SyncHandler::websocket) to the closure.
///   [`SyncFn::websocket`](crate::SyncFn::websocket) builds one.
///
/// # Examples
///
/// ```
/// use amphi_core::testing::{Handshake, WebSocketCommunicator};
/// use amphi_core::{async_fn, websocket_fn, AsyncBody, AsyncRequest, WebSocketRequest, WithWebSocket};
/// use std::sync::Arc;
///
/// let page = async_fn(|_req: AsyncRequest| async { http::Response::new(AsyncBody::from("page")) });
/// let socket = websocket_fn(|req: WebSocketRequest| async move { req.deny().await });
/// let app = Arc::new(WithWebSocket::new(page, socket));
///
/// # futures_executor::block_on(async {
/// let resp = amphi_core::testing::call(&app, http::Request::get("/").body(Default::default()).unwrap()).await.unwrap();
/// assert_eq!(resp.body, "page");
/// let mut client = WebSocketCommunicator::new(app, http::Request::get("/").body(()).unwrap());
/// let Handshake::Denied(resp) = client.connect().await.unwrap() else { panic!() };
/// assert_eq!(resp.status, 403);
/// # });
/// ```
pub struct WithWebSocket<H, W> {
    pub(crate) http: Arc<H>,
    pub(crate) websocket: Arc<W>,
}

impl<H, W> WithWebSocket<H, W> {
    /// Serves http (and lifespan) with `http`, websocket sessions with `websocket`.
    pub fn new(http: H, websocket: W) -> WithWebSocket<H, W> {
        WithWebSocket {
            http: Arc::new(http),
            websocket: Arc::new(websocket),
        }
    }

    /// The http part.
    pub fn http(&self) -> &H {
        &self.http
    }

    /// The websocket part.
    pub fn websocket(&self) -> &W {
        &self.websocket
    }
}

impl<H: AsyncHandler, W: AsyncHandler> WithWebSocket<H, W> {
    fn route(
        &self,
        scope: Scope,
        receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'static, Result<(), Error>> {
        // Through `call_owned` on the parts' own `Arc`s: a reference count each, and one
        // boxed future, the part's own.
        match scope {
            Scope::WebSocket(_) => W::call_owned(self.websocket.clone(), scope, receive, send),
            _ => H::call_owned(self.http.clone(), scope, receive, send),
        }
    }
}

impl<H: AsyncHandler, W: AsyncHandler> AsyncHandler for WithWebSocket<H, W> {
    fn call(
        &self,
        scope: Scope,
        receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'_, Result<(), Error>> {
        self.route(scope, receive, send)
    }

    fn call_owned(
        self: Arc<Self>,
        scope: Scope,
        receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'static, Result<(), Error>> {
        self.route(scope, receive, send)
    }
}

impl<H, W> Clone for WithWebSocket<H, W> {
    fn clone(&self) -> Self {
        WithWebSocket {
            http: self.http.clone(),
            websocket: self.websocket.clone(),
        }
    }
}

impl<H, W> fmt::Debug for WithWebSocket<H, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithWebSocket")
            .field("http", &std::any::type_name::<H>())
            .field("websocket", &std::any::type_name::<W>())
            .finish()
    }
}
