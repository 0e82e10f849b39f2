//! The request context and the tracing span cross in both directions.

use std::sync::Once;
use std::time::Duration;

use amphi_async_to_sync::async_to_sync;
use amphi_core::Context;
use amphi_sync_to_async::sync_to_async;

const BOUND: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq)]
struct SetBySync(&'static str);

#[derive(Clone, Debug, PartialEq)]
struct SetByAsync(&'static str);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn sync_to_async_to_sync_context_values_cross_both_ways() {
    let ctx = Context::new();
    ctx.insert(SetBySync("before"));
    let _entered = ctx.enter();
    let seen = async_to_sync(async {
        let seen = Context::current().and_then(|c| c.get::<SetBySync>());
        Context::current().unwrap().insert(SetByAsync("inside"));
        seen
    })
    .unwrap();
    assert_eq!(seen, Some(SetBySync("before")));
    assert_eq!(ctx.get::<SetByAsync>(), Some(SetByAsync("inside")));
}

#[test]
fn async_to_sync_to_async_context_values_cross_both_ways() {
    runtime().block_on(async {
        let ctx = Context::new();
        ctx.insert(SetByAsync("before"));
        let seen = ctx
            .scope(Box::pin(async {
                tokio::time::timeout(
                    BOUND,
                    sync_to_async(|| {
                        let c = Context::current().unwrap();
                        c.insert(SetBySync("inside"));
                        c.get::<SetByAsync>()
                    }),
                )
                .await
                .unwrap()
                .unwrap()
            }))
            .await;
        assert_eq!(seen, Some(SetByAsync("before")));
        assert_eq!(ctx.get::<SetBySync>(), Some(SetBySync("inside")));
    });
}

#[test]
fn cancellation_of_the_request_is_visible_in_nested_calls() {
    let ctx = Context::new();
    let _entered = ctx.enter();
    ctx.token().cancel();
    let seen = async_to_sync(async {
        let here = Context::current().unwrap().token().is_cancelled();
        // A call whose request is already cancelled does not start its closure.
        let nested = sync_to_async(|| ()).await;
        (here, nested.unwrap_err().is_cancelled())
    })
    .unwrap();
    assert_eq!(seen, (true, true));
}

fn subscriber() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry())
            .expect("no other global subscriber in this test binary");
    });
}

#[test]
fn a_span_entered_before_the_crossing_is_current_after_it() {
    subscriber();
    let span = tracing::info_span!("sync caller");
    let id = span.id().expect("the registry gives spans ids");
    let _entered = span.enter();
    let (in_async, in_nested_sync) = async_to_sync(async {
        let in_async = tracing::Span::current().id();
        let nested = sync_to_async(|| tracing::Span::current().id())
            .await
            .unwrap();
        (in_async, nested)
    })
    .unwrap();
    assert_eq!(in_async, Some(id.clone()));
    assert_eq!(in_nested_sync, Some(id));
}

#[test]
fn a_span_of_async_code_is_current_in_the_blocking_closure() {
    subscriber();
    runtime().block_on(async {
        use tracing::Instrument;
        let span = tracing::info_span!("async caller");
        let id = span.id().unwrap();
        let seen = async {
            tokio::time::timeout(BOUND, sync_to_async(|| tracing::Span::current().id()))
                .await
                .unwrap()
                .unwrap()
        }
        .instrument(span)
        .await;
        assert_eq!(seen, Some(id));
    });
}
