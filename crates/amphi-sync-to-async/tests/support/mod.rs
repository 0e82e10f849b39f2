//! Helpers shared by this crate's integration tests.

// Each test file uses some of these.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use amphi_core::{HttpScope, RequestInfo};
use amphi_sync_to_async::BlockingPool;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// The bound on every wait for something that should happen.
pub(crate) const BOUND: Duration = Duration::from_secs(10);

/// Runs `test` on a fresh multi-thread runtime with two workers. The runtime is shut down in
/// the background, so a handler a failed test left blocked cannot hang the test binary.
pub(crate) fn run<F>(test: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let outcome = rt.block_on(rt.spawn(test));
    rt.shutdown_background();
    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("the test task was cancelled: {e}");
    }
}

/// The scope of a `GET path`.
pub(crate) fn scope(path: &str) -> HttpScope {
    let (parts, ()) = http::Request::get(path).body(()).unwrap().into_parts();
    HttpScope::new(parts, RequestInfo::new())
}

/// Waits (bounded) until `pool` has `n` calls in flight.
pub(crate) async fn settle(pool: &BlockingPool, n: usize) {
    timeout(BOUND, async {
        while pool.in_flight() != n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("in_flight stuck at {}, expected {n}", pool.in_flight()));
}

/// Receives the next report of a handler, bounded.
pub(crate) async fn report<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    timeout(BOUND, rx.recv())
        .await
        .expect("the handler reported in time")
        .expect("the handler's channel is open")
}

/// What a gated test handler answers: whether its gate was opened within the bound, so a test
/// that never opens it fails on the body instead of hanging.
pub(crate) fn gate_reply(released: bool) -> http::Response<amphi_core::SyncBody> {
    http::Response::new(amphi_core::SyncBody::from(if released {
        "released"
    } else {
        "the gate never opened"
    }))
}
