//! One blocking wait on async work: pick the runtime, lend the thread, poll until done.

use std::cell::Cell;
use std::future::poll_fn;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Once, OnceLock};
use std::task::{Context as TaskContext, Poll};

use amphi_core::plumbing::{Job, LentThread};
use amphi_core::{Context, Error, ErrorKind, ThreadSensitive};
use tokio::runtime::{Handle, Runtime};

/// The name of the background runtime's threads.
pub(crate) const BACKGROUND_THREAD_NAME: &str = "amphi-async-to-sync";

thread_local! {
    /// This thread is polling a future for `async_to_sync` right now.
    static IN_POLL: Cell<bool> = const { Cell::new(false) };
    /// This thread is inside tokio's `block_on` but has not polled our future yet: a panic now
    /// is tokio refusing to block ("Cannot start a runtime from within a runtime").
    static PROBING: Cell<bool> = const { Cell::new(false) };
}

/// Something a frame drives: a future, plus (for handlers) blocking work it asks for, such as
/// reading the next request body chunk, which must run outside the runtime's `block_on`.
pub(crate) trait Drive {
    type Output;

    /// Polls the async work.
    fn poll_drive(&mut self, cx: &mut TaskContext<'_>) -> Poll<Self::Output>;

    /// Whether the async work waits for blocking work from [`run_blocking`](Drive::run_blocking).
    fn wants_blocking(&self) -> bool {
        false
    }

    /// Does the blocking work asked for, on the calling thread, outside any `block_on`.
    fn run_blocking(&mut self) {}
}

enum Step<T> {
    Done(T),
    Job(Job),
    Blocking,
}

/// The runtime this thread should block on, or why it must not block at all.
fn runtime_here() -> Result<(Handle, bool), Error> {
    if IN_POLL.with(Cell::get) {
        return Err(wrong_context(
            "inside a future that async_to_sync is already driving on this thread",
        ));
    }
    if tokio::runtime::worker_index().is_some() {
        return Err(wrong_context(
            "on a thread that runs a tokio runtime's tasks",
        ));
    }
    match Handle::try_current() {
        // A blocking-pool thread (or a plain thread that entered a runtime): block on the
        // runtime that owns it. Tokio may still refuse (inside a `block_on`), hence the probe.
        Ok(handle) => Ok((handle, true)),
        Err(_) => Ok((background()?.clone(), false)),
    }
}

fn wrong_context(where_: &str) -> Error {
    Error::new(ErrorKind::WrongContext).with_message(format!(
        "async_to_sync called {where_}: blocking here would stall the async tasks this thread \
         drives (or deadlock); this code is already async, so `.await` the future directly, \
         or move the blocking caller to a blocking thread (sync_to_async / spawn_blocking)"
    ))
}

static BACKGROUND: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The shared background runtime for callers on plain threads; see the crate docs.
pub(crate) fn background() -> Result<&'static Handle, Error> {
    let rt = BACKGROUND.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(BACKGROUND_THREAD_NAME)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    match rt {
        Ok(rt) => Ok(rt.handle()),
        Err(e) => Err(Error::new(ErrorKind::Other)
            .with_message(format!("could not start the background runtime: {e}"))),
    }
}

/// Installs, once, a panic hook that stays silent for the one panic this crate provokes on
/// purpose (tokio refusing to block inside a runtime, which we turn into
/// [`ErrorKind::WrongContext`]) and hands every other panic to the hook that was there.
fn install_probe_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !PROBING.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

struct Flag(&'static std::thread::LocalKey<Cell<bool>>, bool);

impl Flag {
    fn set(key: &'static std::thread::LocalKey<Cell<bool>>, value: bool) -> Flag {
        Flag(key, key.with(|c| c.replace(value)))
    }
}

impl Drop for Flag {
    fn drop(&mut self) {
        let previous = self.1;
        self.0.with(|c| c.set(previous));
    }
}

/// Blocks the calling thread on `work` until it is done.
///
/// The thread lends itself to thread-sensitive work while it waits: jobs submitted to its
/// [`ThreadSensitive`] context run here between polls. `context` is entered and `span` is
/// entered during every poll; the lent context is what [`ThreadSensitive::current`] answers
/// inside the work.
pub(crate) fn block_on_drive<D: Drive>(
    work: &mut D,
    context: Option<&Context>,
    span: &tracing::Span,
    loan: &LentThread,
) -> Result<D::Output, Error> {
    let (handle, probe) = runtime_here()?;
    if probe {
        install_probe_hook();
    }
    loop {
        let step = {
            let _probing = Flag::set(&PROBING, probe);
            let polled = catch_unwind(AssertUnwindSafe(|| {
                handle.block_on(poll_fn(|cx| {
                    PROBING.with(|p| p.set(false));
                    let _in_poll = Flag::set(&IN_POLL, true);
                    let _context = context.map(Context::enter);
                    let _span = span.enter();
                    let _lent = loan.enter();
                    if let Poll::Ready(v) = work.poll_drive(cx) {
                        return Poll::Ready(Step::Done(v));
                    }
                    if work.wants_blocking() {
                        return Poll::Ready(Step::Blocking);
                    }
                    loan.poll_job(cx).map(Step::Job)
                }))
            }));
            match polled {
                Ok(step) => step,
                Err(_) if PROBING.with(Cell::get) => {
                    return Err(wrong_context("inside a tokio runtime's block_on"))
                }
                Err(panic) => return Err(Error::from_panic(&*panic)),
            }
        };
        match step {
            Step::Done(v) => return Ok(v),
            Step::Job(job) => job.run(),
            Step::Blocking => {
                let _context = context.map(Context::enter);
                let _span = span.enter();
                work.run_blocking();
            }
        }
    }
}

/// A loan of this thread, and the context the work runs in: a child of the current context,
/// or none when the caller has none (there are no values to carry and nobody to cancel; the
/// lent thread is still found by `ThreadSensitive::current` during every poll).
pub(crate) fn lend() -> (LentThread, Option<Context>) {
    let loan = ThreadSensitive::lend_current_thread();
    (loan, Context::current().map(|parent| parent.child()))
}
