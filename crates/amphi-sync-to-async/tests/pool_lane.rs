//! A pool's lane of drainers, seen through `SyncToAsync` with a `BlockingPool` on both paths
//! (`call_http` and the `AsyncHandler` side): every queued request has a drainer that takes
//! it, so a request never waits behind another request's long call; many requests at once
//! all complete and give their slots back; panics do not stop the lane; handlers run inside
//! the runtime's context.
//!
//! Every test runs on its own two-worker runtime that is shut down without waiting for
//! blocking work (see [`run`]): a failing test reports instead of hanging on a handler left
//! blocked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use amphi_core::testing::call;
use amphi_core::{
    sync_fn, BlockingBody, CancellationToken, ErrorKind, SyncBody, SyncRequest, SyncResponse,
};
use amphi_sync_to_async::{BlockingPool, SyncToAsync};
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::timeout;

mod support;
use support::{gate_reply, report, run, scope, settle, BOUND};

/// How long a blocked handler waits for its gate: longer than [`BOUND`], so a request that
/// wrongly waits behind a blocked one makes the test fail on `BOUND` instead of being let
/// through by the gate's own timeout.
const GATE_BOUND: Duration = Duration::from_secs(30);

fn get(path: &str) -> http::Request<Bytes> {
    http::Request::get(path).body(Bytes::new()).unwrap()
}

/// The gate a `/block` request waits at: in its scope's context when there is one there,
/// else the one the handler was made with.
#[derive(Clone)]
struct Gate(CancellationToken);

/// A handler whose `/block` requests report that they started (with their path) and wait
/// (bounded by [`GATE_BOUND`]) for their gate; every other request answers its path at once.
fn gated(
    gate: CancellationToken,
    started: mpsc::UnboundedSender<String>,
) -> impl Fn(SyncRequest) -> SyncResponse + Send + Sync + 'static {
    move |req: SyncRequest| {
        let path = req.path().to_owned();
        if path.starts_with("/block") {
            let gate = req.context().get::<Gate>().map_or(gate.clone(), |g| g.0);
            started.send(path).unwrap();
            let released = gate.wait_timeout(GATE_BOUND);
            gate_reply(released)
        } else {
            http::Response::new(SyncBody::from(path))
        }
    }
}

#[test]
fn a_long_request_does_not_delay_one_submitted_after_it() {
    run(async {
        let pool = BlockingPool::new(4);
        let gate = CancellationToken::new();
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let svc = SyncToAsync::new(sync_fn(gated(gate.clone(), started_tx))).pool(pool.clone());
        let app = Arc::new(svc.clone());

        // call_http
        let long = tokio::spawn(svc.call_http(scope("/block"), BlockingBody::empty()));
        assert_eq!(report(&mut started).await, "/block");
        let resp = timeout(BOUND, svc.call_http(scope("/quick"), BlockingBody::empty()))
            .await
            .expect("the second request finished while the first was blocked")
            .unwrap();
        assert_eq!(resp.into_body().into_full().unwrap(), "/quick");

        // The AsyncHandler side, on the same pool, with the first request still blocked.
        let long_async = tokio::spawn({
            let app = app.clone();
            async move { call(&app, get("/block-async")).await }
        });
        assert_eq!(report(&mut started).await, "/block-async");
        let resp = timeout(BOUND, call(&app, get("/quick-async")))
            .await
            .expect("the request finished while two others were blocked")
            .unwrap();
        assert_eq!(resp.body, "/quick-async");

        assert!(!long.is_finished() && !long_async.is_finished());
        assert_eq!(pool.in_flight(), 2, "only the blocked requests hold slots");
        gate.cancel();
        let resp = timeout(BOUND, long).await.unwrap().unwrap().unwrap();
        assert_eq!(resp.into_body().into_full().unwrap(), "released");
        let resp = timeout(BOUND, long_async).await.unwrap().unwrap().unwrap();
        assert_eq!(resp.body, "released");
        settle(&pool, 0).await;
    });
}

#[test]
fn requests_queued_back_to_back_each_get_a_drainer() {
    const BLOCKED: usize = 8;
    run(async {
        let pool = BlockingPool::new(2 * BLOCKED + 2);
        let gate = CancellationToken::new();
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let svc = SyncToAsync::new(sync_fn(gated(gate.clone(), started_tx))).pool(pool.clone());
        let app = Arc::new(svc.clone());

        // Submitted without a pause between them: several are queued on the lane at once.
        let mut direct = Vec::new();
        for i in 0..BLOCKED {
            direct.push(svc.call_http(scope(&format!("/block/{i}")), BlockingBody::empty()));
        }
        let mut seen: Vec<String> = Vec::new();
        for _ in 0..BLOCKED {
            seen.push(report(&mut started).await);
        }
        seen.sort();
        let mut expected: Vec<String> = (0..BLOCKED).map(|i| format!("/block/{i}")).collect();
        expected.sort();
        assert_eq!(seen, expected, "every blocked request started, none waited");

        // The same through the AsyncHandler side, whose requests start on their first poll.
        let mut via_handler = JoinSet::new();
        for i in 0..BLOCKED {
            let app = app.clone();
            via_handler.spawn(async move { call(&app, get(&format!("/block-async/{i}"))).await });
        }
        for _ in 0..BLOCKED {
            assert!(report(&mut started).await.starts_with("/block-async/"));
        }
        assert_eq!(pool.in_flight(), 2 * BLOCKED);

        let resp = timeout(BOUND, svc.call_http(scope("/quick"), BlockingBody::empty()))
            .await
            .expect("a request behind sixteen blocked ones finished")
            .unwrap();
        assert_eq!(resp.into_body().into_full().unwrap(), "/quick");

        gate.cancel();
        for pending in direct {
            let resp = timeout(BOUND, pending).await.unwrap().unwrap();
            assert_eq!(resp.into_body().into_full().unwrap(), "released");
        }
        for _ in 0..BLOCKED {
            let resp = timeout(BOUND, via_handler.join_next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(resp.body, "released");
        }
        settle(&pool, 0).await;
    });
}

#[test]
fn a_quick_request_right_after_a_blocking_one_finishes_even_when_a_drainer_was_looking() {
    const ROUNDS: usize = 50;
    run(async {
        let pool = BlockingPool::new(4);
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let svc = SyncToAsync::new(sync_fn(gated(CancellationToken::new(), started_tx)))
            .pool(pool.clone());

        for round in 0..ROUNDS {
            // A request that has just finished may leave its drainer looking for more work.
            let resp = timeout(BOUND, svc.call_http(scope("/warm"), BlockingBody::empty()))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(resp.into_body().into_full().unwrap(), "/warm");

            // A blocking request and a quick one, back to back: whichever drainer takes the
            // blocking one, the quick one needs another.
            let gate = CancellationToken::new();
            let blocking_scope = scope("/block");
            blocking_scope.context().insert(Gate(gate.clone()));
            let blocking = svc.call_http(blocking_scope, BlockingBody::empty());
            let quick = svc.call_http(scope("/quick"), BlockingBody::empty());
            let resp = timeout(BOUND, quick)
                .await
                .unwrap_or_else(|_| panic!("round {round}: the quick request was held up"))
                .unwrap();
            assert_eq!(resp.into_body().into_full().unwrap(), "/quick");
            assert_eq!(report(&mut started).await, "/block");

            gate.cancel();
            let resp = timeout(BOUND, blocking).await.unwrap().unwrap();
            assert_eq!(resp.into_body().into_full().unwrap(), "released");
        }
        settle(&pool, 0).await;
    });
}

/// Counts handlers running at once, and the most seen.
#[derive(Default)]
struct Concurrency {
    now: AtomicUsize,
    most: AtomicUsize,
    calls: AtomicUsize,
}

impl Concurrency {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn three_hundred_requests_on_a_pool_of_64_all_complete_and_free_their_slots() {
    const REQUESTS: usize = 300;
    const LIMIT: usize = 64;
    run(async {
        let pool = BlockingPool::new(LIMIT).queue_timeout(Duration::from_secs(60));
        let seen = Arc::new(Concurrency::default());
        let counter = seen.clone();
        let svc = SyncToAsync::new(sync_fn(move |req: SyncRequest| {
            counter.enter();
            // A little blocking work, so requests overlap and some wait for a slot.
            std::thread::sleep(Duration::from_millis(1));
            let n: usize = req.query_string().parse().unwrap();
            counter.leave();
            if n % 3 == 0 {
                // Streamed: the slot is held until the body is produced.
                let text = format!("streamed {n}");
                let (a, b) = text.split_at(text.len() / 2);
                http::Response::new(SyncBody::chunks([a.to_owned(), b.to_owned()]))
            } else {
                http::Response::new(SyncBody::from(format!("full {n}")))
            }
        }))
        .pool(pool.clone());
        let app = Arc::new(svc.clone());

        let mut tasks = JoinSet::new();
        for n in 0..REQUESTS {
            if n % 2 == 0 {
                let pending = svc.call_http(scope(&format!("/?{n}")), BlockingBody::empty());
                tasks.spawn(async move {
                    let body = pending.await?.into_body().collect().await?.to_bytes();
                    Ok::<_, amphi_core::Error>((n, body))
                });
            } else {
                let app = app.clone();
                tasks.spawn(async move { Ok((n, call(&app, get(&format!("/?{n}"))).await?.body)) });
            }
        }
        let mut done = vec![false; REQUESTS];
        timeout(Duration::from_secs(60), async {
            while let Some(joined) = tasks.join_next().await {
                let (n, body) = joined.unwrap().unwrap();
                let expected = if n % 3 == 0 {
                    format!("streamed {n}")
                } else {
                    format!("full {n}")
                };
                assert_eq!(body, expected);
                assert!(!done[n], "request {n} answered twice");
                done[n] = true;
            }
        })
        .await
        .expect("every request finished");
        assert!(done.iter().all(|&d| d), "every request answered");
        assert_eq!(seen.calls.load(Ordering::SeqCst), REQUESTS);
        let most = seen.most.load(Ordering::SeqCst);
        assert!(
            most <= LIMIT,
            "{most} handlers ran at once on a pool of {LIMIT}"
        );
        settle(&pool, 0).await;
    });
}

#[test]
fn panicking_requests_do_not_stop_later_ones_on_the_same_pool() {
    run(async {
        let pool = BlockingPool::new(1).queue_timeout(Duration::from_secs(60));
        let svc = SyncToAsync::new(sync_fn(|req: SyncRequest| {
            let n: usize = req.query_string().parse().unwrap();
            match n % 3 {
                0 => panic!("request {n} broke"),
                1 => http::Response::new(SyncBody::chunks((0..2).map(move |i| {
                    if i == 1 {
                        panic!("body {n} broke");
                    }
                    Bytes::from("half")
                }))),
                _ => http::Response::new(SyncBody::from(format!("ok {n}"))),
            }
        }))
        .pool(pool.clone());
        let app = Arc::new(svc.clone());

        // One at a time, on a pool of one: the same lane serves each after the panics.
        for n in 0..12 {
            let result = timeout(
                BOUND,
                svc.call_http(scope(&format!("/?{n}")), BlockingBody::empty()),
            )
            .await
            .unwrap();
            match n % 3 {
                0 => {
                    let err = result.unwrap_err();
                    assert_eq!(err.kind(), ErrorKind::Panicked);
                    assert_eq!(err.message(), Some(format!("request {n} broke").as_str()));
                }
                1 => {
                    let err = timeout(BOUND, result.unwrap().into_body().collect())
                        .await
                        .unwrap()
                        .unwrap_err();
                    assert_eq!(err.kind(), ErrorKind::Panicked);
                    assert_eq!(err.message(), Some(format!("body {n} broke").as_str()));
                }
                _ => assert_eq!(
                    result.unwrap().into_body().into_full().unwrap(),
                    format!("ok {n}")
                ),
            }
            settle(&pool, 0).await;
        }

        // All at once, through the AsyncHandler side too.
        let mut tasks = JoinSet::new();
        for n in 0..30 {
            let app = app.clone();
            tasks.spawn(async move { (n, call(&app, get(&format!("/?{n}"))).await) });
        }
        let mut answered = 0;
        timeout(Duration::from_secs(60), async {
            while let Some(joined) = tasks.join_next().await {
                let (n, result) = joined.unwrap();
                match n % 3 {
                    0 => assert_eq!(result.unwrap_err().kind(), ErrorKind::Panicked),
                    // The head went out before the body broke: the call fails after it.
                    1 => assert_eq!(result.unwrap_err().kind(), ErrorKind::Panicked),
                    _ => {
                        assert_eq!(result.unwrap().body, format!("ok {n}"));
                        answered += 1;
                    }
                }
            }
        })
        .await
        .expect("every request finished");
        assert_eq!(answered, 10);
        settle(&pool, 0).await;
    });
}

#[test]
fn a_handler_runs_inside_the_runtime_and_can_block_on_it() {
    run(async {
        let svc = SyncToAsync::new(sync_fn(|_req: SyncRequest| {
            let Ok(handle) = tokio::runtime::Handle::try_current() else {
                return http::Response::new(SyncBody::from("no runtime"));
            };
            let n = handle.block_on(async {
                tokio::time::sleep(Duration::from_millis(1)).await;
                tokio::spawn(async { 6 * 7 }).await.unwrap()
            });
            http::Response::new(SyncBody::from(format!("{n}")))
        }))
        .pool(BlockingPool::new(2));
        let app = Arc::new(svc.clone());

        for _ in 0..3 {
            let resp = timeout(BOUND, svc.call_http(scope("/"), BlockingBody::empty()))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(resp.into_body().into_full().unwrap(), "42");
            let resp = timeout(BOUND, call(&app, get("/"))).await.unwrap().unwrap();
            assert_eq!(resp.body, "42");
        }
    });
}
