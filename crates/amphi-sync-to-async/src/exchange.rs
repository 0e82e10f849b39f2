//! The state one [`SyncToAsync`](crate::SyncToAsync) request shares between its async side
//! (the handler future, which talks to `receive`/`send`) and its blocking side (the thread
//! running the sync handler).
//!
//! One allocation per request holds both directions: request body chunks flowing to the
//! blocking reader and response pieces flowing back, each through a small bounded queue, so
//! neither side runs ahead of the other by more than a few chunks (backpressure). The async
//! side is woken through one waker; the blocking side sleeps on two condition variables.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use amphi_core::{CancellationToken, DropGuard, Error, ErrorKind};
use bytes::Bytes;

/// Request body chunks buffered ahead of the blocking reader.
pub(crate) const BODY_CAPACITY: usize = 4;
/// Response pieces buffered ahead of the connection.
pub(crate) const OUT_CAPACITY: usize = 4;

/// How long the blocking side looks for the next request body chunk before it sleeps on a
/// condition variable. A body streaming in from a fast client is a few microseconds behind;
/// sleeping for it costs a `futex` call on each side and a context switch. (The response side
/// does not look: a connection's room for the next chunk comes at the client's pace, and
/// looking for it against slow readers was measured to cost several times the CPU for no gain;
/// figures in docs/benchmarks.md.)
const LOOK: Duration = Duration::from_micros(50);

/// The most waits in a row that sleep without looking, once looks keep finding nothing.
const MAX_LOOKS_SKIPPED: u32 = 64;

/// A response piece on its way from the blocking side to the async side.
pub(crate) enum Out {
    /// The response head of a streamed body.
    Head(http::response::Parts),
    /// A body chunk.
    Chunk(Bytes),
}

/// How the blocking side ended.
pub(crate) enum Outcome {
    /// The whole response, head and bytes, handed over at once: no streaming needed.
    Full(http::response::Parts, Bytes),
    /// The head and every chunk went through the queue.
    Streamed,
}

pub(crate) struct Exchange {
    state: Mutex<State>,
    /// Bumped by the async side after each change the blocking reader may wait for (a body
    /// chunk queued, the body's end, the async side gone): a looking reader watches it
    /// without the lock.
    changes: AtomicU64,
    /// The blocking reader waits here for body chunks.
    body_ready: Condvar,
    /// The blocking writer waits here for room in the response queue.
    out_room: Condvar,
}

#[derive(Default)]
struct State {
    body: VecDeque<Result<Bytes, Error>>,
    /// The async side delivered the whole body (or its error): no more chunks come.
    body_end: bool,
    out: VecDeque<Out>,
    /// `Some` once the blocking side has finished.
    outcome: Option<Result<Outcome, Error>>,
    /// The blocking side ended (its closure returned, panicked, or was dropped unrun).
    blocking_done: bool,
    /// The async side is gone: its future was dropped or it returned.
    async_gone: bool,
    /// The handler was handed a `BodyTooLarge` error by a body read.
    saw_too_large: bool,
    /// The blocking side sleeps on `body_ready` / `out_room`. Notifying a condvar costs a
    /// system call even with nobody waiting, so it is done only when someone is.
    body_waiter: bool,
    out_waiter: bool,
    waker: Option<Waker>,
    /// Waits that sleep at once since the last look found nothing, and how many of them
    /// do: see `Exchange::look_while_waiting`.
    looks_skipped: u32,
    looks_to_skip: u32,
}

fn gone() -> Error {
    Error::new(ErrorKind::Disconnected).with_message("the async caller went away")
}

impl Exchange {
    pub(crate) fn new() -> Arc<Exchange> {
        Arc::new(Exchange {
            state: Mutex::new(State::default()),
            changes: AtomicU64::new(0),
            body_ready: Condvar::new(),
            out_room: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a few queue operations; a panic inside one cannot leave
        // the queues half-updated, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(state: &mut State) {
        if let Some(w) = state.waker.take() {
            w.wake();
        }
    }

    // ---- async side ----

    /// Whether the body queue has room for another chunk; registers `waker` if not.
    pub(crate) fn body_has_room(&self, waker: &Waker) -> bool {
        let mut s = self.lock();
        if s.body.len() < BODY_CAPACITY {
            return true;
        }
        register(&mut s, waker);
        false
    }

    /// Queues a body chunk or error; `last` marks the end of the body.
    pub(crate) fn push_body(&self, item: Option<Result<Bytes, Error>>, last: bool) {
        let mut s = self.lock();
        if let Some(item) = item {
            s.body.push_back(item);
        }
        if last {
            s.body_end = true;
        }
        let notify = s.body_waiter;
        drop(s);
        self.changed();
        if notify {
            self.body_ready.notify_one();
        }
    }

    /// Takes the next response piece, or the outcome once every piece is taken; registers
    /// `waker` when there is neither yet.
    pub(crate) fn take_out(&self, waker: &Waker) -> Option<Result<Out, Result<Outcome, Error>>> {
        let mut s = self.lock();
        if let Some(out) = s.out.pop_front() {
            let notify = s.out_waiter;
            drop(s);
            if notify {
                self.out_room.notify_one();
            }
            return Some(Ok(out));
        }
        if let Some(outcome) = s.outcome.take() {
            return Some(Err(outcome));
        }
        if s.blocking_done {
            return Some(Err(Err(Error::new(ErrorKind::Cancelled).with_message(
                "the blocking handler was dropped before it ran: the runtime shut down, or the \
                 thread-sensitive context it was queued on ended (its async_to_sync returned)",
            ))));
        }
        register(&mut s, waker);
        None
    }

    /// The async side is gone: fail the blocking side's reads and writes.
    pub(crate) fn close_async(&self) {
        let mut s = self.lock();
        s.async_gone = true;
        s.waker = None;
        let (body, out) = (s.body_waiter, s.out_waiter);
        drop(s);
        self.changed();
        if body {
            self.body_ready.notify_all();
        }
        if out {
            self.out_room.notify_all();
        }
    }

    // ---- blocking side ----

    /// The next request body chunk, blocking until it arrives; `None` at the end.
    pub(crate) fn next_body(&self, token: &CancellationToken) -> Option<Result<Bytes, Error>> {
        let mut s = self.lock();
        loop {
            if let Some(item) = s.body.pop_front() {
                if item.as_ref().is_err_and(Error::is_body_too_large) {
                    s.saw_too_large = true;
                }
                Exchange::wake(&mut s);
                return Some(item);
            }
            if s.body_end {
                return None;
            }
            if s.async_gone || token.is_cancelled() {
                return Some(Err(gone()));
            }
            let changed;
            (s, changed) = self.look_while_waiting(s);
            if changed {
                continue;
            }
            if !s.body.is_empty() || s.body_end || s.async_gone {
                continue;
            }
            // A flipped token does not notify this condvar, so wake up now and then to look.
            s.body_waiter = true;
            s = self
                .body_ready
                .wait_timeout(s, std::time::Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
            s.body_waiter = false;
        }
    }

    /// Whether a body read handed the handler a `BodyTooLarge` error.
    pub(crate) fn saw_too_large(&self) -> bool {
        self.lock().saw_too_large
    }

    /// Queues a response piece, blocking while the queue is full.
    ///
    /// # Errors
    ///
    /// `ConnectionAborted` (kind [`ErrorKind::Disconnected`]) once the async side is gone.
    pub(crate) fn push_out(&self, out: Out) -> io::Result<()> {
        let mut s = self.lock();
        loop {
            if s.async_gone {
                return Err(gone().into_io());
            }
            if s.out.len() < OUT_CAPACITY {
                s.out.push_back(out);
                Exchange::wake(&mut s);
                return Ok(());
            }
            s.out_waiter = true;
            s = self.out_room.wait(s).unwrap_or_else(|p| p.into_inner());
            s.out_waiter = false;
        }
    }

    /// The async side changed something the blocking side may be waiting for.
    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// Before the blocking reader sleeps: looks, for up to [`LOOK`] and without the lock, for
    /// a change by the async side; returns the state locked again and whether one came.
    /// Looking pays while the client keeps up; against a slow one it only burns CPU, so after
    /// a look that found nothing the next 1, 2, 4 ... 64 waits sleep at once, and a look that
    /// finds something starts over.
    fn look_while_waiting<'a>(
        &'a self,
        mut s: MutexGuard<'a, State>,
    ) -> (MutexGuard<'a, State>, bool) {
        if s.looks_skipped < s.looks_to_skip {
            s.looks_skipped += 1;
            return (s, false);
        }
        let seen = self.changes.load(Ordering::Acquire);
        drop(s);
        let changed = crate::lane::look_for(LOOK, || self.changes.load(Ordering::Acquire) != seen);
        let mut s = self.lock();
        s.looks_skipped = 0;
        s.looks_to_skip = if changed {
            0
        } else {
            (s.looks_to_skip * 2).clamp(1, MAX_LOOKS_SKIPPED)
        };
        (s, changed)
    }

    /// Records how the blocking side ended and wakes the async side.
    pub(crate) fn finish(&self, outcome: Result<Outcome, Error>) {
        let mut s = self.lock();
        s.outcome = Some(outcome);
        s.blocking_done = true;
        Exchange::wake(&mut s);
    }

    /// Marks the blocking side ended without an outcome (its closure was dropped unrun).
    pub(crate) fn abandon(&self) {
        let mut s = self.lock();
        s.blocking_done = true;
        Exchange::wake(&mut s);
    }
}

fn register(s: &mut State, waker: &Waker) {
    match &s.waker {
        Some(w) if w.will_wake(waker) => {}
        _ => s.waker = Some(waker.clone()),
    }
}

/// The async side's hold on one request: the exchange the blocking side reports through, and
/// the guard that flips the request's token if this side goes away before the blocking side
/// has finished.
pub(crate) struct AsyncEnd {
    pub(crate) exchange: Arc<Exchange>,
    guard: Option<DropGuard>,
}

impl AsyncEnd {
    pub(crate) fn new(exchange: Arc<Exchange>, guard: DropGuard) -> AsyncEnd {
        AsyncEnd {
            exchange,
            guard: Some(guard),
        }
    }

    /// The blocking side is done with the token: it must not flip when this side is dropped.
    pub(crate) fn finished(&mut self) {
        if let Some(guard) = self.guard.take() {
            guard.disarm();
        }
    }
}

impl Drop for AsyncEnd {
    fn drop(&mut self) {
        // The token flips first, so a producer whose write failed finds it flipped and can
        // tell a caller that left from another failure.
        drop(self.guard.take());
        self.exchange.close_async();
    }
}
