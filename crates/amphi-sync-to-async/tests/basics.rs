//! The first guarantees the server relies on: results, panics, the pool, and a handler round
//! trip through `SyncToAsync`.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use amphi_core::{sync_fn, ErrorKind, SyncBody, SyncRequest};
use amphi_sync_to_async::{sync_to_async, BlockingPool, SyncToAsync};
use bytes::Bytes;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(10);

#[tokio::test]
async fn returns_the_result_and_panics_as_errors() {
    assert_eq!(
        timeout(BOUND, sync_to_async(|| 2 + 2))
            .await
            .unwrap()
            .unwrap(),
        4
    );
    let err = timeout(BOUND, sync_to_async(|| -> () { panic!("boom {}", 7) }))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert_eq!(err.message(), Some("boom 7"));
}

#[tokio::test]
async fn handler_echoes_a_streamed_body() {
    let echo = sync_fn(|mut req: SyncRequest| {
        let mut all = Vec::new();
        req.body_mut().read_to_end(&mut all).unwrap();
        http::Response::new(SyncBody::chunks(
            all.chunks(1000)
                .map(Bytes::copy_from_slice)
                .collect::<Vec<_>>(),
        ))
    });
    let pool = BlockingPool::new(4);
    let app = Arc::new(SyncToAsync::new(echo).pool(pool.clone()));
    let chunks: Vec<Bytes> = (0..50u8).map(|i| Bytes::from(vec![i; 3000])).collect();
    let expected: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
    let resp = timeout(
        BOUND,
        amphi_core::testing::call_chunked(&app, http::Request::post("/").body(()).unwrap(), chunks),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, expected);
    assert_eq!(pool.in_flight(), 0);
}

#[tokio::test]
async fn saturated_pool_fails_after_the_queue_timeout() {
    let pool = BlockingPool::new(1).queue_timeout(Duration::from_millis(50));
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let first = tokio::spawn(
        sync_to_async(move || {
            started_tx.send(()).unwrap();
            release_rx.recv_timeout(BOUND).unwrap();
        })
        .pool(&pool)
        .into_future(),
    );
    timeout(BOUND, started_rx).await.unwrap().unwrap();
    assert_eq!(pool.in_flight(), 1);
    let err = timeout(BOUND, sync_to_async(|| ()).pool(&pool))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_saturated(), "{err}");
    release_tx.send(()).unwrap();
    timeout(BOUND, first).await.unwrap().unwrap().unwrap();
    assert_eq!(pool.in_flight(), 0);
}

use std::future::IntoFuture;
