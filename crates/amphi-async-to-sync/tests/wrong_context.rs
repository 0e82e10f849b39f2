//! `async_to_sync` from a thread that drives async tasks: the documented error, never tokio's
//! panic, never a hang.

use std::time::Duration;

use amphi_async_to_sync::async_to_sync;
use amphi_core::ErrorKind;

const BOUND: Duration = Duration::from_secs(10);

fn assert_wrong_context(result: Result<u8, amphi_core::Error>) {
    let err = result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongContext, "{err}");
    assert!(
        err.to_string().contains("`.await` the future directly"),
        "{err}"
    );
}

#[test]
fn on_a_multi_thread_worker() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async {
        tokio::time::timeout(BOUND, tokio::spawn(async { async_to_sync(async { 1u8 }) }))
            .await
            .unwrap()
            .unwrap()
    });
    assert_wrong_context(result);
}

#[test]
fn inside_a_multi_thread_block_on() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    assert_wrong_context(rt.block_on(async { async_to_sync(async { 1u8 }) }));
}

#[test]
fn on_a_current_thread_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_wrong_context(rt.block_on(async { async_to_sync(async { 1u8 }) }));
    let spawned = rt.block_on(async { tokio::spawn(async { async_to_sync(async { 1u8 }) }).await });
    assert_wrong_context(spawned.unwrap());
}

#[test]
fn inside_a_future_that_async_to_sync_drives() {
    let outer = async_to_sync(async { async_to_sync(async { 1u8 }) }).unwrap();
    assert_wrong_context(outer);
}

#[test]
fn a_blocking_section_of_a_worker_may_block() {
    // block_in_place hands the worker's tasks to another thread: blocking is fine there.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let n = rt.block_on(async {
        tokio::spawn(async {
            tokio::task::block_in_place(|| {
                async_to_sync(async {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    5u8
                })
            })
        })
        .await
        .unwrap()
    });
    assert_eq!(n.unwrap(), 5);
}

#[test]
fn the_error_leaves_the_thread_usable() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_wrong_context(rt.block_on(async { async_to_sync(async { 1u8 }) }));
    drop(rt);
    assert_eq!(async_to_sync(async { 2u8 }).unwrap(), 2);
}
