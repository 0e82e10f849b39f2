//! `async_to_sync` against tokio's `Handle::block_on`, measured in the same run.
//!
//! Each benchmark blocks on N futures one after another from one thread: a tokio
//! blocking-pool thread (where `async_to_sync` uses the runtime that owns the thread) or a
//! plain thread (where it uses its background runtime; the baseline is `Handle::block_on` of
//! that same background runtime). Three futures: one ready at once (pure overhead), one
//! that yields to the runtime once, and one that waits for a task spawned on the runtime (a
//! wake-up from a worker thread, the shape of real async work).
//!
//! The machine these run on is shared and its load varies, so every candidate is measured
//! *interleaved* with its baseline: blocks of 64 candidate calls alternate with blocks of 64
//! baseline calls on the same thread, and only the candidate's blocks are timed. Besides
//! criterion's own lines, each benchmark prints `ratio to baseline: X (median of N block
//! pairs)`: the candidate's time over the baseline's for each pair of neighbouring blocks, the
//! figure docs/benchmarks.md reports.
//!
//! `cargo bench -p amphi-async-to-sync -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs)]

use std::future::Future;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use amphi_async_to_sync::async_to_sync;
use criterion::{criterion_group, criterion_main, Criterion};
use tokio::runtime::Handle;

const BLOCK: u64 = 64;

/// Candidate/baseline time of each pair of neighbouring blocks of the current benchmark.
static RATIOS: Mutex<Vec<f64>> = Mutex::new(Vec::new());

/// Prints the median ratio of the benchmark that just ran, and forgets it.
fn report_ratio(name: &str) {
    let mut ratios = std::mem::take(&mut *RATIOS.lock().unwrap());
    ratios.sort_by(f64::total_cmp);
    if let Some(median) = ratios.get(ratios.len() / 2) {
        println!(
            "{name}: ratio to baseline: {median:.3} (median of {} block pairs)",
            ratios.len()
        );
    }
}

async fn ready() -> u64 {
    black_box(1)
}

async fn yield_once() -> u64 {
    tokio::task::yield_now().await;
    black_box(1)
}

/// Waits for a task spawned on the runtime: a wake-up from a worker thread.
async fn spawned_task() -> u64 {
    tokio::spawn(async { black_box(1u64) }).await.unwrap()
}

#[derive(Clone, Copy)]
enum Who {
    Baseline,
    AsyncToSync,
}

/// Blocks on `make()` `iters` times as `who`, interleaved with untimed blocks of the other
/// one; returns the time `who` took.
fn interleaved<Fut: Future<Output = u64>>(
    handle: &Handle,
    iters: u64,
    who: Who,
    make: fn() -> Fut,
) -> Duration {
    let run = |w: Who, n: u64| {
        for _ in 0..n {
            match w {
                Who::Baseline => black_box(handle.block_on(make())),
                Who::AsyncToSync => black_box(async_to_sync(make()).unwrap()),
            };
        }
    };
    let other = match who {
        Who::Baseline => Who::AsyncToSync,
        Who::AsyncToSync => Who::Baseline,
    };
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(BLOCK);
        let start = Instant::now();
        run(who, n);
        let mine = start.elapsed();
        total += mine;
        let start = Instant::now();
        run(other, n);
        let theirs = start.elapsed();
        let (candidate, baseline) = match who {
            Who::AsyncToSync => (mine, theirs),
            Who::Baseline => (theirs, mine),
        };
        RATIOS
            .lock()
            .unwrap()
            .push(candidate.as_secs_f64() / baseline.as_secs_f64());
        left -= n;
    }
    total
}

type Case = (&'static str, fn(&Handle, u64, Who) -> Duration);

fn cases() -> [Case; 3] {
    [
        ("ready", |h, n, w| interleaved(h, n, w, ready)),
        ("yield once", |h, n, w| interleaved(h, n, w, yield_once)),
        ("spawned task", |h, n, w| interleaved(h, n, w, spawned_task)),
    ]
}

fn from_blocking_pool(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("async_to_sync from a blocking-pool thread");
    for (name, case) in cases() {
        for (label, who) in [
            ("baseline: Handle::block_on", Who::Baseline),
            ("async_to_sync", Who::AsyncToSync),
        ] {
            g.bench_function(format!("{label}({name})"), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async move {
                        tokio::task::spawn_blocking(move || case(&Handle::current(), iters, who))
                            .await
                            .unwrap()
                    })
                })
            });
            report_ratio(&format!("from a blocking-pool thread, {label}({name})"));
        }
    }
    g.finish();
}

fn from_plain_thread(c: &mut Criterion) {
    // The baseline blocks on the very runtime async_to_sync uses from a plain thread (its
    // background runtime), through its handle: the same runtime, the same worker.
    let handle = async_to_sync(async { Handle::current() }).unwrap();
    let mut g = c.benchmark_group("async_to_sync from a plain thread");
    for (name, case) in cases() {
        for (label, who) in [
            ("baseline: Handle::block_on", Who::Baseline),
            ("async_to_sync", Who::AsyncToSync),
        ] {
            g.bench_function(format!("{label}({name})"), |b| {
                b.iter_custom(|iters| case(&handle, iters, who))
            });
            report_ratio(&format!("from a plain thread, {label}({name})"));
        }
    }
    g.finish();
}

criterion_group!(benches, from_blocking_pool, from_plain_thread);
criterion_main!(benches);
