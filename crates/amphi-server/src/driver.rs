//! The per-request driver: polls a handler's future with its request context current and its
//! panics caught, and flips the request's token when the future is abandoned.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use amphi_core::{BoxFuture, Context, DropGuard, Error};

use crate::exchange::Exchange;

/// Polls a handler future with its request context current and panics caught; `exchange` is
/// what the handler's two ends share with whoever polls it (an http request's [`Exchange`],
/// or a websocket session).
pub(crate) struct Driver<X = Arc<Exchange>> {
    // Field order matters: the future is dropped before the guard flips the token.
    fut: Option<BoxFuture<'static, Result<(), Error>>>,
    context: Context,
    /// Cancels the request's token when the exchange is abandoned before the handler returns.
    guard: Option<DropGuard>,
    /// The request's span (`Server::request_spans`), entered with the context on each poll.
    span: crate::observe::RequestSpan,
    pub(crate) exchange: X,
}

impl<X> Driver<X> {
    pub(crate) fn new(
        fut: BoxFuture<'static, Result<(), Error>>,
        context: Context,
        exchange: X,
    ) -> Driver<X> {
        Driver {
            fut: Some(fut),
            guard: Some(context.token().clone().drop_guard()),
            context,
            span: crate::observe::RequestSpan::default(),
            exchange,
        }
    }

    /// Enters `span` while the handler is polled: events it logs, and the crossings it makes
    /// (which carry the current span), are inside it.
    pub(crate) fn with_span(mut self, span: crate::observe::RequestSpan) -> Driver<X> {
        self.span = span;
        self
    }

    /// Flips the request's cancellation token (the client is gone, the handler runs on).
    pub(crate) fn cancel(&self) {
        self.context.token().cancel();
    }

    /// Whether the handler is still running.
    pub(crate) fn is_running(&self) -> bool {
        self.fut.is_some()
    }

    /// Polls the handler once; `Ready` once it has returned (a panic is an error of kind
    /// [`ErrorKind::Panicked`]). Must not be called after it returned `Ready`.
    pub(crate) fn poll_handler(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let polled = {
            let _current = self.context.enter();
            let _span = self.span.enter();
            catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx)))
        };
        let result = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(result)) => result,
            Err(payload) => Err(Error::from_panic(&*payload)),
        };
        // A future that panicked may panic again while dropped; keep that inside too.
        let fut = self.fut.take();
        if catch_unwind(AssertUnwindSafe(move || drop(fut))).is_err() {
            tracing::error!("a handler future panicked while being dropped");
        }
        if result.is_ok() {
            if let Some(g) = self.guard.take() {
                g.disarm();
            }
        }
        Poll::Ready(result)
    }
}
