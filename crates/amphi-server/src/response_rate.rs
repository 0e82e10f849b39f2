//! The minimum response data rate (`Server::min_response_rate`): how long a streamed response
//! may wait for its client to take it, and the per-connection watchdog that cuts a connection
//! whose client has stopped reading.
//!
//! Waiting on the client means hyper is not pulling the response's next frame: over HTTP/1.1
//! its write buffer is full because the socket does not drain, over HTTP/2 the stream's or the
//! connection's window is used up. hyper does not poll the body again until that changes, so
//! the body cannot notice a stall itself: it publishes a deadline each time it hands a frame
//! over and clears it when hyper comes back, and a [`Watchdog`] polled by the connection's
//! task next to the connection acts on the deadline that passes.
//!
//! Each streamed response holds a credit of waiting time, like a token bucket: it starts at
//! the grace period, every byte handed over adds the time that byte needs at the minimum rate,
//! and time spent waiting for the client is taken off. The credit is capped at the grace
//! period plus the time [`BANK`] bytes need, so a client that read fast for a long while has
//! not earned a stall of the whole response's worth.
//!
//! Costs: for a response sent in one piece, a reference count taken and dropped, and a look
//! at an atomic counter each time the connection's task wakes; for a streamed one, a
//! registration with its connection, and two clock reads and a few atomic operations per
//! frame. The watchdog arms a timer only while some response on its connection waits for the
//! client.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The credit a client can bank, in bytes at the minimum rate. Bytes count as taken once hyper
/// has them, and the kernel's socket buffers (up to 4 MiB for a send buffer with Linux's
/// defaults) take a client's backlog at once and then release room in lumps of about a third
/// of themselves: a client reading steadily above the minimum rate can leave the server
/// waiting for as long as such a lump needs, and its credit must cover that.
const BANK: u64 = 4 * 1024 * 1024;

/// No deadline: the response is not waiting for its client.
const NONE: u64 = u64::MAX;

/// The slowest a client may take a streamed response: see `Server::min_response_rate`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResponseRate {
    pub(crate) bytes_per_second: u64,
    pub(crate) grace: Duration,
    /// The most a response may wait for its client at one stretch, whatever credit it earned:
    /// see `Server::response_stall_timeout`.
    pub(crate) max_stall: Duration,
}

impl ResponseRate {
    /// The time `bytes` need at the minimum rate.
    fn time_for(&self, bytes: u64) -> Duration {
        Duration::from_nanos(bytes.saturating_mul(1_000_000_000) / self.bytes_per_second)
    }
}

/// What one streamed response shares with its connection's watchdog (it lives in the
/// request's exchange, so it costs no allocation: see [`Watched`]).
#[derive(Debug)]
pub(crate) struct WaitState {
    /// When the response's credit runs out, in nanoseconds since [`ConnWatch::base`], while it
    /// waits for the client; [`NONE`] otherwise.
    deadline: AtomicU64,
    /// The watchdog cut the connection because of this response.
    tripped: AtomicBool,
}

impl Default for WaitState {
    fn default() -> WaitState {
        WaitState {
            deadline: AtomicU64::new(NONE),
            tripped: AtomicBool::new(false),
        }
    }
}

/// What holds a streamed response's [`WaitState`]: the request's exchange (`exchange.rs`),
/// which the watchdog keeps a handle on while the response streams.
pub(crate) trait Watched: Send + Sync + 'static {
    fn wait_state(&self) -> &WaitState;
}

/// A response without an exchange (a tower service's body) keeps its wait state alone.
impl Watched for WaitState {
    fn wait_state(&self) -> &WaitState {
        self
    }
}

impl WaitState {
    /// Whether the watchdog cut the connection because of this response.
    pub(crate) fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }
}

/// The streamed responses of one connection, watched by its [`Watchdog`].
pub(crate) struct ConnWatch {
    rate: ResponseRate,
    /// The most credit a response can hold.
    cap: Duration,
    /// The origin of the deadlines.
    base: Instant,
    /// The streamed responses in flight on this connection (over HTTP/1.1, at most one).
    responses: Mutex<Vec<Arc<dyn Watched>>>,
    /// `responses.len()`, read without the lock on every wake-up of the connection's task.
    count: AtomicUsize,
    /// Some response is polled on another task than the watchdog (HTTP/2).
    cross_task: AtomicBool,
    /// When the watchdog looks next, in nanoseconds since `base`; [`NONE`] when it has no timer
    /// armed. A response on another task (HTTP/2) that starts waiting with an earlier deadline
    /// wakes it.
    next_check: AtomicU64,
    waker: Mutex<Option<Waker>>,
}

impl ConnWatch {
    pub(crate) fn new(rate: ResponseRate) -> Arc<ConnWatch> {
        Arc::new(ConnWatch {
            rate,
            cap: (rate.grace + rate.time_for(BANK)).min(rate.max_stall),
            base: Instant::now(),
            responses: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            cross_task: AtomicBool::new(false),
            next_check: AtomicU64::new(NONE),
            waker: Mutex::new(None),
        })
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(NONE - 1)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<dyn Watched>>> {
        // Pushes and removals cannot panic halfway; a poisoned list is still consistent.
        self.responses.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_waker(&self) -> MutexGuard<'_, Option<Waker>> {
        self.waker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self) {
        if let Some(w) = self.lock_waker().take() {
            w.wake();
        }
    }
}

/// The credit of one streamed response, kept by its body.
pub(crate) struct DrainClock {
    watch: Arc<ConnWatch>,
    credit: Duration,
    /// Since when the response waits for hyper to take its next frame, while it does.
    since: Option<Instant>,
    /// The body is polled on another task than the watchdog (HTTP/2 streams run on tasks of
    /// their own), so it must wake the watchdog when it starts waiting.
    cross_task: bool,
    registered: Option<Arc<dyn Watched>>,
}

impl DrainClock {
    pub(crate) fn new(watch: Arc<ConnWatch>, cross_task: bool) -> DrainClock {
        DrainClock {
            credit: watch.rate.grace.min(watch.cap),
            watch,
            since: None,
            cross_task,
            registered: None,
        }
    }

    /// Puts the response under the connection's watch.
    pub(crate) fn register(&mut self, exchange: Arc<dyn Watched>) {
        let mut list = self.watch.lock();
        list.push(exchange.clone());
        self.watch.count.store(list.len(), Ordering::Relaxed);
        if self.cross_task {
            self.watch.cross_task.store(true, Ordering::Relaxed);
        }
        self.registered = Some(exchange);
    }

    /// Whether the watchdog cut the connection because of this response.
    pub(crate) fn tripped(&self) -> bool {
        self.registered
            .as_ref()
            .is_some_and(|r| r.wait_state().tripped())
    }

    /// The minimum rate, for the log line.
    pub(crate) fn bytes_per_second(&self) -> u64 {
        self.watch.rate.bytes_per_second
    }

    /// A frame of `bytes` goes to hyper; the response now waits until hyper polls it again.
    pub(crate) fn handed(&mut self, bytes: u64) {
        let Some(exchange) = &self.registered else {
            return;
        };
        let now = Instant::now();
        self.credit = (self.credit + self.watch.rate.time_for(bytes)).min(self.watch.cap);
        self.since = Some(now);
        let deadline = self.watch.nanos(now + self.credit);
        // SeqCst with the watchdog's `next_check`: either it sees this deadline in its scan,
        // or this sees the `next_check` it stored before scanning and wakes it.
        exchange
            .wait_state()
            .deadline
            .store(deadline, Ordering::SeqCst);
        if self.cross_task && deadline < self.watch.next_check.load(Ordering::SeqCst) {
            self.watch.wake();
        }
    }

    /// hyper polls the body again: the wait, if any, is over.
    pub(crate) fn resumed(&mut self) {
        if let (Some(since), Some(exchange)) = (self.since.take(), &self.registered) {
            self.credit = self.credit.saturating_sub(since.elapsed());
            exchange.wait_state().deadline.store(NONE, Ordering::SeqCst);
        }
    }
}

impl Drop for DrainClock {
    fn drop(&mut self) {
        if let Some(exchange) = self.registered.take() {
            let mut list = self.watch.lock();
            if let Some(i) = list.iter().position(|x| Arc::ptr_eq(x, &exchange)) {
                list.swap_remove(i);
            }
            self.watch.count.store(list.len(), Ordering::Relaxed);
        }
    }
}

/// Polled by a connection's task next to the connection: completes when a streamed response
/// on it has waited for its client past its credit, and the connection is to be cut.
pub(crate) struct Watchdog {
    watch: Option<Arc<ConnWatch>>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Watchdog {
    /// A watchdog for `watch`; `None` never completes (the minimum rate is off).
    pub(crate) fn new(watch: Option<Arc<ConnWatch>>) -> Watchdog {
        Watchdog { watch, timer: None }
    }
}

impl Future for Watchdog {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = &mut *self;
        let Some(watch) = &this.watch else {
            return Poll::Pending;
        };
        if watch.count.load(Ordering::Relaxed) == 0 {
            // Nothing streams: no timer, and a response that starts streaming must not rely on
            // one armed for an earlier response.
            if watch.next_check.load(Ordering::Relaxed) != NONE {
                watch.next_check.store(NONE, Ordering::Relaxed);
            }
            return Poll::Pending;
        }
        // Only responses on other tasks (HTTP/2) wake the watchdog; over HTTP/1.1 it is polled
        // right after the connection, which is where a response starts waiting.
        let cross_task = watch.cross_task.load(Ordering::Relaxed);
        loop {
            if cross_task {
                let mut waker = watch.lock_waker();
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                // Before the scan: a response that starts waiting after it sees this and
                // wakes us (see `DrainClock::handed`).
                watch.next_check.store(NONE, Ordering::SeqCst);
            }
            let earliest = watch
                .lock()
                .iter()
                .map(|x| x.wait_state().deadline.load(Ordering::SeqCst))
                .min()
                .unwrap_or(NONE);
            if earliest == NONE {
                // Nothing waits for its client: no timer.
                return Poll::Pending;
            }
            let now = watch.nanos(Instant::now());
            if earliest <= now {
                let list = watch.lock();
                let late = list
                    .iter()
                    .find(|x| x.wait_state().deadline.load(Ordering::SeqCst) <= now);
                // The response may have moved on since the scan; then look again.
                if let Some(x) = late {
                    x.wait_state().tripped.store(true, Ordering::Relaxed);
                    return Poll::Ready(());
                }
                continue;
            }
            if cross_task {
                watch.next_check.store(earliest, Ordering::SeqCst);
            }
            let at = watch.base + Duration::from_nanos(earliest);
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}
