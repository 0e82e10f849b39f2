//! What a handler may return: [`IntoResponse`], for both handler kinds' bodies.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::StatusCode;

use crate::{AsyncBody, Error, SyncBody};

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::SyncBody {}
    impl Sealed for crate::AsyncBody {}
}

/// The body of a response built by [`IntoResponse`]: [`SyncBody`] (the sync side) or
/// [`AsyncBody`] (the async side).
///
/// It is sealed: the two bodies are the only ones. A bound on it lets one `IntoResponse`
/// implementation serve handlers of both kinds.
///
/// # Examples
///
/// ```
/// use amphi_core::{AsyncBody, IntoResponse, ResponseBody, SyncBody};
/// use http::StatusCode;
///
/// /// An app error, answered the same way by sync and async handlers.
/// struct NotFound;
///
/// impl<B: ResponseBody> IntoResponse<B> for NotFound {
///     fn into_response(self) -> http::Response<B> {
///         (StatusCode::NOT_FOUND, "no such thing\n").into_response()
///     }
/// }
///
/// let sync: http::Response<SyncBody> = NotFound.into_response();
/// let not_sync: http::Response<AsyncBody> = NotFound.into_response();
/// assert_eq!(sync.status(), 404);
/// assert_eq!(not_sync.status(), 404);
/// ```
pub trait ResponseBody: sealed::Sealed + Default + From<Bytes> + Send + 'static {}

impl ResponseBody for SyncBody {}
impl ResponseBody for AsyncBody {}

/// A value a handler can return: [`sync_fn`](crate::sync_fn) closures return an
/// `IntoResponse<SyncBody>`, [`async_fn`](crate::async_fn) closures an
/// `IntoResponse<AsyncBody>`.
///
/// | value | response |
/// |---|---|
/// | `http::Response<B>` | as it is |
/// | [`SyncBody`] / [`AsyncBody`] | 200 with that body |
/// | `()` | 200, empty |
/// | [`StatusCode`] | that status, empty |
/// | `&'static str`, `String` | 200, `text/plain; charset=utf-8` |
/// | `Bytes`, `Vec<u8>` | 200, `application/octet-stream` |
/// | `(StatusCode, T)` | `T`'s response with that status |
/// | `Json<T>` (feature `json`) | 200, `application/json` |
/// | `Result<T, E>` | `T`'s response or `E`'s |
/// | [`Error`], `io::Error` | a handler failure (below) |
///
/// The implementations are shallow on purpose: one impl per type, no blanket impl over
/// closures or traits, so a type that does not fit is named in the compiler's error. Your own
/// error types implement it in a few lines (see [`ResponseBody`]).
///
/// # Errors as responses
///
/// An [`Error`] is not an answer but a *handler failure*: its response (a 500, empty) carries
/// the error to whoever runs the handler, which takes it back out with
/// [`plumbing::take_handler_error`](crate::plumbing::take_handler_error). `async_fn` returns it
/// as its future's `Err`, and `amphi-sync-to-async`'s `SyncToAsync` does the same for a sync
/// handler, so the server logs it with its source chain and maps its kind to a status as it
/// does for any handler error: `BodyTooLarge` is a 413, a body too slow a 408, `Saturated` a
/// 503, anything else a 500 and an error log. So `?` works in handlers of both kinds:
///
/// ```
/// use amphi_core::{async_fn, AsyncRequest, Error};
///
/// let echo = async_fn(|req: AsyncRequest| async move {
///     let body = req.into_body().to_bytes().await?; // a body over the limit: 413
///     Ok::<_, Error>(body)
/// });
/// ```
///
/// An `io::Error` becomes an [`Error`] first (`Error::from`, which finds the amphi error a
/// [`BlockingBody`](crate::BlockingBody) read put inside it). The status of a
/// `(StatusCode, Err(error))` does not matter: the error wins.
///
/// # Examples
///
/// ```
/// use amphi_core::{sync_fn, SyncHandler, SyncRequest};
/// use http::StatusCode;
///
/// let hello = sync_fn(|req: SyncRequest| match req.path() {
///     "/hello" => Ok("hello\n"),
///     _ => Err((StatusCode::NOT_FOUND, "not found\n")),
/// });
///
/// let resp = hello.call(SyncRequest::new(http::Request::get("/nope").body(Default::default()).unwrap()));
/// assert_eq!(resp.status(), StatusCode::NOT_FOUND);
/// assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
/// assert_eq!(resp.into_body().collect().unwrap(), "not found\n");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a response a handler can return",
    label = "not an `IntoResponse<{B}>`",
    note = "a handler returns an http::Response of its body type, its body, (), a StatusCode, a \
            string, Bytes, Vec<u8>, (StatusCode, T), Json<T> (feature `json`), or a Result of \
            those; an error type becomes one through amphi_core::Error (`?`, Error::handler) \
            or by implementing IntoResponse for it"
)]
pub trait IntoResponse<B> {
    /// Builds the response.
    fn into_response(self) -> http::Response<B>;
}

fn with_content_type<B>(body: B, content_type: &'static str) -> http::Response<B> {
    let mut response = http::Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

const TEXT: &str = "text/plain; charset=utf-8";
const OCTETS: &str = "application/octet-stream";

impl<B> IntoResponse<B> for http::Response<B> {
    fn into_response(self) -> http::Response<B> {
        self
    }
}

impl IntoResponse<SyncBody> for SyncBody {
    fn into_response(self) -> http::Response<SyncBody> {
        http::Response::new(self)
    }
}

impl IntoResponse<AsyncBody> for AsyncBody {
    fn into_response(self) -> http::Response<AsyncBody> {
        http::Response::new(self)
    }
}

impl<B: ResponseBody> IntoResponse<B> for () {
    fn into_response(self) -> http::Response<B> {
        http::Response::new(B::default())
    }
}

impl<B: ResponseBody> IntoResponse<B> for StatusCode {
    fn into_response(self) -> http::Response<B> {
        let mut response = http::Response::new(B::default());
        *response.status_mut() = self;
        response
    }
}

impl<B: ResponseBody> IntoResponse<B> for &'static str {
    fn into_response(self) -> http::Response<B> {
        with_content_type(B::from(Bytes::from_static(self.as_bytes())), TEXT)
    }
}

impl<B: ResponseBody> IntoResponse<B> for String {
    fn into_response(self) -> http::Response<B> {
        with_content_type(B::from(Bytes::from(self)), TEXT)
    }
}

impl<B: ResponseBody> IntoResponse<B> for Bytes {
    fn into_response(self) -> http::Response<B> {
        with_content_type(B::from(self), OCTETS)
    }
}

impl<B: ResponseBody> IntoResponse<B> for Vec<u8> {
    fn into_response(self) -> http::Response<B> {
        with_content_type(B::from(Bytes::from(self)), OCTETS)
    }
}

impl<B, T: IntoResponse<B>> IntoResponse<B> for (StatusCode, T) {
    fn into_response(self) -> http::Response<B> {
        let mut response = self.1.into_response();
        *response.status_mut() = self.0;
        response
    }
}

impl<B, T: IntoResponse<B>, E: IntoResponse<B>> IntoResponse<B> for Result<T, E> {
    fn into_response(self) -> http::Response<B> {
        match self {
            Ok(value) => value.into_response(),
            Err(err) => err.into_response(),
        }
    }
}

impl<B: ResponseBody> IntoResponse<B> for Error {
    fn into_response(self) -> http::Response<B> {
        let mut response: http::Response<B> = StatusCode::INTERNAL_SERVER_ERROR.into_response();
        response
            .extensions_mut()
            .insert(Failure(Arc::new(Mutex::new(Some(self)))));
        response
    }
}

impl<B: ResponseBody> IntoResponse<B> for io::Error {
    fn into_response(self) -> http::Response<B> {
        Error::from(self).into_response()
    }
}

/// A handler's error on its way out in a response's extensions. `http::Extensions` wants
/// `Clone` and `Error` is not, so the error sits behind a shared slot that the first taker
/// empties. Only a failing response pays for it.
#[derive(Clone)]
struct Failure(Arc<Mutex<Option<Error>>>);

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Failure").finish_non_exhaustive()
    }
}

/// Takes out the [`Error`] a handler returned as its response (see [`IntoResponse`]'s
/// "Errors as responses"), if it did: what runs a handler (an adapter, a server, a test)
/// calls it on each response, and turns the error back into its own `Err`.
///
/// On a response that carries no error it looks at the extensions and allocates nothing.
///
/// # Examples
///
/// ```
/// use amphi_core::plumbing::take_handler_error;
/// use amphi_core::{sync_fn, Error, ErrorKind, SyncHandler, SyncRequest};
///
/// let fails = sync_fn(|_req: SyncRequest| Err::<(), _>(Error::new(ErrorKind::TimedOut)));
/// let mut resp = fails.call(SyncRequest::new(http::Request::new(Default::default())));
/// assert!(take_handler_error(&mut resp).is_some_and(|e| e.is_timeout()));
/// assert!(take_handler_error(&mut resp).is_none(), "taken once");
/// ```
pub fn take_handler_error<B>(response: &mut http::Response<B>) -> Option<Error> {
    let Failure(slot) = response.extensions_mut().remove::<Failure>()?;
    // Every operation on the slot is a single take, so a poisoned lock holds a whole value.
    let error = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    error
}

/// A JSON response: `T` serialized with `serde_json`, sent as `application/json`.
///
/// Available with the `json` feature (of `amphi-core`, or of the `amphi` facade).
///
/// # Errors
///
/// A value that cannot be serialized (a map with non-string keys, a failing `Serialize`
/// impl) is a handler failure of [`ErrorKind::Handler`](crate::ErrorKind::Handler), with
/// serde_json's error as its source: the server answers 500 and logs it.
///
/// # Examples
///
/// ```
/// use amphi_core::{async_fn, AsyncRequest, Json};
///
/// let info = async_fn(|req: AsyncRequest| async move {
///     Json(serde_json::json!({ "path": req.uri().path() }))
/// });
///
/// # futures_executor::block_on(async {
/// let resp = amphi_core::testing::call(&std::sync::Arc::new(info), http::Request::get("/x").body(Default::default()).unwrap()).await.unwrap();
/// assert_eq!(resp.headers["content-type"], "application/json");
/// assert_eq!(resp.body, r#"{"path":"/x"}"#);
/// # });
/// ```
#[cfg(feature = "json")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

#[cfg(feature = "json")]
impl<B: ResponseBody, T: serde::Serialize> IntoResponse<B> for Json<T> {
    fn into_response(self) -> http::Response<B> {
        match serde_json::to_vec(&self.0) {
            Ok(json) => with_content_type(B::from(Bytes::from(json)), "application/json"),
            Err(e) => Error::new(crate::ErrorKind::Handler)
                .with_message("cannot serialize the json response")
                .with_source(e)
                .into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn sync<T: IntoResponse<SyncBody>>(value: T) -> (http::Response<()>, Bytes) {
        let (parts, body) = value.into_response().into_parts();
        let bytes = body.collect().expect("a body in memory");
        (http::Response::from_parts(parts, ()), bytes)
    }

    fn content_type<B>(response: &http::Response<B>) -> Option<&str> {
        response
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().expect("an ascii content-type"))
    }

    #[test]
    fn strings_are_utf8_text() {
        for (response, body) in [sync("hi"), sync(String::from("hi"))] {
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(content_type(&response), Some(TEXT));
            assert_eq!(body, "hi");
        }
    }

    #[test]
    fn bytes_are_octets() {
        for (response, body) in [sync(Bytes::from_static(b"\x00\x01")), sync(vec![0u8, 1])] {
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(content_type(&response), Some(OCTETS));
            assert_eq!(body, &b"\x00\x01"[..]);
        }
    }

    #[test]
    fn unit_and_status_are_empty_without_a_content_type() {
        let (response, body) = sync(());
        assert_eq!((response.status(), body.len()), (StatusCode::OK, 0));
        assert_eq!(content_type(&response), None);
        let (response, body) = sync(StatusCode::NO_CONTENT);
        assert_eq!((response.status(), body.len()), (StatusCode::NO_CONTENT, 0));
        assert_eq!(content_type(&response), None);
    }

    #[test]
    fn a_status_pair_keeps_the_inner_headers() {
        let (response, body) = sync((StatusCode::IM_A_TEAPOT, "short and stout"));
        assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(content_type(&response), Some(TEXT));
        assert_eq!(body, "short and stout");
    }

    #[test]
    fn a_response_and_a_body_pass_through() {
        let mut original = http::Response::new(SyncBody::from("as is"));
        *original.status_mut() = StatusCode::ACCEPTED;
        original
            .headers_mut()
            .insert("x-kept", HeaderValue::from_static("1"));
        let (response, body) = sync(original);
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.headers()["x-kept"], "1");
        assert_eq!(content_type(&response), None);
        assert_eq!(body, "as is");

        let response = AsyncBody::from("streamed").into_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body().exact_len(), Some(8));
    }

    #[test]
    fn results_pick_their_side() {
        let ok: Result<&str, StatusCode> = Ok("fine");
        assert_eq!(sync(ok).1, "fine");
        let err: Result<&str, StatusCode> = Err(StatusCode::BAD_REQUEST);
        assert_eq!(sync(err).0.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn an_error_travels_in_the_response_and_is_taken_once() {
        let err = Error::new(ErrorKind::BodyTooLarge).with_message("over");
        let mut response: http::Response<AsyncBody> = Err::<(), _>(err).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        // A clone of the response's extensions shares the slot: the error comes out once.
        let copy = response.extensions().clone();
        let taken = take_handler_error(&mut response).expect("the error");
        assert!(taken.is_body_too_large());
        assert_eq!(taken.message(), Some("over"));
        assert!(take_handler_error(&mut response).is_none());
        let mut again = http::Response::new(());
        *again.extensions_mut() = copy;
        assert!(take_handler_error(&mut again).is_none());
    }

    #[test]
    fn the_status_of_a_failing_pair_does_not_hide_the_error() {
        let mut response: http::Response<SyncBody> =
            (StatusCode::OK, Error::new(ErrorKind::Saturated)).into_response();
        assert!(take_handler_error(&mut response).is_some_and(|e| e.is_saturated()));
    }

    #[test]
    fn an_io_error_keeps_the_amphi_error_inside_it() {
        let io = Error::new(ErrorKind::TimedOut).into_io();
        let mut response: http::Response<SyncBody> = io.into_response();
        assert!(take_handler_error(&mut response).is_some_and(|e| e.is_timeout()));

        let foreign = io::Error::new(io::ErrorKind::PermissionDenied, "no");
        let mut response: http::Response<SyncBody> = foreign.into_response();
        let err = take_handler_error(&mut response).expect("the error");
        assert_eq!(err.kind(), ErrorKind::Other);
    }

    #[test]
    fn a_plain_response_carries_no_error() {
        let mut response: http::Response<SyncBody> = "fine".into_response();
        assert!(take_handler_error(&mut response).is_none());
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_is_serialized_with_its_content_type() {
        let (response, body) = sync(Json(serde_json::json!({ "a": [1, 2] })));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(content_type(&response), Some("application/json"));
        assert_eq!(body, r#"{"a":[1,2]}"#);
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_that_cannot_be_serialized_is_a_handler_failure() {
        // serde_json refuses maps whose keys are not strings.
        let map: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let mut response: http::Response<SyncBody> = Json(map).into_response();
        let err = take_handler_error(&mut response).expect("a failure");
        assert_eq!(err.kind(), ErrorKind::Handler);
        assert!(std::error::Error::source(&err).is_some());
    }
}
