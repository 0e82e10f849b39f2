//! The error a server returns while starting, serving or stopping.

use std::error::Error as StdError;
use std::fmt;
use std::io;

#[derive(Debug)]
enum Kind {
    Bind,
    Startup,
    Routes,
    Io,
    Tls,
}

/// Why the server could not start, or failed while running.
///
/// Opaque on purpose: ask it what happened with the `is_*` predicates, read the detail from its
/// `Display`, and walk the cause with [`source`](std::error::Error::source).
///
/// # Examples
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use amphi_server::{Router, Server};
///
/// // Port 1 on a non-routable address cannot be bound.
/// let err = Server::new(Router::new()).bind("192.0.2.1:1").await.unwrap_err();
/// assert!(err.is_bind());
/// # });
/// ```
pub struct ServeError {
    kind: Kind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl ServeError {
    pub(crate) fn bind(message: impl Into<String>, source: io::Error) -> ServeError {
        ServeError {
            kind: Kind::Bind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    pub(crate) fn startup(message: impl Into<String>) -> ServeError {
        ServeError {
            kind: Kind::Startup,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn routes(message: impl Into<String>) -> ServeError {
        ServeError {
            kind: Kind::Routes,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn io(message: impl Into<String>, source: io::Error) -> ServeError {
        ServeError {
            kind: Kind::Io,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// What went wrong, without the kind's prefix.
    pub(crate) fn detail(&self) -> &str {
        &self.message
    }

    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn tls(
        message: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> ServeError {
        ServeError {
            kind: Kind::Tls,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn tls_message(message: impl Into<String>) -> ServeError {
        ServeError {
            kind: Kind::Tls,
            message: message.into(),
            source: None,
        }
    }

    /// The listening socket could not be opened (address in use, permission denied, ...).
    pub fn is_bind(&self) -> bool {
        matches!(self.kind, Kind::Bind)
    }

    /// A handler's lifespan startup failed (it sent `lifespan.startup.failed`, or panicked);
    /// the server did not listen.
    pub fn is_startup(&self) -> bool {
        matches!(self.kind, Kind::Startup)
    }

    /// The router is not valid: two handlers mounted at one prefix.
    pub fn is_routes(&self) -> bool {
        matches!(self.kind, Kind::Routes)
    }

    /// An I/O error while serving, other than one connection failing.
    pub fn is_io(&self) -> bool {
        matches!(self.kind, Kind::Io)
    }

    /// The TLS settings cannot be used (`tls` feature): a certificate, key or CA file that is
    /// missing, unreadable or holds nothing usable, or a key that does not match its
    /// certificate. Returned by binding (the server never listens) and by a reload (the
    /// server keeps its certificate).
    pub fn is_tls(&self) -> bool {
        matches!(self.kind, Kind::Tls)
    }
}

impl fmt::Debug for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ServeError");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            Kind::Bind => "cannot listen",
            Kind::Startup => "lifespan startup failed",
            Kind::Routes => "invalid routes",
            Kind::Io => "i/o error",
            Kind::Tls => "tls settings",
        };
        write!(f, "{what}: {}", self.message)
    }
}

impl StdError for ServeError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

/// Displays an error with its `source()` chain: a handler's own error (`Error::handler(e)`,
/// an `io::Error` from a body) is the source, not the message, and a log line without it
/// would say only "handler error".
pub(crate) struct Chain<'a>(pub(crate) &'a amphi_core::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(self.0);
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// Displays any error with its `source()` chain, for log lines.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) struct SourceChain<'a>(pub(crate) &'a (dyn StdError + 'static));

impl std::fmt::Display for SourceChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
