//! A cancellation token that flips once and can be waited on from both sides of the boundary.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use crate::context::TypedMap;
use crate::observe::Observer;
use crate::park::ThreadWaker;

/// A flag that flips from "running" to "cancelled" once, and never back.
///
/// Blocking code polls it with [`is_cancelled`](Self::is_cancelled) or sleeps on it with
/// [`wait_timeout`](Self::wait_timeout); async code awaits [`cancelled`](Self::cancelled).
/// Clones share one flag. A [`child`](Self::child) token is cancelled when its parent is, and
/// can also be cancelled on its own without touching the parent: that is how one call's
/// cancellation stays inside that call while a request's cancellation reaches every call in it.
///
/// It uses no runtime: wake-ups go through [`Waker`]s and thread unparking, so it works
/// under tokio, on plain threads and between the two.
///
/// # Examples
///
/// ```
/// use amphi_core::CancellationToken;
/// use std::time::Duration;
///
/// let request = CancellationToken::new();
/// let call = request.child();
/// let worker = {
///     let call = call.clone();
///     std::thread::spawn(move || {
///         // Blocking work in steps, stopping as soon as the token flips.
///         let mut steps = 0;
///         while !call.wait_timeout(Duration::from_millis(1)) {
///             steps += 1;
///         }
///         steps
///     })
/// };
/// request.cancel(); // the client went away
/// worker.join().unwrap();
/// assert!(call.is_cancelled());
/// ```
#[derive(Clone)]
pub struct CancellationToken {
    node: Arc<Node>,
}

struct Node {
    cancelled: AtomicBool,
    parent: Option<Arc<Node>>,
    waiters: Mutex<Waiters>,
    /// The values of the [`Context`](crate::Context) whose token this node is, kept here so a
    /// context is one allocation. `None` when the node shares the values of the nearest
    /// ancestor that owns some (a [`Context::child`](crate::Context::child)). An empty
    /// `Extensions` allocates nothing, so a plain token pays only for the field.
    values: Option<TypedMap>,
    /// For a node that owns values: how many `Context` handles use them. The values are
    /// dropped when the last one goes, as a context's own map would be, even while tokens
    /// taken from the context live on (a value holding such a token would otherwise keep
    /// itself alive).
    contexts: AtomicUsize,
    /// For a node that owns values: what the request's crossings report to (see
    /// [`Observer`]); set only by [`observed_context`](crate::plumbing::observed_context).
    /// It lives with the values, so every context that shares them finds it.
    observer: Option<Arc<dyn Observer>>,
}

#[derive(Default)]
struct Waiters {
    next_key: u64,
    list: Vec<(u64, Waker)>,
}

impl Node {
    fn lock(&self) -> MutexGuard<'_, Waiters> {
        // A panic while holding this lock cannot leave the list inconsistent (every mutation
        // is a single push or retain), so a poisoned lock is still safe to use.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ancestors(self: &Arc<Node>) -> impl Iterator<Item = &Arc<Node>> {
        std::iter::successors(Some(self), |n| n.parent.as_ref())
    }
}

impl CancellationToken {
    /// A new token, not cancelled.
    pub fn new() -> CancellationToken {
        CancellationToken::with_node(None, Some(TypedMap::default()), 0)
    }

    /// The token of a new [`Context`](crate::Context): it owns the values, used by one
    /// context handle.
    pub(crate) fn for_context() -> CancellationToken {
        CancellationToken::with_node(None, Some(TypedMap::default()), 1)
    }

    /// The token of a new [`Context`](crate::Context) whose crossings report to `observer`.
    pub(crate) fn for_observed_context(observer: Arc<dyn Observer>) -> CancellationToken {
        let mut token = CancellationToken::for_context();
        if let Some(node) = Arc::get_mut(&mut token.node) {
            node.observer = Some(observer);
        }
        token
    }

    /// A token that is cancelled when `self` is, and can be cancelled alone.
    pub fn child(&self) -> CancellationToken {
        CancellationToken::with_node(Some(self.node.clone()), Some(TypedMap::default()), 0)
    }

    /// Like [`child`](Self::child), but the child shares this token's context values instead
    /// of owning its own: the token of a [`Context::child`](crate::Context::child).
    /// One more context handle uses the values.
    pub(crate) fn child_sharing_values(&self) -> CancellationToken {
        self.context_cloned();
        CancellationToken::with_node(Some(self.node.clone()), None, 0)
    }

    fn with_node(
        parent: Option<Arc<Node>>,
        values: Option<TypedMap>,
        contexts: usize,
    ) -> CancellationToken {
        CancellationToken {
            node: Arc::new(Node {
                cancelled: AtomicBool::new(false),
                parent,
                waiters: Mutex::new(Waiters::default()),
                values,
                contexts: AtomicUsize::new(contexts),
                observer: None,
            }),
        }
    }

    /// The node whose values this token carries: its own, or the nearest ancestor that owns
    /// some.
    fn values_node(&self) -> &Node {
        self.node
            .ancestors()
            .find(|n| n.values.is_some())
            .expect("a node without a parent owns values: only child_sharing_values makes one that does not")
    }

    /// The context values this token carries. Two tokens return the same map exactly when
    /// their contexts share values.
    pub(crate) fn values(&self) -> &TypedMap {
        self.values_node()
            .values
            .as_ref()
            .expect("values_node owns values")
    }

    /// The observer of the context whose values this token carries.
    pub(crate) fn observer(&self) -> Option<&Arc<dyn Observer>> {
        self.values_node().observer.as_ref()
    }

    /// A context handle using this token's values was cloned.
    pub(crate) fn context_cloned(&self) {
        self.values_node().contexts.fetch_add(1, Ordering::Relaxed);
    }

    /// A context handle using this token's values was dropped: the last one drops them.
    pub(crate) fn context_dropped(&self) {
        let node = self.values_node();
        if node.contexts.fetch_sub(1, Ordering::AcqRel) == 1 {
            let values = node.values.as_ref().expect("values_node owns values");
            // Dropped after the lock is released: a value's own drop may use a context.
            drop(values.take());
        }
    }

    /// Flips the token (and so every child) to cancelled and wakes everyone waiting.
    /// Calling it again does nothing.
    pub fn cancel(&self) {
        if self.node.cancelled.swap(true, Ordering::AcqRel) {
            return;
        }
        let waiters = std::mem::take(&mut self.node.lock().list);
        for (_, waker) in waiters {
            waker.wake();
        }
    }

    /// Whether this token or one of its ancestors has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.node
            .ancestors()
            .any(|n| n.cancelled.load(Ordering::Acquire))
    }

    /// A future that completes once the token is cancelled.
    ///
    /// # Cancellation
    ///
    /// Dropping the future only stops waiting; it does not cancel the token.
    pub fn cancelled(&self) -> Cancelled {
        Cancelled {
            token: self.clone(),
            keys: Vec::new(),
            waker: None,
        }
    }

    /// Blocks the current thread until the token is cancelled or `timeout` passes; returns
    /// whether it was cancelled. Meant for blocking code that works in steps.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        if self.is_cancelled() {
            return true;
        }
        let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
        let keys = self.register(&waker);
        let cancelled = loop {
            if self.is_cancelled() {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            // Parking may wake spuriously; the loop re-checks the flag and the deadline.
            thread::park_timeout(deadline - now);
        };
        self.deregister(&keys);
        cancelled
    }

    /// Blocks the current thread until the token is cancelled.
    pub fn wait(&self) {
        while !self.wait_timeout(Duration::from_secs(3600)) {}
    }

    /// A guard that cancels this token when dropped, unless [`disarm`](DropGuard::disarm)ed.
    pub fn drop_guard(self) -> DropGuard {
        DropGuard { token: Some(self) }
    }

    /// Whether two tokens share one flag.
    pub fn same_as(&self, other: &CancellationToken) -> bool {
        Arc::ptr_eq(&self.node, &other.node)
    }

    fn register(&self, waker: &Waker) -> Vec<u64> {
        self.node
            .ancestors()
            .map(|n| {
                let mut w = n.lock();
                let key = w.next_key;
                w.next_key += 1;
                w.list.push((key, waker.clone()));
                key
            })
            .collect()
    }

    fn deregister(&self, keys: &[u64]) {
        for (n, key) in self.node.ancestors().zip(keys) {
            n.lock().list.retain(|(k, _)| k != key);
        }
    }
}

impl Default for CancellationToken {
    fn default() -> Self {
        CancellationToken::new()
    }
}

impl fmt::Debug for CancellationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancellationToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// The future returned by [`CancellationToken::cancelled`].
#[must_use = "futures do nothing unless polled"]
pub struct Cancelled {
    token: CancellationToken,
    keys: Vec<u64>,
    /// The waker registered under `keys`.
    waker: Option<Waker>,
}

impl Future for Cancelled {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        if self.token.is_cancelled() {
            return Poll::Ready(());
        }
        let this = &mut *self;
        if this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // Still registered with a waker that wakes this task: nothing to redo (the flag
            // was read above, and `cancel` wakes what is registered).
            return Poll::Pending;
        }
        // A new waker: re-register, so the newest one is the one woken.
        this.token.deregister(&this.keys);
        this.keys = this.token.register(cx.waker());
        this.waker = Some(cx.waker().clone());
        // The flag may have flipped between the check and the registration.
        if this.token.is_cancelled() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Cancelled {
    fn drop(&mut self) {
        if !self.keys.is_empty() {
            self.token.deregister(&self.keys);
        }
    }
}

impl fmt::Debug for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancelled")
            .field("token", &self.token)
            .finish()
    }
}

/// Cancels its token when dropped; see [`CancellationToken::drop_guard`].
#[derive(Debug)]
pub struct DropGuard {
    token: Option<CancellationToken>,
}

impl DropGuard {
    /// Gives the token back without cancelling it.
    pub fn disarm(mut self) -> CancellationToken {
        self.token
            .take()
            .expect("the token is only taken by disarm or drop")
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(t) = self.token.take() {
            t.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_once_and_reaches_children_not_parents() {
        let parent = CancellationToken::new();
        let child = parent.child();
        let grandchild = child.child();
        child.cancel();
        assert!(child.is_cancelled() && grandchild.is_cancelled());
        assert!(!parent.is_cancelled());
        parent.cancel();
        parent.cancel();
        assert!(parent.is_cancelled());
    }

    #[test]
    fn async_wait_wakes_on_parent_cancel() {
        let parent = CancellationToken::new();
        let child = parent.child();
        let waiter = thread::spawn(move || futures_executor::block_on(child.cancelled()));
        thread::sleep(Duration::from_millis(20));
        parent.cancel();
        waiter.join().unwrap();
    }

    #[test]
    fn wait_timeout_times_out_when_not_cancelled() {
        let t = CancellationToken::new();
        assert!(!t.wait_timeout(Duration::from_millis(5)));
        assert!(t.node.lock().list.is_empty(), "waiter deregistered");
    }

    #[test]
    fn drop_guard_cancels_and_disarm_does_not() {
        let t = CancellationToken::new();
        drop(t.clone().drop_guard());
        assert!(t.is_cancelled());
        let t = CancellationToken::new();
        let back = t.clone().drop_guard().disarm();
        assert!(!back.is_cancelled() && back.same_as(&t));
    }

    #[test]
    fn dropped_wait_future_deregisters() {
        let t = CancellationToken::new();
        let mut fut = Box::pin(t.cancelled());
        let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
        let mut cx = TaskContext::from_waker(&waker);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(t.node.lock().list.len(), 1, "re-polling replaces, not adds");
        drop(fut);
        assert!(t.node.lock().list.is_empty());
    }
}
