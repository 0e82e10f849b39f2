//! `async_to_sync`: drive one future to completion from blocking code.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use amphi_core::plumbing::{Crossing, TimedCrossing};
use amphi_core::Error;

use crate::frame::{block_on_drive, lend, Drive};

/// Runs `future` to completion on the calling thread and returns its output: the blocking
/// counterpart of `.await`, for blocking code that needs async work done.
///
/// # Where the future runs
///
/// The future is polled *on the calling thread*, so it need not be `Send`; its timers, I/O
/// and spawned tasks are served by a tokio runtime:
///
/// - on a thread of a tokio runtime's blocking pool (inside `spawn_blocking` or
///   [`sync_to_async`]), the runtime that owns the thread (`Handle::block_on`);
/// - on any other thread, a shared background runtime started on first use: multi-threaded
///   with one worker thread named `amphi-async-to-sync` (which drives timers and I/O and runs
///   spawned tasks), all drivers enabled, kept for the life of the process.
///
/// On a current-thread runtime's blocking-pool thread, timers and I/O make progress only while
/// another thread is inside that runtime's `Runtime::block_on` (as in `#[tokio::main]`), which
/// is tokio's rule for `Handle::block_on`.
///
/// # Re-entry without deadlock
///
/// While it waits, the calling thread lends itself to the future's thread-sensitive work:
/// a `sync_to_async(f).thread_sensitive_current()` awaited inside the future runs `f` back on
/// this thread (asgiref's `CurrentThreadExecutor`), so blocking code -> async -> blocking code
/// stays on one thread at any nesting depth, and never waits for itself.
///
/// # Context, span, cancellation
///
/// The future runs with a child of the caller's request [`Context`](amphi_core::Context)
/// entered (values shared both ways, cancellation of the request visible inside) and with
/// the caller's `tracing` span entered; when its request's server keeps metrics (an
/// [`Observer`](amphi_core::plumbing::Observer) in the context), the call reports how long
/// it blocked. A caller with no current context gets none made up:
/// there would be no values to carry and nobody to cancel it, and this thread's
/// [`ThreadSensitive`](amphi_core::ThreadSensitive) loan is found without one (a spawned
/// task should capture `ThreadSensitive::current()` before it is spawned).
///
/// # Errors
///
/// - [`ErrorKind::WrongContext`](amphi_core::ErrorKind::WrongContext) when called from a
///   thread that drives async tasks: a runtime worker thread, inside a runtime's `block_on`
///   (including inside another `async_to_sync`'s future). Blocking there would stall or
///   deadlock the tasks the thread drives; the message says to `.await` the future instead.
///   Tokio's "Cannot start a runtime from within a runtime" panic is never raised to the
///   caller. To detect a thread that is inside a foreign `block_on`, the call may let tokio
///   panic and catch it; a panic hook installed once by this crate hides that one panic and
///   passes every other panic to the hook that was there before.
/// - [`ErrorKind::Panicked`](amphi_core::ErrorKind::Panicked) when the future panics; the
///   message is the panic's.
///
/// # Examples
///
/// ```
/// use amphi_async_to_sync::async_to_sync;
/// use std::time::Duration;
///
/// // Plain blocking code, no runtime in sight:
/// let answer = async_to_sync(async {
///     tokio::time::sleep(Duration::from_millis(1)).await;
///     42
/// })
/// .unwrap();
/// assert_eq!(answer, 42);
///
/// // From async code it refuses, instead of panicking or hanging:
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// let err = rt.block_on(async { async_to_sync(async { 1 }) }).unwrap_err();
/// assert!(err.is_wrong_context());
/// ```
///
/// [`sync_to_async`]: https://docs.rs/amphi-sync-to-async
pub fn async_to_sync<F: Future>(future: F) -> Result<F::Output, Error> {
    let (loan, context) = lend();
    let span = tracing::Span::current();
    // The request's observer, if its server keeps metrics, is told how long this thread
    // waited for the future.
    let _timed = context
        .as_ref()
        .map(|c| TimedCrossing::start(c, Crossing::AsyncToSync));
    let mut future = std::pin::pin!(future);
    block_on_drive(
        &mut PinnedFuture(future.as_mut()),
        context.as_ref(),
        &span,
        &loan,
    )
}

struct PinnedFuture<'a, F>(Pin<&'a mut F>);

impl<F: Future> Drive for PinnedFuture<'_, F> {
    type Output = F::Output;

    fn poll_drive(&mut self, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        self.0.as_mut().poll(cx)
    }
}
