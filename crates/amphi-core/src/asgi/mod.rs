//! The async (ASGI-like) side: handlers called with a scope, `receive` and `send`.

mod body;
mod channel;
mod event;
mod websocket;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use body::AsyncBody;
pub use channel::{
    EventSource, MessageSink, Receiver, Sender, SharedEventSource, SharedMessageSink,
};
pub use event::{Event, Message, WebSocketData};
pub(crate) use websocket::{client_closed, expect_connect, incoming, Incoming};
pub use websocket::{
    websocket_fn, Accept, CloseFrame, WebSocket, WebSocketFn, WebSocketRequest, WithWebSocket,
};

use crate::into_response::take_handler_error;
use crate::{Error, IntoResponse, Scope};

/// A boxed, sendable future: what [`AsyncHandler::call`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An async (ASGI-like) handler: `call(scope, receive, send)`.
///
/// The server calls it once per request (an [`Scope::Http`]), once per websocket session, and
/// once for the app's lifespan. The handler reads [`Event`]s from `receive` and answers with
/// [`Message`]s through `send`; [`Sender`] checks the order of messages and returns
/// [`ErrorKind::Protocol`](crate::ErrorKind::Protocol) errors for misuse.
///
/// The trait is object-safe (a router holds `Arc<dyn AsyncHandler>`) and `call` takes `&self`,
/// so one handler serves many requests at once. Each call costs one boxed future.
/// Most handlers are easier to write with [`async_fn`] (request in, response out) or
/// [`asgi_fn`] (the raw protocol from a closure).
///
/// # Errors
///
/// An `Err` from the future is logged by the server; if the response had not started the
/// client gets a 500, otherwise the connection is cut.
///
/// # Cancellation
///
/// When the client goes away the server may drop the future at any await point, or deliver
/// [`Event::Disconnect`]; the request context's token flips either way.
///
/// # Examples
///
/// ```
/// use amphi_core::{AsyncHandler, BoxFuture, Error, Message, Receiver, Scope, Sender};
/// use http::{HeaderMap, StatusCode};
///
/// struct Hello;
///
/// impl AsyncHandler for Hello {
///     fn call(&self, scope: Scope, _receive: Receiver, mut send: Sender) -> BoxFuture<'_, Result<(), Error>> {
///         Box::pin(async move {
///             let Scope::Http(_) = scope else { return Ok(()) };
///             send.send(Message::start(StatusCode::OK, HeaderMap::new())).await?;
///             send.send(Message::body("hello", false)).await
///         })
///     }
/// }
///
/// # futures_executor::block_on(async {
/// let resp = amphi_core::testing::call(&std::sync::Arc::new(Hello), http::Request::get("/").body(Default::default()).unwrap()).await.unwrap();
/// assert_eq!(resp.body, "hello");
/// # });
/// ```
pub trait AsyncHandler: Send + Sync + 'static {
    /// Serves one scope.
    fn call(
        &self,
        scope: Scope,
        receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'_, Result<(), Error>>;

    /// [`call`](AsyncHandler::call) on a handler held in an `Arc`, for a future that borrows
    /// nothing: what a server that keeps the future apart from the handler calls.
    ///
    /// The default boxes a second future that holds the `Arc` around `call`'s. Handlers whose
    /// `call` future borrows nothing from `self` (amphi's own: [`async_fn`], [`asgi_fn`], the
    /// adapters) return that future as it is, so a request costs one boxed future, not two.
    /// Handlers need not implement it.
    fn call_owned(
        self: Arc<Self>,
        scope: Scope,
        receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move { self.call(scope, receive, send).await })
    }
}

impl<H: AsyncHandler + ?Sized> AsyncHandler for Arc<H> {
    fn call(
        &self,
        scope: Scope,
        receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'_, Result<(), Error>> {
        (**self).call(scope, receive, send)
    }

    fn call_owned(
        self: Arc<Self>,
        scope: Scope,
        receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'static, Result<(), Error>> {
        H::call_owned(Arc::clone(&self), scope, receive, send)
    }
}

impl<H: AsyncHandler + ?Sized> AsyncHandler for Box<H> {
    fn call(
        &self,
        scope: Scope,
        receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'_, Result<(), Error>> {
        (**self).call(scope, receive, send)
    }
}

/// The request an [`async_fn`] handler gets: the request head, with the body streamed from
/// `receive`. Its extensions hold the [`RequestInfo`](crate::RequestInfo), the request
/// [`Context`](crate::Context) and the app [`State`](crate::State).
pub type AsyncRequest = http::Request<AsyncBody>;

/// The response an [`async_fn`] handler returns; a streamed body is sent chunk by chunk.
pub type AsyncResponse = http::Response<AsyncBody>;

/// An [`AsyncHandler`] made from a request -> response closure; see [`async_fn`].
#[derive(Clone)]
pub struct AsyncFn<F> {
    f: F,
}

/// Makes an [`AsyncHandler`] from an async closure taking an [`AsyncRequest`] and returning
/// anything that is [`IntoResponse<AsyncBody>`](IntoResponse): an [`AsyncResponse`], a
/// status, a string, bytes, a `(StatusCode, T)` pair, `Json<T>` (feature `json`), or a
/// `Result` of those. The sugar drives the event protocol: the request body streams in from
/// `receive` as the closure reads it, and the response body streams out through `send`.
///
/// The request's extensions hold its [`RequestInfo`](crate::RequestInfo), its
/// [`Context`](crate::Context) and the app [`State`](crate::State); [`RequestExt`](crate::RequestExt)
/// reads them by name.
///
/// Lifespan events are acknowledged; websocket sessions are denied (closed before accept)
/// unless [`websocket`](AsyncFn::websocket) adds a websocket handler.
///
/// # Errors
///
/// A closure that returns `Err(error)` with an [`Error`] makes the handler's future return that
/// error, before anything is sent: the server logs it and maps its kind to a status (a body over
/// the limit is a 413; see [`IntoResponse`]). So `?` works on body reads.
///
/// # Examples
///
/// ```
/// use amphi_core::{async_fn, AsyncBody, AsyncRequest};
///
/// let echo = async_fn(|req: AsyncRequest| async move {
///     let body = req.into_body().to_bytes().await.unwrap_or_default();
///     http::Response::new(AsyncBody::from(body))
/// });
///
/// # futures_executor::block_on(async {
/// let req = http::Request::post("/echo").body(bytes::Bytes::from("ping")).unwrap();
/// let resp = amphi_core::testing::call(&std::sync::Arc::new(echo), req).await.unwrap();
/// assert_eq!(resp.body, "ping");
/// # });
/// ```
///
/// With `?`, and a status with a string as the answer:
///
/// ```
/// use amphi_core::{async_fn, AsyncRequest, Error};
/// use http::StatusCode;
///
/// let count = async_fn(|req: AsyncRequest| async move {
///     let body = req.into_body().to_bytes().await?;
///     Ok::<_, Error>((StatusCode::CREATED, format!("{} bytes\n", body.len())))
/// });
///
/// # futures_executor::block_on(async {
/// let req = http::Request::post("/").body(bytes::Bytes::from("four")).unwrap();
/// let resp = amphi_core::testing::call(&std::sync::Arc::new(count), req).await.unwrap();
/// assert_eq!((resp.status, &resp.body[..]), (StatusCode::CREATED, &b"4 bytes\n"[..]));
/// # });
/// ```
pub fn async_fn<F, Fut, R>(f: F) -> AsyncFn<F>
where
    F: Fn(AsyncRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoResponse<AsyncBody>,
{
    AsyncFn { f }
}

impl<F, Fut, R> AsyncHandler for AsyncFn<F>
where
    F: Fn(AsyncRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoResponse<AsyncBody>,
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

impl<F, Fut, R> AsyncFn<F>
where
    F: Fn(AsyncRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoResponse<AsyncBody>,
{
    /// Both `call`s: the future borrows nothing from `self`.
    fn serve(
        &self,
        scope: Scope,
        receive: Receiver,
        mut send: Sender,
    ) -> BoxFuture<'static, Result<(), Error>> {
        let scope = match scope {
            Scope::Http(s) => s,
            Scope::Lifespan(_) => return Box::pin(acknowledge_lifespan(receive, send)),
            Scope::WebSocket(_) => {
                return Box::pin(async move {
                    send.send(Message::WebSocketClose {
                        code: 1000,
                        reason: String::new(),
                    })
                    .await
                })
            }
        };
        let (mut parts, info, context, state) = scope.into_parts();
        parts.extensions.insert(info);
        parts.extensions.insert(context);
        parts.extensions.insert(state);
        let fut = (self.f)(http::Request::from_parts(
            parts,
            AsyncBody::incoming(receive),
        ));
        Box::pin(async move {
            let mut response = fut.await.into_response();
            if let Some(e) = take_handler_error(&mut response) {
                return Err(e);
            }
            send_response(&mut send, response, ResponseKind::Http).await
        })
    }
}

impl<F> AsyncFn<F> {
    /// Serves websocket sessions on the same mount with `websocket`, an async closure taking
    /// a [`WebSocketRequest`] (as [`websocket_fn`] does); http requests and lifespan stay
    /// with this handler.
    ///
    /// # Examples
    ///
    /// ```
    /// use amphi_core::testing::{Handshake, WebSocketCommunicator};
    /// use amphi_core::{async_fn, AsyncBody, AsyncRequest, Message, WebSocketRequest};
    /// use std::sync::Arc;
    ///
    /// let app = Arc::new(
    ///     async_fn(|_req: AsyncRequest| async { http::Response::new(AsyncBody::from("page")) })
    ///         .websocket(|req: WebSocketRequest| async move {
    ///             let mut ws = req.accept().await?;
    ///             while let Some(data) = ws.recv().await? {
    ///                 ws.send(data).await?;
    ///             }
    ///             Ok(())
    ///         }),
    /// );
    ///
    /// # futures_executor::block_on(async {
    /// let page = amphi_core::testing::call(&app, http::Request::get("/").body(Default::default()).unwrap()).await.unwrap();
    /// assert_eq!(page.body, "page");
    /// let mut client = WebSocketCommunicator::new(app, http::Request::get("/").body(()).unwrap());
    /// assert!(matches!(client.connect().await.unwrap(), Handshake::Accepted { .. }));
    /// client.send(vec![1u8, 2, 3]);
    /// assert_eq!(client.receive().await, Some(Message::WebSocketSend(vec![1u8, 2, 3].into())));
    /// # });
    /// ```
    pub fn websocket<G, Fut>(self, websocket: G) -> WithWebSocket<AsyncFn<F>, WebSocketFn<G>>
    where
        G: Fn(WebSocketRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        WithWebSocket::new(self, websocket_fn(websocket))
    }
}

/// Which messages carry a response: an http response's, or a websocket denial's.
#[derive(Clone, Copy)]
pub(crate) enum ResponseKind {
    Http,
    Denial,
}

impl ResponseKind {
    fn start(self, status: http::StatusCode, headers: http::HeaderMap) -> Message {
        match self {
            ResponseKind::Http => Message::start(status, headers),
            ResponseKind::Denial => Message::WebSocketResponseStart { status, headers },
        }
    }

    fn body(self, body: bytes::Bytes, more_body: bool) -> Message {
        match self {
            ResponseKind::Http => Message::body(body, more_body),
            ResponseKind::Denial => Message::WebSocketResponseBody { body, more_body },
        }
    }
}

/// Sends `response` through `send`: the start, then the body in one message when its length
/// is known, else chunk by chunk as it is read.
pub(crate) async fn send_response(
    send: &mut Sender,
    response: AsyncResponse,
    kind: ResponseKind,
) -> Result<(), Error> {
    let (parts, mut body) = response.into_parts();
    send.send(kind.start(parts.status, parts.headers)).await?;
    if let Some(len) = body.exact_len() {
        let bytes = if len == 0 {
            bytes::Bytes::new()
        } else {
            body.to_bytes().await?
        };
        return send.send(kind.body(bytes, false)).await;
    }
    while let Some(chunk) = body.chunk().await? {
        send.send(kind.body(chunk, true)).await?;
    }
    send.send(kind.body(bytes::Bytes::new(), false)).await
}

async fn acknowledge_lifespan(mut receive: Receiver, mut send: Sender) -> Result<(), Error> {
    loop {
        match receive.receive().await? {
            crate::Event::Startup => send.send(Message::StartupComplete).await?,
            crate::Event::Shutdown => return send.send(Message::ShutdownComplete).await,
            // The server went away without a shutdown; a source keeps yielding this, so
            // looping on it would spin.
            crate::Event::Disconnect => return Ok(()),
            _ => {}
        }
    }
}

impl<F> fmt::Debug for AsyncFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncFn").finish_non_exhaustive()
    }
}

/// An [`AsyncHandler`] made from a `(scope, receive, send)` closure; see [`asgi_fn`].
#[derive(Clone)]
pub struct AsgiFn<F> {
    f: F,
}

/// Makes an [`AsyncHandler`] from a closure taking the raw `(scope, receive, send)` triple.
///
/// # Examples
///
/// ```
/// use amphi_core::{asgi_fn, Message, Scope};
/// use http::{HeaderMap, StatusCode};
///
/// let hello = asgi_fn(|scope, _receive, mut send| async move {
///     if let Scope::Http(_) = scope {
///         send.send(Message::start(StatusCode::OK, HeaderMap::new())).await?;
///         send.send(Message::body("hello", false)).await?;
///     }
///     Ok(())
/// });
/// # futures_executor::block_on(async {
/// let resp = amphi_core::testing::call(&std::sync::Arc::new(hello), http::Request::get("/").body(Default::default()).unwrap()).await.unwrap();
/// assert_eq!(resp.status, 200);
/// # });
/// ```
pub fn asgi_fn<F, Fut>(f: F) -> AsgiFn<F>
where
    F: Fn(Scope, Receiver, Sender) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    AsgiFn { f }
}

impl<F, Fut> AsyncHandler for AsgiFn<F>
where
    F: Fn(Scope, Receiver, Sender) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    fn call(
        &self,
        scope: Scope,
        receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin((self.f)(scope, receive, send))
    }

    fn call_owned(
        self: Arc<Self>,
        scope: Scope,
        receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin((self.f)(scope, receive, send))
    }
}

impl<F> fmt::Debug for AsgiFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsgiFn").finish_non_exhaustive()
    }
}
