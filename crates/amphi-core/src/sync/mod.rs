//! The sync (WSGI-like) side: handlers that run on a blocking thread.

mod body;
mod request;
mod response;

use std::fmt;
use std::sync::Arc;

use crate::IntoResponse;

pub use body::{BlockingBody, IntoChunks};
pub use request::SyncRequest;
pub use response::{BodyWriter, SyncBody, SyncResponse};

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
}

impl<H: SyncHandler + ?Sized> SyncHandler for Arc<H> {
    fn call(&self, request: SyncRequest) -> SyncResponse {
        (**self).call(request)
    }
}

impl<H: SyncHandler + ?Sized> SyncHandler for Box<H> {
    fn call(&self, request: SyncRequest) -> SyncResponse {
        (**self).call(request)
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

impl<F> fmt::Debug for SyncFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncFn").finish_non_exhaustive()
    }
}
