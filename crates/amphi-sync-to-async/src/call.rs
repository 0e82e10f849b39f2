//! `sync_to_async`: run one blocking closure from async code.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use std::panic::{catch_unwind, AssertUnwindSafe};

use amphi_core::plumbing::{Crossing, TimedCrossing};
use amphi_core::{Context, DropGuard, Error, ErrorKind, ThreadSensitive};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::pool::BlockingPool;

/// Runs the blocking closure `f` off the async threads and awaits its result.
///
/// By default `f` runs on tokio's blocking pool (`spawn_blocking`), with no cap but tokio's
/// own. The returned [`SyncCall`] is a builder; await it directly:
///
/// - [`pool`](SyncCall::pool) counts the call against a [`BlockingPool`];
/// - [`thread_sensitive`](SyncCall::thread_sensitive) runs it on one
///   [`ThreadSensitive`] context's thread instead, after the calls queued there before it;
/// - [`thread_sensitive_current`](SyncCall::thread_sensitive_current) picks the context of
///   the calling code (the thread blocked in an enclosing `async_to_sync`, else the request's
///   own; see [`ThreadSensitive::current`]).
///
/// The closure runs with the caller's request [`Context`] current (a child of it, so the
/// values are shared and its token can flip on its own) and with the caller's `tracing` span
/// entered. With no current context the closure gets a fresh one, so
/// `Context::current().unwrap().token()` always works inside it. When the request's server
/// keeps metrics (an [`Observer`](amphi_core::plumbing::Observer) in the context), the call
/// reports how long the closure ran and how long it waited for a pool slot, so the time is
/// counted against the route that made the call.
///
/// # Errors
///
/// - [`ErrorKind::Panicked`] if `f` panics; the message is the panic's.
/// - [`ErrorKind::Saturated`] if a pool was given and no slot came free within its queue
///   timeout; `f` did not run.
/// - [`ErrorKind::Cancelled`] if the runtime shut down, or the call's token flipped (its
///   request was cancelled), before `f` could start; or if a thread-sensitive context's
///   thread stopped before running it (a context lent by an `async_to_sync` call that has
///   returned).
/// - [`ErrorKind::WrongContext`] for a thread-sensitive call with no context to run on: none
///   was found by `thread_sensitive_current`, or the one given was lent by an
///   `async_to_sync` call that has returned. The message says what to do.
///
/// # Cancellation
///
/// Dropping the future before `f` starts means `f` never runs (and a pool slot it took comes
/// back as soon as its turn comes); so does a flip of the caller's request token, which also
/// ends a wait for a pool slot at once with [`ErrorKind::Cancelled`]. Once it has started it cannot
/// be stopped (blocking code cannot be aborted): it runs to the end and its result is
/// dropped. What the drop does is flip the closure's cancellation token
/// (`Context::current().unwrap().token()` inside `f`), so code that checks it between steps
/// can stop early. A pool slot is held until `f` returns.
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
    SyncCall {
        f,
        pool: None,
        place: Place::BlockingPool,
    }
}

#[derive(Debug, Clone)]
enum Place {
    BlockingPool,
    ThreadSensitive(ThreadSensitive),
    CurrentThreadSensitive,
}

/// A blocking call being set up; see [`sync_to_async`]. Await it to run it.
#[must_use = "the closure runs only when the call is awaited"]
pub struct SyncCall<F> {
    f: F,
    pool: Option<BlockingPool>,
    place: Place,
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

    /// Runs the call on `context`'s thread, one at a time with the context's other calls,
    /// instead of on tokio's blocking pool. A `!Send` resource kept in a `thread_local!` on
    /// that thread is reachable from `f`.
    ///
    /// Deadlock note: calls in one context run one after another, so a call that blocks until
    /// another call *of the same context* does something waits forever (asgiref's #282 shape).
    /// Give such calls different contexts, or leave them on the blocking pool.
    pub fn thread_sensitive(mut self, context: &ThreadSensitive) -> SyncCall<F> {
        self.place = Place::ThreadSensitive(context.clone());
        self
    }

    /// Runs the call in the thread-sensitive context of the calling code, found when the call
    /// is awaited by [`ThreadSensitive::current`]: the thread blocked in the enclosing
    /// `async_to_sync` if there is one (so the call runs back on that thread, at any nesting
    /// depth), otherwise the current request context's own thread.
    pub fn thread_sensitive_current(mut self) -> SyncCall<F> {
        self.place = Place::CurrentThreadSensitive;
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
        let place = match self.place {
            Place::BlockingPool => None,
            Place::ThreadSensitive(ts) => Some(ts),
            Place::CurrentThreadSensitive => match ThreadSensitive::current() {
                Some(ts) => Some(ts),
                None => {
                    return SyncCallFuture {
                        state: State::Failed(Some(no_context())),
                        cancel: Some(cancel),
                    }
                }
            },
        };
        // A wait for a pool slot ends early when the token flips; it reports to the request's
        // observer (a server's metrics), if any, when it has to wait.
        let pool = self.pool.map(|p| (p, context.token().clone()));
        let run = move || {
            // A call whose future was dropped (or whose request was cancelled) before it
            // started does not start; a pool slot it holds goes back as it returns.
            if context.token().is_cancelled() {
                return None;
            }
            let _context = context.enter();
            let _span = span.enter();
            // Without an observer in the context (no server metrics), no clock is read.
            let _timed = TimedCrossing::start(&context, Crossing::SyncToAsync);
            Some(f())
        };
        let state = match (pool, place) {
            (None, None) => State::Running(tokio::task::spawn_blocking(run)),
            (None, Some(ts)) => submit(&ts, run),
            (Some((pool, token)), place) => State::Waiting(Box::pin(async move {
                let slot = pool.acquire(&token).await?;
                let run = move || {
                    let _slot = slot;
                    run()
                };
                Ok(match place {
                    None => pooled(&pool, run),
                    Some(ts) => submit(&ts, run),
                })
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
            .field("place", &self.place)
            .finish_non_exhaustive()
    }
}

fn no_context() -> Error {
    Error::new(ErrorKind::WrongContext).with_message(
        "thread_sensitive_current found no thread-sensitive context: there is no enclosing \
         async_to_sync and no current request Context (a spawned task inherits neither); pass \
         one with .thread_sensitive(&context), capturing ThreadSensitive::current() before \
         spawning, or wrap the task in Context::scope",
    )
}

/// `run` as a job that sends its result (or panic) through a oneshot channel.
fn reporting<R, F>(run: F) -> (impl FnOnce() + Send + 'static, Outcome<R>)
where
    F: FnOnce() -> Option<R> + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let job = move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(run)));
    };
    (job, rx)
}

/// Queues `run` on `ts`'s thread.
fn submit<R, F>(ts: &ThreadSensitive, run: F) -> State<R>
where
    F: FnOnce() -> Option<R> + Send + 'static,
    R: Send + 'static,
{
    let (job, rx) = reporting(run);
    match ts.submit(job) {
        Ok(()) => State::Queued(rx, STOPPED_THREAD),
        Err(e) => State::Failed(Some(e)),
    }
}

/// Queues `run` on `pool`'s lane onto tokio's blocking pool.
fn pooled<R, F>(pool: &BlockingPool, run: F) -> State<R>
where
    F: FnOnce() -> Option<R> + Send + 'static,
    R: Send + 'static,
{
    let (job, rx) = reporting(run);
    pool.spawn(Box::new(job));
    State::Queued(rx, RUNTIME_GONE)
}

const STOPPED_THREAD: &str = "the thread-sensitive context's thread stopped before running \
                              this call: it was lent by an async_to_sync call that returned first";
const RUNTIME_GONE: &str = "the runtime shut down before the blocking call could run";

type Panic = Box<dyn std::any::Any + Send>;
type Outcome<R> = oneshot::Receiver<Result<Option<R>, Panic>>;
type Acquire<R> = Pin<Box<dyn Future<Output = Result<State<R>, Error>> + Send>>;

enum State<R> {
    Waiting(Acquire<R>),
    Running(JoinHandle<Option<R>>),
    /// Queued on a thread-sensitive context or a pool's lane; the message says why the
    /// result can fail to come back.
    Queued(Outcome<R>, &'static str),
    Failed(Option<Error>),
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
                    Ok(next) => this.state = next,
                    Err(e) => this.state = State::Failed(Some(e)),
                },
                State::Running(handle) => {
                    let result = std::task::ready!(Pin::new(handle).poll(cx));
                    this.finish();
                    return Poll::Ready(result.map_err(join_error).and_then(not_started));
                }
                State::Queued(rx, lost) => {
                    let lost = *lost;
                    let result = std::task::ready!(Pin::new(rx).poll(cx));
                    this.finish();
                    return Poll::Ready(match result {
                        Ok(Ok(value)) => not_started(value),
                        Ok(Err(panic)) => Err(Error::from_panic(&*panic)),
                        Err(_) => Err(Error::new(ErrorKind::Cancelled).with_message(lost)),
                    });
                }
                State::Failed(e) => {
                    let e = e.take();
                    this.finish();
                    return Poll::Ready(Err(e.unwrap_or_else(polled_after_done)));
                }
                State::Done => return Poll::Ready(Err(polled_after_done())),
            }
        }
    }
}

fn polled_after_done() -> Error {
    Error::new(ErrorKind::Other).with_message("SyncCallFuture polled after it completed")
}

fn not_started<R>(value: Option<R>) -> Result<R, Error> {
    value.ok_or_else(|| {
        Error::new(ErrorKind::Cancelled)
            .with_message("the call was cancelled before its closure started")
    })
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
            State::Queued(..) => "queued",
            State::Failed(_) | State::Done => "done",
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
