//! The responses the server writes itself (404, 408, 413, 500, 503), and the checks a
//! handler's response passes before it goes out.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use amphi_core::{Error, ErrorKind};

use crate::access::{AccessRecord, Outcome};
use crate::body::ResponseBody;
use crate::error::Chain;

/// Whether a `Content-Length` the handler set disagrees with the `len` bytes its complete
/// body holds. hyper frames a body of known length by that length but writes the handler's
/// header as it is, so passing both on would write bytes past the declared end: a second,
/// forged response on an HTTP/1.1 keep-alive connection (release builds; debug builds of
/// hyper panic instead). Streamed bodies of unknown length are framed by the header itself,
/// and statuses that cannot have a body get none whatever the header says.
pub(crate) fn length_mismatch(status: StatusCode, headers: &http::HeaderMap, len: u64) -> bool {
    if status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
    {
        return false;
    }
    has(headers, &CONTENT_LENGTH)
        && headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .any(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) != Some(len))
}

/// Whether `headers` holds `name`. Requests and responses carry a handful of headers, and
/// comparing that many names is cheaper than hashing one; larger maps are looked up as usual.
#[inline]
pub(crate) fn has(headers: &http::HeaderMap, name: &http::HeaderName) -> bool {
    if headers.len() <= 8 {
        headers.keys().any(|k| k == name)
    } else {
        headers.contains_key(name)
    }
}

/// The first value of `name` in `headers`: looked up (hashed) only when [`has`] says it is
/// there, which for most headers asked about it is not.
#[inline]
pub(crate) fn get<'h>(
    headers: &'h http::HeaderMap,
    name: &http::HeaderName,
) -> Option<&'h http::HeaderValue> {
    if has(headers, name) {
        headers.get(name)
    } else {
        None
    }
}

/// Whether any `name` header in `headers` lists `token` in its comma-separated value
/// (case-insensitive), as `Connection: keep-alive, Upgrade` lists `upgrade`.
pub(crate) fn has_token(headers: &http::HeaderMap, name: &http::HeaderName, token: &str) -> bool {
    has(headers, name)
        && headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
}

/// The 500 for a handler whose `Content-Length` disagrees with its body.
pub(crate) fn length_misuse(record: &AccessRecord, len: u64) -> Response<Bytes> {
    tracing::error!(
        path = record.path(),
        body_len = len,
        "protocol misuse: the handler's content-length does not match its body"
    );
    plain(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
}

/// Wraps a complete response's body, recording it in the access log.
pub(crate) fn finish_full(
    response: Response<Bytes>,
    mut record: AccessRecord,
) -> Response<ResponseBody> {
    let len = response.body().len() as u64;
    let response =
        if !record.is_head() && length_mismatch(response.status(), response.headers(), len) {
            length_misuse(&record, len)
        } else {
            response
        };
    let (mut parts, mut body) = response.into_parts();
    record.status = Some(parts.status);
    if record.is_head() {
        // HEAD gets the headers a GET would, without the body. hyper leaves the body out over
        // HTTP/1.1 but not over HTTP/2, so it is left out here for both.
        if !body.is_empty() && !parts.headers.contains_key(CONTENT_LENGTH) {
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        body = Bytes::new();
    }
    record.bytes = body.len() as u64;
    // A complete body is handed to hyper in one frame; hyper may drop it without polling
    // (HEAD), so it counts as complete now.
    if record.outcome == Outcome::Running {
        record.outcome = Outcome::Complete;
    }
    Response::from_parts(parts, ResponseBody::full(body, record))
}

pub(crate) fn full(status: StatusCode, headers: http::HeaderMap, body: Bytes) -> Response<Bytes> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from_static(text.as_bytes()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub(crate) fn too_large() -> Response<Bytes> {
    plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
}

/// The response for a handler that failed before its response started.
pub(crate) fn error_response(
    err: &Error,
    body_too_large: bool,
    body_too_slow: bool,
) -> Response<Bytes> {
    match err.kind() {
        ErrorKind::Saturated => {
            tracing::debug!(error = %err, "blocking pool saturated");
            let mut r = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "server busy, retry later\n",
            );
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        ErrorKind::BodyTooLarge => {
            tracing::debug!(error = %err, "request body too large");
            too_large()
        }
        ErrorKind::TimedOut if body_too_slow => {
            tracing::debug!(error = %err, "request body too slow");
            plain(StatusCode::REQUEST_TIMEOUT, "request body too slow\n")
        }
        _ if body_too_large => too_large(),
        ErrorKind::Panicked => {
            tracing::error!(error = %err, "handler panicked before its response started");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
        }
        ErrorKind::Protocol => {
            tracing::error!(error = %Chain(err), "protocol misuse by a handler");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
        }
        ErrorKind::Disconnected | ErrorKind::Cancelled => {
            tracing::debug!(error = %err, "handler stopped: client gone");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
        }
        _ => {
            tracing::error!(error = %Chain(err), "handler failed before its response started");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n")
        }
    }
}
