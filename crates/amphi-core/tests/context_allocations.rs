//! How many heap allocations a `Context` costs: every request makes one, and the adapters
//! make a child for every crossing, so these counts are part of the hot path.
//!
//! `allocation_counter` installs a counting global allocator and counts only the allocations
//! of the thread that calls `measure`, so the test harness's own threads do not interfere.
//! (The workspace forbids `unsafe`, so this file cannot wrap `System` itself.)

use allocation_counter::measure;
use amphi_core::{CancellationToken, Context};

#[derive(Clone, Debug, PartialEq)]
struct Tag(&'static str);

/// Runs `f` and returns what it made together with the number of allocations it took.
fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let mut out = None;
    let info = measure(|| out = Some(f()));
    (
        out.expect("measure runs the closure exactly once"),
        info.count_total,
    )
}

/// Makes the thread-local current context live on this thread, so registering its destructor
/// (which may allocate, once per thread) is not counted against what is measured after.
fn warm_up_current() {
    let ctx = Context::new();
    drop(ctx.enter());
}

#[test]
fn a_new_context_is_one_allocation_and_a_clone_none() {
    let (ctx, n) = counted(Context::new);
    assert_eq!(n, 1, "Context::new");
    let (default, n) = counted(Context::default);
    assert_eq!(n, 1, "Context::default");
    let (copy, n) = counted(|| ctx.clone());
    assert_eq!(n, 0, "Context::clone");
    assert!(copy.shares_values_with(&ctx) && copy.token().same_as(ctx.token()));
    assert!(!default.shares_values_with(&ctx));
    let ((), n) = counted(|| drop(copy));
    assert_eq!(n, 0, "dropping a clone");
}

#[test]
fn a_child_context_is_one_allocation_and_shares_values() {
    let ctx = Context::new();
    ctx.insert(Tag("request"));
    let (child, n) = counted(|| ctx.child());
    assert_eq!(n, 1, "Context::child");
    let (grandchild, n) = counted(|| child.child());
    assert_eq!(n, 1, "Context::child of a child");
    let (shared, n) =
        counted(|| grandchild.shares_values_with(&ctx) && child.shares_values_with(&grandchild));
    assert_eq!(n, 0, "shares_values_with");
    assert!(shared);
    assert_eq!(grandchild.get::<Tag>(), Some(Tag("request")));
    grandchild.insert(Tag("set in the grandchild"));
    assert_eq!(ctx.get::<Tag>(), Some(Tag("set in the grandchild")));
    // Cancellation still goes down, not up.
    child.token().cancel();
    assert!(grandchild.token().is_cancelled());
    assert!(!ctx.token().is_cancelled());
}

#[test]
fn a_context_that_never_stores_a_value_makes_only_its_own_allocation() {
    warm_up_current();
    let ((), n) = counted(|| {
        let ctx = Context::new();
        let copy = ctx.clone();
        assert_eq!(copy.get::<Tag>(), None);
        assert_eq!(copy.remove::<Tag>(), None);
        assert!(ctx.is_empty());
        assert!(!ctx.token().is_cancelled());
        {
            let _guard = copy.enter();
            let current = Context::current().expect("entered just above");
            assert!(current.shares_values_with(&ctx));
        }
        drop(ctx);
        drop(copy);
    });
    assert_eq!(n, 1, "a context that stores nothing");
}

#[test]
fn the_first_value_stored_allocates_the_map() {
    let ctx = Context::new();
    let (replaced, n) = counted(|| ctx.insert(Tag("first")));
    assert_eq!(replaced, None);
    assert!(n >= 1, "storing the first value allocates its map");
    assert_eq!(ctx.len(), 1);
    let (seen, n) = counted(|| ctx.child().get::<Tag>());
    assert_eq!(seen, Some(Tag("first")));
    assert_eq!(
        n, 1,
        "a child of a context with values still costs one allocation"
    );
}

#[test]
fn tokens_are_one_allocation_each() {
    let (token, n) = counted(CancellationToken::new);
    assert_eq!(n, 1, "CancellationToken::new");
    let (child, n) = counted(|| token.child());
    assert_eq!(n, 1, "CancellationToken::child");
    let (copy, n) = counted(|| child.clone());
    assert_eq!(n, 0, "CancellationToken::clone");
    token.cancel();
    assert!(copy.is_cancelled());
}
