//! Blocking -> async -> blocking -> async, in both orders and four levels deep: thread-sensitive
//! work comes back to the outermost blocking caller's thread; async work stays on the runtime.

use std::thread::{self, ThreadId};
use std::time::Duration;

use amphi_async_to_sync::async_to_sync;
use amphi_core::ThreadSensitive;
use amphi_sync_to_async::sync_to_async;

const BOUND: Duration = Duration::from_secs(10);

#[test]
fn sync_outermost_innermost_closure_runs_on_the_callers_thread() {
    let caller = thread::current().id();
    let (middle, innermost) = async_to_sync(async {
        tokio::time::timeout(
            BOUND,
            sync_to_async(|| {
                let middle = thread::current().id();
                let innermost = async_to_sync(async {
                    sync_to_async(|| thread::current().id())
                        .thread_sensitive_current()
                        .await
                })
                .unwrap()
                .unwrap();
                (middle, innermost)
            })
            .thread_sensitive_current(),
        )
        .await
        .expect("no deadlock")
    })
    .unwrap()
    .unwrap();
    assert_eq!(middle, caller);
    assert_eq!(innermost, caller);
}

/// `depth` levels of async_to_sync -> thread-sensitive sync_to_async, recording the thread of
/// every blocking level.
fn descend(depth: usize, seen: &mut Vec<ThreadId>) {
    seen.push(thread::current().id());
    if depth == 0 {
        return;
    }
    let below = async_to_sync(async move {
        tokio::time::timeout(
            BOUND,
            sync_to_async(move || {
                let mut seen = Vec::new();
                descend(depth - 1, &mut seen);
                seen
            })
            .thread_sensitive_current(),
        )
        .await
        .expect("no deadlock")
    })
    .unwrap()
    .unwrap();
    seen.extend(below);
}

#[test]
fn four_levels_deep_every_blocking_level_runs_on_the_callers_thread() {
    let mut seen = Vec::new();
    descend(4, &mut seen);
    assert_eq!(seen.len(), 5);
    assert!(
        seen.iter().all(|t| *t == thread::current().id()),
        "{seen:?}"
    );
}

#[test]
fn four_levels_deep_from_a_blocking_pool_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let seen = rt.block_on(async {
        tokio::time::timeout(
            BOUND,
            tokio::task::spawn_blocking(|| {
                let mut seen = Vec::new();
                descend(4, &mut seen);
                seen
            }),
        )
        .await
        .unwrap()
        .unwrap()
    });
    assert_eq!(seen.len(), 5);
    assert!(seen.iter().all(|t| *t == seen[0]), "{seen:?}");
}

fn thread_name() -> String {
    thread::current().name().unwrap_or("").to_owned()
}

#[test]
fn async_outermost_async_work_stays_on_the_runtime() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("test-runtime")
        .enable_all()
        .build()
        .unwrap();
    let names = rt.block_on(async {
        tokio::time::timeout(
            BOUND,
            sync_to_async(|| {
                async_to_sync(async {
                    let first = thread_name();
                    let spawned = tokio::spawn(async { thread_name() }).await.unwrap();
                    let deeper = sync_to_async(|| {
                        async_to_sync(async {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            thread_name()
                        })
                        .unwrap()
                    })
                    .await
                    .unwrap();
                    vec![first, spawned, deeper]
                })
                .unwrap()
            }),
        )
        .await
        .unwrap()
        .unwrap()
    });
    assert_eq!(names, ["test-runtime", "test-runtime", "test-runtime"]);
}

#[test]
fn async_outermost_thread_sensitive_work_comes_back_to_its_context_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = ThreadSensitive::new();
    let (outer, inner) = rt.block_on(async {
        tokio::time::timeout(
            BOUND,
            sync_to_async(|| {
                let outer = thread::current().id();
                let inner = async_to_sync(async {
                    sync_to_async(|| thread::current().id())
                        .thread_sensitive_current()
                        .await
                })
                .unwrap()
                .unwrap();
                (outer, inner)
            })
            .thread_sensitive(&app),
        )
        .await
        .expect("no deadlock")
        .unwrap()
    });
    assert_eq!(outer, inner);
    assert_eq!(app.thread().unwrap().id(), outer);
}
