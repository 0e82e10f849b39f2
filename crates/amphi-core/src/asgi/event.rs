//! The events an async handler receives and the messages it sends.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

/// What `receive` yields to an async handler. New events may be added in minor releases.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A piece of the request body (ASGI `http.request`); `more_body: false` marks the last.
    Request {
        /// The bytes, possibly empty.
        body: Bytes,
        /// Whether more pieces follow.
        more_body: bool,
    },
    /// The client went away, or the response is complete (ASGI `http.disconnect`).
    Disconnect,
    /// The client asks to open a websocket (ASGI `websocket.connect`).
    WebSocketConnect,
    /// A websocket message from the client (ASGI `websocket.receive`).
    WebSocketReceive(WebSocketData),
    /// The websocket closed (ASGI `websocket.disconnect`); 1005 when no code was given.
    WebSocketDisconnect {
        /// The close code.
        code: u16,
        /// The close reason, possibly empty.
        reason: String,
    },
    /// The server is starting (ASGI `lifespan.startup`).
    Startup,
    /// The server is shutting down (ASGI `lifespan.shutdown`).
    Shutdown,
}

/// The payload of a websocket message.
///
/// `From` conversions pick the kind: strings are text, bytes are binary.
///
/// # Examples
///
/// ```
/// use amphi_core::WebSocketData;
///
/// assert_eq!(WebSocketData::from("hi"), WebSocketData::Text("hi".into()));
/// assert_eq!(WebSocketData::from(vec![1u8, 2]), WebSocketData::Binary(vec![1u8, 2].into()));
/// assert_eq!(WebSocketData::from("hi").as_bytes(), b"hi");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebSocketData {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Bytes),
}

impl WebSocketData {
    /// The payload's bytes, whichever kind it is.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            WebSocketData::Text(s) => s.as_bytes(),
            WebSocketData::Binary(b) => b,
        }
    }

    /// The text, for a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            WebSocketData::Text(s) => Some(s),
            WebSocketData::Binary(_) => None,
        }
    }

    /// Whether it is a text message.
    pub fn is_text(&self) -> bool {
        matches!(self, WebSocketData::Text(_))
    }

    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<String> for WebSocketData {
    fn from(s: String) -> Self {
        WebSocketData::Text(s)
    }
}

impl From<&str> for WebSocketData {
    fn from(s: &str) -> Self {
        WebSocketData::Text(s.to_owned())
    }
}

impl From<Bytes> for WebSocketData {
    fn from(b: Bytes) -> Self {
        WebSocketData::Binary(b)
    }
}

impl From<Vec<u8>> for WebSocketData {
    fn from(v: Vec<u8>) -> Self {
        WebSocketData::Binary(v.into())
    }
}

impl From<&'static [u8]> for WebSocketData {
    fn from(b: &'static [u8]) -> Self {
        WebSocketData::Binary(Bytes::from_static(b))
    }
}

/// What an async handler passes to `send`. New messages may be added in minor releases.
///
/// The order rules (start before body, one start, nothing after the end, messages that fit
/// the scope) are checked by [`Sender`](crate::Sender); breaking them is an
/// [`ErrorKind::Protocol`](crate::ErrorKind::Protocol) error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// Starts the response (ASGI `http.response.start`).
    ResponseStart {
        /// The status.
        status: StatusCode,
        /// The headers.
        headers: HeaderMap,
        /// Whether [`Message::ResponseTrailers`] will follow the body.
        trailers: bool,
    },
    /// A piece of the response body (ASGI `http.response.body`); `more_body: false` ends it.
    ResponseBody {
        /// The bytes, possibly empty.
        body: Bytes,
        /// Whether more pieces follow.
        more_body: bool,
    },
    /// Response trailers (ASGI `http.response.trailers`); only after a start that announced
    /// them and the last body piece.
    ResponseTrailers {
        /// The trailer fields.
        headers: HeaderMap,
        /// Whether more trailers follow.
        more_trailers: bool,
    },
    /// Accepts a websocket (ASGI `websocket.accept`).
    WebSocketAccept {
        /// The chosen subprotocol.
        subprotocol: Option<String>,
        /// Extra response headers.
        headers: HeaderMap,
    },
    /// Sends a websocket message (ASGI `websocket.send`).
    WebSocketSend(WebSocketData),
    /// Closes the websocket (ASGI `websocket.close`); before accept it denies the handshake
    /// (the client gets a 403, and `code` and `reason` are not sent).
    ///
    /// After accept, `code` must be one a server may send (RFC 6455, section 7.4: 1000-1003,
    /// 1007-1014 or 3000-4999; never 1005, 1006 or 1015) and `reason` at most 123 bytes, or
    /// [`Sender`](crate::Sender) refuses it.
    WebSocketClose {
        /// The close code (1000 for a normal close).
        code: u16,
        /// The reason.
        reason: String,
    },
    /// Denies the websocket handshake with a response of the app's own instead of a 403
    /// (ASGI extension `websocket.http.response.start`); only before accept, and followed by
    /// [`Message::WebSocketResponseBody`]s up to one with `more_body: false`.
    WebSocketResponseStart {
        /// The status.
        status: StatusCode,
        /// The headers.
        headers: HeaderMap,
    },
    /// A piece of a denial response's body (ASGI extension `websocket.http.response.body`);
    /// `more_body: false` ends it, and the session.
    WebSocketResponseBody {
        /// The bytes, possibly empty.
        body: Bytes,
        /// Whether more pieces follow.
        more_body: bool,
    },
    /// Startup went well (ASGI `lifespan.startup.complete`).
    StartupComplete,
    /// Startup failed; the server stops before listening (ASGI `lifespan.startup.failed`).
    StartupFailed {
        /// Why.
        message: String,
    },
    /// Shutdown finished (ASGI `lifespan.shutdown.complete`).
    ShutdownComplete,
    /// Shutdown failed (ASGI `lifespan.shutdown.failed`).
    ShutdownFailed {
        /// Why.
        message: String,
    },
}

impl Message {
    /// `http.response.start` with `status`, `headers` and no trailers.
    pub fn start(status: StatusCode, headers: HeaderMap) -> Message {
        Message::ResponseStart {
            status,
            headers,
            trailers: false,
        }
    }

    /// `http.response.body` with `body`; `more_body` says whether more follows.
    pub fn body(body: impl Into<Bytes>, more_body: bool) -> Message {
        Message::ResponseBody {
            body: body.into(),
            more_body,
        }
    }

    /// The ASGI `type` of the message, for logs and errors.
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::ResponseStart { .. } => "http.response.start",
            Message::ResponseBody { .. } => "http.response.body",
            Message::ResponseTrailers { .. } => "http.response.trailers",
            Message::WebSocketAccept { .. } => "websocket.accept",
            Message::WebSocketSend(_) => "websocket.send",
            Message::WebSocketClose { .. } => "websocket.close",
            Message::WebSocketResponseStart { .. } => "websocket.http.response.start",
            Message::WebSocketResponseBody { .. } => "websocket.http.response.body",
            Message::StartupComplete => "lifespan.startup.complete",
            Message::StartupFailed { .. } => "lifespan.startup.failed",
            Message::ShutdownComplete => "lifespan.shutdown.complete",
            Message::ShutdownFailed { .. } => "lifespan.shutdown.failed",
        }
    }
}

impl Event {
    /// The ASGI `type` of the event, for logs and errors.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::Request { .. } => "http.request",
            Event::Disconnect => "http.disconnect",
            Event::WebSocketConnect => "websocket.connect",
            Event::WebSocketReceive(_) => "websocket.receive",
            Event::WebSocketDisconnect { .. } => "websocket.disconnect",
            Event::Startup => "lifespan.startup",
            Event::Shutdown => "lifespan.shutdown",
        }
    }
}
