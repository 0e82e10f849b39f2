//! Thread-sensitive contexts: one thread that runs a context's blocking jobs one at a time.
//!
//! This is the std-only half of amphi's thread-sensitive mode. The adapter crates build on it:
//! `amphi-sync-to-async` submits a call's closure as a job to a [`ThreadSensitive`], and
//! `amphi-async-to-sync` [lends](ThreadSensitive::lend_current_thread) the thread that blocks
//! in `async_to_sync` so jobs bound to it run there while it waits (asgiref's
//! `CurrentThreadExecutor`).

use std::cell::Cell;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, OnceLock};
use std::task::{Context as TaskContext, Poll, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crate::{Context, Error, ErrorKind};

/// The name of the threads that serve [`ThreadSensitive::new`] contexts.
const THREAD_NAME: &str = "amphi-thread-sensitive";

/// How long a thread whose context ended waits to serve a new one before it exits.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few queue and counter updates with no user code
    // inside (jobs run outside the lock), so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A handle to *one thread that runs this context's jobs, one at a time*: the place for
/// blocking work that must stay on one thread, such as a `!Send` database connection kept in a
/// `thread_local!` or a library that is not thread-safe.
///
/// Clones share the context. Contexts are independent: jobs of different contexts run in
/// parallel on different threads, so a context per request (the default the adapters use)
/// keeps thread affinity *within* a request without making the whole app single-threaded, and
/// an app-wide context is one you create and pass around yourself. There is no hidden global
/// thread.
///
/// Where a context's jobs run:
///
/// - A context from [`ThreadSensitive::new`] gets a thread of its own on its first job, named
///   `amphi-thread-sensitive`. The thread stops serving the context when the last handle is
///   dropped and its queued jobs have run; it then waits up to 10 s to serve a new context
///   before it exits, so a context per request does not cost a thread spawn per request.
///   A reused thread keeps its `thread_local!` values: what one context left there, the next
///   context served by that thread sees.
/// - A context *lent* by a thread blocked in `async_to_sync` (see
///   [`lend_current_thread`](ThreadSensitive::lend_current_thread)) runs its jobs on that very
///   thread while it waits. When that thread is itself the thread of a `new()` context, the two
///   share one queue, so work bound to it runs back on it instead of deadlocking.
///
/// # Examples
///
/// A `!Send` resource living on one context's thread:
///
/// ```
/// use amphi_core::ThreadSensitive;
/// use std::cell::Cell;
/// use std::rc::Rc;
/// use std::sync::mpsc;
///
/// thread_local! {
///     static COUNTER: Rc<Cell<u64>> = Rc::new(Cell::new(0));
/// }
///
/// let app = ThreadSensitive::new();
/// let (tx, rx) = mpsc::channel();
/// for _ in 0..3 {
///     let tx = tx.clone();
///     app.submit(move || {
///         let n = COUNTER.with(|c| { c.set(c.get() + 1); c.get() });
///         tx.send((n, std::thread::current().id())).unwrap();
///     })
///     .unwrap();
/// }
/// let seen: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
/// assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2, 3]);
/// assert!(seen.iter().all(|s| s.1 == seen[0].1), "one thread");
/// ```
#[derive(Clone)]
pub struct ThreadSensitive {
    shared: Arc<Shared>,
}

struct Shared {
    inbox: Arc<Inbox>,
    /// `Some` for a context with a thread of its own, started on the first job.
    dedicated: Option<Once>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.dedicated.is_some() {
            // The last handle is gone: the thread finishes the queued jobs and moves on.
            let mut s = lock(&self.inbox.state);
            s.dedicated_open = false;
            let waker = s.waker.take();
            drop(s);
            self.inbox.ready.notify_all();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// The queue of one thread's jobs.
struct Inbox {
    state: Mutex<InboxState>,
    /// A dedicated thread waits here for jobs.
    ready: Condvar,
    /// The queue of a `new()` context (served by a dedicated thread), not a plain thread's.
    dedicated: bool,
    /// The owner thread is lent and has handed its lent context out, so jobs may come. Set
    /// by the owner thread without the lock (a loan is on the hot path of every
    /// `async_to_sync`, and most loans never hand the context out); read under the lock by
    /// `submit`; cleared by the owner before it takes the lock to drop orphaned jobs, so a job
    /// is never left behind.
    lent_open: AtomicBool,
    /// The one thread that runs the jobs, once one does.
    thread: OnceLock<Thread>,
}

#[derive(Default)]
struct InboxState {
    jobs: VecDeque<Job>,
    /// A lent thread waiting for jobs inside `async_to_sync`.
    waker: Option<Waker>,
    /// A `ThreadSensitive::new()` context's handles are alive: a dedicated thread serves this.
    dedicated_open: bool,
    /// A dedicated thread is inside its serving loop for this queue (it may be lent, too).
    serving: bool,
}

impl Inbox {
    fn new(dedicated: bool) -> Arc<Inbox> {
        Arc::new(Inbox {
            state: Mutex::new(InboxState {
                dedicated_open: dedicated,
                ..InboxState::default()
            }),
            ready: Condvar::new(),
            dedicated,
            lent_open: AtomicBool::new(false),
            thread: OnceLock::new(),
        })
    }
}

/// What a thread knows about its own queue and loans.
struct Local {
    /// This thread's own queue: the one it drains while it blocks in `async_to_sync`, and, on
    /// a dedicated thread, the queue of the context it serves.
    inbox: RefCell<Option<Arc<Inbox>>>,
    /// The lent-context handle for `inbox`, made when first handed out and reused after.
    handle: RefCell<Option<ThreadSensitive>>,
    /// Open loans of this thread (nested `async_to_sync` calls).
    loans: Cell<usize>,
    /// A future under a loan of this thread is being polled right now.
    polling: Cell<bool>,
}

thread_local! {
    static LOCAL: Local = const {
        Local {
            inbox: RefCell::new(None),
            handle: RefCell::new(None),
            loans: Cell::new(0),
            polling: Cell::new(false),
        }
    };
}

/// The handle of this thread's lent context, opening it for jobs. Call only while a loan of
/// this thread is open.
fn lent_handle(local: &Local) -> ThreadSensitive {
    let inbox = local
        .inbox
        .borrow_mut()
        .get_or_insert_with(|| Inbox::new(false))
        .clone();
    inbox.thread.get_or_init(thread::current);
    if !inbox.lent_open.load(Ordering::SeqCst) {
        inbox.lent_open.store(true, Ordering::SeqCst);
    }
    let mut handle = local.handle.borrow_mut();
    match &*handle {
        Some(ts) if Arc::ptr_eq(&ts.shared.inbox, &inbox) => ts.clone(),
        _ => {
            let ts = ThreadSensitive {
                shared: Arc::new(Shared {
                    inbox,
                    dedicated: None,
                }),
            };
            *handle = Some(ts.clone());
            ts
        }
    }
}

impl ThreadSensitive {
    /// A new context with a thread of its own, started on its first job.
    pub fn new() -> ThreadSensitive {
        ThreadSensitive {
            shared: Arc::new(Shared {
                inbox: Inbox::new(true),
                dedicated: Some(Once::new()),
            }),
        }
    }

    /// The thread-sensitive context of the calling code, if it has one:
    ///
    /// 1. the context lent by the thread polling this code, when it runs inside an
    ///    `async_to_sync` call (the thread blocked there runs the jobs);
    /// 2. otherwise, the one stored in the current request [`Context`], created there on
    ///    first use, so each request gets its own thread (Django's per-request
    ///    `ThreadSensitiveContext`);
    /// 3. otherwise `None`: there is no request context, and amphi has no global fallback
    ///    thread. Pass a context explicitly.
    ///
    /// A task spawned from async code inherits neither (1) nor the current context unless it
    /// is wrapped in [`Context::scope`]: call `current()` before spawning and move the handle
    /// into the task.
    pub fn current() -> Option<ThreadSensitive> {
        ThreadSensitive::lent()
            .or_else(|| Context::current().map(|c| c.get_or_insert_with(ThreadSensitive::new)))
    }

    /// The context lent by the thread polling this code, when it runs inside an
    /// `async_to_sync` call: step 1 of [`current`](ThreadSensitive::current) alone.
    pub fn lent() -> Option<ThreadSensitive> {
        LOCAL.with(|l| (l.polling.get() && l.loans.get() > 0).then(|| lent_handle(l)))
    }

    /// Queues `job` to run on this context's thread after the jobs queued before it.
    ///
    /// The job runs with nothing special set up: callers enter what they need (the adapters
    /// enter the request context and tracing span). A panic in the job is caught so the thread
    /// keeps serving; catch it yourself to report it (`sync_to_async` returns it as an error).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::WrongContext`] when no thread serves this context any more: it was lent by
    /// a thread whose `async_to_sync` call has returned. The error says so; the job is dropped
    /// unrun.
    ///
    /// A job queued to a lent context whose `async_to_sync` call returns before running it is
    /// dropped unrun too: whoever waits for its result sees its channel close.
    pub fn submit<F: FnOnce() + Send + 'static>(&self, job: F) -> Result<(), Error> {
        self.submit_job(Job(Box::new(job)))
    }

    fn submit_job(&self, job: Job) -> Result<(), Error> {
        let inbox = &self.shared.inbox;
        let mut s = lock(&inbox.state);
        if !s.dedicated_open && !inbox.lent_open.load(Ordering::SeqCst) {
            let thread = describe(inbox.thread.get());
            drop(s);
            return Err(Error::new(ErrorKind::WrongContext).with_message(format!(
                "the thread-sensitive context lent by {thread} has ended: that thread's \
                 async_to_sync call returned before this call was made, so no thread runs its \
                 work any more; await such work before async_to_sync returns, or give work that \
                 outlives it a context of its own (ThreadSensitive::new())"
            )));
        }
        s.jobs.push_back(job);
        let waker = s.waker.take();
        drop(s);
        inbox.ready.notify_one();
        if let Some(w) = waker {
            w.wake();
        }
        if let Some(start) = &self.shared.dedicated {
            start.call_once(|| start_thread(inbox.clone()));
        }
        Ok(())
    }

    /// Whether the calling thread is the one that runs this context's jobs right now.
    pub fn runs_here(&self) -> bool {
        LOCAL.with(|l| {
            l.inbox
                .borrow()
                .as_ref()
                .is_some_and(|i| Arc::ptr_eq(i, &self.shared.inbox))
        })
    }

    /// The thread that runs this context's jobs, once one has started (a `new()` context
    /// starts its thread on the first job).
    pub fn thread(&self) -> Option<Thread> {
        self.shared.inbox.thread.get().cloned()
    }

    /// Whether two handles run their jobs on one queue (clones do; so do every context lent by
    /// one thread and the `new()` context that thread serves).
    pub fn same_as(&self, other: &ThreadSensitive) -> bool {
        Arc::ptr_eq(&self.shared.inbox, &other.shared.inbox)
    }

    /// Lends the calling thread to the code it is about to block on, the way asgiref's
    /// `CurrentThreadExecutor` does: jobs submitted to the returned loan's
    /// [`thread_sensitive`](LentThread::thread_sensitive) context queue up for this thread,
    /// which runs them (through [`poll_job`](LentThread::poll_job)) while it waits.
    ///
    /// `amphi-async-to-sync` calls this in every `async_to_sync`; most code never needs it.
    /// Loans nest: the context stays open until the outermost loan on the thread is dropped.
    /// If this thread serves a `new()` context, the loan shares that context's queue.
    pub fn lend_current_thread() -> LentThread {
        // Cheap on purpose: most loans never hand their context out, and then a loan is a
        // counter in a thread-local.
        LOCAL.with(|l| l.loans.set(l.loans.get() + 1));
        LentThread {
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Default for ThreadSensitive {
    fn default() -> Self {
        ThreadSensitive::new()
    }
}

impl fmt::Debug for ThreadSensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = lock(&self.shared.inbox.state);
        f.debug_struct("ThreadSensitive")
            .field(
                "kind",
                &if self.shared.dedicated.is_some() {
                    "own thread"
                } else {
                    "lent thread"
                },
            )
            .field(
                "thread",
                &self
                    .shared
                    .inbox
                    .thread
                    .get()
                    .map(|t| (t.name().map(str::to_owned), t.id())),
            )
            .field("queued", &s.jobs.len())
            .finish()
    }
}

fn describe(thread: Option<&Thread>) -> String {
    match thread {
        Some(t) => match t.name() {
            Some(name) => format!("thread '{name}'"),
            None => format!("thread {:?}", t.id()),
        },
        None => "a thread".to_owned(),
    }
}

/// One queued unit of work for a thread-sensitive context; see [`LentThread::poll_job`].
pub struct Job(Box<dyn FnOnce() + Send>);

impl Job {
    /// Runs the job on the calling thread. A panic inside it is caught (the thread goes on
    /// serving); the job's submitter is the one to report it.
    pub fn run(self) {
        let _ = catch_unwind(AssertUnwindSafe(self.0));
    }
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

/// The calling thread, lent to the thread-sensitive jobs of the code it blocks on; see
/// [`ThreadSensitive::lend_current_thread`].
///
/// Dropping it ends the loan. When no other loan on the thread is open (and the thread
/// serves no `new()` context), jobs still queued are dropped unrun and later submissions fail
/// with [`ErrorKind::WrongContext`].
pub struct LentThread {
    // The loan counts frames of this thread: it must end on the thread that took it.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl LentThread {
    /// The context whose jobs run on this thread while the loan lasts.
    pub fn thread_sensitive(&self) -> ThreadSensitive {
        LOCAL.with(lent_handle)
    }

    /// The next job for this thread, or `Pending` with `cx`'s waker registered to be woken
    /// when one is submitted. Run it with [`Job::run`] *outside* any runtime's `block_on`.
    pub fn poll_job(&self, cx: &mut TaskContext<'_>) -> Poll<Job> {
        LOCAL.with(|l| {
            let inbox = l.inbox.borrow();
            let Some(inbox) = inbox.as_ref() else {
                return Poll::Pending; // never handed out: no job can come
            };
            if !inbox.dedicated && !inbox.lent_open.load(Ordering::SeqCst) {
                return Poll::Pending; // never handed out: no job can come
            }
            let mut s = lock_inbox(inbox);
            if let Some(job) = s.jobs.pop_front() {
                return Poll::Ready(job);
            }
            match &s.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => s.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
    }

    /// Makes this loan's context what [`ThreadSensitive::current`] returns on this thread
    /// until the guard drops. Enter it around each poll of the future the thread blocks on.
    pub fn enter(&self) -> LentGuard {
        let previous = LOCAL.with(|l| l.polling.replace(true));
        LentGuard {
            previous,
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for LentThread {
    fn drop(&mut self) {
        let inbox = LOCAL.with(|l| {
            let loans = l.loans.get() - 1;
            l.loans.set(loans);
            if loans > 0 {
                return None; // an outer loan on this thread is still open
            }
            // Never handed out: nothing can have been queued through a loan.
            l.inbox
                .borrow()
                .as_ref()
                .filter(|i| i.lent_open.load(Ordering::SeqCst))
                .cloned()
        });
        let Some(inbox) = inbox else { return };
        // Closed first, then the lock: a submit either saw it open and queued its job before
        // we take the lock, or sees it closed.
        inbox.lent_open.store(false, Ordering::SeqCst);
        let mut s = lock_inbox(&inbox);
        s.waker = None;
        let orphans = if !s.dedicated_open && !s.serving {
            std::mem::take(&mut s.jobs)
        } else {
            VecDeque::new()
        };
        drop(s);
        // Dropped outside the lock: a job's captures may run arbitrary `Drop` code.
        drop(orphans);
    }
}

fn lock_inbox(inbox: &Inbox) -> MutexGuard<'_, InboxState> {
    lock(&inbox.state)
}

impl fmt::Debug for LentThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LentThread")
            .field("loans", &LOCAL.with(|l| l.loans.get()))
            .finish()
    }
}

/// Restores the previously lent context when dropped; see [`LentThread::enter`].
#[must_use = "the lent context is current only while the guard lives"]
pub struct LentGuard {
    previous: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for LentGuard {
    fn drop(&mut self) {
        let previous = self.previous;
        LOCAL.with(|l| l.polling.set(previous));
    }
}

impl fmt::Debug for LentGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LentGuard").finish_non_exhaustive()
    }
}

// ---- dedicated threads ----

/// A thread between contexts, waiting to be handed its next queue.
#[derive(Default)]
struct Idle {
    next: Mutex<Option<Arc<Inbox>>>,
    handed: Condvar,
}

static IDLE: Mutex<Vec<Arc<Idle>>> = Mutex::new(Vec::new());

/// Gives `inbox` a thread: an idle one if there is one, else a new one.
fn start_thread(inbox: Arc<Inbox>) {
    if let Some(idle) = lock(&IDLE).pop() {
        *lock(&idle.next) = Some(inbox);
        idle.handed.notify_one();
        return;
    }
    let for_thread = inbox.clone();
    let spawned = thread::Builder::new()
        .name(THREAD_NAME.to_owned())
        .spawn(move || serve_forever(for_thread));
    if spawned.is_err() {
        // No thread can run these jobs: close the context so submitters get an error and
        // waiters see their jobs dropped, instead of waiting forever.
        let mut s = lock_inbox(&inbox);
        s.dedicated_open = false;
        let jobs = std::mem::take(&mut s.jobs);
        drop(s);
        drop(jobs);
    }
}

fn serve_forever(mut inbox: Arc<Inbox>) {
    loop {
        serve(&inbox);
        match wait_for_next() {
            Some(next) => inbox = next,
            None => return,
        }
    }
}

/// Runs `inbox`'s jobs on this thread until its context has no handles and no jobs left.
fn serve(inbox: &Arc<Inbox>) {
    LOCAL.with(|l| {
        *l.inbox.borrow_mut() = Some(inbox.clone());
        *l.handle.borrow_mut() = None;
    });
    {
        let mut s = lock_inbox(inbox);
        inbox.thread.get_or_init(thread::current);
        s.serving = true;
    }
    loop {
        let mut s = lock_inbox(inbox);
        let job = loop {
            if let Some(job) = s.jobs.pop_front() {
                break Some(job);
            }
            if !s.dedicated_open {
                break None;
            }
            // Condvars may wake spuriously; the loop re-checks.
            s = inbox.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        };
        match job {
            Some(job) => {
                drop(s);
                job.run();
            }
            None => {
                s.serving = false;
                break;
            }
        }
    }
    LOCAL.with(|l| {
        *l.inbox.borrow_mut() = None;
        *l.handle.borrow_mut() = None;
    });
}

/// Parks this thread as idle for up to [`IDLE_TIMEOUT`]; returns the next queue to serve.
fn wait_for_next() -> Option<Arc<Inbox>> {
    let me = Arc::new(Idle::default());
    lock(&IDLE).push(me.clone());
    let deadline = Instant::now() + IDLE_TIMEOUT;
    let mut next = lock(&me.next);
    loop {
        if let Some(inbox) = next.take() {
            return Some(inbox);
        }
        let now = Instant::now();
        if now >= deadline {
            drop(next);
            let mut idle = lock(&IDLE);
            if let Some(pos) = idle.iter().position(|i| Arc::ptr_eq(i, &me)) {
                idle.remove(pos);
                return None;
            }
            drop(idle);
            // Someone took this thread off the idle list and is handing it a queue: wait.
            let mut next = lock(&me.next);
            loop {
                if let Some(inbox) = next.take() {
                    return Some(inbox);
                }
                next = me.handed.wait(next).unwrap_or_else(|p| p.into_inner());
            }
        }
        next = me
            .handed
            .wait_timeout(next, deadline - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    const BOUND: Duration = Duration::from_secs(10);

    #[test]
    fn jobs_of_one_context_share_a_thread_and_contexts_differ() {
        let a = ThreadSensitive::new();
        let b = ThreadSensitive::new();
        let (tx, rx) = mpsc::channel();
        for (i, ts) in [&a, &b, &a, &b].into_iter().enumerate() {
            let tx = tx.clone();
            ts.submit(move || tx.send((i, thread::current().id())).unwrap())
                .unwrap();
        }
        let mut seen: Vec<_> = (0..4).map(|_| rx.recv_timeout(BOUND).unwrap()).collect();
        seen.sort_by_key(|s| s.0);
        assert_eq!(seen[0].1, seen[2].1);
        assert_eq!(seen[1].1, seen[3].1);
        assert_ne!(seen[0].1, seen[1].1);
        assert!(a.thread().is_some());
    }

    #[test]
    fn lent_context_runs_jobs_on_the_lending_thread_and_closes_after() {
        let loan = ThreadSensitive::lend_current_thread();
        let ts = loan.thread_sensitive();
        assert!(ts.runs_here());
        let (tx, rx) = mpsc::channel();
        let submitter = {
            let ts = ts.clone();
            thread::spawn(move || ts.submit(move || tx.send(thread::current().id()).unwrap()))
        };
        submitter.join().unwrap().unwrap();
        let waker = Waker::noop();
        let Poll::Ready(job) = loan.poll_job(&mut TaskContext::from_waker(waker)) else {
            panic!("the job was queued before the poll")
        };
        job.run();
        assert_eq!(rx.recv_timeout(BOUND).unwrap(), thread::current().id());
        drop(loan);
        let err = ts.submit(|| ()).unwrap_err();
        assert!(err.is_wrong_context());
        assert!(
            err.to_string().contains("async_to_sync call returned"),
            "{err}"
        );
    }

    #[test]
    fn queued_jobs_are_dropped_when_the_last_loan_ends() {
        let loan = ThreadSensitive::lend_current_thread();
        let (tx, rx) = mpsc::channel::<()>();
        loan.thread_sensitive()
            .submit(move || tx.send(()).unwrap())
            .unwrap();
        drop(loan);
        assert!(
            rx.recv_timeout(BOUND).is_err(),
            "dropped unrun, sender gone"
        );
    }

    #[test]
    fn current_prefers_the_lent_context_then_the_request_context() {
        assert!(ThreadSensitive::current().is_none());
        let ctx = Context::new();
        let _g = ctx.enter();
        let per_request = ThreadSensitive::current().unwrap();
        assert!(per_request.same_as(&ThreadSensitive::current().unwrap()));
        let loan = ThreadSensitive::lend_current_thread();
        {
            let _lent = loan.enter();
            assert!(ThreadSensitive::current()
                .unwrap()
                .same_as(&loan.thread_sensitive()));
        }
        assert!(ThreadSensitive::current().unwrap().same_as(&per_request));
    }

    #[test]
    fn a_panicking_job_does_not_kill_the_thread() {
        let ts = ThreadSensitive::new();
        ts.submit(|| panic!("job panicked on purpose")).unwrap();
        let (tx, rx) = mpsc::channel();
        ts.submit(move || tx.send(()).unwrap()).unwrap();
        rx.recv_timeout(BOUND).unwrap();
    }
}
