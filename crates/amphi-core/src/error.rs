//! The one error type every amphi crate returns, with kinds a caller can act on.

use std::error::Error as StdError;
use std::fmt;
use std::io;

type Source = Box<dyn StdError + Send + Sync>;

/// What went wrong, in terms a caller can act on.
///
/// Match on it through [`Error::kind`] or use the `is_*` predicates on [`Error`].
/// New kinds may be added in minor releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The client went away: the connection closed or was reset before the exchange finished.
    Disconnected,
    /// The request body is larger than the configured limit (a server answers 413).
    BodyTooLarge,
    /// The request body ended before its declared `Content-Length`.
    IncompleteBody,
    /// A handler broke the event protocol: a body before the response start, a second start,
    /// a message after the end, or a message that does not belong to the scope.
    Protocol,
    /// No blocking slot came free within the configured wait (a server answers 503).
    Saturated,
    /// Blocking or async work panicked; the error carries the panic message.
    Panicked,
    /// The work was cancelled before it finished (its caller went away or shut down).
    Cancelled,
    /// The call was made from a place that cannot serve it, such as blocking on a future from a
    /// thread that drives async tasks; the message says what to do instead.
    WrongContext,
    /// The handler itself failed; the source holds its error.
    Handler,
    /// A deadline passed.
    TimedOut,
    /// Anything else; the source holds the cause.
    Other,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Disconnected => "client disconnected",
            ErrorKind::BodyTooLarge => "request body exceeds the limit",
            ErrorKind::IncompleteBody => "request body ended before its content-length",
            ErrorKind::Protocol => "protocol misuse",
            ErrorKind::Saturated => "no blocking slot free within the queue timeout",
            ErrorKind::Panicked => "handler panicked",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::WrongContext => "called from the wrong context",
            ErrorKind::Handler => "handler error",
            ErrorKind::TimedOut => "timed out",
            ErrorKind::Other => "error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error type of amphi.
///
/// Opaque on purpose: ask it what happened with [`kind`](Error::kind) or the `is_*`
/// predicates, read the detail from its `Display`, and walk the cause with
/// [`source`](std::error::Error::source).
///
/// # Examples
///
/// ```
/// use amphi_core::{Error, ErrorKind};
///
/// let err = Error::new(ErrorKind::Saturated).with_message("64 of 64 blocking slots busy");
/// assert!(err.is_saturated());
/// assert_eq!(err.to_string(), "no blocking slot free within the queue timeout: 64 of 64 blocking slots busy");
/// ```
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: Option<Box<str>>,
    source: Option<Source>,
}

impl Error {
    /// An error of `kind`, with no further detail.
    pub fn new(kind: ErrorKind) -> Error {
        Error {
            inner: Box::new(Inner {
                kind,
                message: None,
                source: None,
            }),
        }
    }

    /// Adds a detail message, shown after the kind in `Display`.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Error {
        self.inner.message = Some(message.into().into_boxed_str());
        self
    }

    /// Adds the underlying cause, returned by `source()`.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<Source>) -> Error {
        self.inner.source = Some(source.into());
        self
    }

    /// A protocol-misuse error with a message saying which rule was broken.
    pub fn protocol(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Protocol).with_message(message)
    }

    /// A handler error wrapping the handler's own error.
    pub fn handler(source: impl Into<Source>) -> Error {
        Error::new(ErrorKind::Handler).with_source(source)
    }

    /// A panic, carrying the panic payload's message when it is a string.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Error {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "non-string panic payload".to_owned()
        };
        Error::new(ErrorKind::Panicked).with_message(message)
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The detail message, if any.
    pub fn message(&self) -> Option<&str> {
        self.inner.message.as_deref()
    }

    /// The client went away.
    pub fn is_disconnected(&self) -> bool {
        self.kind() == ErrorKind::Disconnected
    }

    /// The request body exceeded its limit.
    pub fn is_body_too_large(&self) -> bool {
        self.kind() == ErrorKind::BodyTooLarge
    }

    /// The request body ended before its declared `Content-Length`.
    pub fn is_incomplete_body(&self) -> bool {
        self.kind() == ErrorKind::IncompleteBody
    }

    /// A handler broke the event protocol.
    pub fn is_protocol(&self) -> bool {
        self.kind() == ErrorKind::Protocol
    }

    /// No blocking slot came free in time.
    pub fn is_saturated(&self) -> bool {
        self.kind() == ErrorKind::Saturated
    }

    /// The work panicked.
    pub fn is_panic(&self) -> bool {
        self.kind() == ErrorKind::Panicked
    }

    /// The work was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.kind() == ErrorKind::Cancelled
    }

    /// The call was made from a context that cannot serve it.
    pub fn is_wrong_context(&self) -> bool {
        self.kind() == ErrorKind::WrongContext
    }

    /// A deadline passed.
    pub fn is_timeout(&self) -> bool {
        self.kind() == ErrorKind::TimedOut
    }

    /// Finds the amphi error inside an `io::Error` returned by a [`BlockingBody`] read or a
    /// [`BodyWriter`] write, if there is one.
    ///
    /// [`BlockingBody`]: crate::BlockingBody
    /// [`BodyWriter`]: crate::BodyWriter
    pub fn from_io(err: &io::Error) -> Option<&Error> {
        err.get_ref().and_then(|e| e.downcast_ref::<Error>())
    }

    /// Turns this error into an `io::Error` whose kind matches (see [`BlockingBody`] for the
    /// mapping) and whose inner error is `self`, so [`Error::from_io`] finds it again.
    ///
    /// [`BlockingBody`]: crate::BlockingBody
    pub fn into_io(self) -> io::Error {
        let kind = match self.kind() {
            ErrorKind::Disconnected | ErrorKind::Cancelled => io::ErrorKind::ConnectionAborted,
            ErrorKind::BodyTooLarge => io::ErrorKind::InvalidData,
            ErrorKind::IncompleteBody => io::ErrorKind::UnexpectedEof,
            ErrorKind::TimedOut => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }
}

impl From<io::Error> for Error {
    /// Recovers the amphi error inside `err` when there is one; otherwise wraps `err` as
    /// [`ErrorKind::Other`].
    fn from(err: io::Error) -> Error {
        if err.get_ref().is_some_and(|e| e.is::<Error>()) {
            let inner = err
                .into_inner()
                .expect("checked that an inner error exists");
            *inner
                .downcast::<Error>()
                .expect("checked that the inner error is an amphi Error")
        } else {
            Error::new(ErrorKind::Other).with_source(err)
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind);
        if let Some(m) = &self.inner.message {
            d.field("message", m);
        }
        if let Some(s) = &self.inner.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.inner.kind.as_str())?;
        if let Some(m) = &self.inner.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_round_trip_keeps_kind() {
        let io = Error::new(ErrorKind::BodyTooLarge).into_io();
        assert_eq!(io.kind(), io::ErrorKind::InvalidData);
        assert!(Error::from_io(&io).unwrap().is_body_too_large());
        let back = Error::from(io);
        assert!(back.is_body_too_large());
    }

    #[test]
    fn foreign_io_error_is_other_with_source() {
        let err = Error::from(io::Error::new(io::ErrorKind::BrokenPipe, "pipe"));
        assert_eq!(err.kind(), ErrorKind::Other);
        assert_eq!(err.source().unwrap().to_string(), "pipe");
    }

    #[test]
    fn panic_payloads() {
        let e = Error::from_panic(&"boom");
        assert!(e.is_panic());
        assert_eq!(e.message(), Some("boom"));
        let e = Error::from_panic(&String::from("bang"));
        assert_eq!(e.to_string(), "handler panicked: bang");
        let e = Error::from_panic(&42u32);
        assert_eq!(e.message(), Some("non-string panic payload"));
    }
}
