//! The cancellation token: flips once, reaches children and not parents, wakes blocking
//! waiters on other threads and async waiters through their wakers, and returns at once when
//! it has already flipped.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread;
use std::time::Duration;

use amphi_core::CancellationToken;

/// Long enough that only a missed wake-up reaches it.
const HANG: Duration = Duration::from_secs(60);

/// A waker that counts its wake-ups.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting_waker() -> (Arc<CountingWaker>, Waker) {
    let count = Arc::new(CountingWaker::default());
    (count.clone(), Waker::from(count))
}

fn poll_once<F: Future + Unpin>(fut: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut TaskContext::from_waker(waker))
}

#[test]
fn flips_once_and_clones_share_the_flag() {
    let token = CancellationToken::new();
    let clone = token.clone();
    assert!(!token.is_cancelled());
    assert!(clone.same_as(&token));
    assert!(!CancellationToken::default().is_cancelled());
    clone.cancel();
    assert!(token.is_cancelled());
    token.cancel(); // again: nothing changes
    assert!(token.is_cancelled() && clone.is_cancelled());
    assert!(format!("{token:?}").contains("cancelled: true"));
    assert!(!CancellationToken::new().same_as(&token));
}

#[test]
fn a_parent_reaches_its_children_not_the_reverse() {
    let root = CancellationToken::new();
    let child = root.child();
    let sibling = root.child();
    let grandchild = child.child();

    grandchild.cancel();
    assert!(grandchild.is_cancelled());
    assert!(!child.is_cancelled() && !root.is_cancelled() && !sibling.is_cancelled());

    child.cancel();
    assert!(child.is_cancelled());
    assert!(!root.is_cancelled() && !sibling.is_cancelled());

    root.cancel();
    assert!(sibling.is_cancelled());
    assert!(root.child().child().is_cancelled(), "born cancelled");
}

#[test]
fn an_already_cancelled_token_returns_at_once_everywhere() {
    let root = CancellationToken::new();
    root.cancel();
    let child = root.child();
    // An hour-long wait that returns immediately: if it did not, the test would hang.
    assert!(child.wait_timeout(Duration::from_secs(3600)));
    child.wait();
    let (count, waker) = counting_waker();
    let mut fut = child.cancelled();
    assert!(poll_once(&mut fut, &waker).is_ready());
    assert_eq!(count.0.load(Ordering::SeqCst), 0, "no wake-up needed");
    futures_executor::block_on(root.cancelled());
}

#[test]
fn wait_timeout_times_out_without_a_cancel() {
    let token = CancellationToken::new();
    assert!(!token.wait_timeout(Duration::from_millis(1)));
    assert!(!token.child().wait_timeout(Duration::ZERO));
    assert!(!token.is_cancelled());
}

#[test]
fn a_blocking_waiter_is_woken_by_a_cancel_from_another_thread() {
    let request = CancellationToken::new();
    let call = request.child();
    let ready = Arc::new(Barrier::new(2));
    let (tx, rx) = mpsc::channel();
    let waiter = {
        let ready = ready.clone();
        thread::spawn(move || {
            ready.wait();
            tx.send(call.wait_timeout(HANG)).unwrap();
        })
    };
    ready.wait();
    // Give the waiter a moment to park, so the wake-up path is the one exercised; the result
    // does not depend on it.
    thread::sleep(Duration::from_millis(10));
    request.cancel();
    let woken = rx
        .recv_timeout(HANG)
        .expect("the waiter was not woken by the cancel");
    assert!(woken, "wait_timeout reports the cancel");
    waiter.join().unwrap();
}

#[test]
fn many_blocking_waiters_are_all_woken() {
    let token = CancellationToken::new();
    let ready = Arc::new(Barrier::new(9));
    let (tx, rx) = mpsc::channel();
    let waiters: Vec<_> = (0..8)
        .map(|i| {
            // Half wait on the token, half on children of it; some with wait(), some with
            // wait_timeout().
            let t = if i % 2 == 0 {
                token.clone()
            } else {
                token.child()
            };
            let (ready, tx) = (ready.clone(), tx.clone());
            thread::spawn(move || {
                ready.wait();
                if i % 4 < 2 {
                    t.wait();
                    tx.send(true).unwrap();
                } else {
                    tx.send(t.wait_timeout(HANG)).unwrap();
                }
            })
        })
        .collect();
    ready.wait();
    thread::sleep(Duration::from_millis(10));
    token.cancel();
    for _ in 0..8 {
        assert!(rx.recv_timeout(HANG).expect("a waiter was not woken"));
    }
    for w in waiters {
        w.join().unwrap();
    }
}

#[test]
fn the_cancelled_future_is_woken_by_a_parents_cancel() {
    let parent = CancellationToken::new();
    let child = parent.child();
    let (count, waker) = counting_waker();
    let mut fut = child.cancelled();
    assert!(poll_once(&mut fut, &waker).is_pending());
    assert_eq!(count.0.load(Ordering::SeqCst), 0);
    parent.cancel();
    assert_eq!(
        count.0.load(Ordering::SeqCst),
        1,
        "woken once by the parent"
    );
    assert!(poll_once(&mut fut, &waker).is_ready());
}

#[test]
fn the_cancelled_future_wakes_the_newest_waker_only() {
    let token = CancellationToken::new();
    let (old_count, old) = counting_waker();
    let (new_count, new) = counting_waker();
    let mut fut = token.cancelled();
    assert!(poll_once(&mut fut, &old).is_pending());
    assert!(poll_once(&mut fut, &new).is_pending());
    token.cancel();
    assert_eq!(old_count.0.load(Ordering::SeqCst), 0);
    assert_eq!(new_count.0.load(Ordering::SeqCst), 1);
    assert!(poll_once(&mut fut, &new).is_ready());
}

#[test]
fn a_dropped_cancelled_future_is_not_woken_and_cancels_nothing() {
    let token = CancellationToken::new();
    let (count, waker) = counting_waker();
    let mut fut = token.cancelled();
    assert!(poll_once(&mut fut, &waker).is_pending());
    drop(fut);
    assert!(
        !token.is_cancelled(),
        "dropping the future only stops waiting"
    );
    token.cancel();
    assert_eq!(count.0.load(Ordering::SeqCst), 0, "deregistered on drop");
}

#[test]
fn several_async_waiters_on_different_levels_are_all_woken() {
    let root = CancellationToken::new();
    let tokens = [root.clone(), root.child(), root.child().child()];
    let mut futs: Vec<_> = tokens.iter().map(CancellationToken::cancelled).collect();
    let wakers: Vec<_> = futs.iter().map(|_| counting_waker()).collect();
    for (fut, (_, waker)) in futs.iter_mut().zip(&wakers) {
        assert!(poll_once(fut, waker).is_pending());
    }
    root.cancel();
    for (fut, (count, waker)) in futs.iter_mut().zip(&wakers) {
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(poll_once(fut, waker).is_ready());
    }
}

#[test]
fn an_async_waiter_on_another_thread_is_woken() {
    let parent = CancellationToken::new();
    let child = parent.child();
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        futures_executor::block_on(child.cancelled());
        tx.send(()).unwrap();
    });
    thread::sleep(Duration::from_millis(10));
    parent.cancel();
    rx.recv_timeout(HANG)
        .expect("the async waiter was not woken");
    waiter.join().unwrap();
}

#[test]
fn drop_guard_cancels_on_drop_unless_disarmed() {
    let request = CancellationToken::new();
    let call = request.child();
    {
        let _guard = call.clone().drop_guard();
        assert!(!call.is_cancelled());
    }
    assert!(call.is_cancelled(), "the guard cancelled on drop");
    assert!(!request.is_cancelled(), "only its own token");

    let token = CancellationToken::new();
    let guard = token.clone().drop_guard();
    assert!(format!("{guard:?}").contains("DropGuard"));
    let back = guard.disarm();
    assert!(back.same_as(&token));
    assert!(!token.is_cancelled());

    // A guard dropped during unwinding still cancels: a panicking call cancels its work.
    let token = CancellationToken::new();
    let guard = token.clone().drop_guard();
    let result = std::panic::catch_unwind(move || {
        let _guard = guard;
        panic!("the call failed");
    });
    assert!(result.is_err());
    assert!(token.is_cancelled());
}

#[test]
fn the_token_is_send_and_sync_and_so_is_its_future() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<CancellationToken>();
    assert_send_sync::<amphi_core::Cancelled>();
    assert_send_sync::<amphi_core::DropGuard>();
}
