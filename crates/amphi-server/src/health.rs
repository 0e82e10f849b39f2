//! Health for load balancers: a handler answering `200` while the server serves and `503`
//! once it drains, and the status it reads.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use amphi_core::{AsyncHandler, BoxFuture, Error, Message, Receiver, Scope, Sender, State};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};

use crate::conn::Counters;

/// Whether a server is draining: what [`Health`] answers from. The server puts it into its
/// [`State`] when it binds, so any handler can read it:
/// `ServerStatus::of(scope.state())`.
#[derive(Clone)]
pub struct ServerStatus {
    counters: Arc<Counters>,
}

impl std::fmt::Debug for ServerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerStatus")
            .field("draining", &self.is_draining())
            .finish()
    }
}

impl ServerStatus {
    pub(crate) fn new(counters: Arc<Counters>) -> ServerStatus {
        ServerStatus { counters }
    }

    /// The status of the server whose state this is; `None` for a state no server has bound
    /// with (a router served through `Server::into_service`, `tower` feature).
    pub fn of(state: &State) -> Option<ServerStatus> {
        state.get::<ServerStatus>()
    }

    /// Whether shutdown has started: from the signal (or
    /// [`ShutdownHandle::shutdown`](crate::ShutdownHandle::shutdown)) on, through the drain
    /// delay and the drain.
    pub fn is_draining(&self) -> bool {
        self.counters.draining.load(Ordering::Relaxed)
    }
}

/// A health endpoint for load balancers and readiness probes: `200 ok` while the server
/// serves, `503 draining` from the moment shutdown starts (with `Connection: close` over
/// HTTP/1.1, so a prober's connection does not linger). Any method; mount it where the
/// balancer looks, with [`Router::mount_async`](crate::Router::mount_async).
///
/// With [`Server::drain_delay`](crate::Server::drain_delay), the server keeps accepting and
/// serving for the delay after the signal while this answers `503`, so a balancer that
/// polls it stops sending new work before the listener closes.
///
/// # Examples
///
/// ```
/// use amphi_server::{Health, Router};
///
/// let router = Router::new().mount_async("/healthz", Health::new());
/// # let _ = router;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Health {
    _private: (),
}

impl Health {
    /// The health handler.
    pub fn new() -> Health {
        Health::default()
    }
}

impl AsyncHandler for Health {
    fn call(
        &self,
        scope: Scope,
        _receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(answer(scope, send))
    }

    fn call_owned(
        self: Arc<Self>,
        scope: Scope,
        _receive: Receiver,
        send: Sender,
    ) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(answer(scope, send))
    }
}

async fn answer(scope: Scope, mut send: Sender) -> Result<(), Error> {
    // Lifespan: no events for this handler; websockets: denied by returning.
    let Scope::Http(scope) = scope else {
        return Ok(());
    };
    let draining = ServerStatus::of(scope.state()).is_some_and(|s| s.is_draining());
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let (status, body) = if draining {
        if scope.version() < http::Version::HTTP_2 {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ok\n")
    };
    send.send(Message::start(status, headers)).await?;
    send.send(Message::body(Bytes::from_static(body.as_bytes()), false))
        .await
}
