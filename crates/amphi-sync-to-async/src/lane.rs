//! A pool's lane onto tokio's blocking pool: the blocking work of one [`BlockingPool`]
//! (crate::BlockingPool) queued once, and run by *drainers*, blocking-pool tasks that take
//! queued work one piece after another.
//!
//! `spawn_blocking` per piece of work costs a wake-up of a parked blocking thread (a condvar
//! signal, a `futex` call and a context switch) each time, even when a blocking thread has
//! just finished its previous piece and would be free a microsecond later. A drainer that
//! finishes a piece looks for the next one for a short while before it returns its thread to
//! tokio, so under load a piece is picked up by a thread that is already running.
//!
//! The one rule: every queued piece has a drainer that will take it. A submit that finds
//! more pieces queued than drainers looking starts another drainer on tokio's blocking pool,
//! so a piece never waits behind another piece's long call.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A piece of blocking work.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// How long a drainer that found the queue empty keeps looking before it returns its thread.
///
/// Every drainer looks, however many there are: capping the lookers at one per core was
/// measured slower and costlier on a 2-core machine (fewer requests and more CPU per request;
/// figures in docs/benchmarks.md), since each piece a capped drainer missed cost a wake-up of
/// a parked thread, which costs more than looking.
const LOOK: Duration = Duration::from_micros(50);

#[derive(Default)]
pub(crate) struct Lane {
    state: Mutex<State>,
    /// The queue's length, read by looking drainers without the lock.
    queued: AtomicUsize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Drainers that will take a queued piece before they return: started and not yet
    /// running one, or looking for the next.
    looking: usize,
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Each critical section is a queue operation and a count; a panic cannot leave them
        // half-updated (jobs run outside the lock).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job`; it runs on a thread of the current runtime's blocking pool.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (like `spawn_blocking`).
    pub(crate) fn submit(self: &Arc<Self>, job: Job) {
        let mut s = self.lock();
        s.queue.push_back(job);
        self.queued.store(s.queue.len(), Ordering::Release);
        let start = s.queue.len() > s.looking;
        if start {
            s.looking += 1;
        }
        drop(s);
        if start {
            let lane = self.clone();
            let drainer = Drainer(Some(lane));
            drop(tokio::task::spawn_blocking(move || drainer.run()));
        }
    }

    /// Takes the next piece off the queue.
    fn take(&self, s: &mut State) -> Option<Job> {
        let job = s.queue.pop_front()?;
        self.queued.store(s.queue.len(), Ordering::Release);
        Some(job)
    }

    /// For a drainer counted as looking: the next piece, or `None` once none came for
    /// [`LOOK`]; either way it is no longer counted.
    fn find(&self) -> Option<Job> {
        loop {
            // `look` returns at once when a piece is queued: the lock is taken only then, or
            // once more when a look ends with nothing found.
            let found = self.look();
            let mut s = self.lock();
            let job = self.take(&mut s);
            if job.is_some() || !found {
                s.looking -= 1;
                return job;
            }
            // Another drainer took it first: look again.
        }
    }

    /// Waits up to [`LOOK`] for the queue to hold a piece; whether it does.
    fn look(&self) -> bool {
        look_for(LOOK, || self.queued.load(Ordering::Acquire) > 0)
    }
}

/// Spins, for up to `how_long`, until `found()` holds; whether it did. Every 32 spins it reads
/// the clock and yields, to let a runnable thread (the runtime's workers, which bring what a
/// blocking thread waits for) have the core meanwhile.
pub(crate) fn look_for(how_long: Duration, mut found: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        if found() {
            return true;
        }
        spins += 1;
        if spins % 32 == 0 {
            if start.elapsed() >= how_long {
                return false;
            }
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// One drainer: counted as looking from its start, until it takes a piece or leaves.
struct Drainer(Option<Arc<Lane>>);

impl Drainer {
    fn run(mut self) {
        let Some(lane) = self.0.take() else { return };
        let Some(mut job) = lane.find() else { return };
        loop {
            // Running: not looking. Jobs catch their own panics; this keeps the count right
            // if one does not.
            let _ = catch_unwind(AssertUnwindSafe(job));
            let mut s = lane.lock();
            job = match lane.take(&mut s) {
                Some(next) => next,
                None => {
                    s.looking += 1;
                    drop(s);
                    match lane.find() {
                        Some(next) => next,
                        None => return,
                    }
                }
            };
        }
    }
}

impl Drop for Drainer {
    /// A drainer dropped unrun (the runtime is shutting down) is no longer looking; the
    /// pieces it would have taken are dropped with the lane, which tells their callers.
    fn drop(&mut self) {
        if let Some(lane) = self.0.take() {
            let mut s = lane.lock();
            s.looking -= 1;
            let orphans = if s.looking == 0 {
                std::mem::take(&mut s.queue)
            } else {
                VecDeque::new()
            };
            lane.queued.store(s.queue.len(), Ordering::Release);
            drop(s);
            drop(orphans);
        }
    }
}
