//! The bounded pool: a cap on blocking work in flight and a bounded wait for a slot.

use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use amphi_core::plumbing::token_observer;
use amphi_core::{CancellationToken, Error, ErrorKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::lane::{Job, Lane};

/// How long a call waits for a free slot when none is given with
/// [`BlockingPool::queue_timeout`]: 1 second. `amphi-server` uses the same default for its
/// pool (its `Server::queue_timeout`): past it a request is answered `503`, and a gateway that
/// is that far behind is better off telling its clients to retry than making them wait.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

/// A cap on blocking work in flight, shared by every call that uses it.
///
/// Each call made through the pool ([`sync_to_async(f).pool(&pool)`](crate::sync_to_async),
/// or one request of a [`SyncToAsync`](crate::SyncToAsync) handler) holds one *slot* while its
/// blocking work runs. When every slot is taken, a new call waits up to the queue timeout
/// ([`DEFAULT_QUEUE_TIMEOUT`] unless set) for one to come free, then fails with
/// [`ErrorKind::Saturated`] (a server answers 503 with `Retry-After`). The cap counts
/// *requests*, not connections: an idle keep-alive connection holds no slot.
///
/// Clones share the slots; [`queue_timeout`](BlockingPool::queue_timeout) returns a
/// handle to the same slots with another wait.
///
/// # When a slot comes back
///
/// A slot is released when the blocking work has *actually finished*: returned, panicked, or,
/// for a handler, finished producing its response body. Dropping the awaiting future (the
/// client went away) does not release it at once, because blocking code cannot be aborted
/// (tokio's `spawn_blocking` says the same): the slot stays taken until the closure returns,
/// so [`in_flight`](BlockingPool::in_flight) never undercounts the threads really busy. A
/// handler whose caller went away sees its cancellation token flip and its body reads and
/// writes fail, so well-behaved code ends soon after. A call that is still *waiting* for a slot
/// when it is dropped, or whose request's cancellation token flips meanwhile, takes none: it
/// stops waiting and fails [`ErrorKind::Cancelled`].
///
/// # Work whose caller is gone
///
/// A call that got its slot but has not started yet (queued behind busy blocking threads, on a
/// busy thread-sensitive thread, or through a runtime shutdown) and whose caller is gone (its
/// future dropped, or its request's token cancelled) never starts: when its turn comes it gives
/// its slot back at once and its closure or handler is not called. That keeps a saturated pool
/// from spending its threads on answers nobody reads. The check is one look at the call's
/// token as its work is taken.
///
/// The pool limits work in flight; it does not own threads. The work runs on tokio's blocking
/// pool (or a thread-sensitive context's thread), whose own thread cap (`max_blocking_threads`,
/// 512 by default) should be at least the pool's limit.
///
/// # Handing work to threads
///
/// The pool's calls are queued once and taken by blocking-pool threads that run them one
/// after another: a thread that finished one of the pool's calls looks for the next for up to
/// 50 µs (spinning, yielding its core to any runnable thread) before it returns to tokio.
/// Under load a call is then taken by a thread already running instead of waking a parked
/// one (a `futex` call and two context switches with plain `spawn_blocking`), which makes a
/// server's blocking requests faster than a hand-written `spawn_blocking` per request (figures
/// in the repository's `docs/benchmarks.md`). A call never waits behind another call's long
/// work: when more calls are queued than threads are looking, another thread starts. The cost
/// is up to 50 µs of looking after the last call of a burst.
///
/// A thread that looks takes whichever of the pool's calls comes next, so a pool shared by
/// two runtimes may run a call of one on a blocking thread of the other (where
/// `Handle::current()` is the other runtime). Give each runtime its own pool.
///
/// # Runtime
///
/// Waiting for a slot uses `tokio::time`, so the runtime needs its timer enabled
/// (`enable_time`/`enable_all`, which `#[tokio::main]` does) when the pool is full.
///
/// At shutdown the runtime drops every task, so the calls still queued then are skipped as
/// their turn comes (see above: their callers are gone), even though tokio lets a blocking
/// thread that comes back from a long call run the blocking work it finds queued. A call
/// already running keeps its thread until it returns: dropping the runtime waits for it,
/// `shutdown_timeout` waits up to its timeout.
///
/// # Examples
///
/// ```
/// use amphi_sync_to_async::{sync_to_async, BlockingPool};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pool = BlockingPool::new(2).queue_timeout(Duration::from_millis(100));
/// let n = sync_to_async(|| 6 * 7).pool(&pool).await.unwrap();
/// assert_eq!(n, 42);
/// assert_eq!(pool.in_flight(), 0);
/// # }
/// ```
#[derive(Clone)]
pub struct BlockingPool {
    semaphore: Arc<Semaphore>,
    lane: Arc<Lane>,
    counters: Arc<Counters>,
    limit: usize,
    queue_timeout: Duration,
}

/// What a pool counts for [`BlockingPool::stats`]. The waits are counted on the slow path
/// only (a call that found a slot free costs nothing here); the busy time only while
/// [`measure_busy_time`](BlockingPool::measure_busy_time) is on.
#[derive(Default)]
struct Counters {
    waiting: AtomicUsize,
    waits: AtomicU64,
    wait_nanos: AtomicU64,
    saturations: AtomicU64,
    timing: AtomicBool,
    timed_calls: AtomicU64,
    busy_nanos: AtomicU64,
}

/// What a [`BlockingPool`] has done since it was made: a snapshot from
/// [`BlockingPool::stats`], for metrics. Every handle to the same slots reports the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// The most calls that run at once ([`BlockingPool::limit`]).
    pub limit: usize,
    /// Slots taken right now ([`BlockingPool::in_flight`]).
    pub in_flight: usize,
    /// Calls waiting for a slot right now: the queue's depth.
    pub waiting: usize,
    /// Calls that had to wait for a slot (every slot was taken when they came).
    pub waits: u64,
    /// The time those calls spent waiting, added up.
    pub wait_time: Duration,
    /// Calls refused because no slot came free within the queue timeout.
    pub saturations: u64,
    /// Calls whose slot time was measured: those that took a slot while
    /// [`measure_busy_time`](BlockingPool::measure_busy_time) was on.
    pub timed_calls: u64,
    /// The time those calls held their slot, added up: time spent blocking.
    pub busy_time: Duration,
}

/// One taken slot of a [`BlockingPool`]; released when dropped.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    /// When the slot was taken, while the pool measures busy time.
    timed: Option<(Instant, Arc<Counters>)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((taken, counters)) = self.timed.take() {
            counters.timed_calls.fetch_add(1, Ordering::Relaxed);
            counters
                .busy_nanos
                .fetch_add(nanos(taken.elapsed()), Ordering::Relaxed);
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Counts a call as waiting for a slot while it lives.
struct Waiting<'a>(&'a Counters);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl BlockingPool {
    /// A pool that lets at most `max_in_flight` blocking calls run at once, with the
    /// [`DEFAULT_QUEUE_TIMEOUT`].
    ///
    /// # Panics
    ///
    /// If `max_in_flight` is 0 (no call could ever run) or larger than tokio's semaphore
    /// allows (`usize::MAX >> 3`).
    pub fn new(max_in_flight: usize) -> BlockingPool {
        assert!(
            max_in_flight > 0,
            "BlockingPool::new(0): a pool needs at least one slot"
        );
        assert!(
            max_in_flight <= Semaphore::MAX_PERMITS,
            "BlockingPool::new({max_in_flight}): more slots than tokio's semaphore can count"
        );
        BlockingPool {
            semaphore: Arc::new(Semaphore::new(max_in_flight)),
            lane: Arc::default(),
            counters: Arc::default(),
            limit: max_in_flight,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
        }
    }

    /// A handle to the same slots whose calls wait at most `timeout` for a free slot before
    /// failing with [`ErrorKind::Saturated`]. `Duration::ZERO` fails at once when the pool is
    /// full.
    #[must_use]
    pub fn queue_timeout(mut self, timeout: Duration) -> BlockingPool {
        self.queue_timeout = timeout;
        self
    }

    /// Measures how long each call holds its slot, for [`stats`](BlockingPool::stats)'s
    /// busy time (two clock reads per call, and a count), or stops measuring; off by default.
    /// It applies to every handle to these slots. Nothing turns it on for you: a server's
    /// metrics count each route's blocking time without it, and report the pool's total busy
    /// time only when the pool they are given measures it.
    #[must_use]
    pub fn measure_busy_time(self, on: bool) -> BlockingPool {
        self.counters.timing.store(on, Ordering::Relaxed);
        self
    }

    /// What the pool has done since it was made: slots busy, calls waiting, the waits and
    /// their time, saturations, and (while [`measure_busy_time`](BlockingPool::measure_busy_time)
    /// is on) the time spent blocking. Counters only: reading them takes no lock.
    ///
    /// # Examples
    ///
    /// ```
    /// use amphi_sync_to_async::{sync_to_async, BlockingPool};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let pool = BlockingPool::new(2).measure_busy_time(true);
    /// sync_to_async(|| std::thread::sleep(std::time::Duration::from_millis(2)))
    ///     .pool(&pool)
    ///     .await
    ///     .unwrap();
    /// let stats = pool.stats();
    /// assert_eq!((stats.in_flight, stats.timed_calls, stats.saturations), (0, 1, 0));
    /// assert!(stats.busy_time >= std::time::Duration::from_millis(2));
    /// # }
    /// ```
    pub fn stats(&self) -> PoolStats {
        let c = &*self.counters;
        PoolStats {
            limit: self.limit,
            in_flight: self.in_flight(),
            waiting: c.waiting.load(Ordering::Relaxed),
            waits: c.waits.load(Ordering::Relaxed),
            wait_time: Duration::from_nanos(c.wait_nanos.load(Ordering::Relaxed)),
            saturations: c.saturations.load(Ordering::Relaxed),
            timed_calls: c.timed_calls.load(Ordering::Relaxed),
            busy_time: Duration::from_nanos(c.busy_nanos.load(Ordering::Relaxed)),
        }
    }

    /// The most calls that run at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Slots taken right now: calls whose blocking work has not finished yet.
    pub fn in_flight(&self) -> usize {
        self.limit - self.semaphore.available_permits()
    }

    /// Runs `job` on a thread of the current runtime's blocking pool, through this pool's
    /// lane (see `lane.rs`): a thread that just finished a piece of this pool's work takes it
    /// if one is looking, else a new drainer starts.
    pub(crate) fn spawn(&self, job: Job) {
        self.lane.submit(job);
    }

    /// Takes a slot if one is free now.
    pub(crate) fn try_acquire(&self) -> Option<Slot> {
        let permit = self.semaphore.clone().try_acquire_owned().ok()?;
        Some(self.slot(permit))
    }

    fn slot(&self, permit: OwnedSemaphorePermit) -> Slot {
        let timed = self
            .counters
            .timing
            .load(Ordering::Relaxed)
            .then(|| (Instant::now(), self.counters.clone()));
        Slot {
            _permit: permit,
            timed,
        }
    }

    /// Takes a slot, waiting up to the queue timeout, for a call that runs under `token` (its
    /// request context's). A call that has to wait tells the request's observer, if any, how
    /// long, and whether it was refused.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Saturated`] when no slot came free in time; [`ErrorKind::Cancelled`] when
    /// `token` flipped while the call waited (its caller is gone: the call never runs, so it
    /// must not take a slot another call is waiting for).
    ///
    /// # Cancellation
    ///
    /// Dropping the future while it waits takes no slot.
    pub(crate) async fn acquire(&self, token: &CancellationToken) -> Result<Slot, Error> {
        // The fast path takes no timer and no clock: most calls find a slot free. A call
        // whose token has flipped by now is skipped where its job is taken (see
        // `spawn_blocking_side`).
        if let Some(slot) = self.try_acquire() {
            return Ok(slot);
        }
        let c = &*self.counters;
        let observer = token_observer(token);
        if self.queue_timeout.is_zero() {
            c.waits.fetch_add(1, Ordering::Relaxed);
            c.saturations.fetch_add(1, Ordering::Relaxed);
            if let Some(o) = observer {
                o.slot_waited(Duration::ZERO, true);
            }
            return Err(self.saturated());
        }
        let since = Instant::now();
        c.waiting.fetch_add(1, Ordering::Relaxed);
        let waiting = Waiting(c);
        let result = self.wait(token).await;
        drop(waiting);
        let waited = since.elapsed();
        let saturated = result.as_ref().is_err_and(Error::is_saturated);
        c.waits.fetch_add(1, Ordering::Relaxed);
        c.wait_nanos.fetch_add(nanos(waited), Ordering::Relaxed);
        if saturated {
            c.saturations.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(o) = observer {
            o.slot_waited(waited, saturated);
        }
        result
    }

    /// The slow path of [`acquire`](BlockingPool::acquire): every slot was taken.
    async fn wait(&self, token: &CancellationToken) -> Result<Slot, Error> {
        let mut gone = pin!(token.cancelled());
        let mut permit = pin!(self.semaphore.clone().acquire_owned());
        let mut deadline = pin!(tokio::time::sleep(self.queue_timeout));
        poll_fn(|cx| {
            // Gone first: a call whose caller left takes no slot even if one just came free
            // (the permit goes back to the semaphore when `permit` is dropped).
            if gone.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Error::new(ErrorKind::Cancelled).with_message(
                    "the request was cancelled while it waited for a blocking slot",
                )));
            }
            match permit.as_mut().poll(cx) {
                Poll::Ready(Ok(permit)) => return Poll::Ready(Ok(self.slot(permit))),
                // The semaphore is never closed, so an acquire error cannot happen; report it
                // as saturation rather than panicking if that ever changes.
                Poll::Ready(Err(_)) => return Poll::Ready(Err(self.saturated())),
                Poll::Pending => {}
            }
            match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(self.saturated())),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    fn saturated(&self) -> Error {
        Error::new(ErrorKind::Saturated).with_message(format!(
            "all {} blocking slots busy for {:?}",
            self.limit, self.queue_timeout
        ))
    }
}

impl fmt::Debug for BlockingPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingPool")
            .field("limit", &self.limit)
            .field("in_flight", &self.in_flight())
            .field("queue_timeout", &self.queue_timeout)
            .finish()
    }
}
