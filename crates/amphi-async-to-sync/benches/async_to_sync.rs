//! `async_to_sync` against tokio's `Handle::block_on`, measured in the same run.
//!
//! Each benchmark blocks on N futures one after another from one thread: a tokio
//! blocking-pool thread (where `async_to_sync` uses the runtime that owns the thread) or a
//! plain thread (where it uses its background runtime; the baseline is `Handle::block_on` of
//! an equivalent runtime). Three futures: one ready at once (pure overhead), one that yields
//! to the runtime once, and one that waits for a task spawned on the runtime (a wake-up from a
//! worker thread, the shape of real async work).
//!
//! `cargo bench -p amphi-async-to-sync -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use amphi_async_to_sync::async_to_sync;
use criterion::{criterion_group, criterion_main, Criterion};
use tokio::runtime::Handle;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `body(iters)` on a blocking-pool thread of `rt` and returns what it measured.
fn on_blocking_thread(
    rt: &tokio::runtime::Runtime,
    iters: u64,
    body: fn(u64, &Handle) -> Duration,
) -> Duration {
    rt.block_on(async move {
        tokio::task::spawn_blocking(move || body(iters, &Handle::current()))
            .await
            .unwrap()
    })
}

async fn yield_once() -> u64 {
    tokio::task::yield_now().await;
    black_box(1)
}

/// Waits for a task spawned on the runtime: a wake-up from a worker thread.
async fn spawned_task() -> u64 {
    tokio::spawn(async { black_box(1u64) }).await.unwrap()
}

fn from_blocking_pool(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("async_to_sync from a blocking-pool thread");
    g.bench_function("baseline: Handle::block_on(ready)", |b| {
        b.iter_custom(|iters| {
            on_blocking_thread(&rt, iters, |n, h| {
                let start = Instant::now();
                for _ in 0..n {
                    black_box(h.block_on(async { black_box(1u64) }));
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("async_to_sync(ready)", |b| {
        b.iter_custom(|iters| {
            on_blocking_thread(&rt, iters, |n, _| {
                let start = Instant::now();
                for _ in 0..n {
                    black_box(async_to_sync(async { black_box(1u64) }).unwrap());
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("baseline: Handle::block_on(yield once)", |b| {
        b.iter_custom(|iters| {
            on_blocking_thread(&rt, iters, |n, h| {
                let start = Instant::now();
                for _ in 0..n {
                    black_box(h.block_on(yield_once()));
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("async_to_sync(yield once)", |b| {
        b.iter_custom(|iters| {
            on_blocking_thread(&rt, iters, |n, _| {
                let start = Instant::now();
                for _ in 0..n {
                    black_box(async_to_sync(yield_once()).unwrap());
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("baseline: Handle::block_on(spawned task)", |b| {
        b.iter_custom(|iters| {
            on_blocking_thread(&rt, iters, |n, h| {
                let start = Instant::now();
                for _ in 0..n {
                    black_box(h.block_on(spawned_task()));
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("async_to_sync(spawned task)", |b| {
        b.iter_custom(|iters| {
            on_blocking_thread(&rt, iters, |n, _| {
                let start = Instant::now();
                for _ in 0..n {
                    black_box(async_to_sync(spawned_task()).unwrap());
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

fn from_plain_thread(c: &mut Criterion) {
    // The baseline's runtime is configured like the background one: multi-thread, 1 worker.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let handle = rt.handle().clone();
    let mut g = c.benchmark_group("async_to_sync from a plain thread");
    g.bench_function("baseline: Handle::block_on(ready)", |b| {
        b.iter(|| black_box(handle.block_on(async { black_box(1u64) })))
    });
    g.bench_function("async_to_sync(ready)", |b| {
        b.iter(|| black_box(async_to_sync(async { black_box(1u64) }).unwrap()))
    });
    g.bench_function("baseline: Handle::block_on(yield once)", |b| {
        b.iter(|| black_box(handle.block_on(yield_once())))
    });
    g.bench_function("async_to_sync(yield once)", |b| {
        b.iter(|| black_box(async_to_sync(yield_once()).unwrap()))
    });
    g.bench_function("baseline: Handle::block_on(spawned task)", |b| {
        b.iter(|| black_box(handle.block_on(spawned_task())))
    });
    g.bench_function("async_to_sync(spawned task)", |b| {
        b.iter(|| black_box(async_to_sync(spawned_task()).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, from_blocking_pool, from_plain_thread);
criterion_main!(benches);
