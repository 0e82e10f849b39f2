//! The shapes that deadlocked asgiref (its issues #249, #282, #348, #492/#526) complete here,
//! or fail with an error that says why; none hangs. Every wait is bounded.

use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::Duration;

use amphi_async_to_sync::async_to_sync;
use amphi_core::{Context, ErrorKind, ThreadSensitive};
use amphi_sync_to_async::sync_to_async;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(10);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// asgiref #249: sync_to_async -> async_to_sync -> spawned task -> sync_to_async.
#[test]
fn issue_249_a_spawned_task_inside_async_to_sync_calls_back_into_sync_code() {
    runtime().block_on(async {
        let view = || {
            let view_thread = thread::current().id();
            async_to_sync(async move {
                // Default mode: any pool thread.
                let plain = tokio::spawn(sync_to_async(|| "db_write").into_future());
                // Thread-sensitive: capture the context before spawning (a spawned task does
                // not inherit it) and the write runs back on the view's thread.
                let here = ThreadSensitive::current().expect("inside async_to_sync");
                let sensitive = tokio::spawn(
                    sync_to_async(|| thread::current().id())
                        .thread_sensitive(&here)
                        .into_future(),
                );
                let plain = plain.await.unwrap().unwrap();
                let sensitive = sensitive.await.unwrap().unwrap();
                (plain, sensitive == view_thread)
            })
            .unwrap()
        };
        let got = timeout(BOUND, sync_to_async(view))
            .await
            .expect("no deadlock");
        assert_eq!(got.unwrap(), ("db_write", true));
    });
}

/// asgiref #282: one call waits for an event that a concurrent call sets.
#[test]
fn issue_282_a_waiter_and_a_setter_run_concurrently() {
    runtime().block_on(async {
        let barrier = Arc::new(Barrier::new(2));
        let (tx, rx) = mpsc::channel::<()>();
        // Default mode: two pool threads.
        let waiter =
            tokio::spawn(sync_to_async(move || rx.recv_timeout(BOUND).is_ok()).into_future());
        let setter = tokio::spawn(
            sync_to_async(move || {
                thread::sleep(Duration::from_millis(10));
                tx.send(()).unwrap();
            })
            .into_future(),
        );
        assert!(timeout(BOUND, waiter).await.unwrap().unwrap().unwrap());
        timeout(BOUND, setter).await.unwrap().unwrap().unwrap();

        // Thread-sensitive, one context each (e.g. one per request): they run at once too.
        let (one, two) = (ThreadSensitive::new(), ThreadSensitive::new());
        let b = barrier.clone();
        let a = tokio::spawn(
            sync_to_async(move || b.wait().is_leader())
                .thread_sensitive(&one)
                .into_future(),
        );
        let b = barrier.clone();
        let c = tokio::spawn(
            sync_to_async(move || b.wait().is_leader())
                .thread_sensitive(&two)
                .into_future(),
        );
        let a = timeout(BOUND, a)
            .await
            .expect("no deadlock")
            .unwrap()
            .unwrap();
        let c = timeout(BOUND, c)
            .await
            .expect("no deadlock")
            .unwrap()
            .unwrap();
        assert!(a != c, "exactly one leader");
    });
}

/// asgiref #348: per-request thread-sensitive context, sync middleware -> async view ->
/// `wait_for` / a spawned task -> thread-sensitive sync function.
#[test]
fn issue_348_wait_for_and_spawned_tasks_in_a_per_request_context() {
    runtime().block_on(async {
        let request = Context::new();
        let result = request
            .scope(Box::pin(async {
                let middleware = || {
                    let middleware_thread = thread::current().id();
                    async_to_sync(async move {
                        // wait_for: a timeout around the call, polled by this frame.
                        let in_wait_for = timeout(
                            Duration::from_secs(5),
                            sync_to_async(|| thread::current().id()).thread_sensitive_current(),
                        )
                        .await
                        .expect("no deadlock")
                        .unwrap();
                        // create_task: a spawned task that carries the request context.
                        let ctx = Context::current().unwrap();
                        let in_task = tokio::spawn(ctx.scope(Box::pin(async {
                            sync_to_async(|| thread::current().id())
                                .thread_sensitive_current()
                                .await
                        })))
                        .await
                        .unwrap()
                        .unwrap();
                        (
                            in_wait_for == middleware_thread,
                            in_task == middleware_thread,
                        )
                    })
                    .unwrap()
                };
                timeout(BOUND, sync_to_async(middleware).thread_sensitive_current()).await
            }))
            .await;
        assert_eq!(result.expect("no deadlock").unwrap(), (true, true));
    });
}

/// asgiref #492/#526: work that outlives the async_to_sync call that lent its thread fails with
/// an error that says what happened and what to do, instead of hanging or a cryptic message.
#[test]
fn issue_526_work_outliving_its_lent_thread_fails_with_a_clear_error() {
    let rt = runtime();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let lent = async_to_sync(async { ThreadSensitive::current().unwrap() }).unwrap();
    // The frame has returned: its thread no longer runs thread-sensitive work.
    rt.spawn(async move {
        let _ = tx.send(sync_to_async(|| ()).thread_sensitive(&lent).await);
    });
    let err = rt
        .block_on(async { timeout(BOUND, rx).await })
        .expect("no hang")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongContext);
    let text = err.to_string();
    assert!(text.contains("async_to_sync call returned"), "{text}");
    assert!(text.contains("ThreadSensitive::new()"), "{text}");
}

/// Two thread-sensitive calls of the same context where one waits for the other are serial by
/// definition; with amphi's default (no thread affinity) the same code completes.
#[test]
fn thread_sensitive_is_opt_in_so_the_default_never_serializes() {
    runtime().block_on(async {
        let (tx, rx) = mpsc::channel::<()>();
        let waiter = sync_to_async(move || rx.recv_timeout(BOUND).is_ok());
        let setter = sync_to_async(move || tx.send(()).is_ok());
        let (w, s) = timeout(BOUND, async {
            tokio::join!(waiter.into_future(), setter.into_future())
        })
        .await
        .expect("no deadlock");
        assert!(w.unwrap() && s.unwrap());
    });
}

use std::future::IntoFuture;
