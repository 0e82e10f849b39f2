//! `sync_to_async`: run one blocking closure from async code.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use amphi_core::{Context, DropGuard, Error, ErrorKind};
use tokio::task::JoinHandle;

use crate::pool::BlockingPool;

/// Runs the blocking closure `f` off the async threads and awaits its result.
///
/// By default `f` runs on tokio's blocking pool (`spawn_blocking`), with no cap but tokio's
/// own. The returned [`SyncCall`] is a builder: [`pool`](SyncCall::pool) counts the call
/// against a [`BlockingPool`]. Await it directly.
///
/// The closure runs with the caller's request [`Context`] current (a child of it, so the
/// values are shared and its token can flip on its own) and with the caller's `tracing` span
/// entered. With no current context the closure gets a fresh one, so
/// `Context::current().unwrap().token()` always works inside it.
///
/// # Errors
///
/// - [`ErrorKind::Panicked`] if `f` panics; the message is the panic's.
/// - [`ErrorKind::Saturated`] if a pool was given and no slot came free within its queue
///   timeout; `f` did not run.
/// - [`ErrorKind::Cancelled`] if the runtime shut down before `f` could start.
///
/// # Cancellation
///
/// Dropping the future does not stop `f` once it has started (blocking code cannot be
/// aborted): it runs to the end and its result is dropped. What the drop does is flip the
/// closure's cancellation token (`Context::current().unwrap().token()` inside `f`), so code
/// that checks it between steps can stop early. A pool slot is held until `f` returns.
///
/// # Panics
///
/// When awaited outside a tokio runtime (it calls `tokio::task::spawn_blocking`).
///
/// # Examples
///
/// ```
/// use amphi_sync_to_async::sync_to_async;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let len = sync_to_async(|| std::fs::read_dir(".").map(|d| d.count()).unwrap_or(0)).await.unwrap();
/// # let _ = len;
/// let err = sync_to_async(|| -> u32 { panic!("disk on fire") }).await.unwrap_err();
/// assert!(err.is_panic());
/// assert_eq!(err.message(), Some("disk on fire"));
/// # }
/// ```
pub fn sync_to_async<F, R>(f: F) -> SyncCall<F>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    SyncCall { f, pool: None }
}

/// A blocking call being set up; see [`sync_to_async`]. Await it to run it.
#[must_use = "the closure runs only when the call is awaited"]
pub struct SyncCall<F> {
    f: F,
    pool: Option<BlockingPool>,
}

impl<F, R> SyncCall<F>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    /// Counts the call against `pool`: it waits for a free slot (up to the pool's queue
    /// timeout) and holds it until the closure returns.
    pub fn pool(mut self, pool: &BlockingPool) -> SyncCall<F> {
        self.pool = Some(pool.clone());
        self
    }
}

impl<F, R> IntoFuture for SyncCall<F>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    type Output = Result<R, Error>;
    type IntoFuture = SyncCallFuture<R>;

    fn into_future(self) -> SyncCallFuture<R> {
        // Captured here, in the caller's poll, so the closure sees the caller's context and
        // span wherever it runs.
        let context = match Context::current() {
            Some(c) => c.child(),
            None => Context::new(),
        };
        let span = tracing::Span::current();
        let cancel = context.token().clone().drop_guard();
        let f = self.f;
        let run = move || {
            let _context = context.enter();
            let _span = span.enter();
            f()
        };
        let state = match self.pool {
            None => State::Running(tokio::task::spawn_blocking(run)),
            Some(pool) => State::Waiting(Box::pin(async move {
                let slot = pool.acquire().await?;
                Ok(tokio::task::spawn_blocking(move || {
                    let _slot = slot;
                    run()
                }))
            })),
        };
        SyncCallFuture {
            state,
            cancel: Some(cancel),
        }
    }
}

impl<F> fmt::Debug for SyncCall<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncCall")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

type Acquire<R> = Pin<Box<dyn Future<Output = Result<JoinHandle<R>, Error>> + Send>>;

enum State<R> {
    Waiting(Acquire<R>),
    Running(JoinHandle<R>),
    Done,
}

/// The future of a [`SyncCall`]: resolves to the closure's result.
///
/// # Cancellation
///
/// See [`sync_to_async`]: dropping it flips the closure's token but cannot stop the closure.
#[must_use = "futures do nothing unless polled"]
pub struct SyncCallFuture<R> {
    state: State<R>,
    /// Flips the closure's token if this future is dropped before the closure's result came
    /// back; disarmed once it has.
    cancel: Option<DropGuard>,
}

impl<R> Future for SyncCallFuture<R> {
    type Output = Result<R, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Waiting(acquire) => match std::task::ready!(acquire.as_mut().poll(cx)) {
                    Ok(handle) => this.state = State::Running(handle),
                    Err(e) => {
                        this.finish();
                        return Poll::Ready(Err(e));
                    }
                },
                State::Running(handle) => {
                    let result = std::task::ready!(Pin::new(handle).poll(cx));
                    this.finish();
                    return Poll::Ready(result.map_err(join_error));
                }
                State::Done => {
                    return Poll::Ready(Err(Error::new(ErrorKind::Other)
                        .with_message("SyncCallFuture polled after it completed")))
                }
            }
        }
    }
}

impl<R> SyncCallFuture<R> {
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(guard) = self.cancel.take() {
            guard.disarm();
        }
    }
}

impl<R> fmt::Debug for SyncCallFuture<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Waiting(_) => "waiting for a slot",
            State::Running(_) => "running",
            State::Done => "done",
        };
        f.debug_struct("SyncCallFuture")
            .field("state", &state)
            .finish()
    }
}

/// Turns a failed `spawn_blocking` join into amphi's error.
pub(crate) fn join_error(err: tokio::task::JoinError) -> Error {
    if err.is_panic() {
        Error::from_panic(&*err.into_panic())
    } else {
        Error::new(ErrorKind::Cancelled)
            .with_message("the runtime shut down before the blocking call could finish")
    }
}
