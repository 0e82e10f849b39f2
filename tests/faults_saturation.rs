//! Fault suite: a saturated blocking pool under sustained over-load (bounded: a fixed number
//! of clients, each sending a fixed number of requests).
//!
//! What must hold: a sync request that finds no slot within the configured queue wait gets a
//! `503` with `Retry-After: 1`, no sooner than the wait and not much later; its handler never
//! runs; sync handlers never run more at once than the pool's limit; a waiting request holds
//! no thread; async handlers are not affected; and when the load stops the server serves every
//! sync request again.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amphi::prelude::*;
use http::{HeaderMap, StatusCode};
use support::*;

const SLOTS: usize = 2;
const QUEUE_WAIT: Duration = Duration::from_millis(200);
/// How long each sync request holds its slot.
const WORK: Duration = Duration::from_millis(50);
/// The over-load: six times as many clients as slots, each sending requests back to back.
const CLIENTS: usize = 12;
const REQUESTS_PER_CLIENT: usize = 8;
/// How much later than the queue wait a 503 may arrive on a loaded 2-core machine. Not a
/// performance figure: a bound that fails only if the wait is not enforced at all.
const SLACK: Duration = Duration::from_secs(10);

fn router(live: &Live) -> Router {
    let l = live.clone();
    let sync_app = sync_fn(move |_req: SyncRequest| {
        let _live = l.enter();
        std::thread::sleep(WORK);
        http::Response::new(SyncBody::from("worked"))
    });
    let async_app = asgi_fn(|scope, _receive, mut send| async move {
        let Scope::Http(_) = scope else {
            return Ok(());
        };
        send.send(Message::start(StatusCode::OK, HeaderMap::new()))
            .await?;
        send.send(Message::body("hello async", false)).await
    });
    Router::new()
        .mount_sync("/s", sync_app)
        .mount_async("/a", async_app)
}

/// Threads of this process right now (Linux).
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[derive(Debug)]
struct Outcome {
    status: StatusCode,
    retry_after: Option<String>,
    elapsed: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_gets_503s_within_the_queue_wait_and_the_server_recovers() {
    let logs = capture_logs();
    let live = Live::new();
    let server = Server::new(router(&live))
        .blocking_threads(SLOTS)
        .queue_timeout(QUEUE_WAIT);
    let serving = within("binding", server.bind("127.0.0.1:0")).await.unwrap();
    let addr = serving.local_addr().unwrap();

    // Warm up: the blocking threads the load will use exist before the baseline is taken.
    let mut warm = Vec::new();
    for _ in 0..SLOTS {
        warm.push(tokio::spawn(async move {
            get(addr, Proto::H1, "/s/warm").await
        }));
    }
    for w in warm {
        assert_eq!(within("warm-up", w).await.unwrap().status, StatusCode::OK);
    }
    let baseline_threads = threads();

    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let outcomes = outcomes.clone();
        let proto = if c % 2 == 0 { Proto::H1 } else { Proto::H2 };
        clients.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr, proto).await;
            for _ in 0..REQUESTS_PER_CLIENT {
                let started = Instant::now();
                let r = conn.get("/s/work").await;
                let outcome = Outcome {
                    status: r.status,
                    retry_after: r.header("retry-after").map(str::to_owned),
                    elapsed: started.elapsed(),
                };
                outcomes.lock().unwrap().push(outcome);
            }
        }));
    }
    // While the pool is saturated: async requests are served, and the process does not grow
    // a thread per waiting request.
    let mut max_threads = 0;
    let mut async_served = 0;
    let mut prober = Conn::open(addr, Proto::H1).await;
    while !clients.iter().all(|c| c.is_finished()) && async_served < 200 {
        let r = prober.get("/a/hello").await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, "hello async"));
        async_served += 1;
        max_threads = max_threads.max(threads());
        assert!(serving.blocking_pool().in_flight() <= SLOTS);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for c in clients {
        within("a load client", c).await.unwrap();
    }

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    assert_eq!(outcomes.len(), CLIENTS * REQUESTS_PER_CLIENT);
    let served = outcomes
        .iter()
        .filter(|o| o.status == StatusCode::OK)
        .count();
    let refused: Vec<_> = outcomes
        .iter()
        .filter(|o| o.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(
        served + refused.len(),
        outcomes.len(),
        "only 200s and 503s: {outcomes:?}"
    );
    assert!(!refused.is_empty(), "the load never saturated the pool");
    assert!(served > 0, "nothing was served under load");
    for o in &refused {
        assert_eq!(o.retry_after.as_deref(), Some("1"), "{o:?}");
        assert!(
            o.elapsed >= QUEUE_WAIT,
            "a 503 came before the queue wait: {o:?}"
        );
        assert!(
            o.elapsed <= QUEUE_WAIT + SLACK,
            "a 503 came long after the queue wait: {o:?}"
        );
    }
    // A refused request never ran its handler; the served ones never exceeded the slots.
    assert_eq!(
        live.total(),
        served + SLOTS,
        "handlers that ran (warm-up included)"
    );
    assert!(
        live.peak() <= SLOTS,
        "{} sync handlers ran at once",
        live.peak()
    );
    assert!(
        max_threads <= baseline_threads + 2,
        "threads grew from {baseline_threads} to {max_threads} while requests waited"
    );
    logs.wait_for(&[
        "DEBUG",
        "blocking pool saturated",
        "all 2 blocking slots busy",
    ])
    .await;
    logs.wait_for(&["amphi::access", "path=/s/work ", "status=503"])
        .await;

    // The load is gone: every slot comes back and every sync request is served again.
    eventually("the slots to come back", || {
        serving.blocking_pool().in_flight() == 0 && serving.in_flight() == 0 && live.now() == 0
    })
    .await;
    let mut burst = Vec::new();
    for i in 0..SLOTS {
        let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2 };
        burst.push(tokio::spawn(
            async move { get(addr, proto, "/s/after").await },
        ));
    }
    for b in burst {
        assert_eq!(
            within("after the load", b).await.unwrap().status,
            StatusCode::OK
        );
    }
    let mut conn = Conn::open(addr, Proto::H1).await;
    for _ in 0..5 {
        assert_eq!(conn.get("/s/after").await.text(), "worked");
    }
    within("shutdown", serving.shutdown()).await.unwrap();
}
