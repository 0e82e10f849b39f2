//! Saturation: a limit of N, the N+1th call waits the queue timeout then fails *saturated*;
//! slots come back after panics and cancellations.

use std::future::IntoFuture;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use amphi_core::{Context, ErrorKind};
use amphi_sync_to_async::{sync_to_async, BlockingPool};
use tokio::time::timeout;

mod support;
use support::settle;

const BOUND: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_past_the_limit_waits_the_queue_timeout_then_fails_saturated() {
    let queue_timeout = Duration::from_millis(100);
    let pool = BlockingPool::new(2).queue_timeout(queue_timeout);
    let (release, gate) = mpsc::channel::<()>();
    let gate = std::sync::Arc::new(std::sync::Mutex::new(gate));
    let mut busy = Vec::new();
    for _ in 0..2 {
        let gate = gate.clone();
        busy.push(tokio::spawn(
            sync_to_async(move || gate.lock().unwrap().recv_timeout(BOUND).is_ok())
                .pool(&pool)
                .into_future(),
        ));
    }
    settle(&pool, 2).await;
    let started = Instant::now();
    let err = timeout(BOUND, sync_to_async(|| ()).pool(&pool))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Saturated);
    assert!(
        started.elapsed() >= queue_timeout,
        "waited for a slot first"
    );
    assert!(
        err.to_string().contains("all 2 blocking slots busy"),
        "{err}"
    );
    assert_eq!(pool.in_flight(), 2, "the failed call took no slot");

    release.send(()).unwrap();
    release.send(()).unwrap();
    for b in busy {
        assert!(timeout(BOUND, b).await.unwrap().unwrap().unwrap());
    }
    assert_eq!(pool.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_call_gets_the_slot_freed_within_its_timeout() {
    let pool = BlockingPool::new(1).queue_timeout(BOUND);
    let (release, gate) = mpsc::channel::<()>();
    let first = tokio::spawn(
        sync_to_async(move || gate.recv_timeout(BOUND).is_ok())
            .pool(&pool)
            .into_future(),
    );
    settle(&pool, 1).await;
    let second = tokio::spawn(sync_to_async(|| "second").pool(&pool).into_future());
    release.send(()).unwrap();
    assert!(timeout(BOUND, first).await.unwrap().unwrap().unwrap());
    assert_eq!(
        timeout(BOUND, second).await.unwrap().unwrap().unwrap(),
        "second"
    );
    assert_eq!(pool.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_come_back_after_panics() {
    let pool = BlockingPool::new(2).queue_timeout(Duration::ZERO);
    for i in 0..10 {
        let err = timeout(
            BOUND,
            sync_to_async(move || -> () { panic!("panic {i}") }).pool(&pool),
        )
        .await
        .unwrap()
        .unwrap_err();
        assert!(err.is_panic());
    }
    assert_eq!(pool.in_flight(), 0);
    let both = tokio::join!(
        sync_to_async(|| 1).pool(&pool).into_future(),
        sync_to_async(|| 2).pool(&pool).into_future()
    );
    assert_eq!((both.0.unwrap(), both.1.unwrap()), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_call_flips_its_token_and_its_slot_comes_back_when_the_closure_returns() {
    let pool = BlockingPool::new(1).queue_timeout(Duration::ZERO);
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let (saw_tx, saw) = mpsc::channel();
    let call = tokio::spawn(
        sync_to_async(move || {
            let token = Context::current().unwrap().token().clone();
            started_tx.send(()).unwrap();
            saw_tx.send(token.wait_timeout(BOUND)).unwrap();
        })
        .pool(&pool)
        .into_future(),
    );
    timeout(BOUND, started).await.unwrap().unwrap();
    assert_eq!(pool.in_flight(), 1);
    call.abort(); // the caller goes away
    let flipped = tokio::task::spawn_blocking(move || saw.recv_timeout(BOUND).unwrap())
        .await
        .unwrap();
    assert!(flipped, "the closure saw its token flip");
    settle(&pool, 0).await;

    // A call still waiting for a slot when dropped never takes one.
    let (release, gate) = mpsc::channel::<()>();
    let pool = pool.queue_timeout(BOUND);
    let holder = tokio::spawn(
        sync_to_async(move || gate.recv_timeout(BOUND))
            .pool(&pool)
            .into_future(),
    );
    settle(&pool, 1).await;
    let waiter = tokio::spawn(
        sync_to_async(|| unreachable!("never runs"))
            .pool(&pool)
            .into_future(),
    );
    tokio::task::yield_now().await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    release.send(()).unwrap();
    timeout(BOUND, holder)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    settle(&pool, 0).await;
}
