//! The request context: values shared by clones, children and threads; the per-thread current
//! context with `enter` nesting; `scope` following a future from thread to thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::thread::{self, ThreadId};

use amphi_core::Context;

#[derive(Clone, Debug, PartialEq)]
struct Tag(&'static str);

#[derive(Clone, Debug, PartialEq)]
struct Count(u32);

fn current_tag() -> Option<Tag> {
    Context::current().and_then(|c| c.get::<Tag>())
}

fn tagged(tag: &'static str) -> Context {
    let ctx = Context::new();
    ctx.insert(Tag(tag));
    ctx
}

#[test]
fn values_are_keyed_by_type() {
    let ctx = Context::new();
    assert!(ctx.is_empty());
    assert_eq!(ctx.insert(Tag("a")), None);
    assert_eq!(ctx.insert(Count(1)), None);
    assert_eq!(ctx.len(), 2);
    assert_eq!(
        ctx.insert(Tag("b")),
        Some(Tag("a")),
        "replacing returns the old value"
    );
    assert_eq!(ctx.get::<Tag>(), Some(Tag("b")));
    assert_eq!(ctx.get::<String>(), None);
    assert_eq!(ctx.remove::<Count>(), Some(Count(1)));
    assert_eq!(ctx.remove::<Count>(), None);
    assert_eq!(ctx.get_or_insert_with(|| Count(5)), Count(5));
    assert_eq!(ctx.get_or_insert_with(|| Count(6)), Count(5));
    assert_eq!(ctx.len(), 2);
    assert!(format!("{ctx:?}").contains("values: 2"));
}

#[test]
fn clones_and_children_share_values_both_ways() {
    let ctx = Context::new();
    let clone = ctx.clone();
    let child = ctx.child();
    let grandchild = child.child();
    grandchild.insert(Tag("from the grandchild"));
    assert_eq!(ctx.get::<Tag>(), Some(Tag("from the grandchild")));
    assert_eq!(clone.get::<Tag>(), Some(Tag("from the grandchild")));
    ctx.insert(Count(3));
    assert_eq!(grandchild.get::<Count>(), Some(Count(3)));
    assert!(ctx.shares_values_with(&clone));
    assert!(ctx.shares_values_with(&grandchild));
    assert!(!ctx.shares_values_with(&Context::new()));
    assert!(
        Context::new().get::<Tag>().is_none(),
        "new contexts start empty"
    );

    // Clones share the token; children get their own, below the parent's.
    assert!(clone.token().same_as(ctx.token()));
    assert!(!child.token().same_as(ctx.token()));
}

#[test]
fn a_child_context_is_cancelled_with_its_parent_not_the_reverse() {
    let request = Context::new();
    let call_a = request.child();
    let call_b = request.child();
    call_a.token().cancel();
    assert!(call_a.token().is_cancelled());
    assert!(!call_b.token().is_cancelled(), "siblings are untouched");
    assert!(!request.token().is_cancelled(), "the parent is untouched");
    request.token().cancel();
    assert!(call_b.token().is_cancelled());
    assert!(request.child().token().is_cancelled(), "born cancelled");
}

#[test]
fn values_are_shared_across_threads() {
    let ctx = Context::new();
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let ctx = ctx.child();
            thread::spawn(move || {
                ctx.get_or_insert_with(|| Tag("first writer wins"));
                if i == 0 {
                    ctx.insert(Count(99));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(ctx.get::<Tag>(), Some(Tag("first writer wins")));
    assert_eq!(ctx.get::<Count>(), Some(Count(99)));

    // And back: a value set here is seen by a thread holding a clone.
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let remote = ctx.clone();
    let t = thread::spawn(move || {
        go_rx.recv().unwrap();
        tx.send(remote.get::<Tag>()).unwrap();
    });
    ctx.insert(Tag("set later"));
    go_tx.send(()).unwrap();
    assert_eq!(rx.recv().unwrap(), Some(Tag("set later")));
    t.join().unwrap();
}

#[test]
fn enter_nests_and_restores() {
    assert!(Context::current().is_none());
    let outer = tagged("outer");
    let inner = tagged("inner");
    {
        let _outer = outer.enter();
        assert_eq!(current_tag(), Some(Tag("outer")));
        {
            let _inner = inner.enter();
            assert_eq!(current_tag(), Some(Tag("inner")));
            {
                let _again = outer.enter(); // re-entering is fine
                assert_eq!(current_tag(), Some(Tag("outer")));
            }
            assert_eq!(current_tag(), Some(Tag("inner")));
        }
        assert_eq!(current_tag(), Some(Tag("outer")));
    }
    assert!(Context::current().is_none());
}

#[test]
fn the_current_context_is_the_entered_one_not_a_copy() {
    let ctx = Context::new();
    {
        let _g = ctx.enter();
        Context::current()
            .unwrap()
            .insert(Tag("set through current"));
        assert!(Context::current().unwrap().shares_values_with(&ctx));
        assert!(Context::current().unwrap().token().same_as(ctx.token()));
    }
    assert_eq!(ctx.get::<Tag>(), Some(Tag("set through current")));
}

#[test]
fn the_current_context_is_per_thread() {
    let ctx = tagged("main");
    let _g = ctx.enter();
    let other = thread::spawn(current_tag).join().unwrap();
    assert_eq!(
        other, None,
        "a new thread does not inherit the current context"
    );
    // Entering on another thread does not disturb this one.
    let remote = tagged("remote");
    thread::spawn(move || {
        let _g = remote.enter();
        assert_eq!(current_tag(), Some(Tag("remote")));
    })
    .join()
    .unwrap();
    assert_eq!(current_tag(), Some(Tag("main")));
}

#[test]
fn enter_guards_restore_on_unwind() {
    let ctx = tagged("panicking");
    let result = std::panic::catch_unwind(|| {
        let _g = ctx.enter();
        panic!("inside the context");
    });
    assert!(result.is_err());
    assert!(Context::current().is_none());
}

/// Returns `Pending` once (without waking: the test polls by hand), then `Ready`.
#[derive(Debug, Default)]
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            Poll::Pending
        }
    }
}

type Seen = (Option<Tag>, ThreadId);

#[test]
fn scope_follows_a_future_across_threads() {
    let ctx = tagged("request");
    let mut fut = ctx.scope(Box::pin(async {
        let first: Seen = (current_tag(), thread::current().id());
        YieldOnce::default().await;
        let second: Seen = (current_tag(), thread::current().id());
        (first, second)
    }));
    let mut cx = TaskContext::from_waker(Waker::noop());

    // First poll here...
    assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
    assert!(Context::current().is_none(), "restored after the poll");

    // ...second poll on another thread.
    let (first, second) = thread::spawn(move || {
        let mut cx = TaskContext::from_waker(Waker::noop());
        let out = match Pin::new(&mut fut).poll(&mut cx) {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("the second poll completes"),
        };
        assert!(Context::current().is_none(), "restored on that thread too");
        out
    })
    .join()
    .unwrap();
    assert_eq!(first.0, Some(Tag("request")));
    assert_eq!(second.0, Some(Tag("request")));
    assert_eq!(first.1, thread::current().id());
    assert_ne!(second.1, first.1, "the two polls ran on different threads");
}

#[test]
fn scope_inside_an_entered_context_restores_the_outer_one() {
    let outer = tagged("outer");
    let inner = tagged("inner");
    let _g = outer.enter();
    let seen = futures_executor::block_on(inner.scope(Box::pin(async {
        let before = current_tag();
        YieldSelf::default().await;
        (before, current_tag())
    })));
    assert_eq!(seen, (Some(Tag("inner")), Some(Tag("inner"))));
    assert_eq!(current_tag(), Some(Tag("outer")));

    // Scopes nest: the inner future sees the inner context, the outer future sees its own
    // again after the inner one is done.
    let seen = futures_executor::block_on(outer.scope(Box::pin(async {
        let a = current_tag();
        let b = inner.scope(Box::pin(async { current_tag() })).await;
        let c = current_tag();
        (a, b, c)
    })));
    assert_eq!(
        seen,
        (Some(Tag("outer")), Some(Tag("inner")), Some(Tag("outer")))
    );
}

/// Returns `Pending` once after waking itself, so a real executor polls it again.
#[derive(Default)]
struct YieldSelf(bool);

impl Future for YieldSelf {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

#[test]
fn scope_is_not_current_between_polls() {
    let ctx = tagged("scoped");
    let mut fut = ctx.scope(Box::pin(YieldOnce::default()));
    let mut cx = TaskContext::from_waker(Waker::noop());
    assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
    assert_eq!(current_tag(), None);
    assert!(Pin::new(&mut fut).poll(&mut cx).is_ready());
    assert_eq!(current_tag(), None);
    assert!(format!("{fut:?}").contains("Scoped"));
}

/// Sets its flag when dropped.
#[derive(Clone)]
struct DropFlag(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn drop_flag() -> (std::sync::Arc<std::sync::atomic::AtomicBool>, DropFlag) {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    (flag.clone(), DropFlag(flag))
}

/// A value that holds a token of the context it is stored in.
#[derive(Clone)]
struct Held(#[allow(dead_code)] amphi_core::CancellationToken);

#[test]
fn values_go_with_the_last_context_not_with_the_last_token() {
    // A token taken from the context outlives it (blocking code keeping
    // `req.cancellation()`): the values still go with the last context.
    let (dropped, flag) = drop_flag();
    let ctx = Context::new();
    ctx.insert(flag);
    let kept_token = ctx.token().clone();
    let clone = ctx.clone();
    drop(ctx);
    assert!(
        !dropped.load(std::sync::atomic::Ordering::SeqCst),
        "a clone still uses them"
    );
    drop(clone);
    assert!(
        dropped.load(std::sync::atomic::Ordering::SeqCst),
        "the values outlived every context"
    );
    assert!(!kept_token.is_cancelled());

    // A value holding the context's own token (or a child of it) is no reference cycle.
    let (dropped, flag) = drop_flag();
    let ctx = Context::new();
    ctx.insert(flag);
    ctx.insert(Held(ctx.token().child()));
    drop(ctx);
    assert!(
        dropped.load(std::sync::atomic::Ordering::SeqCst),
        "a value holding the context's token kept the values alive"
    );
}

#[test]
fn a_child_context_keeps_the_values_after_its_parent_goes() {
    let (dropped, flag) = drop_flag();
    let parent = Context::new();
    parent.insert(flag);
    parent.insert(Tag("from the parent"));
    let child = parent.child();
    let grandchild = child.child();
    drop(parent);
    drop(child);
    assert_eq!(grandchild.get::<Tag>(), Some(Tag("from the parent")));
    assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst));
    drop(grandchild);
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
}

/// Looks at the current context when dropped, as a value whose drop logs would.
#[derive(Clone)]
struct LooksAtCurrent(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for LooksAtCurrent {
    fn drop(&mut self) {
        let outer = Context::current().and_then(|c| c.get::<Tag>());
        self.0.store(
            outer == Some(Tag("outer")),
            std::sync::atomic::Ordering::SeqCst,
        );
    }
}

#[test]
fn a_value_dropped_by_the_last_entered_context_may_use_the_current_context() {
    // The guard holds the only handle to `inner`: restoring `outer` drops it, and with it
    // its values, whose drop reads the thread's current context.
    let outer = tagged("outer");
    let _outer = outer.enter();
    let saw_outer = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let guard = {
        let inner = Context::new();
        inner.insert(LooksAtCurrent(saw_outer.clone()));
        inner.enter()
    };
    drop(guard);
    assert!(
        saw_outer.load(std::sync::atomic::Ordering::SeqCst),
        "the value's drop did not see the restored context"
    );
}

/// Runs `f` on a thread of its own and returns what it returns, failing the test if it has
/// not returned within 30 s (a deadlock), rather than hanging.
fn without_deadlock<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done_tx, done) = mpsc::channel();
    let worker = thread::spawn(move || {
        let _ = done_tx.send(f());
    });
    let out = done
        .recv_timeout(std::time::Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{what} deadlocked"));
    worker.join().unwrap();
    out
}

#[test]
fn get_or_insert_with_may_read_the_context_it_fills() {
    // `f` used to run under the values' lock: reading the same context from it deadlocked.
    let ctx = Context::new();
    ctx.insert(Count(2));
    let c = ctx.clone();
    let tag = without_deadlock("Context::get_or_insert_with", move || {
        c.get_or_insert_with(|| {
            Tag(if c.get::<Count>() == Some(Count(2)) {
                "two"
            } else {
                "other"
            })
        })
    });
    assert_eq!(tag, Tag("two"));
    assert_eq!(ctx.get_or_insert_with(|| Tag("not called")), Tag("two"));
}

#[test]
fn state_get_or_insert_with_may_read_the_state_it_fills() {
    let state = amphi_core::State::new();
    state.insert(Count(3));
    let s = state.clone();
    let tag = without_deadlock("State::get_or_insert_with", move || {
        s.get_or_insert_with(|| {
            Tag(if s.get::<Count>().is_some() {
                "counted"
            } else {
                "empty"
            })
        })
    });
    assert_eq!(tag, Tag("counted"));
}
