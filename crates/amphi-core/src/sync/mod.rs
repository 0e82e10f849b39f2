//! The sync (WSGI-like) side: handlers that run on a blocking thread.

mod body;
mod request;
mod response;

use std::fmt;
use std::sync::Arc;

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
/// use amphi_core::{SyncHandler, SyncRequest, SyncResponse, SyncBody};
/// use std::io::Read;
///
/// struct Upper;
///
/// impl SyncHandler for Upper {
///     fn call(&self, mut req: SyncRequest) -> SyncResponse {
///         let mut text = String::new();
///         if req.body_mut().read_to_string(&mut text).is_err() {
///             return http::Response::builder().status(400).body(SyncBody::empty()).unwrap();
///         }
///         http::Response::new(SyncBody::from(text.to_uppercase()))
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

/// Makes a [`SyncHandler`] from a `Fn(SyncRequest) -> SyncResponse` closure.
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
pub fn sync_fn<F>(f: F) -> SyncFn<F>
where
    F: Fn(SyncRequest) -> SyncResponse + Send + Sync + 'static,
{
    SyncFn { f }
}

impl<F> SyncHandler for SyncFn<F>
where
    F: Fn(SyncRequest) -> SyncResponse + Send + Sync + 'static,
{
    fn call(&self, request: SyncRequest) -> SyncResponse {
        (self.f)(request)
    }
}

impl<F> fmt::Debug for SyncFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncFn").finish_non_exhaustive()
    }
}
