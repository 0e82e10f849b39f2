//! Thread-sensitive mode: one thread per context, contexts in parallel, the pool otherwise.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::ThreadId;
use std::time::Duration;

use amphi_core::{Context, ThreadSensitive};
use amphi_sync_to_async::sync_to_async;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(10);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("test-runtime")
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn calls_in_one_context_serialize_on_one_thread() {
    runtime().block_on(async {
        let ts = ThreadSensitive::new();
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let call = |ts: &ThreadSensitive| {
            let (running, most) = (running.clone(), most.clone());
            tokio::spawn(
                sync_to_async(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(30));
                    running.fetch_sub(1, Ordering::SeqCst);
                    std::thread::current().id()
                })
                .thread_sensitive(ts)
                .into_future(),
            )
        };
        let (a, b) = (call(&ts), call(&ts));
        let a = timeout(BOUND, a).await.unwrap().unwrap().unwrap();
        let b = timeout(BOUND, b).await.unwrap().unwrap().unwrap();
        assert_eq!(a, b, "one thread");
        assert_eq!(most.load(Ordering::SeqCst), 1, "one at a time");
        assert_eq!(ts.thread().unwrap().id(), a);
    });
}

/// Each call waits until the other one is running: it only finishes if the two run at once.
fn rendezvous() -> (impl FnOnce() -> ThreadId, impl FnOnce() -> ThreadId) {
    let (tx_a, rx_a) = mpsc::channel::<()>();
    let (tx_b, rx_b) = mpsc::channel::<()>();
    let a = move || {
        tx_a.send(()).unwrap();
        rx_b.recv_timeout(BOUND)
            .expect("the other call ran at the same time");
        std::thread::current().id()
    };
    let b = move || {
        tx_b.send(()).unwrap();
        rx_a.recv_timeout(BOUND)
            .expect("the other call ran at the same time");
        std::thread::current().id()
    };
    (a, b)
}

#[test]
fn two_contexts_run_in_parallel_on_different_threads() {
    runtime().block_on(async {
        let (one, two) = (ThreadSensitive::new(), ThreadSensitive::new());
        let (a, b) = rendezvous();
        let a = tokio::spawn(sync_to_async(a).thread_sensitive(&one).into_future());
        let b = tokio::spawn(sync_to_async(b).thread_sensitive(&two).into_future());
        let a = timeout(BOUND, a).await.unwrap().unwrap().unwrap();
        let b = timeout(BOUND, b).await.unwrap().unwrap().unwrap();
        assert_ne!(a, b);
        assert_eq!(one.thread().unwrap().id(), a);
        assert_eq!(two.thread().unwrap().id(), b);
    });
}

#[test]
fn plain_calls_run_on_the_runtimes_blocking_pool_in_parallel() {
    runtime().block_on(async {
        let ts = ThreadSensitive::new();
        let pinned = timeout(
            BOUND,
            sync_to_async(|| std::thread::current().id()).thread_sensitive(&ts),
        )
        .await
        .unwrap()
        .unwrap();
        let (a, b) = rendezvous();
        let name = || std::thread::current().name().map(str::to_owned);
        let a = tokio::spawn(sync_to_async(move || (a(), name())).into_future());
        let b = tokio::spawn(sync_to_async(move || (b(), name())).into_future());
        let (a, name_a) = timeout(BOUND, a).await.unwrap().unwrap().unwrap();
        let (b, _) = timeout(BOUND, b).await.unwrap().unwrap().unwrap();
        assert_ne!(a, b, "two pool threads at once");
        assert_ne!(a, pinned);
        assert_eq!(
            name_a.as_deref(),
            Some("test-runtime"),
            "a thread of the runtime's pool"
        );
    });
}

#[test]
fn per_request_default_gives_each_request_context_its_own_thread() {
    runtime().block_on(async {
        let (a, b) = rendezvous();
        let request = |f: Box<dyn FnOnce() -> ThreadId + Send>| {
            let ctx = Context::new();
            let fut = ctx.scope(Box::pin(async move {
                let first = sync_to_async(f).thread_sensitive_current().await.unwrap();
                let again = sync_to_async(|| std::thread::current().id())
                    .thread_sensitive_current()
                    .await
                    .unwrap();
                (first, again)
            }));
            tokio::spawn(fut)
        };
        let r1 = request(Box::new(a));
        let r2 = request(Box::new(b));
        let (a1, a2) = timeout(BOUND, r1).await.unwrap().unwrap();
        let (b1, b2) = timeout(BOUND, r2).await.unwrap().unwrap();
        assert_eq!(a1, a2, "one thread per request");
        assert_eq!(b1, b2, "one thread per request");
        assert_ne!(a1, b1, "requests in parallel");
    });
}

#[test]
fn thread_sensitive_current_without_any_context_says_what_to_do() {
    runtime().block_on(async {
        let err = timeout(BOUND, sync_to_async(|| ()).thread_sensitive_current())
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.is_wrong_context());
        assert!(
            err.to_string().contains(".thread_sensitive(&context)"),
            "{err}"
        );
    });
}

thread_local! {
    static COUNTER: Rc<Cell<u64>> = Rc::new(Cell::new(0));
}

#[test]
fn a_not_send_resource_lives_on_an_app_wide_context() {
    runtime().block_on(async {
        let app = ThreadSensitive::new();
        let mut counts = Vec::new();
        for _ in 0..5 {
            let n = timeout(
                BOUND,
                sync_to_async(|| {
                    COUNTER.with(|c| {
                        c.set(c.get() + 1);
                        c.get()
                    })
                })
                .thread_sensitive(&app),
            )
            .await
            .unwrap()
            .unwrap();
            counts.push(n);
        }
        assert_eq!(counts, [1, 2, 3, 4, 5]);
    });
}

#[test]
fn a_panic_on_a_thread_sensitive_context_comes_back_and_the_thread_lives_on() {
    runtime().block_on(async {
        let ts = ThreadSensitive::new();
        let err = timeout(
            BOUND,
            sync_to_async(|| -> u8 { panic!("sensitive boom") }).thread_sensitive(&ts),
        )
        .await
        .unwrap()
        .unwrap_err();
        assert!(err.is_panic());
        assert_eq!(err.message(), Some("sensitive boom"));
        let ok = timeout(BOUND, sync_to_async(|| 1).thread_sensitive(&ts))
            .await
            .unwrap();
        assert_eq!(ok.unwrap(), 1);
    });
}

use std::future::IntoFuture;
