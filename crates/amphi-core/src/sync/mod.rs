//! The sync (WSGI-like) side: handlers that run on a blocking thread.

mod body;
mod request;
mod response;
mod websocket;

use std::fmt;
use std::io;
use std::sync::Arc;

use crate::IntoResponse;

pub use body::{BlockingBody, IntoChunks};
pub use request::SyncRequest;
pub use response::{BodyWriter, SyncBody, SyncResponse};
pub use websocket::{BlockingWebSocket, Messages, SyncWebSocketRequest};

use crate::WithWebSocket;

/// A blocking (WSGI-like) handler: called on a thread that may block, with a request whose
/// body is read by blocking I/O; returns a response whose body may be produced by blocking
/// code.
///
/// `call` takes `&self`, so one handler serves many requests at once, each on its own thread.
/// Build one from a closure with [`sync_fn`], or implement the trait on your own type.
///
/// # Panics
///
/// A panic in `call` or while producing the body is caught by whoever runs the handler (the
/// adapter, the server): the client gets a 500 if the response had not started, a cut
/// connection if it had, and the server carries on. The body's cleanup still runs.
///
/// # Errors
///
/// `call` returns a response, not a `Result`: a handler fails by returning an
/// [`Error`](crate::Error)'s [`into_response`](crate::IntoResponse::into_response) (a 500 that
/// carries the error). What runs the handler takes the error back out
/// ([`plumbing::take_handler_error`](crate::plumbing::take_handler_error)); `SyncToAsync`
/// returns it as its `Err`, so the server maps and logs it as any handler error. [`sync_fn`]
/// closures just return a `Result`.
///
/// # Cancellation
///
/// A running blocking call cannot be interrupted. When the request is abandoned, the
/// request's [`cancellation`](SyncRequest::cancellation) token flips and body reads fail with
/// [`ErrorKind::Disconnected`](crate::ErrorKind::Disconnected); the handler decides when to
/// stop.
///
/// # Examples
///
/// ```
/// use amphi_core::{IntoResponse, SyncHandler, SyncRequest, SyncResponse};
/// use http::StatusCode;
/// use std::io::Read;
///
/// struct Upper;
///
/// impl SyncHandler for Upper {
///     fn call(&self, mut req: SyncRequest) -> SyncResponse {
///         let mut text = String::new();
///         if req.body_mut().read_to_string(&mut text).is_err() {
///             return (StatusCode::BAD_REQUEST, "not utf-8 text\n").into_response();
///         }
///         text.to_uppercase().into_response()
///     }
/// }
///
/// let req = SyncRequest::new(http::Request::post("/").body("shout".into()).unwrap());
/// let resp = Upper.call(req);
/// assert_eq!(resp.into_body().collect().unwrap(), "SHOUT");
/// ```
pub trait SyncHandler: Send + Sync + 'static {
    /// Handles one request. Runs on a thread that may block.
    fn call(&self, request: SyncRequest) -> SyncResponse;

    /// Serves one websocket session: accept or deny `request`, then read and write the
    /// [`BlockingWebSocket`] until done. The default denies (the client gets a 403), so a
    /// handler that does not implement it serves no websockets.
    ///
    /// It runs on a blocking thread *for the whole session*: an adapter that runs it on a
    /// bounded pool (`amphi-sync-to-async`'s `SyncToAsync`) holds one of the pool's slots
    /// until it returns, so every open websocket takes a slot from the http requests. Size
    /// the pool for both, or serve busy websockets with an async handler.
    ///
    /// Returning ends the session: after `Ok` whoever runs the handler closes with 1000 if
    /// the handler accepted and did not close, and denies with a 403 if it never answered;
    /// after `Err` or a panic it closes with 1011 (accepted) or answers 500 (not answered).
    ///
    /// # Examples
    ///
    /// ```
    /// use amphi_core::{SyncBody, SyncHandler, SyncRequest, SyncResponse, SyncWebSocketRequest};
    /// use std::io;
    ///
    /// struct Echo;
    ///
    /// impl SyncHandler for Echo {
    ///     fn call(&self, _req: SyncRequest) -> SyncResponse {
    ///         http::Response::new(SyncBody::from("connect with a websocket"))
    ///     }
    ///
    ///     fn websocket(&self, request: SyncWebSocketRequest) -> io::Result<()> {
    ///         let ws = request.accept()?;
    ///         while let Some(message) = ws.recv()? {
    ///             ws.send(message)?;
    ///         }
    ///         Ok(())
    ///     }
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// The handler's own, logged by whoever runs it; see above for what the client gets.
    fn websocket(&self, request: SyncWebSocketRequest) -> io::Result<()> {
        request.deny()
    }
}

impl<H: SyncHandler + ?Sized> SyncHandler for Arc<H> {
    fn call(&self, request: SyncRequest) -> SyncResponse {
        (**self).call(request)
    }

    fn websocket(&self, request: SyncWebSocketRequest) -> io::Result<()> {
        (**self).websocket(request)
    }
}

impl<H: SyncHandler + ?Sized> SyncHandler for Box<H> {
    fn call(&self, request: SyncRequest) -> SyncResponse {
        (**self).call(request)
    }

    fn websocket(&self, request: SyncWebSocketRequest) -> io::Result<()> {
        (**self).websocket(request)
    }
}

/// A [`SyncHandler`] made from a closure; see [`sync_fn`].
#[derive(Clone)]
pub struct SyncFn<F> {
    f: F,
}

/// Makes a [`SyncHandler`] from a closure taking a [`SyncRequest`] and returning anything that
/// is [`IntoResponse<SyncBody>`](IntoResponse): a [`SyncResponse`], a status, a string,
/// bytes, a `(StatusCode, T)` pair, or a `Result` of those.
///
/// # Errors
///
/// A closure that returns `Err(error)` with an [`Error`](crate::Error) (or an `io::Error`,
/// such as a failed body read) fails the request: the server logs the error and maps its kind
/// to a status (see [`IntoResponse`]), as it does for an async handler's `Err`.
///
/// # Examples
///
/// ```
/// use amphi_core::{sync_fn, SyncBody, SyncHandler, SyncRequest};
///
/// let hello = sync_fn(|req: SyncRequest| {
///     http::Response::new(SyncBody::from(format!("hello from {}", req.path())))
/// });
/// let resp = hello.call(SyncRequest::new(http::Request::get("/there").body(Default::default()).unwrap()));
/// assert_eq!(resp.into_body().collect().unwrap(), "hello from /there");
/// ```
///
/// With `?` on a body read, and a plain string as the answer:
///
/// ```
/// use amphi_core::{sync_fn, Error, SyncHandler, SyncRequest};
/// use std::io::Read;
///
/// let upper = sync_fn(|mut req: SyncRequest| -> Result<String, Error> {
///     let mut text = String::new();
///     req.body_mut().read_to_string(&mut text)?; // a body over the limit: the server's 413
///     Ok(text.to_uppercase())
/// });
/// let resp = upper.call(SyncRequest::new(http::Request::post("/").body("shout".into()).unwrap()));
/// assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
/// assert_eq!(resp.into_body().collect().unwrap(), "SHOUT");
/// ```
pub fn sync_fn<F, R>(f: F) -> SyncFn<F>
where
    F: Fn(SyncRequest) -> R + Send + Sync + 'static,
    R: IntoResponse<SyncBody>,
{
    SyncFn { f }
}

impl<F, R> SyncHandler for SyncFn<F>
where
    F: Fn(SyncRequest) -> R + Send + Sync + 'static,
    R: IntoResponse<SyncBody>,
{
    fn call(&self, request: SyncRequest) -> SyncResponse {
        (self.f)(request).into_response()
    }
}

impl<F> SyncFn<F> {
    /// Serves websocket sessions on the same mount with `websocket`, a blocking closure
    /// taking a [`SyncWebSocketRequest`] (see [`SyncHandler::websocket`], which it
    /// implements); http requests stay with this handler.
    ///
    /// # Examples
    ///
    /// ```
    /// use amphi_core::{sync_fn, SyncBody, SyncRequest, SyncWebSocketRequest};
    ///
    /// let app = sync_fn(|_req: SyncRequest| http::Response::new(SyncBody::from("page")))
    ///     .websocket(|req: SyncWebSocketRequest| {
    ///         let ws = req.accept()?;
    ///         for message in &ws {
    ///             ws.send(message?)?;
    ///         }
    ///         Ok(())
    ///     });
    /// # let _ = app;
    /// ```
    pub fn websocket<G>(self, websocket: G) -> WithWebSocket<SyncFn<F>, G>
    where
        G: Fn(SyncWebSocketRequest) -> io::Result<()> + Send + Sync + 'static,
    {
        WithWebSocket::new(self, websocket)
    }
}

impl<H, G> SyncHandler for WithWebSocket<H, G>
where
    H: SyncHandler,
    G: Fn(SyncWebSocketRequest) -> io::Result<()> + Send + Sync + 'static,
{
    fn call(&self, request: SyncRequest) -> SyncResponse {
        self.http.call(request)
    }

    fn websocket(&self, request: SyncWebSocketRequest) -> io::Result<()> {
        (self.websocket)(request)
    }
}

impl<F> fmt::Debug for SyncFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncFn").finish_non_exhaustive()
    }
}
