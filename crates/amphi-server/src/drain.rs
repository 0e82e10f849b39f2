//! Graceful drain: telling every open connection to finish its requests and close.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Waker};

/// Tells every connection to finish its requests and close: what hyper-util's
/// `GracefulShutdown` does, without its cost on the hot path. Its watcher polls a `Notify`
/// (a lock and a budget check) on every poll of the connection, a few times per request;
/// here a poll costs an atomic load and a waker comparison, and the lock is taken once per
/// connection (again only if its task's waker changes). Waiting for the connections to end
/// is the `JoinSet`'s job. Not a `CancellationToken`: its waiters are a list, and a server
/// with 10,000 idle connections would scan it under one lock each time one of them closes;
/// here a connection's waker is one map entry.
#[derive(Default)]
pub(crate) struct Drain {
    started: AtomicBool,
    /// The wakers of the connections' tasks, by connection.
    wakers: Mutex<DrainWakers>,
}

#[derive(Default)]
struct DrainWakers {
    next: u64,
    by_conn: std::collections::HashMap<u64, Waker>,
}

impl Drain {
    fn lock(&self) -> std::sync::MutexGuard<'_, DrainWakers> {
        // Each critical section is one map operation.
        self.wakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts draining: wakes every connection so that it sees the flag.
    pub(crate) fn start(&self) {
        self.started.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = self.lock().by_conn.drain().map(|(_, w)| w).collect();
        for w in wakers {
            w.wake();
        }
    }
}

/// One connection's view of the [`Drain`].
pub(crate) struct DrainWatch {
    drain: Arc<Drain>,
    id: u64,
    /// The waker registered under `id`, if any.
    waker: Option<Waker>,
    /// The connection was told to finish.
    told: bool,
}

impl DrainWatch {
    pub(crate) fn new(drain: Arc<Drain>) -> DrainWatch {
        let id = {
            let mut w = drain.lock();
            w.next += 1;
            w.next
        };
        DrainWatch {
            drain,
            id,
            waker: None,
            told: false,
        }
    }

    /// Whether the connection is to start its graceful shutdown now: true once.
    pub(crate) fn poll_started(&mut self, cx: &mut TaskContext<'_>) -> bool {
        if self.told {
            return false;
        }
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // Registered before the flag is read: a drain that starts after this sees it.
            let waker = cx.waker().clone();
            self.drain.lock().by_conn.insert(self.id, waker.clone());
            self.waker = Some(waker);
        }
        if self.drain.started.load(Ordering::SeqCst) {
            self.told = true;
            self.drain.lock().by_conn.remove(&self.id);
            return true;
        }
        false
    }
}

impl Drop for DrainWatch {
    fn drop(&mut self) {
        if self.waker.is_some() && !self.told {
            self.drain.lock().by_conn.remove(&self.id);
        }
    }
}
