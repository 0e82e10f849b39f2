//! Blocking a thread on a poll function, with no runtime: wake-ups unpark the thread.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread::{self, Thread};

/// A waker that unparks one thread.
pub(crate) struct ThreadWaker(pub(crate) Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

thread_local! {
    /// This thread's waker, made once: a wait clones it (a reference count) instead of
    /// allocating one, and every wait of the thread hands out the same waker, so a source
    /// that keeps the last waker it saw need not replace it.
    static WAKER: Waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
}

/// A waker that unparks the current thread.
pub(crate) fn thread_waker() -> Waker {
    WAKER
        .try_with(Waker::clone)
        // The thread is exiting and its locals are gone: a fresh waker still works.
        .unwrap_or_else(|_| Waker::from(Arc::new(ThreadWaker(thread::current()))))
}

/// Polls `poll` until it is ready, parking the thread between polls.
pub(crate) fn block_on<T>(mut poll: impl FnMut(&mut TaskContext<'_>) -> Poll<T>) -> T {
    let waker = thread_waker();
    let mut cx = TaskContext::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = poll(&mut cx) {
            return v;
        }
        // A wake between the poll and here leaves the thread's token set, so this returns at
        // once; a spurious return only costs another poll.
        thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    #[test]
    fn block_on_waits_for_a_wake_from_another_thread() {
        let flag = Arc::new(AtomicBool::new(false));
        let slot: Arc<Mutex<Option<Waker>>> = Arc::default();
        let (f, s) = (flag.clone(), slot.clone());
        let setter = thread::spawn(move || loop {
            if let Some(w) = s.lock().unwrap().take() {
                f.store(true, Ordering::SeqCst);
                w.wake();
                return;
            }
            thread::yield_now();
        });
        let polls = Mutex::new(0);
        block_on(|cx| {
            *polls.lock().unwrap() += 1;
            if flag.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *slot.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        });
        setter.join().unwrap();
        assert!(*polls.lock().unwrap() >= 2);
    }

    #[test]
    fn the_threads_waker_is_reused() {
        assert!(thread_waker().will_wake(&thread_waker()));
    }
}
