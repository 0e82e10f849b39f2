//! `sync_to_async` against the raw primitive it wraps, measured in the same run.
//!
//! Each benchmark awaits N calls one after another inside one `block_on` of a multi-thread
//! runtime (2 workers), so what is measured is the per-call round trip: hand the closure to a
//! blocking thread, wake it, get the result back, wake the task.
//!
//! The machine these run on is shared and its load varies from second to second, so every
//! candidate is measured *interleaved* with its baseline: blocks of 32 candidate calls
//! alternate with blocks of 32 baseline calls, and only the candidate's blocks are timed.
//! Both see the same load. Besides criterion's own lines, each benchmark prints
//! `ratio to baseline: X (median of N block pairs)`: the candidate's time over the baseline's
//! for each pair of neighbouring blocks, the figure docs/benchmarks.md reports.
//!
//! `cargo bench -p amphi-sync-to-async -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amphi_core::{
    asgi_fn, sync_fn, testing, BlockingBody, HttpScope, Message, RequestInfo, Scope, SyncBody,
    SyncHandler, SyncRequest, ThreadSensitive,
};
use amphi_sync_to_async::{sync_to_async, BlockingPool, SyncToAsync};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

const BLOCK: u64 = 32;

/// Candidate/baseline time of each pair of neighbouring blocks of the current benchmark.
static RATIOS: Mutex<Vec<f64>> = Mutex::new(Vec::new());

/// Prints the median ratio of the benchmark that just ran, and forgets it.
fn report_ratio(name: &str) {
    let mut ratios = std::mem::take(&mut *RATIOS.lock().unwrap());
    if ratios.is_empty() {
        return;
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!(
        "{name}: ratio to baseline: {median:.3} (median of {} block pairs)",
        ratios.len()
    );
}

/// Benchmarks `call` as `name` in `g`, timed in blocks that alternate with blocks of
/// `baseline`, and prints the median ratio of the pairs (the baseline itself is benchmarked
/// against itself, so its ratio shows the noise).
fn against<F, Fut, G, Gut>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    mut call: F,
    mut baseline: G,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
    G: FnMut() -> Gut,
    Gut: std::future::Future<Output = ()>,
{
    g.bench_function(name, |b| {
        b.iter_custom(|iters| timed(rt, iters, &mut call, &mut baseline))
    });
    report_ratio(name);
}

/// Times `iters` calls of `call`, in blocks that alternate with blocks of `other`; records
/// the ratio of each pair.
fn timed<F, Fut, G, Gut>(
    rt: &tokio::runtime::Runtime,
    iters: u64,
    mut call: F,
    mut other: G,
) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
    G: FnMut() -> Gut,
    Gut: std::future::Future<Output = ()>,
{
    rt.block_on(async {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(BLOCK);
            let start = Instant::now();
            for _ in 0..n {
                call().await;
            }
            let mine = start.elapsed();
            total += mine;
            let start = Instant::now();
            for _ in 0..n {
                other().await;
            }
            let theirs = start.elapsed();
            RATIOS
                .lock()
                .unwrap()
                .push(mine.as_secs_f64() / theirs.as_secs_f64());
            left -= n;
        }
        total
    })
}

/// An observer that counts as a server's metrics do: a few relaxed atomic adds.
#[derive(Default)]
struct Counting {
    calls: std::sync::atomic::AtomicU64,
    nanos: std::sync::atomic::AtomicU64,
}

impl amphi_core::plumbing::Observer for Counting {
    fn crossed(&self, _: amphi_core::plumbing::Crossing, ran: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.calls.fetch_add(1, Relaxed);
        self.nanos.fetch_add(ran.as_nanos() as u64, Relaxed);
    }

    fn slot_waited(&self, _: Duration, _: bool) {}
}

fn round_trip(c: &mut Criterion) {
    let rt = runtime();
    let pool = BlockingPool::new(64);
    let ts = ThreadSensitive::new();
    let baseline = || async {
        black_box(
            tokio::task::spawn_blocking(|| black_box(1u64))
                .await
                .unwrap(),
        );
    };
    let mut g = c.benchmark_group("sync_to_async");
    against(
        &mut g,
        &rt,
        "baseline: spawn_blocking(f).await",
        baseline,
        baseline,
    );
    against(
        &mut g,
        &rt,
        "sync_to_async(f).await",
        || async {
            black_box(sync_to_async(|| black_box(1u64)).await.unwrap());
        },
        baseline,
    );
    against(
        &mut g,
        &rt,
        "sync_to_async(f).pool(&pool).await",
        || async {
            black_box(sync_to_async(|| black_box(1u64)).pool(&pool).await.unwrap());
        },
        baseline,
    );
    // What a server with metrics adds to one pooled call: the request context's observer
    // (a clock read at each end of the closure, two atomic adds) and the pool's busy time
    // (the same again), against the same call with both off.
    let timed_pool = BlockingPool::new(64).measure_busy_time(true);
    let observed = amphi_core::plumbing::observed_context(Arc::new(Counting::default()));
    let pooled = || async {
        black_box(sync_to_async(|| black_box(1u64)).pool(&pool).await.unwrap());
    };
    against(
        &mut g,
        &rt,
        "observed: sync_to_async(f).pool(&pool).await, against it unobserved",
        || async {
            let _current = observed.enter();
            black_box(
                sync_to_async(|| black_box(1u64))
                    .pool(&timed_pool)
                    .await
                    .unwrap(),
            );
        },
        pooled,
    );
    against(
        &mut g,
        &rt,
        "sync_to_async(f).thread_sensitive(&ts).await",
        || async {
            black_box(
                sync_to_async(|| black_box(1u64))
                    .thread_sensitive(&ts)
                    .await
                    .unwrap(),
            );
        },
        baseline,
    );
    g.finish();
}

fn handler(c: &mut Criterion) {
    let rt = runtime();
    let hello = Arc::new(sync_fn(|_req: SyncRequest| {
        http::Response::new(SyncBody::from("hello from sync"))
    }));
    let adapted = Arc::new(SyncToAsync::new(hello.clone()).pool(BlockingPool::new(64)));
    // What one would write by hand: an async handler that runs the sync handler with
    // spawn_blocking and sends its response in one piece.
    let by_hand = {
        let hello = hello.clone();
        Arc::new(asgi_fn(move |scope, _receive, mut send| {
            let hello = hello.clone();
            async move {
                let Scope::Http(scope) = scope else {
                    return Ok(());
                };
                let resp = tokio::task::spawn_blocking(move || {
                    hello.call(SyncRequest::from_scope(scope, BlockingBody::empty()))
                })
                .await
                .unwrap();
                let (parts, body) = resp.into_parts();
                let bytes = body.try_into_bytes().ok().unwrap_or_default();
                send.send(Message::start(parts.status, parts.headers))
                    .await?;
                send.send(Message::body(bytes, false)).await
            }
        }))
    };
    let request = || {
        http::Request::get("/hello")
            .body(bytes::Bytes::new())
            .unwrap()
    };
    let baseline = || {
        let by_hand = by_hand.clone();
        async move {
            black_box(testing::call(&by_hand, request()).await.unwrap());
        }
    };
    let mut g = c.benchmark_group("sync handler, one request through testing::call");
    against(
        &mut g,
        &rt,
        "baseline: async handler doing spawn_blocking by hand",
        baseline,
        baseline,
    );
    against(
        &mut g,
        &rt,
        "SyncToAsync(handler) with a pool",
        || {
            let adapted = adapted.clone();
            async move {
                black_box(testing::call(&adapted, request()).await.unwrap());
            }
        },
        baseline,
    );
    g.finish();

    // What a server does with a request whose body it holds: the handler's response back,
    // with no event protocol on either side.
    let scope = || {
        let (parts, ()) = http::Request::get("/hello").body(()).unwrap().into_parts();
        HttpScope::new(parts, RequestInfo::new())
    };
    let direct_baseline = || {
        let hello = hello.clone();
        async move {
            let scope = scope();
            let resp = tokio::task::spawn_blocking(move || {
                hello.call(SyncRequest::from_scope(scope, BlockingBody::empty()))
            })
            .await
            .unwrap();
            let (parts, body) = resp.into_parts();
            black_box((parts, body.try_into_bytes().ok()));
        }
    };
    let mut g = c.benchmark_group("sync handler, one request with its body in hand");
    against(
        &mut g,
        &rt,
        "baseline: spawn_blocking(handler.call(req))",
        direct_baseline,
        direct_baseline,
    );
    against(
        &mut g,
        &rt,
        "SyncToAsync(handler).call_http with a pool",
        || {
            let adapted = adapted.clone();
            async move {
                let resp = adapted
                    .call_http(scope(), BlockingBody::empty())
                    .await
                    .unwrap();
                black_box(resp.into_body().into_full().ok());
            }
        },
        direct_baseline,
    );
    g.finish();
}

criterion_group!(benches, round_trip, handler);
criterion_main!(benches);
