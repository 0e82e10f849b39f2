//! What a request's crossings of the boundary report, to whoever serves the request.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Context;

/// Which crossing of the sync/async boundary ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Crossing {
    /// A `sync_to_async` call: a blocking closure run from async code, on a blocking thread.
    SyncToAsync,
    /// An `async_to_sync` call: async work driven to completion from blocking code.
    AsyncToSync,
    /// A blocking handler served through `SyncToAsync`: the request's own handler, on a
    /// blocking thread, until its response body is fully produced.
    SyncHandler,
}

impl Crossing {
    /// A short lowercase name: `sync_to_async`, `async_to_sync`, `sync_handler`.
    pub fn as_str(self) -> &'static str {
        match self {
            Crossing::SyncToAsync => "sync_to_async",
            Crossing::AsyncToSync => "async_to_sync",
            Crossing::SyncHandler => "sync_handler",
        }
    }
}

/// Receives what the crossings made for one request report when they end: a server's
/// metrics, attributing blocking time to the route that caused it.
///
/// A server puts one into the request [`Context`] it creates ([`observed_context`]); every
/// context derived from it (children, the contexts the adapters make for each crossing) finds
/// it with [`observer`]. The adapter crates call it, with no clock read at all when a context
/// has none, so an unobserved request pays one pointer check per crossing.
///
/// Implementations are called on blocking threads and on async workers, once per crossing:
/// keep them to a few atomic adds. (`RefUnwindSafe`, as atomics and locks are, so a context
/// stays unwind safe.)
pub trait Observer: Send + Sync + std::panic::RefUnwindSafe + 'static {
    /// A crossing ended; its work ran for `ran` (a blocking thread was held that long, or a
    /// blocking thread waited that long for async work).
    fn crossed(&self, crossing: Crossing, ran: Duration);

    /// A call waited `waited` for a slot of a bounded blocking pool; `saturated` when it got
    /// none in time and was refused (a server answers `503`). Calls that found a slot free at
    /// once do not report.
    fn slot_waited(&self, waited: Duration, saturated: bool);
}

/// A fresh context (as [`Context::new`]) whose crossings report to `observer`.
///
/// # Examples
///
/// ```
/// use amphi_core::plumbing::{observed_context, observer, Crossing, Observer};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// #[derive(Default)]
/// struct Count(AtomicU64);
///
/// impl Observer for Count {
///     fn crossed(&self, _: Crossing, _: Duration) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///     }
///     fn slot_waited(&self, _: Duration, _: bool) {}
/// }
///
/// let count = Arc::new(Count::default());
/// let ctx = observed_context(count.clone());
/// // What an adapter does when a crossing of this request ends:
/// if let Some(o) = observer(&ctx.child()) {
///     o.crossed(Crossing::SyncToAsync, Duration::from_millis(3));
/// }
/// assert_eq!(count.0.load(Ordering::Relaxed), 1);
/// ```
pub fn observed_context(observer: Arc<dyn Observer>) -> Context {
    Context::observed(observer)
}

/// The observer of `context`'s request, if its server put one there.
pub fn observer(context: &Context) -> Option<&Arc<dyn Observer>> {
    context.observer()
}

/// The observer of the request whose context `token` belongs to (a context's
/// [`token`](Context::token)), if its server put one there: for code that holds the token
/// alone, such as a wait for a pool slot.
pub fn token_observer(token: &crate::CancellationToken) -> Option<&Arc<dyn Observer>> {
    token.observer()
}

/// Tells the observer of a context's request how long a crossing ran, when dropped (also when
/// the work panicked): what an adapter holds while the crossing's work runs. It borrows the
/// context rather than holding the observer, so no reference count is taken, and reads no
/// clock when the context has no observer.
///
/// ```
/// use amphi_core::plumbing::{Crossing, TimedCrossing};
/// use amphi_core::Context;
///
/// let context = Context::new();
/// {
///     let _timed = TimedCrossing::start(&context, Crossing::SyncToAsync);
///     // ... the crossing's work ...
/// } // reported here, to nobody: this context has no observer.
/// ```
#[derive(Debug)]
pub struct TimedCrossing<'a> {
    context: &'a Context,
    crossing: Crossing,
    since: Option<Instant>,
}

impl<'a> TimedCrossing<'a> {
    /// Starts timing `crossing` for `context`'s request.
    pub fn start(context: &'a Context, crossing: Crossing) -> TimedCrossing<'a> {
        TimedCrossing {
            context,
            crossing,
            since: observer(context).map(|_| Instant::now()),
        }
    }
}

impl Drop for TimedCrossing<'_> {
    fn drop(&mut self) {
        if let (Some(since), Some(o)) = (self.since, observer(self.context)) {
            o.crossed(self.crossing, since.elapsed());
        }
    }
}

/// How an observer shows in a context's `Debug`.
pub(crate) struct Present;

impl fmt::Debug for Present {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Some(..)")
    }
}
