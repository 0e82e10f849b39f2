//! The request context: a typed map that travels with a request across threads and tasks.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};

use crate::CancellationToken;

/// A typed map behind a lock: the values of a [`Context`] (kept in its token's node) and of a
/// [`State`](crate::State).
#[derive(Default)]
pub(crate) struct TypedMap(Mutex<http::Extensions>);

impl TypedMap {
    fn lock(&self) -> MutexGuard<'_, http::Extensions> {
        // Every operation on the map is a single insert/get/remove, so a panic elsewhere while
        // the lock was held cannot have left it half-updated.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn insert<T: Clone + Send + Sync + 'static>(&self, value: T) -> Option<T> {
        self.lock().insert(value)
    }

    pub(crate) fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.lock().get::<T>().cloned()
    }

    pub(crate) fn remove<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.lock().remove::<T>()
    }

    /// `f` runs without the lock held, so it may read this map itself; if another thread
    /// stored a `T` meanwhile, that value is kept and returned, and `f`'s is dropped.
    pub(crate) fn get_or_insert_with<T: Clone + Send + Sync + 'static>(
        &self,
        f: impl FnOnce() -> T,
    ) -> T {
        if let Some(value) = self.get::<T>() {
            return value;
        }
        let value = f();
        self.lock().get_or_insert_with(|| value).clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Empties the map, handing back what it held (to be dropped after the lock is released:
    /// a value's own drop may use the map's owner).
    pub(crate) fn take(&self) -> http::Extensions {
        std::mem::take(&mut *self.lock())
    }
}

/// The request context: values that belong to one request, wherever its work runs.
///
/// This is the role asgiref's `Local` plays for Django. A context holds a typed map and a
/// [`CancellationToken`]. Clones share the map, so a value set on the async side of a crossing
/// is seen on the sync side and the other way round; the adapter crates carry the context
/// across every crossing they make. Values are keyed by type: wrap them in a newtype to give
/// them a name.
///
/// The *current* context is per thread: [`enter`](Context::enter) makes a context current on
/// this thread until the guard drops, and [`scope`](Context::scope) makes it current during
/// every poll of a future, so it follows the future from thread to thread.
///
/// # Examples
///
/// ```
/// use amphi_core::Context;
///
/// #[derive(Clone, Debug, PartialEq)]
/// struct UserId(u64);
///
/// let ctx = Context::new();
/// ctx.insert(UserId(7));
///
/// // Deep inside blocking code, without passing the context down by hand:
/// let _guard = ctx.enter();
/// let seen = Context::current().and_then(|c| c.get::<UserId>());
/// assert_eq!(seen, Some(UserId(7)));
/// ```
pub struct Context {
    // The values live in the token's node, so a context is a single allocation: see
    // `CancellationToken::values`. The node counts the context handles that use them, and
    // the last one to go drops them (tokens taken from the context do not keep them).
    token: CancellationToken,
}

impl Default for Context {
    fn default() -> Context {
        Context {
            token: CancellationToken::for_context(),
        }
    }
}

impl Clone for Context {
    fn clone(&self) -> Context {
        self.token.context_cloned();
        Context {
            token: self.token.clone(),
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        self.token.context_dropped();
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

impl Context {
    /// An empty context with a fresh cancellation token.
    pub fn new() -> Context {
        Context::default()
    }

    /// A fresh context whose crossings report to `observer`: see
    /// [`plumbing::observed_context`](crate::plumbing::observed_context).
    pub(crate) fn observed(observer: std::sync::Arc<dyn crate::plumbing::Observer>) -> Context {
        Context {
            token: CancellationToken::for_observed_context(observer),
        }
    }

    /// The observer of this context's request: see
    /// [`plumbing::observer`](crate::plumbing::observer).
    pub(crate) fn observer(&self) -> Option<&std::sync::Arc<dyn crate::plumbing::Observer>> {
        self.token.observer()
    }

    /// Stores `value`, returning the value of the same type it replaced.
    pub fn insert<T: Clone + Send + Sync + 'static>(&self, value: T) -> Option<T> {
        self.token.values().insert(value)
    }

    /// A clone of the value of type `T`, if one is set.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.token.values().get()
    }

    /// Removes and returns the value of type `T`.
    pub fn remove<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.token.values().remove()
    }

    /// The value of type `T`, inserting `f()` first if there is none.
    ///
    /// `f` runs without the context's lock held, so it may read this context itself; if another
    /// thread stored a `T` meanwhile, that value is kept and returned, and `f`'s is dropped.
    pub fn get_or_insert_with<T: Clone + Send + Sync + 'static>(&self, f: impl FnOnce() -> T) -> T {
        self.token.values().get_or_insert_with(f)
    }

    /// The number of values stored.
    pub fn len(&self) -> usize {
        self.token.values().len()
    }

    /// Whether no values are stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The context's cancellation token: flipped when the request is abandoned.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// A context that shares this one's values but has its own token, a child of this one's:
    /// cancelling the request reaches it, cancelling it does not reach the request.
    /// The adapter crates give each crossing a child context.
    pub fn child(&self) -> Context {
        Context {
            token: self.token.child_sharing_values(),
        }
    }

    /// Whether two contexts share one map of values.
    pub fn shares_values_with(&self, other: &Context) -> bool {
        std::ptr::eq(self.token.values(), other.token.values())
    }

    /// The context current on this thread, if any.
    pub fn current() -> Option<Context> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// Makes this context current on this thread until the guard is dropped; the previous
    /// one is restored then. Guards must be dropped in reverse order of creation.
    pub fn enter(&self) -> EnterGuard {
        let previous = CURRENT.with(|c| c.replace(Some(self.clone())));
        EnterGuard {
            previous,
            _not_send: std::marker::PhantomData,
        }
    }

    /// Wraps `future` so this context is current during each of its polls, on whatever thread
    /// polls it.
    ///
    /// The future must be `Unpin`; pin others with `Box::pin` first (the handler futures amphi
    /// passes around already are).
    pub fn scope<F: Future + Unpin>(&self, future: F) -> Scoped<F> {
        Scoped {
            context: self.clone(),
            future,
        }
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("values", &self.len())
            .field(
                "observer",
                &self.observer().map(|_| crate::observe::Present),
            )
            .field("token", &self.token)
            .finish()
    }
}

/// Restores the previously current context when dropped; see [`Context::enter`].
#[must_use = "the context is current only while the guard lives"]
pub struct EnterGuard {
    previous: Option<Context>,
    // The guard restores a thread-local, so it must be dropped on the thread that made it.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        // Dropped after the borrow ends: if it is the last handle to its context, its values
        // go now, and a value's own drop may use the current context.
        let left = CURRENT.with(|c| c.replace(previous));
        drop(left);
    }
}

impl fmt::Debug for EnterGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnterGuard").finish_non_exhaustive()
    }
}

/// A future with a context made current during each poll; see [`Context::scope`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct Scoped<F> {
    context: Context,
    future: F,
}

impl<F: Future + Unpin> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let _guard = this.context.enter();
        Pin::new(&mut this.future).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Tag(&'static str);

    #[test]
    fn clones_and_children_share_values_but_not_cancellation_upwards() {
        let ctx = Context::new();
        let child = ctx.child();
        child.insert(Tag("set in child"));
        assert_eq!(ctx.get::<Tag>(), Some(Tag("set in child")));
        child.token().cancel();
        assert!(!ctx.token().is_cancelled());
        ctx.token().cancel();
        assert!(ctx.child().token().is_cancelled());
        assert!(ctx.shares_values_with(&child));
        assert!(!ctx.shares_values_with(&Context::new()));
    }

    #[test]
    fn a_child_keeps_the_values_after_its_parent_is_dropped() {
        let grandchild = {
            let ctx = Context::new();
            ctx.insert(Tag("request"));
            ctx.child().child()
        };
        assert_eq!(grandchild.get::<Tag>(), Some(Tag("request")));
        assert_eq!(grandchild.len(), 1);
        // A plain child token is a new token, not a context: a context made from scratch
        // next to it shares nothing with the grandchild.
        assert!(!grandchild.shares_values_with(&Context::new()));
    }

    #[test]
    fn enter_nests_and_restores() {
        assert!(Context::current().is_none());
        let a = Context::new();
        a.insert(Tag("a"));
        let b = Context::new();
        b.insert(Tag("b"));
        {
            let _ga = a.enter();
            {
                let _gb = b.enter();
                assert_eq!(Context::current().unwrap().get::<Tag>(), Some(Tag("b")));
            }
            assert_eq!(Context::current().unwrap().get::<Tag>(), Some(Tag("a")));
        }
        assert!(Context::current().is_none());
    }

    #[test]
    fn scope_is_current_only_inside_the_future() {
        let ctx = Context::new();
        ctx.insert(Tag("scoped"));
        let fut = ctx.scope(Box::pin(async {
            Context::current().and_then(|c| c.get::<Tag>())
        }));
        assert_eq!(futures_executor::block_on(fut), Some(Tag("scoped")));
        assert!(Context::current().is_none());
    }

    #[test]
    fn remove_and_get_or_insert() {
        let ctx = Context::new();
        assert!(ctx.is_empty());
        assert_eq!(ctx.get_or_insert_with(|| Tag("first")), Tag("first"));
        assert_eq!(ctx.get_or_insert_with(|| Tag("second")), Tag("first"));
        assert_eq!(ctx.remove::<Tag>(), Some(Tag("first")));
        assert_eq!(ctx.get::<Tag>(), None);
    }
}
